//! The decode loop: from a prompt's input embeddings to an [`Answer`], token by token. It holds
//! the one context-length check every path runs before it embeds a prompt ([`fit_context`]),
//! the incremental [`Detokenizer`], and the rules of streaming: text is sent only once it is
//! settled (a byte-fallback run complete, trailing whitespace and a possible stop-string
//! prefix held back), and the pieces concatenate to the answer's text.

use std::borrow::Cow;
use std::time::Instant;

use candle_core::Tensor;

use crate::answer::{Answer, StopReason, Timings};
use crate::error::{Error, Result};
use crate::llm::{KvCache, Llama};
use crate::options::GenerateOptions;
use crate::prompt::{postprocess_answer, py_is_space, TextCodec};
use crate::sample::Sampler;

/// Index of the largest logit, the lowest id on ties (as torch's argmax).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// How a prompt fits the context: leading positions to drop, and the new tokens there is room
/// for (`opts.max_new_tokens`, or fewer where the context ends first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fit {
    pub(crate) drop: usize,
    pub(crate) new_tokens: usize,
}

/// Checks that a prompt of `prompt_len` positions, after `base` positions already in the
/// cache, fits the context, before anything is embedded. With a `context_limit`, a first prompt
/// (`base == 0`) is left-truncated to leave room for `max_new_tokens`, as the original demo
/// does; a follow-up never is (it would cut the conversation). Otherwise the answer may use
/// what the context has left: fewer new tokens than asked end it with
/// [`StopReason::ContextFull`]; a prompt with no room for one new token is an error.
pub(crate) fn fit_context(base: usize, prompt_len: usize, opts: &GenerateOptions, max_pos: usize) -> Result<Fit> {
    let new = opts.max_new_tokens;
    let mut drop = 0;
    if let Some(limit) = opts.context_limit {
        // `validate` guarantees limit > max_new_tokens.
        let keep = limit.saturating_sub(new);
        if base + prompt_len > keep {
            if base > 0 {
                return Err(Error::ContextOverflow {
                    needed: base + prompt_len + new,
                    available: limit,
                    hint: "the conversation has reached context_limit: start a new chat or lower max_new_tokens".into(),
                });
            }
            drop = prompt_len - keep;
        }
    }
    let used = base + prompt_len - drop;
    if used >= max_pos {
        let hint = if base > 0 {
            "start a new chat"
        } else {
            "shorten the instruction or set context_limit to left-truncate the prompt"
        };
        return Err(Error::ContextOverflow { needed: used + 1, available: max_pos, hint: hint.into() });
    }
    Ok(Fit { drop, new_tokens: new.min(max_pos - used) })
}

/// Turns generated ids into text one id at a time, decoding only a short window per step
/// instead of the whole answer. Its text is always a prefix of `codec.decode(ids)`.
///
/// A run of byte-fallback tokens (`<0xE2>`...) is decoded as a whole, as valid UTF-8 or as one
/// U+FFFD per byte, so the text of a run can change until a token that is neither a byte nor a
/// skipped special token ends it: ids are settled only then. The window starts at the id before the newest settled ones, so
/// SentencePiece's "strip the first leading space" applies to both decodes of a step alike and
/// cancels out.
pub struct Detokenizer<'c> {
    codec: &'c TextCodec,
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix: usize,
    /// Ids before this one are in `text`.
    read: usize,
    text: String,
}

impl<'c> Detokenizer<'c> {
    /// An empty detokenizer over `codec`'s vocabulary.
    pub fn new(codec: &'c TextCodec) -> Self {
        Self { codec, ids: Vec::new(), prefix: 0, read: 0, text: String::new() }
    }

    /// Adds `id`; returns how many bytes of text it settled (0 while held back).
    pub fn push(&mut self, id: u32) -> Result<usize> {
        self.ids.push(id);
        if self.codec.joins_byte_run(id) {
            return Ok(0);
        }
        let before = self.codec.decode(&self.ids[self.prefix..self.read])?;
        let window = self.codec.decode(&self.ids[self.prefix..])?;
        match window.strip_prefix(before.as_str()) {
            Some(new) if !new.is_empty() && !window.ends_with('\u{FFFD}') => {
                self.text.push_str(new);
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(new.len())
            }
            _ => Ok(0),
        }
    }

