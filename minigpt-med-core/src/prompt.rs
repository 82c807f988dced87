//! The MiniGPT-Med prompts and their tokenization, reproduced to the token: the first turn
//! `<s>[INST] <Img><ImageHere></Img> {instruction} [/INST]`, split at `<ImageHere>`, the first
//! piece tokenized with a BOS (so the ids start `[1, 1, ...]`: the literal `<s>` is the BOS
//! token too), later pieces without, every text run with LLaMA's legacy dummy `▁` prefix; and
//! a chat's follow-up turn `</s><s>[INST] {instruction} [/INST]`.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The single-turn template used by MiniGPT-Med's demo and evaluation alike.
pub const PROMPT_TEMPLATE: &str = "<s>[INST] <Img><ImageHere></Img> {} [/INST]";

/// A follow-up turn of a chat: the previous answer closed, a new instruction.
pub const FOLLOW_UP_TEMPLATE: &str = "</s><s>[INST] {} [/INST]";

/// Where the image embeddings go in the prompt.
pub const IMAGE_PLACEHOLDER: &str = "<ImageHere>";

/// A tokenized single-turn prompt: ids before the image (with the double BOS) and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The full prompt string.
    pub text: String,
    /// Token ids before `<ImageHere>`, e.g. `[1, 1, ▁[, INST, ], ▁<, Img, >]`.
    pub before_image: Vec<u32>,
    /// Token ids after `<ImageHere>`, starting with `▁<`, `/`, `Img`, `>`.
    pub after_image: Vec<u32>,
}

/// One earlier question of a conversation and the answer given to it, as a client that keeps
/// the conversation (an OpenAI-style chat) sends them back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exchange {
    /// The question, as its instruction (tags included).
    pub instruction: String,
    /// The answer text.
    pub answer: String,
}

/// The LLaMA tokenizer (`tokenizer.json`).
pub struct TextCodec {
    tokenizer: Tokenizer,
    /// Per id: decoding never ends a byte-fallback run here (a byte token, or a special token
    /// that decoding skips, across which the bytes on both sides join).
    joins_byte_run: Vec<bool>,
}

