//! The service's Prometheus metrics (`GET /metrics`).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

/// Decode steps the tokens-per-second gauge averages over.
const RATE_WINDOW: usize = 32;

/// Latency buckets in seconds: a tiny model answers in milliseconds, a 7B on a CPU in minutes.
const LATENCY_BUCKETS: [f64; 14] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

pub(crate) struct Metrics {
    registry: Registry,
    queue: Gauge,
    active: Gauge,
    studies: Gauge,
    requests: Family<Status, Counter>,
    generated: Counter,
    prompt: Counter,
    rate: Gauge<f64, AtomicU64>,
    latency: Histogram,
    queue_wait: Histogram,
    steps: Mutex<VecDeque<(usize, f64)>>,
    /// Answers and their total seconds, for the mean a full queue's `Retry-After` uses.
    answered: Mutex<(u64, f64)>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            queue: Gauge::default(),
            active: Gauge::default(),
            studies: Gauge::default(),
            requests: Family::default(),
            generated: Counter::default(),
            prompt: Counter::default(),
            rate: Gauge::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            queue_wait: Histogram::new(LATENCY_BUCKETS),
            steps: Mutex::new(VecDeque::new()),
            answered: Mutex::new((0, 0.0)),
            registry: Registry::default(),
        };
        registry.register("minigpt_med_queue_length", "Requests waiting to start", m.queue.clone());
        registry.register("minigpt_med_active_sequences", "Sequences decoding together", m.active.clone());
        registry.register(
            "minigpt_med_studies_cached",
            "Images kept encoded with their prompt prefix",
            m.studies.clone(),
        );
        registry.register("minigpt_med_requests", "Requests answered, by outcome", m.requests.clone());
        registry.register("minigpt_med_generated_tokens", "Tokens generated", m.generated.clone());
        registry.register(
            "minigpt_med_prompt_tokens",
            "Prompt positions of the answers (image tokens, reused prefixes and earlier turns included)",
            m.prompt.clone(),
        );
        registry.register(
            "minigpt_med_tokens_per_second",
            "Decode rate over the last decode steps, all sequences together",
            m.rate.clone(),
        );
        registry.register(
            "minigpt_med_request_duration_seconds",
            "Time from a request's arrival to its answer",
            m.latency.clone(),
        );
        registry.register("minigpt_med_queue_wait_seconds", "Time requests waited to start", m.queue_wait.clone());
        Self { registry, ..m }
    }

    /// A request ended with `status` (`ok`, `error`, `cancelled`, `rejected`) after `elapsed`.
    pub fn request_ended(&self, status: &str, elapsed: Duration) {
        self.requests.get_or_create(&Status { status: status.to_owned() }).inc();
        if status == "ok" {
            self.latency.observe(elapsed.as_secs_f64());
            if let Ok(mut a) = self.answered.lock() {
                a.0 += 1;
                a.1 += elapsed.as_secs_f64();
            }
        }
    }

    /// Mean seconds of the answers so far (0 before the first).
    pub fn mean_answer_seconds(&self) -> f64 {
        self.answered.lock().map_or(0.0, |a| if a.0 == 0 { 0.0 } else { a.1 / a.0 as f64 })
    }

    pub fn generated(&self, tokens: usize) {
        self.generated.inc_by(tokens as u64);
    }

    pub fn prompt_tokens(&self, tokens: usize) {
        self.prompt.inc_by(tokens as u64);
    }

    pub fn queue_wait(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    pub fn set_studies(&self, n: usize) {
        self.studies.set(n as i64);
    }

    /// One decode step fed `tokens` sequences in `elapsed`.
    pub fn decode_step(&self, tokens: usize, elapsed: Duration) {
        let Ok(mut steps) = self.steps.lock() else { return };
        steps.push_back((tokens, elapsed.as_secs_f64()));
        if steps.len() > RATE_WINDOW {
            steps.pop_front();
        }
        let (t, s) = steps.iter().fold((0usize, 0f64), |(t, s), &(a, b)| (t + a, s + b));
        self.rate.set(if s > 0.0 { t as f64 / s } else { 0.0 });
    }

    /// The Prometheus text exposition, with the queue and batch sizes as of now.
    pub fn render(&self, queued: usize, active: usize) -> String {
        self.queue.set(queued as i64);
        self.active.set(active as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
