//! The engine thread: one [`DecodeBatch`] driven step by step. Requests join between steps (up
//! to `parallel` decoding at once), each streams its text to its own channel, and one whose
//! client has gone (its receiver dropped) is cancelled at the next step. Images are kept as
//! studies (encoded once, their prompt prefix run once) for the next requests about them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minigpt_med::{
    Answer, DecodeBatch, Error, Exchange, GenerateOptions, Image, Model, OnText, Request, SequenceId, Study, Task,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// The identity of an image as the model reads it: the sha256 of its bytes and of the options
/// it was decoded with.
pub(crate) type ImageKey = [u8; 32];

/// One request for the engine.
pub(crate) struct Job {
    pub image: Arc<Image>,
    pub key: ImageKey,
    pub task: Task,
    pub history: Vec<Exchange>,
    pub options: GenerateOptions,
    pub events: UnboundedSender<Event>,
    pub enqueued: Instant,
}

/// What a request's channel receives: `Started` (or at once `Done` with the error that kept
/// it from starting), the text as it settles, then `Done`.
pub(crate) enum Event {
    Started,
    Text(String),
    Done(Box<Finished>),
}

/// A request's end.
pub(crate) struct Finished {
    pub result: Result<Answer, Error>,
    /// Milliseconds spent queued before it started.
    pub queue_ms: f64,
}

/// State shared by the engine and the HTTP handlers.
pub(crate) struct Shared {
    /// Requests sent to the engine and not yet started.
    pub queued: AtomicUsize,
    /// Sequences decoding.
    pub active: AtomicUsize,
    /// Set when shutting down: no new requests are taken.
    pub stopping: AtomicBool,
    /// After this instant running answers are cancelled and queued ones refused.
    pub deadline: Mutex<Option<Instant>>,
    /// When the stop began: requests that arrived before it are still taken.
    pub stop_at: Mutex<Option<Instant>>,
    /// POST requests being read, parsed or waiting to be sent to the engine.
    pub inflight: AtomicUsize,
    pub metrics: Metrics,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            deadline: Mutex::new(None),
            stop_at: Mutex::new(None),
            inflight: AtomicUsize::new(0),
            metrics: Metrics::new(),
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.lock().map(|d| d.is_some_and(|d| Instant::now() >= d)).unwrap_or(true)
    }
}

struct Running {
    events: UnboundedSender<Event>,
    started: Instant,
    queue_ms: f64,
    encode_ms: f64,
}

/// How the engine runs.
pub(crate) struct EngineConfig {
    pub parallel: usize,
    pub studies: usize,
}

/// Runs the engine until `jobs` is closed and every request has ended. Should the engine
/// panic (a bug, never an input: inputs are checked), the requests in flight fail, their
/// channels closing, and the engine starts again for the next ones.
pub(crate) fn run(model: Arc<Model>, jobs: Receiver<Job>, shared: Arc<Shared>, cfg: EngineConfig) {
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve_jobs(&model, &jobs, &shared, &cfg)));
        match run {
            Ok(()) => return,
            Err(_) => {
                eprintln!("minigpt-med serve: the engine failed (a bug: please report it); the requests in flight fail, the service goes on");
                shared.active.store(0, Ordering::SeqCst);
            }
        }
    }
}

