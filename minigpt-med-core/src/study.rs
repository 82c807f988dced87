//! A study: one image, many questions. The image is encoded once and the prompt up to and
//! including its image tokens is run once; each question then forks that prefix's KV cache and
//! pays only for its own tokens. Every answer equals a fresh `generate` of the same task.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;

use crate::answer::Answer;
use crate::error::Result;
use crate::generate::{fit_context, Turn};
use crate::llm::KvCache;
use crate::model::{ImageEmbeddings, Model};
use crate::options::GenerateOptions;
use crate::prompt::Exchange;
use crate::task::Task;

/// One image prepared for many questions ([`Model::study`]). `Send + Sync`: several threads
/// may ask one study at once, each question on its own fork of the prefix.
///
/// `M` is how the study holds its model: `&Model`, or `Arc<Model>` for a study that owns it.
pub struct Study<M: Deref<Target = Model>> {
    model: M,
    image: ImageEmbeddings,
    /// The prompt's tokens before the image (`<s>[INST] <Img>`), the same for every question.
    before_image: Vec<u32>,
    /// The cache after those tokens and the image tokens, shared by every question's fork.
    prefix: Arc<KvCache>,
    /// Milliseconds spent encoding the image and running the prefix.
    prepare_ms: f64,
}

impl<M: Deref<Target = Model>> Study<M> {
    /// Encodes `image`'s embeddings' prefix: runs `<s>[INST] <Img>` and the image tokens once.
    pub fn new(model: M, image: ImageEmbeddings) -> Result<Self> {
        let t0 = Instant::now();
        let before_image = model.tokenizer().prompt("")?.before_image;
        let x = model.input_embeds_before(&image, &before_image)?;
        let mut prefix = model.llama().new_cache(x.dim(0)?)?;
        model.llama().forward(&x, &mut prefix)?;
        Ok(Self { model, image, before_image, prefix: Arc::new(prefix), prepare_ms: t0.elapsed().as_secs_f64() * 1e3 })
    }

    /// The image's embeddings.
    pub fn image(&self) -> &ImageEmbeddings {
        &self.image
    }

    /// Positions of the shared prefix (tokens before the image plus the image tokens).
    pub fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    /// Milliseconds the study took to prepare (image tokens and prefix; encoding not included
    /// when the embeddings were given).
    pub fn prepare_ms(&self) -> f64 {
        self.prepare_ms
    }

    /// Answers `task` about the study's image, as [`Model::generate`] would.
    pub fn ask(&self, task: &Task, opts: &GenerateOptions) -> Result<Answer> {
        self.ask_stream(task, opts, &mut |_| true)
    }

    /// [`Self::ask`], streaming the answer text as [`Model::generate_stream`] does.
    pub fn ask_stream(
        &self,
        task: &Task,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        self.shared().prepare(task, &[], opts)?.run(&self.model, opts, on_text)
    }

    /// The study as a request of a decode batch refers to it ([`crate::RequestImage::Study`]).
    pub fn shared(&self) -> StudyRef<'_> {
        StudyRef { model: &self.model, image: &self.image, before_image: &self.before_image, prefix: &self.prefix }
    }
}

/// A borrowed [`Study`]: what a question about it needs, whatever holds the study's model.
#[derive(Clone, Copy)]
pub struct StudyRef<'a> {
    pub(crate) model: &'a Model,
    image: &'a ImageEmbeddings,
    before_image: &'a [u32],
    prefix: &'a Arc<KvCache>,
}

impl<'a> StudyRef<'a> {
    /// The study's image embeddings.
    pub fn image(&self) -> &'a ImageEmbeddings {
        self.image
    }

    /// The question's input and its own fork of the prefix, ready to run.
    /// `history`: the conversation before the question ([`crate::prompt::TextCodec::conversation`]).
    pub(crate) fn prepare(&self, task: &Task, history: &[Exchange], opts: &GenerateOptions) -> Result<Prepared> {
        opts.validate()?;
        let (w, h) = (self.image.width, self.image.height);
        let instruction = task.instruction(w, h)?;
        let model = self.model;
        let prompt = model.tokenizer().conversation(history, &instruction)?;
        let len = prompt.before_image.len() + self.image.embeds.dim(0)? + prompt.after_image.len();
        let fit = fit_context(0, len, opts, model.llama().config().max_position_embeddings)?;
        if fit.drop > 0 || prompt.before_image != self.before_image {
            // A context limit cutting into the shared prefix: answered from scratch instead.
            return model.prepare_first_turn(self.image, &instruction, history, opts);
        }
        let cache = self.prefix.fork(len + fit.new_tokens)?;
        let x = model.embed_ids(&prompt.after_image)?;
        Ok(Prepared { x, cache, budget: fit.new_tokens, width: w, height: h })
    }
}

/// One sequence ready to run on the model that prepared it: the input still to feed, its
/// cache, and its token budget.
pub(crate) struct Prepared {
    pub(crate) x: Tensor,
    pub(crate) cache: KvCache,
    pub(crate) budget: usize,
    pub(crate) width: usize,
    pub(crate) height: usize,
}

impl Prepared {
    /// The answer's turn on `model`, not yet run.
    pub(crate) fn turn<'m>(&self, model: &'m Model, opts: &GenerateOptions) -> Turn<'m> {
        Turn::new(model.llama(), model.tokenizer(), opts, self.budget, self.width, self.height)
    }

    /// Runs the sequence alone to its answer.
    pub(crate) fn run(
        mut self,
        model: &Model,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        self.turn(model, opts).run(&self.x, &mut self.cache, on_text)
    }
}
