//! The REST API's one error type, turned into a status and a JSON body in one place (the body's
//! shape is every service's: [`telemetry::error_response`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything a request can fail with. Internal faults are logged, never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; the message names the field (`Invalid parameter 'isRead'`).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(#[from] auth::AuthError),
    /// Also the answer to a caller who is not a participant: direct conversation ids can be
    /// computed from two user ids, so any other answer would tell who talks to whom.
    #[error("no such conversation")]
    ConversationNotFound,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The `Idempotency-Key` was used by this caller for a different request.
    #[error(
        "this Idempotency-Key was used for a different request (conversation {0}); send a new key"
    )]
    IdempotencyKeyReused(uuid::Uuid),
    /// The event log did not acknowledge the command: nothing happened, the client may retry.
    #[error("the event log is unavailable: {0}")]
    LogUnavailable(#[from] writer::AppendError),
    /// The command is in the log but the projection has not caught up in time.
    #[error("the conversation was created but is not readable yet; retry shortly")]
    ProjectionLagging,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The request (its body, or the work it asked for) took longer than the deadline.
    #[error("the request took too long")]
    RequestTimeout,
    /// The caller's budget for this route is spent: 429 with `Retry-After`.
    #[error("too many requests; retry in {} s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: std::time::Duration },
}

/// `Retry-After` is in whole seconds: round up, so a client that waits that long fits.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl ApiError {
    /// `Missing '<field>' in event body` (the old server's wording).
    pub fn missing(field: &str) -> Self {
        Self::BadRequest {
            code: "missing_field",
            message: format!("Missing '{field}' in event body"),
        }
    }

    /// `Invalid parameter '<field>'`, with why.
    pub fn invalid(field: &str, why: &str) -> Self {
        Self::BadRequest {
            code: "invalid_parameter",
            message: format!("Invalid parameter '{field}': {why}"),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            // The key server being down is our fault, not the caller's token.
            Self::Unauthorized(e) if e.is_server_fault() => {
                (StatusCode::SERVICE_UNAVAILABLE, e.code())
            }
            Self::Unauthorized(e) => (StatusCode::UNAUTHORIZED, e.code()),
            Self::ConversationNotFound => (StatusCode::NOT_FOUND, "conversation_not_found"),
            Self::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            // Input is checked before an event is built: a refusal by the writer is our bug.
            Self::LogUnavailable(writer::AppendError::Refused { .. }) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            Self::IdempotencyKeyReused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::LogUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
            Self::ProjectionLagging => (StatusCode::SERVICE_UNAVAILABLE, "projection_lagging"),
            Self::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Database(e) => {
                tracing::error!(error = %e, "request failed on the database");
                "internal server error".to_owned()
            }
            Self::LogUnavailable(e @ writer::AppendError::Refused { .. }) => {
                tracing::error!(error = %e, "the request built an event the log refuses");
                "internal server error".to_owned()
            }
            Self::LogUnavailable(e) => {
                tracing::warn!(error = %e, "command not appended");
                "the event log is unavailable; nothing was changed, retry shortly".to_owned()
            }
            Self::Unauthorized(e) => {
                tracing::debug!(reason = %e, "token refused");
                format!("Unauthorized: {e}")
            }
            other => other.to_string(),
        };
        let mut response = telemetry::error_response(status, code, &message);
        if let Self::RateLimited { retry_after } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        response
    }
}
