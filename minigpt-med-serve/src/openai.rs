//! OpenAI's `/v1/chat/completions`: the request read into an [`Ask`], the answer written back
//! as a `chat.completion` or as `chat.completion.chunk` events.

use std::path::Path;

use minigpt_med::{Answer, DecodeSettings, Exchange, Preset, Region, StopReason, Task, TaskKind};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::input::{image_options, url_bytes, Ask};

/// Most messages one request may hold: more is never a real conversation about one image.
pub(crate) const MAX_MESSAGES: usize = 256;

/// Most text, in bytes, of all messages together: far past any context (4096 positions), and
/// small enough that tokenizing it never holds up the engine.
pub(crate) const MAX_TEXT_BYTES: usize = 256 * 1024;

/// `stop`: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The request body. Fields OpenAI defines that change nothing here (`user`, `frequency_penalty`
/// at 0, ...) are ignored as every compatible server ignores them; those that would change the
/// answer in a way this model cannot (`n` > 1, tools, logprobs) are refused.
#[derive(Deserialize)]
struct ChatRequest {
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(deserialize_with = "bounded_messages")]
    messages: Vec<Message>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    logprobs: Option<bool>,
    tools: Option<serde::de::IgnoredAny>,
    response_format: Option<ResponseFormat>,
    // Extensions (the `openai` client's `extra_body`).
    task: Option<String>,
    region: Option<[f64; 4]>,
    grid_region: Option<[f64; 4]>,
    color: Option<String>,
    window: Option<[f64; 2]>,
    window_preset: Option<String>,
    frame: Option<usize>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    preset: Option<String>,
    context_limit: Option<usize>,
    ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

/// A parsed chat request.
pub(crate) struct ChatAsk {
    pub ask: Ask,
    pub stream: bool,
    pub include_usage: bool,
}

