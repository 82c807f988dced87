//! The HTTP routes: thin translations between requests and the engine's jobs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use minigpt_med::{Answer, DecodeSettings, Image, Model, Region, Task};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{Event, Finished, ImageKey, Job, Shared};
use crate::error::ApiError;
use crate::input::{self, Ask};
use crate::openai;
use crate::ServeConfig;

const VIEWER: &str = include_str!("viewer/index.html");

/// What every handler shares.
pub(crate) struct AppState {
    pub model: Arc<Model>,
    pub jobs: Sender<Job>,
    pub shared: Arc<Shared>,
    pub cfg: Arc<ServeConfig>,
    pub next_id: AtomicU64,
    /// Unix seconds at start (the model's `created`).
    pub started: u64,
    /// POST requests admitted at once (reading, parsing, decoding or waiting for an answer):
    /// bounds the memory requests hold before the engine's own queue limit applies.
    pub admission: Arc<tokio::sync::Semaphore>,
}

/// When a request arrived (set by [`guard`]).
#[derive(Clone, Copy)]
pub(crate) struct Arrived(pub Instant);

/// Undoes [`Shared::inflight`]'s count when a request's handling ends, however it ends.
struct Inflight(Arc<Shared>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

type St = State<Arc<AppState>>;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(viewer))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/answer", post(answer))
        .route("/v1/render", post(render))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        // The guard reads the body under the service's own limit and timeout.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

