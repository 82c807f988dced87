//! A conversation about one image: the image and every earlier turn stay in the KV cache, so a
//! follow-up question costs only its own tokens.

use std::ops::Deref;
use std::sync::Arc;

use candle_core::Tensor;

use crate::answer::{Answer, StopReason};
use crate::error::{Error, Result};
use crate::generate::{fit_context, Turn};
use crate::llm::KvCache;
use crate::model::{ImageEmbeddings, Model};
use crate::options::GenerateOptions;
use crate::task::Task;

/// How a chat treats earlier answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatHistory {
    /// Earlier answers stay in context (this engine's default).
    #[default]
    KeepAnswers,
    /// As the original demo: each earlier answer is replaced by `</s>`.
    Original,
}

impl ChatHistory {
    /// The name `FromStr` reads: `keep_answers` or `original`.
    pub const fn name(self) -> &'static str {
        match self {
            ChatHistory::KeepAnswers => "keep_answers",
            ChatHistory::Original => "original",
        }
    }
}

/// Parses `keep_answers` (also `keep`) or `original`, case-insensitively.
impl std::str::FromStr for ChatHistory {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "keep_answers" | "keep" => Ok(ChatHistory::KeepAnswers),
            "original" => Ok(ChatHistory::Original),
            _ => Err(Error::InvalidOption(format!("chat history {s:?}: use keep_answers or original"))),
        }
    }
}

impl std::fmt::Display for ChatHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A conversation about one image. The image and every earlier turn stay in the KV cache, so a
/// follow-up question costs only its own tokens. One thread at a time.
///
/// A turn that fails, or that its streaming callback cancels, leaves the chat as it was before
/// the turn: the next question continues from the previous answer.
pub struct Chat<M: Deref<Target = Model> = Arc<Model>> {
    model: M,
    image: ImageEmbeddings,
    cache: Option<KvCache>,
    /// Generated ids not yet fed to the model (the last token of the previous answer).
    unfed: Vec<u32>,
    /// Cache length before the previous answer (for [`ChatHistory::Original`]).
    before_answer: usize,
    history: ChatHistory,
    turns: usize,
    last_prompt_logits: Option<Tensor>,
}

impl<M: Deref<Target = Model>> Chat<M> {
    /// A conversation about already-encoded `image` on `model` (a `&Model` or an `Arc<Model>`).
    pub fn new(model: M, image: ImageEmbeddings) -> Self {
        Self {
            model,
            image,
            cache: None,
            unfed: Vec::new(),
            before_answer: 0,
            history: ChatHistory::default(),
            turns: 0,
            last_prompt_logits: None,
        }
    }

    /// Chooses how earlier answers are kept (before the first question).
    pub fn with_history(mut self, history: ChatHistory) -> Self {
        self.history = history;
        self
    }

    /// Questions answered so far.
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// Logits `[vocab]` at the end of the latest question (before its answer), for inspection.
    pub fn last_prompt_logits(&self) -> Option<&Tensor> {
        self.last_prompt_logits.as_ref()
    }

    /// Positions held in the KV cache.
    pub fn context_len(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::len)
    }

    /// Asks `instruction` (verbatim, e.g. `[vqa] Is there an effusion?`).
    pub fn ask(&mut self, instruction: &str, opts: &GenerateOptions) -> Result<Answer> {
        self.ask_stream(instruction, opts, &mut |_| true)
    }

    /// Asks `task` (its instruction built for this chat's image).
    pub fn ask_task(&mut self, task: &Task, opts: &GenerateOptions) -> Result<Answer> {
        self.ask_task_stream(task, opts, &mut |_| true)
    }

    /// [`Chat::ask_task`] with streaming, as [`Model::generate_stream`].
    pub fn ask_task_stream(
        &mut self,
        task: &Task,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let instruction = task.instruction(self.image.width, self.image.height)?;
        self.ask_stream(&instruction, opts, on_text)
    }

    /// [`Chat::ask`] with streaming, as [`Model::generate_stream`].
    pub fn ask_stream(
        &mut self,
        instruction: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        opts.validate()?;
        let model: &Model = &self.model;
        let llama = model.llama();
        let codec = model.tokenizer();
        let base = match self.history {
            ChatHistory::Original if self.turns > 0 => self.before_answer,
            _ => self.context_len(),
        };
        // Counted and checked against the context before anything is embedded.
        let (x, fit) = if self.turns == 0 {
            model.first_turn_input(&self.image, &model.prompt(instruction)?, base, opts)?
        } else {
            let mut ids = match self.history {
                ChatHistory::KeepAnswers => self.unfed.clone(),
                ChatHistory::Original => Vec::new(),
            };
            ids.extend(codec.follow_up(instruction)?);
            // A follow-up is never truncated (`base > 0`): `fit.drop` is 0.
            let fit = fit_context(base, ids.len(), opts, llama.config().max_position_embeddings)?;
            (llama.embed(&ids)?, fit)
        };
        let n = x.dim(0)?;
        let cache = match &mut self.cache {
            Some(c) => c,
            None => self.cache.insert(llama.new_cache(n + fit.new_tokens)?),
        };
        cache.truncate(base);
        let mut turn = Turn::new(llama, codec, opts, fit.new_tokens, self.image.width, self.image.height);
        // On error `Turn::run` has rolled the cache back to `base`.
        let answer = turn.run(&x, cache, on_text)?;
        if answer.stop_reason == StopReason::Cancelled {
            // Forget the cancelled turn: the chat goes on from the previous answer. (Positions
            // past `base` of an `Original` chat held the previous answer, which that mode
            // replaces by `</s>` and never reads again.)
            cache.truncate(base);
            return Ok(answer);
        }
        self.before_answer = base + n;
        // Every generated token but the last was fed; EOS (if any) is re-sent as `</s>`.
        self.unfed = match answer.stop_reason {
            StopReason::Eos => Vec::new(),
            _ => answer.token_ids.last().copied().into_iter().collect(),
        };
        self.turns += 1;
        self.last_prompt_logits = turn.prefill_logits.take();
        Ok(answer)
    }
}
