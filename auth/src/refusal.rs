//! Why a token was refused: [`AuthError`], with a stable code for responses, logs and metrics.
//! Messages never contain the token.

use jsonwebtoken::errors::ErrorKind;

use crate::MAX_USER_ID_CHARS;

/// Why a token was refused. Messages never contain the token.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("RS256 tokens are not accepted: no key set (CHAT_JWKS_URL) is configured")]
    KeySetNotConfigured,
    #[error("bad token signature")]
    BadSignature,
    #[error("token has no exp claim")]
    MissingExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("wrong token issuer")]
    WrongIssuer,
    #[error("wrong token audience")]
    WrongAudience,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("user claim {0:?} is missing")]
    MissingUserClaim(String),
    #[error("user claim {0:?} is not a string")]
    InvalidUserClaim(String),
    #[error("user claim {0:?} is empty")]
    EmptyUserClaim(String),
    #[error("user claim {0:?} is longer than {MAX_USER_ID_CHARS} characters")]
    UserClaimTooLong(String),
    #[error("user claim {0:?} contains U+0000")]
    UserClaimNul(String),
    #[error("the key set cannot be fetched")]
    KeySetUnavailable,
}

impl AuthError {
    /// A stable snake_case code for responses, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AuthError::KeySetNotConfigured => "key_set_not_configured",
            AuthError::BadSignature => "bad_signature",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::UnknownKey => "unknown_key",
            AuthError::MissingUserClaim(_) => "missing_user_claim",
            AuthError::InvalidUserClaim(_) => "invalid_user_claim",
            AuthError::EmptyUserClaim(_) => "empty_user_claim",
            AuthError::UserClaimTooLong(_) => "user_claim_too_long",
            AuthError::UserClaimNul(_) => "invalid_user_claim",
            AuthError::KeySetUnavailable => "key_set_unavailable",
        }
    }

    /// True when the refusal is the server's fault (the key set could not be fetched), not the
    /// token's: callers may answer 503 instead of 401.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, AuthError::KeySetUnavailable)
    }
}

/// The refusal for what jsonwebtoken found wrong with a token.
pub(crate) fn map_jwt_error(err: jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::MissingExpiry,
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::Malformed("a required claim is missing"),
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::UnsupportedAlgorithm("?".into())
        }
        ErrorKind::Base64(_) => AuthError::Malformed("invalid base64url"),
        ErrorKind::Json(_) => AuthError::Malformed("invalid JSON"),
        ErrorKind::Utf8(_) => AuthError::Malformed("invalid UTF-8"),
        _ => AuthError::Malformed("undecodable token"),
    }
}