impl AppState {
    /// Sends a question to the engine; its events come on the returned channel.
    fn submit(
        &self,
        arrived: Instant,
        image: Arc<Image>,
        key: ImageKey,
        ask: Ask,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        // A request that arrived before the stop is still answered (within the grace period).
        let after_stop = self.shared.stop_at.lock().map_or(true, |s| s.is_some_and(|s| arrived >= s));
        if self.shared.stopping.load(Ordering::SeqCst) && after_stop {
            return Err(ApiError::stopping());
        }
        let waiting = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.cfg.max_queue {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy(self.retry_after(waiting)));
        }
        let (tx, rx) = unbounded_channel();
        let job = Job {
            image,
            key,
            task: ask.task,
            history: ask.history,
            options: ask.options,
            events: tx,
            enqueued: Instant::now(),
        };
        if self.jobs.send(job).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::stopping());
        }
        Ok(rx)
    }

    /// Seconds until a slot is likely free: the queue ahead, served `parallel` at a time at
    /// the mean answer time so far.
    fn retry_after(&self, waiting: usize) -> u64 {
        let mean = self.shared.metrics.mean_answer_seconds().max(1.0);
        let rounds = (waiting / self.cfg.parallel.max(1)) as f64 + 1.0;
        (mean * rounds).ceil().min(3600.0) as u64
    }

    /// Why a request's channel closed without an end: the service stopped before it ran, or
    /// the engine failed on it.
    fn engine_gone(&self) -> ApiError {
        if self.shared.stopping.load(Ordering::SeqCst) {
            ApiError::stopping()
        } else {
            ApiError::bad_request(
                "internal_error",
                "the engine failed on this request (a bug: please report it); retry",
            )
            .status(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        }
    }

    fn completion_id(&self) -> String {
        format!("chatcmpl-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Checks the API key and reads the body whole, under the size limit and the time limit, so no
/// handler waits on a slow client or holds more than the limit.
async fn guard(State(st): St, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let path = req.uri().path().to_owned();
    let open = path == "/health" || (path == "/" && req.method() == Method::GET);
    if let (Some(key), false) = (&st.cfg.api_key, open) {
        if !authorized(req.headers(), key) {
            st.shared.metrics.request_ended("rejected", t0.elapsed());
            return ApiError::unauthorized().into_response();
        }
    }
    if !host_allowed(&st.cfg.host, req.headers()) {
        st.shared.metrics.request_ended("rejected", t0.elapsed());
        return ApiError::bad_request(
            "invalid_host",
            "this service listens on loopback and answers requests for localhost only (the Host header names another \
             host, as a DNS-rebinding page would): use http://127.0.0.1 or http://localhost",
        )
        .status(StatusCode::FORBIDDEN, "invalid_request_error")
        .into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(Arrived(t0));
    let (_permit, _inflight) = if req.method() == Method::POST {
        let Ok(permit) = st.admission.clone().try_acquire_owned() else {
            st.shared.metrics.request_ended("rejected", t0.elapsed());
            return close(ApiError::busy(st.retry_after(st.cfg.max_queue)).into_response());
        };
        st.shared.inflight.fetch_add(1, Ordering::SeqCst);
        (Some(permit), Some(Inflight(st.shared.clone())))
    } else {
        (None, None)
    };
    let (parts, body) = req.into_parts();
    let limit = st.cfg.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        st.shared.metrics.request_ended("rejected", t0.elapsed());
        return close(ApiError::too_large(limit).into_response());
    }
    let capacity = declared.map_or(0, |n| n as usize);
    let bytes = match tokio::time::timeout(st.cfg.body_timeout, read_limited(body, limit, capacity)).await {
        Err(_) => {
            st.shared.metrics.request_ended("rejected", t0.elapsed());
            return close(ApiError::too_slow(st.cfg.body_timeout.as_secs()).into_response());
        }
        Ok(Err(e)) => {
            st.shared.metrics.request_ended("rejected", t0.elapsed());
            return close(e.into_response());
        }
        Ok(Ok(b)) => b,
    };
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let outcome = if status == StatusCode::SERVICE_UNAVAILABLE { "rejected" } else { "error" };
        st.shared.metrics.request_ended(outcome, t0.elapsed());
    }
    response
}

/// Asks the client to close the connection (its body may be unread).
fn close(mut r: Response) -> Response {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some(token) = given.strip_prefix("Bearer ").map(str::trim) else { return false };
    // Constant time in the key's length: the comparison does not tell how much matched.
    let (a, b) = (token.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the `Host` header suits the bound address: a service on loopback answers only
/// requests addressed to loopback names (a DNS-rebinding page's requests name its own host).
fn host_allowed(bound: &str, headers: &HeaderMap) -> bool {
    let loopback = matches!(bound, "127.0.0.1" | "localhost" | "::1" | "[::1]");
    if !loopback {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(name.to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "::1")
}

async fn read_limited(body: Body, limit: usize, capacity: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    // The declared length (already checked against the limit) sized once: no doubling.
    let mut buf = Vec::with_capacity(capacity.min(limit));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("invalid_body", format!("the request body could not be read: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

async fn viewer() -> Html<&'static str> {
    Html(VIEWER)
}

async fn health(State(st): St) -> Response {
    if st.shared.stopping.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting_down"}))).into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(st): St) -> Response {
    let text =
        st.shared.metrics.render(st.shared.queued.load(Ordering::SeqCst), st.shared.active.load(Ordering::SeqCst));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn models(State(st): St) -> Json<Value> {
    let info = st.model.info();
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.cfg.name,
            "object": "model",
            "created": st.started,
            "owned_by": "minigpt-med",
            "minigpt_med": {
                "engine_version": minigpt_med::VERSION,
                "llm_dtype": info.llm_dtype.to_string(),
                "vit_dtype": info.vit_dtype.to_string(),
                "image_size": st.model.image_size(),
                "context_length": info.llama.max_position_embeddings,
                "parallel": st.cfg.parallel,
            },
        }],
    }))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::bad_request("method_not_allowed", format!("{} does not take {}", req.uri().path(), req.method()))
        .status(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error")
}

/// Waits for the request's end, ignoring its text.
async fn finished(st: &AppState, rx: &mut UnboundedReceiver<Event>) -> Result<Box<Finished>, ApiError> {
    while let Some(ev) = rx.recv().await {
        if let Event::Done(f) = ev {
            return Ok(f);
        }
    }
    Err(st.engine_gone())
}

async fn chat(
    State(st): St,
    axum::Extension(Arrived(arrived)): axum::Extension<Arrived>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    // A JSON body only: a browser page may send other types across origins without asking.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(ApiError::bad_request(
            "unsupported_media_type",
            "send the chat request as JSON, with the header Content-Type: application/json",
        )
        .status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error"));
    }
    // Parsing (base64, a file:// read) is blocking work: off the async threads. The body is
    // dropped once parsed.
    let cfg = st.cfg.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        openai::parse(&body, cfg.allow_file_urls.as_deref(), cfg.max_body_bytes, cfg.max_image_pixels)
    })
    .await
    .map_err(|e| {
        ApiError::bad_request("internal_error", format!("the request parser stopped: {e}"))
            .status(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    })??;
    let mut ask = parsed.ask;
    let (image, key) = input::decode(std::mem::take(&mut ask.image), ask.image_options.clone()).await?;
    let (w, h) = (image.width(), image.height());
    let instruction = ask.task.instruction(w, h).map_err(|e| ApiError::from(e).param("task"))?;
    let mut rx = st.submit(arrived, image, key, ask)?;
    let (id, created) = (st.completion_id(), unix_now());
    let model = st.cfg.name.clone();

    if !parsed.stream {
        let f = finished(&st, &mut rx).await?;
        let a = f.result.map_err(ApiError::from)?;
        record(&st, &a, t0);
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fingerprint(),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": a.text},
                         "finish_reason": openai::finish_reason(a.stop_reason), "logprobs": null}],
            "usage": openai::usage(&a),
            "minigpt_med": openai::extension(&a, &instruction, w, h, f.queue_ms),
        }))
        .into_response());
    }

    // A request that cannot start is an error status, not an event stream. The first event
    // is `Started`, the first text, or the end (an error, or an answer that ended at once).
    let early: Vec<Event> = match rx.recv().await {
        Some(Event::Started) => Vec::new(),
        Some(Event::Done(f)) => match f.result {
            Err(e) => return Err(ApiError::from(e)),
            Ok(_) => vec![Event::Done(f)],
        },
        Some(text) => vec![text],
        None => return Err(st.engine_gone()),
    };
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": fingerprint(),
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
    };
    let (out, out_rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    let state = st.clone();
    tokio::spawn(async move {
        let send = |v: Value| out.send(SseEvent::default().data(v.to_string()));
        if send(chunk(json!({"role": "assistant", "content": ""}), None)).await.is_err() {
            return;
        }
        let mut pending = early.into_iter();
        loop {
            let ev = match pending.next() {
                Some(ev) => ev,
                None => tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => ev,
                        None => {
                            // The engine dropped the request: say so, and end the stream.
                            state.shared.metrics.request_ended("error", t0.elapsed());
                            let _ = send(state.engine_gone().body()).await;
                            let _ = out.send(SseEvent::default().data("[DONE]")).await;
                            return;
                        }
                    },
                    // The client left: dropping `rx` cancels the sequence at the next step.
                    _ = out.closed() => return,
                },
            };
            match ev {
                Event::Started => {}
                Event::Text(t) => {
                    if send(chunk(json!({"content": t}), None)).await.is_err() {
                        return;
                    }
                }
                Event::Done(f) => {
                    match f.result {
                        Ok(a) => {
                            record(&state, &a, t0);
                            let mut last = chunk(json!({}), Some(openai::finish_reason(a.stop_reason)));
                            last["minigpt_med"] = openai::extension(&a, &instruction, w, h, f.queue_ms);
                            let _ = send(last).await;
                            if parsed.include_usage {
                                let mut u = chunk(json!({}), None);
                                u["choices"] = json!([]);
                                u["usage"] = openai::usage(&a);
                                let _ = send(u).await;
                            }
                        }
                        Err(e) => {
                            state.shared.metrics.request_ended("error", t0.elapsed());
                            let _ = send(ApiError::from(e).body()).await;
                        }
                    }
                    let _ = out.send(SseEvent::default().data("[DONE]")).await;
                    return;
                }
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn record(st: &AppState, a: &Answer, t0: Instant) {
    let outcome = if a.stop_reason == minigpt_med::StopReason::Cancelled { "cancelled" } else { "ok" };
    st.shared.metrics.request_ended(outcome, t0.elapsed());
}

fn fingerprint() -> String {
    format!("minigpt-med-{}", minigpt_med::VERSION)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The fields `/v1/answer` takes besides `image`, as the CLI's flags.
const ANSWER_FIELDS: [&str; 19] = [
    "task",
    "prompt",
    "instruction",
    "box",
    "grid_box",
    "color",
    "window",
    "window_preset",
    "frame",
    "max_new_tokens",
    "preset",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repetition_penalty",
    "stop",
    "context_limit",
    "ignore_eos",
];

async fn answer(
    State(st): St,
    axum::Extension(Arrived(arrived)): axum::Extension<Arrived>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let mut form = form.map_err(|e| {
        ApiError::bad_request(
            "invalid_form",
            format!("send the image and fields as multipart/form-data (curl -F image=@file -F task=...): {e}"),
        )
    })?;
    let mut image: Option<Vec<u8>> = None;
    let mut fields: HashMap<String, Vec<String>> = HashMap::new();
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request("invalid_form", format!("the multipart form could not be read: {e}"))
    };
    while let Some(field) = form.next_field().await.map_err(bad_form)? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "image" {
            image = Some(field.bytes().await.map_err(bad_form)?.to_vec());
        } else if ANSWER_FIELDS.contains(&name.as_str()) {
            let text = field.text().await.map_err(bad_form)?;
            let held: usize = fields.values().flatten().map(String::len).sum();
            if held + text.len() > openai::MAX_TEXT_BYTES {
                return Err(ApiError::bad_request(
                    "text_too_long",
                    format!("the form's text fields hold over {} bytes: send less", openai::MAX_TEXT_BYTES),
                )
                .param(name));
            }
            fields.entry(name).or_default().push(text);
        } else {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!("unknown form field {name:?}: use image and {}", ANSWER_FIELDS.join(", ")),
            )
            .param(name));
        }
    }
    let image = image.ok_or_else(|| {
        ApiError::bad_request("missing_image", "add the image as the form's file field `image`").param("image")
    })?;
    let one = |k: &str| fields.get(k).and_then(|v| v.last()).map(String::as_str);
    fn num<T: std::str::FromStr>(k: &str, v: Option<&str>) -> Result<Option<T>, ApiError> {
        v.map(|s| s.trim().parse::<T>())
            .transpose()
            .map_err(|_| ApiError::bad_request("invalid_option", format!("{k} {v:?} is not a valid number")).param(k))
    }
    let kind = one("task").map(str::parse).transpose().map_err(|e| ApiError::from(e).param("task"))?;
    let region = Region::from_text(one("box"), one("grid_box")).map_err(|e| ApiError::from(e).param("box"))?;
    let task = Task::from_fields(kind, one("prompt"), one("instruction"), region)?;
    let image_options = input::image_options(
        one("color"),
        one("window"),
        one("window_preset"),
        num("frame", one("frame"))?,
        st.cfg.max_image_pixels,
    )?;
    let options = DecodeSettings {
        preset: one("preset").map(str::parse).transpose().map_err(|e| ApiError::from(e).param("preset"))?,
        max_new_tokens: num("max_new_tokens", one("max_new_tokens"))?,
        temperature: num("temperature", one("temperature"))?,
        top_p: num("top_p", one("top_p"))?,
        top_k: num("top_k", one("top_k"))?,
        seed: num("seed", one("seed"))?,
        repetition_penalty: num("repetition_penalty", one("repetition_penalty"))?,
        stop_strings: fields.get("stop").cloned(),
        context_limit: num("context_limit", one("context_limit"))?,
        ignore_eos: num("ignore_eos", one("ignore_eos"))?,
    }
    .resolve()?;
    let (decoded, key) = input::decode(image, image_options.clone()).await?;
    let ask = Ask { image: Vec::new(), image_options, task, history: Vec::new(), options };
    let mut rx = st.submit(arrived, decoded, key, ask)?;
    let f = finished(&st, &mut rx).await?;
    let a = f.result.map_err(ApiError::from)?;
    record(&st, &a, t0);
    let mut v = st.model.answer_json(&a);
    v["timings"]["queue_ms"] = json!(f.queue_ms);
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
struct RenderQuery {
    window: Option<String>,
    window_preset: Option<String>,
    frame: Option<usize>,
    color: Option<String>,
}

async fn render(
    State(st): St,
    query: Result<Query<RenderQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", format!("bad query: {e}")))?;
    if body.is_empty() {
        return Err(ApiError::bad_request("missing_image", "send the image bytes as the request body"));
    }
    let opts = input::image_options(
        q.color.as_deref(),
        q.window.as_deref(),
        q.window_preset.as_deref(),
        q.frame,
        st.cfg.max_image_pixels,
    )?;
    let (image, _) = input::decode(body.to_vec(), opts).await?;
    let (w, h) = (image.width(), image.height());
    let png = tokio::task::spawn_blocking(move || {
        minigpt_med::image::encode_rgb_png(w, h, &minigpt_med::draw_boxes(&image, &[]))
    })
    .await
    .map_err(|e| {
        ApiError::bad_request("internal_error", format!("rendering stopped: {e}"))
            .status(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    })??;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (header::HeaderName::from_static("x-image-width"), HeaderValue::from(w as u64)),
            (header::HeaderName::from_static("x-image-height"), HeaderValue::from(h as u64)),
            (header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("x-image-width, x-image-height")),
        ],
        png,
    )
        .into_response())
}