/// Reads the request body into the question it asks.
pub(crate) fn parse(
    body: &[u8],
    allowed: Option<&Path>,
    max_bytes: usize,
    max_pixels: u64,
) -> Result<ChatAsk, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the request body is not a valid chat request: {e}"))
    })?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("unsupported", "n must be 1: ask again for another answer").param("n"));
    }
    if req.logprobs == Some(true) {
        return Err(ApiError::bad_request("unsupported", "logprobs are not supported").param("logprobs"));
    }
    if req.tools.is_some() {
        return Err(ApiError::bad_request("unsupported", "MiniGPT-Med does not call tools").param("tools"));
    }
    if req.response_format.as_ref().and_then(|f| f.kind.as_deref()).is_some_and(|t| t != "text") {
        return Err(ApiError::bad_request("unsupported", "only text responses: leave out response_format")
            .param("response_format"));
    }
    let mut image: Option<Vec<u8>> = None;
    // (role, text) of the user and assistant messages, in order.
    let mut turns: Vec<(bool, String)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let user = match m.role.as_str() {
            "user" => true,
            "assistant" => false,
            // MiniGPT-Med was trained without a system prompt; one is accepted and not used.
            "system" | "developer" => continue,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_role",
                    format!("messages[{i}].role {other:?}: use user, assistant or system"),
                )
                .param(format!("messages[{i}].role")))
            }
        };
        let text = content_text(i, m.content.as_ref(), user, &mut image, allowed, max_bytes, turns.is_empty())?;
        turns.push((user, text));
    }
    let text_bytes: usize = turns.iter().map(|(_, t)| t.len()).sum();
    if text_bytes > MAX_TEXT_BYTES {
        return Err(ApiError::bad_request(
            "text_too_long",
            format!(
                "the messages hold {text_bytes} bytes of text, more than any context takes: send at most {MAX_TEXT_BYTES}"
            ),
        )
        .param("messages"));
    }
    let image = image.ok_or_else(|| {
        ApiError::bad_request(
            "missing_image",
            "MiniGPT-Med answers about one image: add an image_url part (a data URI) to the first user message",
        )
        .param("messages")
    })?;
    // user, assistant, user, ..., user.
    for (k, (user, _)) in turns.iter().enumerate() {
        if *user != (k % 2 == 0) || (k + 1 == turns.len() && !user) {
            return Err(ApiError::bad_request(
                "invalid_conversation",
                "the messages must alternate user, assistant, user, ... and end with the user's question",
            )
            .param("messages"));
        }
    }
    let (_, question) = turns.pop().ok_or_else(|| {
        ApiError::bad_request("invalid_conversation", "no user message: ask a question").param("messages")
    })?;
    let history: Vec<Exchange> =
        turns.chunks(2).map(|p| Exchange { instruction: instruction_of(&p[0].1), answer: p[1].1.clone() }).collect();

    let region = match (req.region, req.grid_region) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("invalid_option", "give region (pixels) or grid_region, not both")
                .param("region"))
        }
        (Some(p), None) => Some(Region::pixels(p).map_err(|e| ApiError::from(e).param("region"))?),
        (None, Some(g)) => Some(Region::grid(g).map_err(|e| ApiError::from(e).param("grid_region"))?),
        (None, None) => None,
    };
    let task = match &req.task {
        Some(kind) => {
            let kind = kind.parse::<TaskKind>().map_err(|e| ApiError::from(e).param("task"))?;
            let text = question.trim();
            Task::from_fields(Some(kind), (!text.is_empty()).then_some(text), None, region)
        }
        None if region.is_some() => Task::from_fields(Some(TaskKind::Custom), Some(&question), None, region),
        None => Ok(task_of(&question)),
    }
    .map_err(|e| ApiError::from(e).param("task"))?;

    let window = req.window.map(|[c, w]| format!("{c},{w}"));
    let image_options =
        image_options(req.color.as_deref(), window.as_deref(), req.window_preset.as_deref(), req.frame, max_pixels)?;
    let preset = req.preset.map(|p| p.parse::<Preset>()).transpose().map_err(|e| ApiError::from(e).param("preset"))?;
    let stop_strings = req.stop.map(|s| match s {
        Stop::One(s) => vec![s],
        Stop::Many(v) => v,
    });
    let options = DecodeSettings {
        preset,
        max_new_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        repetition_penalty: req.repetition_penalty,
        stop_strings: stop_strings.filter(|s| !s.is_empty()),
        context_limit: req.context_limit,
        ignore_eos: req.ignore_eos,
    }
    .resolve()
    .map_err(ApiError::from)?;
    Ok(ChatAsk {
        ask: Ask { image, image_options, task, history, options },
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.unwrap_or_default().include_usage.unwrap_or(false),
    })
}

/// A typed question as the instruction it is: untagged or tagged text verbatim, an empty text
/// the default report.
fn task_of(text: &str) -> Task {
    if text.trim().is_empty() {
        Task::Report(None)
    } else {
        Task::Custom(text.to_owned())
    }
}

fn instruction_of(text: &str) -> String {
    task_of(text).instruction(1, 1).unwrap_or_default()
}

/// The text of message `i`; its image, if any, into `image` (only the first user message may
/// hold one, and only one).
fn content_text(
    i: usize,
    content: Option<&Content>,
    user: bool,
    image: &mut Option<Vec<u8>>,
    allowed: Option<&Path>,
    max_bytes: usize,
    first: bool,
) -> Result<String, ApiError> {
    let at = |j: usize| format!("messages[{i}].content[{j}]");
    let parts = match content {
        None => return Ok(String::new()),
        Some(Content::Text(s)) => return Ok(s.clone()),
        Some(Content::Parts(parts)) => parts,
    };
    let mut texts = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let invalid = |m: String| ApiError::bad_request("invalid_content", m).param(at(j));
        match part.kind.as_str() {
            "text" => texts.push(
                part.text
                    .as_deref()
                    .ok_or_else(|| invalid(format!("{}: a text part needs a string \"text\"", at(j))))?,
            ),
            "image_url" => {
                let url = part.image_url.as_ref().map(|u| u.url.as_str()).ok_or_else(|| {
                    invalid(format!("{}: an image_url part needs {{\"image_url\": {{\"url\": \"data:...\"}}}}", at(j)))
                })?;
                if !user || !first {
                    return Err(ApiError::bad_request(
                        "invalid_image_position",
                        format!("{}: the image goes in the first user message (one image per conversation)", at(j)),
                    )
                    .param(at(j)));
                }
                if image.is_some() {
                    return Err(ApiError::bad_request(
                        "too_many_images",
                        format!("{}: MiniGPT-Med reads one image per conversation", at(j)),
                    )
                    .param(at(j)));
                }
                *image = Some(url_bytes(url, allowed, max_bytes)?);
            }
            other => return Err(invalid(format!("{}: part type {other:?}: use text or image_url", at(j)))),
        }
    }
    Ok(texts.join("\n"))
}

