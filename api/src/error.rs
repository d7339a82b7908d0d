//! The REST API's one error type, turned into a status and a JSON body in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything a request can fail with. Internal faults are logged, never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; the message names the field (`Invalid parameter 'isRead'`).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(#[from] auth::AuthError),
    #[error("the caller is not a participant of this conversation")]
    NotParticipant,
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
            Self::NotParticipant => (StatusCode::FORBIDDEN, "not_participant"),
            Self::ConversationNotFound => (StatusCode::NOT_FOUND, "conversation_not_found"),
            Self::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::IdempotencyKeyReused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::LogUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
            Self::ProjectionLagging => (StatusCode::SERVICE_UNAVAILABLE, "projection_lagging"),
            Self::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
        (
            status,
            Json(serde_json::json!({ "error": code, "message": message })),
        )
            .into_response()
    }
}
