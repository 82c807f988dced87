//! # minigpt-med-serve
//!
//! The MiniGPT-Med HTTP service behind `minigpt-med serve`: OpenAI-compatible
//! `/v1/chat/completions` (with `image_url` parts), the native `/v1/answer`, `/v1/models`,
//! `/health`, Prometheus `/metrics`, and a viewer page at `/`. One engine thread decodes every
//! request together (continuous batching on [`minigpt_med::DecodeBatch`]); the routes only
//! translate. The API is described in `docs/serve.md`.
//!
//! ```no_run
//! use minigpt_med::{LoadOptions, Model};
//! use minigpt_med_serve::{serve, ServeConfig};
//!
//! let model = Model::load_dir("tests/fixtures/tiny", &LoadOptions::default())?;
//! serve(model, ServeConfig { port: 8080, ..ServeConfig::default() })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod engine;
mod error;
mod input;
mod listener;
mod metrics;
mod openai;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use minigpt_med::Model;

pub use error::ApiError;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (default `127.0.0.1`: loopback only).
    pub host: String,
    /// Port (0: any free port, printed at start).
    pub port: u16,
    /// Requests decoding together at most.
    pub parallel: usize,
    /// Requests waiting to start at most; one more is answered `503` with `Retry-After`.
    pub max_queue: usize,
    /// When set, every route but `/health` and the viewer page needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body in bytes (`413` beyond).
    pub max_body_bytes: usize,
    /// Longest a client may take to send its body (`408` beyond).
    pub body_timeout: Duration,
    /// Largest image accepted, in pixels (`400` beyond): a decoded image waits in memory with its
    /// request, so this bounds what a queue of requests holds.
    pub max_image_pixels: u64,
    /// A directory `file://` image URLs may read from; `None`: `file://` refused.
    pub allow_file_urls: Option<PathBuf>,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// Distinct images kept encoded with their prompt prefix (each holds a KV cache of the
    /// prefix: ~290 MB for the real model in f32).
    pub studies: usize,
    /// How long in-flight answers may finish after SIGTERM before they are cancelled.
    pub grace: Duration,
    /// The model's name in `/v1/models` and in responses.
    pub name: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            max_queue: 64,
            api_key: None,
            max_body_bytes: 32 * 1024 * 1024,
            body_timeout: Duration::from_secs(60),
            max_image_pixels: 36_000_000,
            allow_file_urls: None,
            max_connections: 1024,
            studies: 4,
            grace: Duration::from_secs(30),
            name: "minigpt-med".into(),
        }
    }
}

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}. Choose another --port, or stop what holds it")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is unusable.
    #[error("invalid option: {0}")]
    Config(String),
    /// The runtime or a thread could not start, or the listener failed.
    #[error("the service failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the service on `model` until SIGTERM or Ctrl-C, then stops accepting, lets in-flight
/// answers finish for [`ServeConfig::grace`], cancels the rest and returns.
pub fn serve(model: Model, cfg: ServeConfig) -> Result<(), ServeError> {
    serve_with(model, cfg, |addr| eprintln!("minigpt-med serve: listening on http://{addr}"))
}

/// [`serve`], calling `on_listening` with the bound address once it accepts connections.
pub fn serve_with(model: Model, mut cfg: ServeConfig, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    if cfg.parallel == 0 {
        return Err(ServeError::Config("parallel must be at least 1".into()));
    }
    if cfg.max_queue == 0 {
        return Err(ServeError::Config(
            "max_queue must be at least 1 (a request waits in the queue until the engine takes it)".into(),
        ));
    }
    // A grace period past a day is taken as "finish everything" without overflowing a clock.
    cfg.grace = cfg.grace.min(Duration::from_secs(86_400));
    if let Some(dir) = &cfg.allow_file_urls {
        let real = dir.canonicalize().map_err(|e| {
            ServeError::Config(format!("--allow-file-urls {}: {e}; give an existing directory", dir.display()))
        })?;
        if !real.is_dir() {
            return Err(ServeError::Config(format!("--allow-file-urls {}: not a directory", dir.display())));
        }
        cfg.allow_file_urls = Some(real);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(model, cfg, on_listening))
}

async fn run(model: Model, cfg: ServeConfig, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr()?;
    let model = Arc::new(model);
    let shared = Arc::new(engine::Shared::new());
    let (jobs, rx) = std::sync::mpsc::channel();
    let engine_cfg = engine::EngineConfig { parallel: cfg.parallel, studies: cfg.studies };
    let engine = {
        let (model, shared) = (model.clone(), shared.clone());
        std::thread::Builder::new()
            .name("minigpt-med-engine".into())
            .spawn(move || engine::run(model, rx, shared, engine_cfg))?
    };
    let (grace, max_connections) = (cfg.grace, cfg.max_connections);
    // Requests admitted at once: every decode slot and queue place, and a few being read.
    let admission = Arc::new(tokio::sync::Semaphore::new(cfg.parallel + cfg.max_queue + 8));
    let state = Arc::new(routes::AppState {
        admission,
        model,
        jobs,
        shared: shared.clone(),
        cfg: Arc::new(cfg),
        next_id: AtomicU64::new(1),
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    let app = routes::router(state.clone());
    // Installed before the address is announced: a SIGTERM right after it is a clean stop.
    let signal = stop_signal()?;
    drop(state);
    on_listening(local);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = {
        let shared = shared.clone();
        async move {
            signal.await;
            eprintln!(
                "minigpt-med serve: stopping: no new requests; in-flight answers have {} s to finish",
                grace.as_secs()
            );
            if let Ok(mut s) = shared.stop_at.lock() {
                *s = Some(Instant::now());
            }
            shared.stopping.store(true, Ordering::SeqCst);
            if let Ok(mut d) = shared.deadline.lock() {
                *d = Some(Instant::now() + grace);
            }
            let _ = stop_tx.send(true);
        }
    };
    let server = axum::serve(listener::Limited::new(listener, max_connections), app).with_graceful_shutdown(stopping);
    // Connections still open well after the grace period (a client that never reads) do not
    // keep the process alive.
    let mut stop_rx2 = stop_rx.clone();
    let hard_stop = async move {
        let _ = stop_rx2.wait_for(|s| *s).await;
        tokio::time::sleep(grace + Duration::from_secs(5)).await;
    };
    tokio::select! {
        r = server => r?,
        _ = hard_stop => eprintln!("minigpt-med serve: connections still open after the grace period: closing them"),
    }
    drop(stop_rx);
    // Every sender is gone once the router is: the engine ends its work and returns.
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    eprintln!("minigpt-med serve: stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C, its handlers installed now.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
