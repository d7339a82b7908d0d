//! The JSON body of every error answer, from every service (the client contract's "Errors"):
//! `{"error": "<stable_code>", "message": "<human text>"}`, in that order.
//!
//! The REST API's `ApiError` and the WebSocket edge's refusals before the upgrade both answer
//! through [`error_response`], so the two can never drift apart.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer's body. No client reads it; operators and tests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    /// A stable snake_case code (`conversation_not_found`, `expired`, …).
    pub error: &'a str,
    /// What happened, for a person; never internal detail.
    pub message: &'a str,
}

/// `status` with an [`ErrorBody`] as `application/json`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code,
            message,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_is_code_then_message() {
        let response = error_response(StatusCode::UNAUTHORIZED, "expired", "invalid \"token\"");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        // Byte for byte what `serde_json::json!({"error": …, "message": …})` wrote before.
        assert_eq!(
            &body[..],
            br#"{"error":"expired","message":"invalid \"token\""}"#
        );
    }
}