fn serve_jobs(model: &Model, jobs: &Receiver<Job>, shared: &Shared, cfg: &EngineConfig) {
    // Most recently used last.
    let mut studies: Vec<(ImageKey, Study<&Model>)> = Vec::new();
    let mut batch = DecodeBatch::new(model);
    let mut running: HashMap<SequenceId, Running> = HashMap::new();
    let mut closed = false;
    loop {
        while batch.active() < cfg.parallel.max(1) && !closed {
            let next = if batch.is_empty() {
                match jobs.recv_timeout(Duration::from_millis(50)) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        None
                    }
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        None
                    }
                }
            };
            let Some(job) = next else { break };
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
            shared.metrics.queue_wait(queue_ms / 1e3);
            if shared.past_deadline() {
                done(&job.events, Err(Error::Cancelled), queue_ms);
                continue;
            }
            if job.events.is_closed() {
                // Its client left while it waited.
                shared.metrics.request_ended("cancelled", job.enqueued.elapsed());
                continue;
            }
            admit(model, &mut batch, &mut studies, &mut running, job, queue_ms, cfg);
        }
        if shared.past_deadline() {
            batch.cancel_all();
        }
        let gone: Vec<SequenceId> = running.iter().filter(|(_, r)| r.events.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            batch.cancel(id);
        }
        shared.active.store(batch.active(), Ordering::SeqCst);
        shared.metrics.set_studies(studies.len());
        if batch.is_empty() {
            // Stopping with nothing running or waiting: done (requests sent after this find
            // the channel closed and are answered 503).
            let idle = shared.queued.load(Ordering::SeqCst) == 0 && shared.inflight.load(Ordering::SeqCst) == 0;
            if closed
                || (shared.stopping.load(Ordering::SeqCst) && idle)
                || (shared.past_deadline() && shared.stopping.load(Ordering::SeqCst))
            {
                break;
            }
            continue;
        }
        let n = batch.active();
        let t0 = Instant::now();
        let ended = batch.step();
        if n > 0 {
            shared.metrics.decode_step(n, t0.elapsed());
        }
        for (id, result) in ended {
            let Some(r) = running.remove(&id) else { continue };
            if r.events.is_closed() {
                // Its client left (the answer was cancelled at a step or by its text callback):
                // nobody receives it, so it is counted here.
                shared.metrics.request_ended("cancelled", r.started.elapsed());
            }
            let result = result.map(|mut a| {
                a.timings.encode_ms = r.encode_ms;
                shared.metrics.generated(a.token_ids.len());
                shared.metrics.prompt_tokens(a.prompt_tokens);
                a
            });
            done(&r.events, result, r.queue_ms);
        }
        shared.active.store(batch.active(), Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
fn admit<'m>(
    model: &'m Model,
    batch: &mut DecodeBatch<'m, 'static>,
    studies: &mut Vec<(ImageKey, Study<&'m Model>)>,
    running: &mut HashMap<SequenceId, Running>,
    job: Job,
    queue_ms: f64,
    cfg: &EngineConfig,
) {
    let mut encode_ms = 0.0;
    let index = match studies.iter().position(|(k, _)| *k == job.key) {
        Some(i) => {
            let s = studies.remove(i);
            studies.push(s);
            studies.len() - 1
        }
        None => {
            let t0 = Instant::now();
            match model.study(&job.image) {
                Ok(study) => {
                    encode_ms = t0.elapsed().as_secs_f64() * 1e3;
                    if studies.len() >= cfg.studies.max(1) {
                        studies.remove(0);
                    }
                    studies.push((job.key, study));
                    studies.len() - 1
                }
                Err(e) => return done(&job.events, Err(e), queue_ms),
            }
        }
    };
    let study = &studies[index].1;
    let request = Request::on_study(study.shared(), job.task, job.options).with_history(job.history);
    let tx = job.events.clone();
    let on_text: OnText<'static> = Box::new(move |piece: &str| tx.send(Event::Text(piece.to_owned())).is_ok());
    match batch.add(&request, on_text) {
        Ok(id) => {
            // The first piece of text may already be in the channel (it settles as the prompt
            // runs): a handler takes text as well as `Started` to mean the request started.
            let _ = job.events.send(Event::Started);
            running.insert(id, Running { events: job.events, started: job.enqueued, queue_ms, encode_ms });
        }
        Err(e) => done(&job.events, Err(e), queue_ms),
    }
}

fn done(events: &UnboundedSender<Event>, result: Result<Answer, Error>, queue_ms: f64) {
    let _ = events.send(Event::Done(Box::new(Finished { result, queue_ms })));
}
