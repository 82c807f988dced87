//! `minigpt-med serve`: loads the model and runs the service (`minigpt-med-serve`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use minigpt_med_serve::ServeConfig;

use crate::ModelArgs;

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind: loopback by default; 0.0.0.0 to serve the network (set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoding together (each decode step serves them all in one pass).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests waiting to start; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health and the page.
    #[arg(long, env = "MINIGPT_MED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body, in MB.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Largest image accepted, in megapixels.
    #[arg(long, default_value_t = 36.0)]
    max_image_mp: f64,
    /// Seconds a client may take to send its request body.
    #[arg(long, default_value_t = 60)]
    body_timeout_s: u64,
    /// Let `file://` image URLs read images inside this directory.
    #[arg(long, value_name = "DIR")]
    allow_file_urls: Option<PathBuf>,
    /// Open connections at most (more wait to be accepted).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Distinct images kept encoded with their prompt prefix.
    #[arg(long, default_value_t = 4)]
    studies: usize,
    /// Seconds in-flight answers may finish after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30)]
    grace_s: u64,
    /// The model's name in /v1/models and in responses.
    #[arg(long, default_value = "minigpt-med")]
    name: String,
}

pub(crate) fn serve(a: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = ServeConfig {
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        max_queue: a.max_queue,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_mb.saturating_mul(1024 * 1024),
        body_timeout: Duration::from_secs(a.body_timeout_s.max(1)),
        max_image_pixels: (a.max_image_mp.max(0.0) * 1e6) as u64,
        allow_file_urls: a.allow_file_urls,
        max_connections: a.max_connections,
        studies: a.studies,
        grace: Duration::from_secs(a.grace_s),
        name: a.name,
    };
    let model = a.model.load(false)?;
    minigpt_med_serve::serve(model, cfg)?;
    Ok(())
}
