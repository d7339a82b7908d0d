//! Request pieces every handler needs: the authenticated caller and well-named bad input.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
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

/// The conversation id of a `/conversations/{conversationId}…` path; a missing or malformed one
/// is a 400 naming the parameter.
pub fn conversation_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let malformed = || ApiError::invalid("conversationId", "must be a UUID");
    let Path(raw) = path.map_err(|_| malformed())?;
    Uuid::parse_str(&raw).map_err(|_| malformed())
}