    /// The settled text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every id pushed.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The whole text of every id, held-back ones included: `codec.decode(ids)`.
    pub fn finish(&self) -> Result<String> {
        self.codec.decode(&self.ids)
    }
}

/// Strings whose presence makes MiniGPT-Med's clean-up ([`postprocess_answer`]) depend on more
/// than the text's ends.
const MARKERS: [&str; 3] = ["</s>", "<s>", "[/INST]"];
const LONGEST_MARKER: usize = 7;

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    (0..=i.min(s.len())).rev().find(|&k| s.is_char_boundary(k)).unwrap_or(0)
}

/// One answer being generated: sampling, stopping, and the text streamed so far. It runs as
/// [`Self::prefill`], then [`Self::step`] once per new token (the caller feeding back the token
/// `step` returns), then [`Self::finish`]: one sequence alone ([`Self::run`]) or one of many
/// sharing each decode step ([`crate::DecodeBatch`]).
pub(crate) struct Turn<'m> {
    llama: &'m Llama,
    opts: GenerateOptions,
    /// New tokens the context has room for (at most `opts.max_new_tokens`).
    budget: usize,
    width: usize,
    height: usize,
    sampler: Sampler,
    detok: Detokenizer<'m>,
    /// Text already sent to the caller.
    emitted: String,
    /// The settled text holds a [`MARKERS`] string: the clean-up must see all of it.
    marked: bool,
    /// Bytes of the settled text already searched for markers and stop strings.
    searched: usize,
    /// The ids the repetition penalty sees.
    history: Vec<u32>,
    /// The text up to a stop string, once one has appeared.
    stop_cut: Option<String>,
    stop_reason: StopReason,
    prefill_ms: f64,
    /// Cache positions after the prompt ran.
    prompt_len: usize,
    /// When the first decode step started.
    decode_start: Option<Instant>,
    /// Logits at the end of the prompt.
    pub(crate) prefill_logits: Option<Tensor>,
}

impl<'m> Turn<'m> {
    /// A turn answering about an input image of `width x height` pixels (to place its boxes).
    pub(crate) fn new(
        llama: &'m Llama,
        codec: &'m TextCodec,
        opts: &GenerateOptions,
        budget: usize,
        width: usize,
        height: usize,
    ) -> Self {
        Self {
            llama,
            opts: opts.clone(),
            budget,
            width,
            height,
            sampler: Sampler::new(opts),
            detok: Detokenizer::new(codec),
            emitted: String::new(),
            marked: false,
            searched: 0,
            // HF 4.30 starts generate(inputs_embeds=...) from input_ids = [BOS]; the repetition
            // penalty therefore sees BOS plus the generated ids.
            history: vec![llama.config().bos_token_id],
            stop_cut: None,
            stop_reason: StopReason::MaxTokens,
            prefill_ms: 0.0,
            prompt_len: 0,
            decode_start: None,
            prefill_logits: None,
        }
    }

    /// Feeds `x` (the prompt or a follow-up turn), then decodes. On error the cache is rolled
    /// back to where it was; on success the last generated token is left unfed.
    pub(crate) fn run(
        &mut self,
        x: &Tensor,
        cache: &mut KvCache,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let start_len = cache.len();
        let result = self.run_inner(x, cache, on_text);
        if result.is_err() {
            cache.truncate(start_len);
        }
        result
    }

