//! What every route takes in: image bytes from a data URI or an allowed file, the options the
//! image is read with, and the image itself, decoded off the async threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use minigpt_med::{ColorMode, Exchange, GenerateOptions, Image, ImageOptions, Task, Window, WindowPreset};
use sha2::{Digest, Sha256};

use crate::engine::ImageKey;
use crate::error::ApiError;

/// One question, as every route reduces its request to it.
pub(crate) struct Ask {
    pub image: Vec<u8>,
    pub image_options: ImageOptions,
    pub task: Task,
    pub history: Vec<Exchange>,
    pub options: GenerateOptions,
}

/// The image options of a request's text fields (`color`, `window` as `C,W`, `window_preset`,
/// `frame`), each checked by the core's parser; images over `max_pixels` are refused.
pub(crate) fn image_options(
    color: Option<&str>,
    window: Option<&str>,
    preset: Option<&str>,
    frame: Option<usize>,
    max_pixels: u64,
) -> Result<ImageOptions, ApiError> {
    let color = match color {
        Some(c) => c.parse::<ColorMode>().map_err(|e| ApiError::from(e).param("color"))?,
        None => ColorMode::Gray,
    };
    let window = window.map(|w| w.parse::<Window>()).transpose().map_err(|e| ApiError::from(e).param("window"))?;
    let preset =
        preset.map(|p| p.parse::<WindowPreset>()).transpose().map_err(|e| ApiError::from(e).param("window_preset"))?;
    if window.is_some() && preset.is_some() {
        return Err(
            ApiError::bad_request("invalid_option", "give a window or a window preset, not both").param("window")
        );
    }
    Ok(ImageOptions { window, preset, frame, color, max_pixels, ..ImageOptions::default() })
}

/// The bytes an `image_url` names: a `data:` URI (base64), or a `file://` path inside
/// `allowed` when the service was started with `--allow-file-urls`.
pub(crate) fn url_bytes(url: &str, allowed: Option<&Path>, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_image_url", m).param("image_url");
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad("the data URI has no comma: write data:<type>;base64,<data>".into()))?;
        if !meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
            return Err(bad("the data URI is not base64: write data:<type>;base64,<data>".into()));
        }
        // Base64 may be wrapped; the decoder takes no whitespace.
        let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| bad(format!("the data URI's base64 does not decode: {e}")));
    }
    if let Some(path) = url.strip_prefix("file://") {
        let Some(root) = allowed else {
            return Err(bad(
                "file:// URLs are off: send the image as a data URI, or start the service with --allow-file-urls DIR"
                    .into(),
            ));
        };
        return read_allowed(Path::new(path), root, max_bytes).map_err(bad);
    }
    let scheme = url.split(':').next().unwrap_or("");
    Err(bad(format!(
        "image URLs of scheme {scheme:?} are not fetched (the service reads nothing from the network): send the image as a data:<type>;base64,<data> URI"
    )))
}

fn read_allowed(path: &Path, root: &Path, max_bytes: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    // One answer for every path the service may not read, whether or not it exists, so
    // clients learn nothing about the rest of the disk.
    let refused = || format!("{} is not a readable file inside the directory the service may read", path.display());
    let real: PathBuf = path.canonicalize().map_err(|_| refused())?;
    if !real.starts_with(root) {
        return Err(refused());
    }
    // A regular file only: opening a FIFO blocks, a device may never end. Checked before the
    // open and again on the open file.
    if !std::fs::metadata(&real).map_err(|_| refused())?.is_file() {
        return Err(refused());
    }
    let mut file = std::fs::File::open(&real).map_err(|_| refused())?;
    if !file.metadata().map_err(|_| refused())?.is_file() {
        return Err(refused());
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > max_bytes {
        return Err(format!("{} is over the service's limit of {max_bytes} bytes", path.display()));
    }
    Ok(bytes)
}

/// Decodes `bytes` with `opts` on a blocking thread; returns the image and its key.
pub(crate) async fn decode(bytes: Vec<u8>, opts: ImageOptions) -> Result<(Arc<Image>, ImageKey), ApiError> {
    tokio::task::spawn_blocking(move || {
        let image = Image::from_bytes_with(&bytes, &opts).map_err(|e| ApiError::from(e).param("image"))?;
        let mut h = Sha256::new();
        h.update(&bytes);
        // The options decide the pixels the model reads, so they are part of the identity.
        h.update(format!("{:?}|{:?}|{:?}|{:?}", opts.color, opts.window, opts.preset, opts.frame).as_bytes());
        Ok((Arc::new(image), h.finalize().into()))
    })
    .await
    .map_err(|e| {
        ApiError::bad_request("internal_error", format!("the image decoder stopped: {e}"))
            .status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    })?
}