/// A message's content: a string, or a list of parts. Read straight from the JSON text (no
/// intermediate tree, whose size a hostile body could multiply), at most [`MAX_PARTS`] parts.
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// Most parts one message may hold.
const MAX_PARTS: usize = 64;

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    image_url: Option<ImageUrl>,
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<Part>()? {
                    if parts.len() == MAX_PARTS {
                        return Err(serde::de::Error::custom(format!("a message holds at most {MAX_PARTS} parts")));
                    }
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// `messages`, read one by one and refused past [`MAX_MESSAGES`] before the rest is read.
fn bounded_messages<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Vec<Message>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of messages")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Message>, A::Error> {
            let mut out = Vec::new();
            while let Some(m) = seq.next_element::<Message>()? {
                if out.len() == MAX_MESSAGES {
                    return Err(serde::de::Error::custom(format!(
                        "too many messages: a conversation here holds at most {MAX_MESSAGES}"
                    )));
                }
                out.push(m);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Visit)
}

/// `response_format`: only its type is read.
#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// OpenAI's `finish_reason` for a stop reason.
pub(crate) fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::StopString => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => "cancelled",
    }
}

/// The `minigpt_med` extension object of a finished answer.
pub(crate) fn extension(a: &Answer, instruction: &str, width: usize, height: usize, queue_ms: f64) -> Value {
    let mut timings = serde_json::to_value(a.timings).unwrap_or_default();
    timings["queue_ms"] = json!(queue_ms);
    json!({
        "task": TaskKind::of_instruction(instruction),
        "instruction": instruction,
        "stop_reason": a.stop_reason,
        "token_ids": a.token_ids,
        "image": {"width": width, "height": height},
        "boxes": a.boxes,
        "timings": timings,
    })
}

