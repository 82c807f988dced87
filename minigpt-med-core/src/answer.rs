//! Answers as values: the text, the generated ids, the boxes parsed out of the text, timings.

/// A box the model wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BoundingBox {
    /// The phrase inside `<p>...</p>`, or `None` for a bare `{<..><..><..><..>}`.
    pub label: Option<String>,
    /// `x1, y1, x2, y2` on the 0-100 grid, clamped to 0..=100, corners ordered.
    pub grid: [u32; 4],
    /// The same corners in pixels of the input image (`grid / 100 * width` or `height`).
    pub pixels: [f64; 4],
}

/// Time spent in each phase of one generation, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Image preprocessing + ViT + projection.
    pub encode_ms: f64,
    /// Prompt processing (one forward pass over the whole prompt).
    pub prefill_ms: f64,
    /// All decode steps.
    pub decode_ms: f64,
    /// Generated tokens per second of decode time.
    pub tokens_per_s: f64,
}

/// Why generation stopped. Every output spells it as [`StopReason::name`] (`eos`,
/// `max_tokens`, `stop_string`, `cancelled`, `context_full`): `Display`, serde, Python and the CLI's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model wrote its end-of-sequence token.
    #[default]
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// A stop string appeared in the text.
    StopString,
    /// The streaming callback asked to stop.
    Cancelled,
    /// The model's context was full before `max_new_tokens` were generated.
    ContextFull,
}

impl StopReason {
    /// Every reason.
    pub const ALL: [StopReason; 5] = [
        StopReason::Eos,
        StopReason::MaxTokens,
        StopReason::StopString,
        StopReason::Cancelled,
        StopReason::ContextFull,
    ];

    /// The name every output uses.
    pub const fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopString => "stop_string",
            StopReason::Cancelled => "cancelled",
            StopReason::ContextFull => "context_full",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The model's answer to one task. Serializes (serde) as the CLI's `--json` prints it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Answer {
    /// The cleaned answer text, as MiniGPT-Med post-processes it.
    pub text: String,
    /// The generated token ids (EOS excluded).
    pub token_ids: Vec<u32>,
    /// Boxes found in `text`, in pixels of the input image.
    pub boxes: Vec<BoundingBox>,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Positions the context held when the answer began: the prompt, its image tokens and, in
    /// a chat, the earlier turns (what OpenAI-style `usage.prompt_tokens` counts).
    pub prompt_tokens: usize,
    /// Phase timings.
    pub timings: Timings,
}

impl Answer {
    /// This answer's boxes drawn over `image` (the input it answers about), as interleaved RGB
    /// bytes `[height, width, 3]`.
    pub fn draw(&self, image: &crate::image::Image) -> Vec<u8> {
        crate::draw::draw_boxes(image, &self.boxes)
    }

    /// Parses the boxes of `text` for an input image of `width x height` pixels.
    ///
    /// Accepted forms: `<p>label</p> {<x1><y1><x2><y2>}`, several boxes of a label joined by
    /// `<delim>`, several labelled groups, and bare `{<x1><y1><x2><y2>}`. A group without exactly
    /// four integers is skipped; values are clamped to 0..=100 and corners reordered so that
    /// `x1 <= x2`, `y1 <= y2`. The text is never altered.
    pub fn parse_boxes(text: &str, width: usize, height: usize) -> Vec<BoundingBox> {
        let mut boxes = Vec::new();
        let mut rest = text;
        let mut label: Option<String> = None;
        loop {
            let next_p = rest.find("<p>");
            let next_brace = rest.find('{');
            match (next_p, next_brace) {
                (Some(p), b) if b.is_none_or(|b| p < b) => {
                    let after = &rest[p + 3..];
                    match after.find("</p>") {
                        Some(end) => {
                            label = Some(after[..end].trim().to_owned());
                            rest = &after[end + 4..];
                            // The label applies to the groups that follow it directly.
                            let trimmed = rest.trim_start();
                            if !trimmed.starts_with('{') {
                                label = None;
                            }
                        }
                        None => break,
                    }
                }
                (_, Some(b)) => {
                    let (found, used) = parse_group(&rest[b..]);
                    if let Some(grid) = found {
                        boxes.push(make_box(label.clone(), grid, width, height));
                    }
                    rest = &rest[b + used..];
                    if let Some(after) = rest.strip_prefix("<delim>") {
                        rest = after;
                    } else {
                        label = None;
                    }
                }
                _ => break,
            }
        }
        boxes
    }
}

/// Parses `{<a><b><c><d>}` at the start of `s`; returns the box (if well-formed) and the
/// number of bytes consumed (at least 1, so the caller always advances).
fn parse_group(s: &str) -> (Option<[i64; 4]>, usize) {
    debug_assert!(s.starts_with('{'));
    let Some(close) = s[1..].find(['}', '{']).map(|i| i + 1) else { return (None, 1) };
    if s.as_bytes()[close] != b'}' {
        return (None, close);
    }
    let inner = &s[1..close];
    let mut values = Vec::new();
    let mut cur = inner;
    while let Some(open) = cur.strip_prefix('<') {
        let Some(end) = open.find('>') else { break };
        match open[..end].trim().parse::<i64>() {
            Ok(v) => values.push(v),
            Err(_) => return (None, close + 1),
        }
        cur = &open[end + 1..];
    }
    if !cur.trim().is_empty() || values.len() != 4 {
        return (None, close + 1);
    }
    (Some([values[0], values[1], values[2], values[3]]), close + 1)
}

fn make_box(label: Option<String>, v: [i64; 4], width: usize, height: usize) -> BoundingBox {
    let c = |x: i64| x.clamp(0, 100) as u32;
    let (x1, x2) = (c(v[0]).min(c(v[2])), c(v[0]).max(c(v[2])));
    let (y1, y2) = (c(v[1]).min(c(v[3])), c(v[1]).max(c(v[3])));
    let px = |g: u32, size: usize| f64::from(g) / 100.0 * size as f64;
    BoundingBox {
        label,
        grid: [x1, y1, x2, y2],
        pixels: [px(x1, width), px(y1, height), px(x2, width), px(y2, height)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_have_one_name_everywhere() {
        let names: Vec<String> = StopReason::ALL.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        assert_eq!(names, ["\"eos\"", "\"max_tokens\"", "\"stop_string\"", "\"cancelled\"", "\"context_full\""]);
        for r in StopReason::ALL {
            assert_eq!(format!("\"{r}\""), serde_json::to_string(&r).unwrap());
            assert_eq!(serde_json::from_str::<StopReason>(&format!("\"{}\"", r.name())).unwrap(), r);
        }
    }
}