    fn run_inner(&mut self, x: &Tensor, cache: &mut KvCache, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Answer> {
        let mut logits = self.prefill(x, cache)?;
        while let Some(next) = self.step(&logits.to_vec1::<f32>()?, on_text)? {
            logits = self.llama.forward(&self.llama.embed(&[next])?, cache)?;
        }
        self.finish(on_text)
    }

    /// Runs the prompt `x` into `cache`; returns the logits `[vocab]` of its last position.
    pub(crate) fn prefill(&mut self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let t0 = Instant::now();
        let logits = self.llama.forward(x, cache)?;
        self.prefill_logits = Some(logits.clone());
        self.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.prompt_len = cache.len();
        Ok(logits)
    }

    /// Picks the next token from `logits` (of the last position fed) and streams what it
    /// settles. Returns the token to feed next, or `None` when the answer has ended (EOS, a
    /// stop string, the token budget, or `on_text` returning `false`).
    pub(crate) fn step(&mut self, logits: &[f32], on_text: &mut dyn FnMut(&str) -> bool) -> Result<Option<u32>> {
        self.decode_start.get_or_insert_with(Instant::now);
        let mut l = logits.to_vec();
        let eos = self.llama.config().eos_token_id;
        if self.opts.ignore_eos {
            if let Some(x) = l.get_mut(eos as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        let next = self.sampler.next(&mut l, &self.history);
        if next == eos {
            self.stop_reason = StopReason::Eos;
            return Ok(None);
        }
        self.history.push(next);
        self.detok.push(next)?;
        let raw = self.detok.text();
        if !self.marked {
            let from = floor_boundary(raw, self.searched.saturating_sub(LONGEST_MARKER - 1));
            self.marked = MARKERS.iter().any(|m| raw[from..].contains(m));
        }
        let text = clean_so_far(raw, self.marked);
        if let Some(cut) = find_stop(&self.opts.stop_strings, &text, raw.len(), self.searched, self.marked) {
            self.stop_cut = Some(text[..cut].to_owned());
            self.stop_reason = StopReason::StopString;
            return Ok(None);
        }
        if !emit(&mut self.emitted, &self.opts.stop_strings, &text, on_text) {
            self.stop_reason = StopReason::Cancelled;
            return Ok(None);
        }
        self.searched = self.detok.text().len();
        if self.detok.ids().len() >= self.budget {
            if self.budget < self.opts.max_new_tokens {
                self.stop_reason = StopReason::ContextFull;
            }
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Ends the answer where it is, as `on_text` returning `false` would.
    pub(crate) fn cancel(&mut self) {
        self.stop_reason = StopReason::Cancelled;
    }

    /// The answer, once [`Self::step`] has returned `None`; sends the rest of its text.
    pub(crate) fn finish(&mut self, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Answer> {
        let text = match self.stop_cut.take() {
            Some(t) => postprocess_answer(&t),
            None => postprocess_answer(&self.detok.finish()?),
        };
        if self.stop_reason != StopReason::Cancelled {
            if let Some(rest) = text.strip_prefix(self.emitted.as_str()) {
                if !rest.is_empty() {
                    on_text(rest);
                }
            }
        }
        let decode_ms = self.decode_start.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        let boxes = Answer::parse_boxes(&text, self.width, self.height);
        let n = self.detok.ids().len();
        Ok(Answer {
            text,
            token_ids: self.detok.ids().to_vec(),
            boxes,
            stop_reason: self.stop_reason,
            prompt_tokens: self.prompt_len,
            timings: Timings {
                encode_ms: 0.0,
                prefill_ms: self.prefill_ms,
                decode_ms,
                tokens_per_s: if decode_ms > 0.0 { n as f64 / (decode_ms / 1e3) } else { 0.0 },
            },
        })
    }
}

/// The settled text `raw` as the clean-up leaves it so far: left-stripped (the right end is
/// still growing), or the whole clean-up once a marker has appeared.
fn clean_so_far(raw: &str, marked: bool) -> Cow<'_, str> {
    if marked {
        Cow::Owned(postprocess_answer(raw))
    } else {
        Cow::Borrowed(raw.trim_start_matches(py_is_space))
    }
}

/// Where the first of `stops` starts in `text` (the clean view of `raw_len` settled bytes, of
/// which `searched` were searched before), looking only where the newest ids could have
/// completed one; everywhere once a marker made the clean-up non-local.
fn find_stop(stops: &[String], text: &str, raw_len: usize, searched: usize, marked: bool) -> Option<usize> {
    let longest = stops.iter().map(String::len).max()?;
    let from = match marked {
        true => 0,
        false => {
            let lead = raw_len - text.len();
            floor_boundary(text, searched.saturating_sub(lead).saturating_sub(longest - 1))
        }
    };
    stops.iter().filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i)).min()
}

/// Sends the part of `text` past `emitted`, holding back trailing whitespace (which the final
/// strip may remove) and a possible stop-string prefix until they are settled. Returns the
/// callback's answer (`false`: stop).
fn emit(emitted: &mut String, stops: &[String], text: &str, on_text: &mut dyn FnMut(&str) -> bool) -> bool {
    let mut stable = text.trim_end_matches(py_is_space);
    for s in stops {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && stable.ends_with(&s[..k]) {
                stable = &stable[..stable.len() - k];
                break;
            }
        }
    }
    match stable.strip_prefix(emitted.as_str()) {
        Some(rest) if !rest.is_empty() => {
            let rest = rest.to_owned();
            emitted.push_str(&rest);
            on_text(&rest)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> TextCodec {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/llama-2-7b-chat-hf");
        TextCodec::from_dir(&dir).unwrap()
    }

    #[test]
    fn argmax_takes_the_lowest_id_on_ties() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), 1);
    }

    /// A small deterministic stream of ids (xorshift), biased towards byte-fallback tokens.
    fn ids(seed: u64, n: usize, vocab: u32, bytes: &[u32]) -> Vec<u32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if s.is_multiple_of(3) {
                    bytes[(s >> 8) as usize % bytes.len()]
                } else {
                    (s >> 16) as u32 % vocab
                }
            })
            .collect()
    }

    #[test]
    fn detokenizer_text_is_always_a_prefix_of_the_whole_decode() {
        let codec = codec();
        let vocab = codec.vocab_size() as u32;
        // The UTF-8 bytes of "é€😀" and "H" as byte-fallback tokens, and the special tokens
        // (skipped by decoding, so the bytes around them join).
        let mut bytes: Vec<u32> =
            ["<0xC3>", "<0xA9>", "<0xE2>", "<0x82>", "<0xAC>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "<0x48>"]
                .iter()
                .map(|t| codec.token_id(t).expect("the fixture vocabulary has byte-fallback tokens"))
                .collect();
        bytes.extend(["<unk>", "<s>", "</s>"].map(|t| codec.token_id(t).unwrap()));
        for seed in 0..400 {
            let ids = ids(seed, 40, vocab, &bytes);
            let mut d = Detokenizer::new(&codec);
            let mut pieces = String::new();
            for (i, &id) in ids.iter().enumerate() {
                let n = d.push(id).unwrap();
                pieces.push_str(&d.text()[d.text().len() - n..]);
                let whole = codec.decode(&ids[..=i]).unwrap();
                assert!(whole.starts_with(d.text()), "seed {seed} step {i}: {:?} vs {whole:?}", d.text());
            }
            assert_eq!(pieces, d.text());
            assert_eq!(d.finish().unwrap(), codec.decode(&ids).unwrap());
        }
    }

    #[test]
    fn detokenizer_holds_an_incomplete_character_back() {
        let codec = codec();
        let byte = |t: &str| codec.token_id(t).unwrap();
        let (e2, x82, xac) = (byte("<0xE2>"), byte("<0x82>"), byte("<0xAC>"));
        let mut d = Detokenizer::new(&codec);
        let word = codec.encode("cost", false).unwrap();
        for &id in &word {
            d.push(id).unwrap();
        }
        assert_eq!(d.text(), "cost");
        assert_eq!((d.push(e2).unwrap(), d.push(x82).unwrap(), d.push(xac).unwrap()), (0, 0, 0));
        assert_eq!(d.text(), "cost");
        let dot = codec.token_id(".").or_else(|| codec.token_id("▁.")).unwrap();
        assert!(d.push(dot).unwrap() > 0);
        assert!(d.text().starts_with("cost€"), "{:?}", d.text());
        assert_eq!(d.finish().unwrap(), codec.decode(d.ids()).unwrap());
    }

    #[test]
    fn the_context_check_truncates_only_first_prompts() {
        let fit = |drop, new_tokens| Fit { drop, new_tokens };
        let mut o = GenerateOptions::greedy(10);
        assert_eq!(fit_context(0, 50, &o, 100).unwrap(), fit(0, 10));
        // The context ends first: the answer gets the 5 positions left.
        assert_eq!(fit_context(0, 95, &o, 100).unwrap(), fit(0, 5));
        assert_eq!(fit_context(60, 35, &o, 100).unwrap(), fit(0, 5));
        let e = fit_context(0, 100, &o, 100).unwrap_err();
        assert!(matches!(e, Error::ContextOverflow { needed: 101, available: 100, .. }), "{e}");
        o.context_limit = Some(40);
        assert_eq!(fit_context(0, 50, &o, 100).unwrap(), fit(20, 10));
        assert_eq!(fit_context(0, 30, &o, 100).unwrap(), fit(0, 10));
        let e = fit_context(25, 10, &o, 100).unwrap_err();
        assert!(matches!(e, Error::ContextOverflow { needed: 45, available: 40, .. }), "{e}");
        assert_eq!(fit_context(20, 10, &o, 100).unwrap(), fit(0, 10));
    }
}