impl TextCodec {
    /// Loads `tokenizer.json` from an HF LLaMA directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::io(
                &path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
                "the LLaMA directory needs the tokenizer.json of Llama-2-7b-chat-hf",
            ));
        }
        let json = std::fs::read(&path).map_err(|e| Error::io(&path, e, "expected the tokenizer.json of LLaMA-2"))?;
        Self::from_json(&json, &path)
    }

    /// Loads a tokenizer from the text of a `tokenizer.json` (`origin` names it in errors).
    pub fn from_json(json: &[u8], origin: &Path) -> Result<Self> {
        let err = |reason: String| Error::WeightsFormat {
            path: origin.to_owned(),
            expected: "Hugging Face tokenizer.json".into(),
            reason,
        };
        // tokenizers panics (`expect("Helper")`) on some malformed JSON inside its sections:
        // the syntax is checked first, without building anything.
        serde_json::from_slice::<serde::de::IgnoredAny>(json).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let tokenizer = crate::contain::contain(|| Tokenizer::from_bytes(json))
            .map_err(|msg| err(format!("the tokenizer is malformed ({msg})")))?
            .map_err(|e| err(e.to_string()))?;
        let mut joins_byte_run = vec![false; tokenizer.get_vocab_size(true)];
        let byte_tokens = tokenizer.get_vocab(false).into_iter().filter(|(t, _)| is_byte_token(t)).map(|(_, id)| id);
        let special = tokenizer.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id);
        for id in byte_tokens.chain(special) {
            if let Some(j) = joins_byte_run.get_mut(id as usize) {
                *j = true;
            }
        }
        Ok(Self { tokenizer, joins_byte_run })
    }

    /// Token ids of `text`; `bos` adds the tokenizer's BOS as `add_special_tokens=True` does.
    /// Special tokens written in the text (`<s>`, `</s>`) become their ids.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, bos).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` with special tokens skipped; invalid UTF-8 byte runs become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The token string of `id` (e.g. `▁pneum`, `<0x0A>`), if it is in the vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Whether decoding may still join `id` with the ids around it into one byte-fallback run:
    /// `id` is a byte token (`<0x0A>`) or a special token that decoding skips.
    pub fn joins_byte_run(&self, id: u32) -> bool {
        self.joins_byte_run.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of the token string `token` (e.g. `<0x0A>`), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Builds and tokenizes the single-turn prompt for `instruction`.
    pub fn prompt(&self, instruction: &str) -> Result<Prompt> {
        let text = PROMPT_TEMPLATE.replace("{}", instruction);
        let (before, after) = text.split_once(IMAGE_PLACEHOLDER).expect("the template holds the placeholder");
        if after.contains(IMAGE_PLACEHOLDER) {
            return Err(Error::InvalidOption(format!(
                "the instruction may not contain {IMAGE_PLACEHOLDER}: MiniGPT-Med takes one image"
            )));
        }
        Ok(Prompt { before_image: self.encode(before, true)?, after_image: self.encode(after, false)?, text })
    }

    /// The prompt of a conversation: the first question of `history` in the single-turn
    /// template, each answer followed by the next question's follow-up turn, and `instruction`
    /// last. Its tokens are those a [`crate::Chat`] keeping its answers holds when each answer's
    /// text tokenizes back to the ids it was generated as. No history: [`Self::prompt`].
    pub fn conversation(&self, history: &[Exchange], instruction: &str) -> Result<Prompt> {
        let Some(first) = history.first() else { return self.prompt(instruction) };
        let mut p = self.prompt(&first.instruction)?;
        for (i, e) in history.iter().enumerate() {
            let next = history.get(i + 1).map_or(instruction, |h| h.instruction.as_str());
            if e.answer.contains(IMAGE_PLACEHOLDER) {
                return Err(Error::InvalidOption(format!(
                    "an earlier answer may not contain {IMAGE_PLACEHOLDER}: a conversation is about one image"
                )));
            }
            p.after_image.extend(self.encode(&e.answer, false)?);
            p.after_image.extend(self.follow_up(next)?);
            p.text.push_str(&e.answer);
            p.text.push_str(&FOLLOW_UP_TEMPLATE.replace("{}", next));
        }
        Ok(p)
    }

    /// The token ids of a chat's follow-up turn for `instruction` ([`FOLLOW_UP_TEMPLATE`]).
    pub fn follow_up(&self, instruction: &str) -> Result<Vec<u32>> {
        if instruction.contains(IMAGE_PLACEHOLDER) {
            return Err(Error::InvalidOption(format!(
                "a follow-up question cannot add an image ({IMAGE_PLACEHOLDER}): a chat is about one image"
            )));
        }
        self.encode(&FOLLOW_UP_TEMPLATE.replace("{}", instruction), false)
    }
}

/// Whether `token` is a byte-fallback token such as `<0x0A>`.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6 && token.starts_with("<0x") && token.ends_with('>')
}

/// MiniGPT-Med's answer clean-up: cut at the first `</s>`, drop `<s>`, keep what follows the last
/// `[/INST]`, strip whitespace as Python's `str.strip()` does.
pub fn postprocess_answer(decoded: &str) -> String {
    let text = decoded.split("</s>").next().unwrap_or("");
    let text = text.replace("<s>", "");
    let text = text.rsplit("[/INST]").next().unwrap_or("");
    py_strip(text).to_owned()
}

/// Python's `str.isspace()`: Rust's `char::is_whitespace` plus the separators U+001C..U+001F.
pub(crate) fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocess_follows_the_original() {
        assert_eq!(postprocess_answer("  yes </s> junk"), "yes");
        assert_eq!(postprocess_answer("<s>a [/INST] b\u{1f}"), "b");
        assert_eq!(postprocess_answer("\u{1e}x\u{5}"), "x\u{5}");
    }
}
