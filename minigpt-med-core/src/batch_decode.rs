//! Batched generation: several sequences share each decode step, so one pass over the weights
//! serves them all (a decode step of one sequence is bound by reading the weights, not by
//! arithmetic). Each sequence keeps its own cache, sampler and stop rules and leaves the batch
//! when it ends; new ones may join between steps ([`DecodeBatch`], which a service drives
//! directly), and [`Model::generate_batch`] runs a list of requests through it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::answer::Answer;
use crate::error::{Error, Result};
use crate::generate::Turn;
use crate::image::Image;
use crate::llm::KvCache;
use crate::model::{ImageEmbeddings, Model};
use crate::options::GenerateOptions;
use crate::prompt::Exchange;
use crate::study::{Prepared, StudyRef};
use crate::task::Task;

/// Where a request's image comes from.
#[derive(Clone, Copy)]
pub enum RequestImage<'a> {
    /// An image to encode. The distinct images of one [`Model::generate_batch`] call (the same
    /// `&Image`) are encoded once each.
    Image(&'a Image),
    /// Embeddings already encoded ([`Model::encode_image`]).
    Embeddings(&'a ImageEmbeddings),
    /// A prepared study ([`crate::Study::shared`]): only the question's tokens are run.
    Study(StudyRef<'a>),
}

/// One question of a batch: an image, a task, and its own generation options (sampling seed,
/// stop strings and token limit are per request).
#[derive(Clone)]
pub struct Request<'a> {
    /// The image asked about.
    pub image: RequestImage<'a>,
    /// What is asked.
    pub task: Task,
    /// How the answer is generated.
    pub options: GenerateOptions,
    /// The conversation before this question (empty: a single question). The image's prefix
    /// (a study's) is reused; the earlier turns are run as part of this request's prompt.
    pub history: Vec<Exchange>,
}

impl<'a> Request<'a> {
    /// A request about `image` (encoded by the batch).
    pub fn new(image: &'a Image, task: Task, options: GenerateOptions) -> Self {
        Self { image: RequestImage::Image(image), task, options, history: Vec::new() }
    }

    /// A request about a prepared study.
    pub fn on_study(study: StudyRef<'a>, task: Task, options: GenerateOptions) -> Self {
        Self { image: RequestImage::Study(study), task, options, history: Vec::new() }
    }

    /// This request as the next question of a conversation ([`Self::history`]).
    pub fn with_history(mut self, history: Vec<Exchange>) -> Self {
        self.history = history;
        self
    }
}

/// Names a sequence of a [`DecodeBatch`], in the order they were added (0, 1, ...).
pub type SequenceId = u64;

/// The streaming callback of one sequence: each settled piece of its text; `false` cancels it.
pub type OnText<'c> = Box<dyn FnMut(&str) -> bool + Send + 'c>;

struct Sequence<'m, 'c> {
    id: SequenceId,
    turn: Turn<'m>,
    cache: KvCache,
    /// The token to feed at the next step.
    next: u32,
    on_text: OnText<'c>,
    encode_ms: f64,
}

/// Sequences decoding together. Add sequences with [`Self::add`] (their prompts run at once,
/// one by one), then call [`Self::step`] until [`Self::is_empty`]: each step feeds every
/// active sequence's last token in one pass and returns the sequences that ended.
///
/// Answers equal one-at-a-time answers: the same prompt, cache, sampler and stop rules per
/// sequence, only the matrix products shared (greedy tokens identical; logits within fp32
/// rounding of the row-batched products).
pub struct DecodeBatch<'m, 'c> {
    model: &'m Model,
    active: Vec<Sequence<'m, 'c>>,
    ended: Vec<(SequenceId, Result<Answer>)>,
    next_id: SequenceId,
    /// Sequence-steps fed so far (one per active sequence per step): the batch's token count.
    tokens: u64,
}

impl<'m, 'c> DecodeBatch<'m, 'c> {
    /// An empty batch on `model`.
    pub fn new(model: &'m Model) -> Self {
        Self { model, active: Vec::new(), ended: Vec::new(), next_id: 0, tokens: 0 }
    }

    /// Sequences still decoding.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Whether nothing is decoding and no ended sequence is waiting to be returned.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.ended.is_empty()
    }

    /// Decode tokens fed so far, over all sequences.
    pub fn tokens_fed(&self) -> u64 {
        self.tokens
    }

    /// Adds a request: encodes its image if needed and runs its prompt (so the call takes a
    /// prefill's time). `on_text` receives its text as it settles. A request that cannot start
    /// (a bad task, an image the model cannot take, no room in the context) is an error here
    /// and the batch is unchanged; a sequence that ends at once is returned by the next
    /// [`Self::step`].
    pub fn add(&mut self, request: &Request<'_>, on_text: OnText<'c>) -> Result<SequenceId> {
        let (prepared, encode_ms) = match request.image {
            RequestImage::Image(image) => {
                let t0 = Instant::now();
                let emb = self.model.encode_image(image)?;
                let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
                (self.prepare_embeddings(&emb, request)?, encode_ms)
            }
            RequestImage::Embeddings(emb) => (self.prepare_embeddings(emb, request)?, 0.0),
            RequestImage::Study(study) => {
                if !std::ptr::eq(study.model, self.model) {
                    return Err(Error::InvalidOption(
                        "the study was prepared by another model than the batch's: prepare it with this model".into(),
                    ));
                }
                (study.prepare(&request.task, &request.history, &request.options)?, 0.0)
            }
        };
        self.start(prepared, &request.options, on_text, encode_ms)
    }

    fn prepare_embeddings(&self, emb: &ImageEmbeddings, r: &Request<'_>) -> Result<Prepared> {
        r.options.validate()?;
        let instruction = r.task.instruction(emb.width, emb.height)?;
        self.model.prepare_first_turn(emb, &instruction, &r.history, &r.options)
    }

    fn start(
        &mut self,
        p: Prepared,
        opts: &GenerateOptions,
        mut on_text: OnText<'c>,
        encode_ms: f64,
    ) -> Result<SequenceId> {
        let mut turn = p.turn(self.model, opts);
        let mut cache = p.cache;
        let logits = turn.prefill(&p.x, &mut cache)?.to_vec1::<f32>()?;
        let id = self.next_id;
        self.next_id += 1;
        match turn.step(&logits, &mut *on_text) {
            Ok(Some(next)) => self.active.push(Sequence { id, turn, cache, next, on_text, encode_ms }),
            Ok(None) => self.ended.push((id, finish(&mut turn, &mut *on_text, encode_ms))),
            Err(e) => self.ended.push((id, Err(e))),
        }
        Ok(id)
    }

    /// Cancels sequence `id` (its answer, so far, says [`crate::StopReason::Cancelled`] and is
    /// returned by the next [`Self::step`]). Returns whether it was active.
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        let Some(i) = self.active.iter().position(|s| s.id == id) else { return false };
        let mut s = self.active.remove(i);
        s.turn.cancel();
        self.ended.push((id, finish(&mut s.turn, &mut *s.on_text, s.encode_ms)));
        true
    }

    /// Cancels every active sequence ([`Self::cancel`]).
    pub fn cancel_all(&mut self) {
        let ids: Vec<SequenceId> = self.active.iter().map(|s| s.id).collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// One decode step of every active sequence; returns the sequences that ended since the
    /// last call, with their answers.
    pub fn step(&mut self) -> Vec<(SequenceId, Result<Answer>)> {
        if !self.active.is_empty() {
            let logits = self.forward();
            self.tokens += self.active.len() as u64;
            let mut still = Vec::with_capacity(self.active.len());
            for (mut s, logits) in std::mem::take(&mut self.active).into_iter().zip(logits) {
                match logits.and_then(|l| s.turn.step(&l, &mut *s.on_text)) {
                    Ok(Some(next)) => {
                        s.next = next;
                        still.push(s);
                    }
                    Ok(None) => self.ended.push((s.id, finish(&mut s.turn, &mut *s.on_text, s.encode_ms))),
                    Err(e) => self.ended.push((s.id, Err(e))),
                }
            }
            self.active = still;
        }
        std::mem::take(&mut self.ended)
    }

    /// The logits `[vocab]` of each active sequence after feeding its next token: one pass for
    /// all; should that fail, each sequence alone, so one bad sequence fails only itself.
    fn forward(&mut self) -> Vec<Result<Vec<f32>>> {
        let llama = self.model.llama();
        let ids: Vec<u32> = self.active.iter().map(|s| s.next).collect();
        let together = llama.embed(&ids).and_then(|x| {
            let mut caches: Vec<&mut KvCache> = self.active.iter_mut().map(|s| &mut s.cache).collect();
            llama.forward_rows(&x, &mut caches)
        });
        match together.and_then(|l| Ok(l.to_vec2::<f32>()?)) {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(_) => self
                .active
                .iter_mut()
                .map(|s| {
                    let x = llama.embed(&[s.next])?;
                    Ok(llama.forward(&x, &mut s.cache)?.to_vec1::<f32>()?)
                })
                .collect(),
        }
    }
}

