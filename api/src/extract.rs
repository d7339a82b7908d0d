//! Request pieces every handler needs: the authenticated caller and well-named bad input.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// The caller, from a verified JWT in the `Authorization` header (raw or `Bearer`).
pub struct Caller(pub auth::UserId);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Ok(Caller(state.verifier.verify(header).await?))
    }
}

/// A conversation id from the path; a malformed one is a 400 naming the parameter.
pub fn conversation_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("conversationId", "must be a UUID"))
}
