//! Errors as a client sees them: an HTTP status and OpenAI's error object, whose message says
//! what to fix.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub kind: &'static str,
    /// A short machine-readable code (`invalid_image`, `queue_full`, ...).
    pub code: &'static str,
    /// What went wrong and what to do about it.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// Seconds after which to retry (a full queue).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A `400`: the request is wrong, as `message` says.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// The field at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error under another status and OpenAI error type.
    pub fn status(mut self, status: StatusCode, kind: &'static str) -> Self {
        self.status = status;
        self.kind = kind;
        self
    }

    /// A `401`: no or a wrong API key.
    pub fn unauthorized() -> Self {
        Self::bad_request(
            "invalid_api_key",
            "this service needs an API key: send the header `Authorization: Bearer <key>` with the key it was started with",
        )
        .status(StatusCode::UNAUTHORIZED, "authentication_error")
    }

    /// A `404` for `path`, listing the routes.
    pub fn not_found(path: &str) -> Self {
        Self::bad_request(
            "not_found",
            format!(
                "no route {path}: use POST /v1/chat/completions, POST /v1/answer, POST /v1/render, GET /v1/models, GET /health, GET /metrics or GET /"
            ),
        )
        .status(StatusCode::NOT_FOUND, "invalid_request_error")
    }

    /// A `503` for a full queue, retry after `retry_after` seconds.
    pub fn busy(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::bad_request(
                "queue_full",
                "the service is at capacity (every decode slot busy and the queue full): retry after the Retry-After seconds",
            )
            .status(StatusCode::SERVICE_UNAVAILABLE, "server_error")
        }
    }

    /// A `503` while shutting down.
    pub fn stopping() -> Self {
        Self::bad_request(
            "shutting_down",
            "the service is shutting down: send the request to another instance or retry once it is back",
        )
        .status(StatusCode::SERVICE_UNAVAILABLE, "server_error")
    }

    /// A `413`: the body is over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::bad_request(
            "body_too_large",
            format!(
                "the request body is over the limit of {} MB: send a smaller image, or start the service with a larger --max-body-mb",
                limit / (1024 * 1024)
            ),
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error")
    }

    /// A `408`: the body took over `seconds`.
    pub fn too_slow(seconds: u64) -> Self {
        Self::bad_request(
            "body_timeout",
            format!("the request body did not arrive within {seconds} s: send it at once (the connection is closed)"),
        )
        .status(StatusCode::REQUEST_TIMEOUT, "invalid_request_error")
    }

    /// The engine's error, with the status that says whose fault it is.
    pub fn engine(e: &minigpt_med::Error) -> Self {
        use minigpt_med::Error as E;
        let message = e.to_string();
        match e {
            E::Image { .. } => Self::bad_request("invalid_image", message),
            E::InvalidOption(_) => Self::bad_request("invalid_option", message),
            E::ContextOverflow { .. } => Self::bad_request("context_length_exceeded", message),
            E::Unsupported(_) => Self::bad_request("unsupported", message),
            E::Tokenizer(_) => Self::bad_request("invalid_text", message),
            E::Cancelled => Self::bad_request("cancelled", "the request was cancelled: the service is shutting down")
                .status(StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            _ => Self::bad_request("internal_error", message).status(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }

    /// OpenAI's error object.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<minigpt_med::Error> for ApiError {
    fn from(e: minigpt_med::Error) -> Self {
        Self::engine(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}