fn finish(turn: &mut Turn<'_>, on_text: &mut dyn FnMut(&str) -> bool, encode_ms: f64) -> Result<Answer> {
    let mut answer = turn.finish(on_text)?;
    answer.timings.encode_ms = encode_ms;
    Ok(answer)
}

impl Model {
    /// Answers every request, decoding them together: each decode step is one pass over the
    /// weights for all sequences still running. Returns one result per request, in order; a
    /// request that fails (a bad task, an image the model cannot take) fails alone.
    ///
    /// All requests decode at once; [`Self::generate_batch_each`] bounds how many.
    pub fn generate_batch(&self, requests: &[Request<'_>]) -> Vec<Result<Answer>> {
        let mut out: Vec<Option<Result<Answer>>> = (0..requests.len()).map(|_| None).collect();
        self.generate_batch_each(requests, requests.len().max(1), None, |i, r| out[i] = Some(r));
        out.into_iter().map(|r| r.expect("every request is answered once")).collect()
    }

    /// [`Self::generate_batch`] with at most `max_active` sequences decoding at once (each
    /// holds a KV cache); the next request joins as soon as one ends. `on_done(i, result)` is
    /// called as request `i` ends, in the order they end. The distinct images of the requests
    /// (the same `&Image`) are encoded once each, when their first request starts.
    ///
    /// Once `cancel` is set (from another thread: Ctrl-C, a shutdown), the running sequences
    /// end at their next step with [`crate::StopReason::Cancelled`] and the requests not yet
    /// started end with [`Error::Cancelled`].
    pub fn generate_batch_each(
        &self,
        requests: &[Request<'_>],
        max_active: usize,
        cancel: Option<&AtomicBool>,
        mut on_done: impl FnMut(usize, Result<Answer>),
    ) {
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        let max_active = max_active.max(1);
        let mut batch = DecodeBatch::new(self);
        let mut queue: VecDeque<usize> = (0..requests.len()).collect();
        // The embeddings of each distinct image, by address, kept while a request needs them:
        // `uses` counts each image's requests not yet started.
        let mut encoded: Vec<(*const Image, ImageEmbeddings, f64)> = Vec::new();
        let mut uses: std::collections::HashMap<*const Image, usize> = std::collections::HashMap::new();
        for r in requests {
            if let RequestImage::Image(image) = r.image {
                *uses.entry(image as *const Image).or_default() += 1;
            }
        }
        // Each sequence's request, and the encode time it paid (its image's first request).
        let mut slot_of: Vec<(SequenceId, usize, f64)> = Vec::new();
        loop {
            if cancelled() {
                for i in queue.drain(..) {
                    on_done(i, Err(Error::Cancelled));
                }
                batch.cancel_all();
            }
            while batch.active() < max_active {
                let Some(i) = queue.pop_front() else { break };
                let r = &requests[i];
                let started = match r.image {
                    RequestImage::Image(image) => {
                        let key = image as *const Image;
                        let left = uses.get_mut(&key).map(|n| {
                            *n -= 1;
                            *n
                        });
                        let started = self.encoded(&mut encoded, image).and_then(|(emb, ms)| {
                            let req = Request { image: RequestImage::Embeddings(&emb), ..r.clone() };
                            let id = batch.add(&req, Box::new(|_| true))?;
                            Ok((id, Some(ms)))
                        });
                        if left == Some(0) {
                            // No queued request needs these embeddings any more.
                            encoded.retain(|(p, ..)| !std::ptr::eq(*p, key));
                        }
                        started
                    }
                    _ => batch.add(r, Box::new(|_| true)).map(|id| (id, None)),
                };
                match started {
                    Ok((id, ms)) => slot_of.push((id, i, ms.unwrap_or(0.0))),
                    Err(e) => on_done(i, Err(e)),
                }
            }
            if batch.is_empty() {
                break;
            }
            for (id, result) in batch.step() {
                let k = slot_of.iter().position(|&(s, ..)| s == id).expect("every sequence has a slot");
                let (_, i, encode_ms) = slot_of.swap_remove(k);
                on_done(
                    i,
                    result.map(|mut a| {
                        a.timings.encode_ms = encode_ms;
                        a
                    }),
                );
            }
        }
    }

    /// The embeddings of `image`, encoded once per batch, and the milliseconds this call spent
    /// encoding it (0 when it was already encoded).
    fn encoded(
        &self,
        cache: &mut Vec<(*const Image, ImageEmbeddings, f64)>,
        image: &Image,
    ) -> Result<(ImageEmbeddings, f64)> {
        if let Some((_, emb, _)) = cache.iter().find(|(p, ..)| std::ptr::eq(*p, image)) {
            return Ok((emb.clone(), 0.0));
        }
        let t0 = Instant::now();
        let emb = self.encode_image(image)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        cache.push((image as *const Image, emb.clone(), ms));
        Ok((emb, ms))
    }
}