pub(crate) fn usage(a: &Answer) -> Value {
    let prompt_tokens = a.prompt_tokens;
    let c = a.token_ids.len();
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": c, "total_tokens": prompt_tokens + c})
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "data:image/png;base64,iVBORw0K\nGgo=";

    fn ask(body: Value) -> Result<ChatAsk, ApiError> {
        parse(body.to_string().as_bytes(), None, 1 << 20, 1 << 24)
    }

    fn image_part() -> Value {
        json!({"type": "image_url", "image_url": {"url": URI}})
    }

    #[test]
    fn a_conversation_becomes_history_and_a_question() {
        let a = ask(json!({"messages": [
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": [image_part(), {"type": "text", "text": "[vqa] Is it normal?"}]},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": [{"type": "text", "text": "[refer] the heart"}]},
        ]}))
        .unwrap_or_else(|e| panic!("{e}"));
        // The base64 may be wrapped; these are the PNG magic bytes.
        assert_eq!(a.ask.image, b"\x89PNG\r\n\x1a\n");
        assert_eq!(a.ask.history, vec![Exchange { instruction: "[vqa] Is it normal?".into(), answer: "yes".into() }]);
        assert_eq!(a.ask.task, Task::Custom("[refer] the heart".into()));
        assert!(!a.stream);
    }

    #[test]
    fn the_task_extension_builds_the_task_from_the_text() {
        let msgs = |t: &str| json!([{"role": "user", "content": [image_part(), {"type": "text", "text": t}]}]);
        let a = ask(json!({"messages": msgs("the nodule"), "task": "refer"})).unwrap();
        assert_eq!(a.ask.task, Task::Refer("the nodule".into()));
        let a = ask(json!({"messages": msgs(""), "task": "grounding"})).unwrap();
        assert_eq!(a.ask.task, Task::Grounding(None));
        let a = ask(json!({"messages": msgs(""), "task": "identify", "grid_region": [1, 2, 30, 40]})).unwrap();
        assert_eq!(a.ask.task, Task::Identify { region: Region::Grid([1, 2, 30, 40]), question: None });
        assert_eq!(ask(json!({"messages": msgs("")})).unwrap().ask.task, Task::Report(None));
        for (body, code) in [
            (json!({"messages": msgs("x"), "task": "segment"}), "invalid_option"),
            (json!({"messages": msgs("x"), "region": [1, 2, 3, 4]}), "invalid_option"),
            (json!({"messages": msgs("x"), "region": [1, 2, 3, 4], "grid_region": [1, 2, 3, 4]}), "invalid_option"),
            (json!({"messages": msgs("x"), "n": 3}), "unsupported"),
            (json!({"messages": msgs("x"), "seed": 3}), "invalid_option"),
        ] {
            assert_eq!(ask(body.clone()).err().map(|e| e.code), Some(code), "{body}");
        }
    }

    #[test]
    fn malformed_conversations_say_what_is_wrong() {
        let img = json!({"role": "user", "content": [image_part()]});
        let cases = [
            (json!({"messages": [{"role": "user", "content": "hi"}]}), "missing_image"),
            (json!({"messages": [img, {"role": "assistant", "content": "a"}]}), "invalid_conversation"),
            (json!({"messages": [img, img]}), "invalid_image_position"),
            (json!({"messages": [{"role": "user", "content": [image_part(), image_part()]}]}), "too_many_images"),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "invalid_role"),
            (json!({"messages": [{"role": "user", "content": 5}]}), "invalid_json"),
            (json!({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}), "invalid_json"),
            (json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}), "invalid_content"),
            (json!({"messages": "hi"}), "invalid_json"),
            (json!({"messages": [img], "max_tokens": "many"}), "invalid_json"),
        ];
        for (body, code) in cases {
            let e = ask(body.clone()).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(e.code, code, "{body}: {e}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let many: Vec<Value> = (0..MAX_MESSAGES + 1).map(|_| json!({"role": "user", "content": "x"})).collect();
        let e = ask(json!({ "messages": many })).err().unwrap();
        assert!(e.message.contains("at most 256"), "{e}");
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let e = ask(json!({"messages": [{"role": "user", "content": [image_part(), {"type": "text", "text": long}]}]}));
        assert_eq!(e.err().map(|e| e.code), Some("text_too_long"));
    }

    #[test]
    fn image_urls_are_data_uris_or_allowed_files() {
        use crate::input::url_bytes;
        assert_eq!(url_bytes("data:;base64,aGk=", None, 10).unwrap(), b"hi");
        for (url, says) in [
            ("data:image/png,plain", "not base64"),
            ("data:image/png;base64", "no comma"),
            ("data:image/png;base64,@@", "does not decode"),
            ("https://example.com/a.png", "not fetched"),
            ("file:///etc/passwd", "file:// URLs are off"),
        ] {
            let e = url_bytes(url, None, 10).unwrap_err();
            assert!(e.message.contains(says), "{url}: {}", e.message);
        }
        let dir = std::env::temp_dir().join(format!("mgm-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), b"abc").unwrap();
        let root = dir.canonicalize().unwrap();
        let inside = format!("file://{}", root.join("a.png").display());
        assert_eq!(url_bytes(&inside, Some(&root), 10).unwrap(), b"abc");
        assert!(url_bytes(&inside, Some(&root), 2).unwrap_err().message.contains("over the service's limit"));
        let outside = format!("file://{}/../../etc/hostname", root.display());
        assert!(url_bytes(&outside, Some(&root), 1000).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
