//! Verification of the chat backend's bearer tokens (JWTs).
//!
//! Every REST request and every WebSocket connect carries a JWT; [`Verifier::verify`] checks it
//! and returns the caller's [`UserId`]. The rules (see the client contract, "Identity"):
//!
//! - **HS256** tokens are verified with the shared secret `CHAT_JWT_SECRET`, only when the
//!   operator asked for it ([`Verifier::new`] holds the one rule every binary follows):
//!   - `CHAT_JWT_SECRET` set: HS256 is on with it. Outside loopback it must have at least
//!     [`MIN_SECRET_BYTES`] bytes and must not be the public [`DEV_SECRET`]; the dev secret is
//!     refused next to a key set too. A refused setting stops the service at start-up.
//!   - unset, with a key set (`CHAT_JWKS_URL`): HS256 tokens are refused (`unsupported_algorithm`).
//!   - unset, no key set, listening on loopback: the development secret (the local stack, tests).
//!   - unset, no key set, listening anywhere else: the service refuses to start.
//! - **RS256** tokens are verified against the JSON Web Key Set at `CHAT_JWKS_URL` (production,
//!   e.g. a Cognito pool's `/.well-known/jwks.json`). Keys are fetched lazily over HTTP(S) and
//!   cached by `kid`; a token whose `kid` is not cached triggers a refetch, at most one per
//!   [`VerifierOptions::min_refetch_interval`] (10 s by default) so a flood of garbage kids cannot
//!   hammer the key server, and concurrent verifications share one in-flight fetch. A refetch
//!   replaces the whole cache, so a key removed from the set stops being accepted. Without
//!   `CHAT_JWKS_URL`, RS256 tokens are refused.
//! - Every other algorithm (`none`, `HS512`, `ES256`, …) is refused. The key is chosen by the
//!   header's `alg` and only HS256 uses the secret, so an RS256 public key can never be abused as
//!   an HMAC secret ("algorithm confusion").
//! - `exp` is required; `exp` and (when present) `nbf` are checked with a leeway of
//!   [`DEFAULT_LEEWAY`] (30 s) for clock skew. `iss` must equal `CHAT_JWT_ISSUER` when that is
//!   set; when `CHAT_JWT_AUDIENCE` is set, the token's `aud` (a string or an array) must contain
//!   one of its comma-separated values. Unset means "not checked".
//! - The user id is the string claim named by `CHAT_JWT_USER_CLAIM` (default `sub`; PageNow uses
//!   `cognito:username`): 1 to [`MAX_USER_ID_CHARS`] Unicode characters.
//! - The `Authorization` value may be the raw JWT or `Bearer <jwt>` (any case, surrounding
//!   whitespace tolerated).
//!
//! Refusals are [`AuthError`]s with a stable [`AuthError::code`]; the reason is logged at `debug`.
//! Neither the token nor the secret is ever logged.
//!
//! The crate's rooms: `settings` (what the operator sets, and the start-up rule for HS256),
//! `user_id` (the caller's identity), `refusal` (why a token was refused), `token` (the
//! `Authorization` value and the JOSE header), `jwks` (the RS256 key set and its cache) and
//! `verifier` (the checks, in order). Everything a caller uses is re-exported here.

mod jwks;
mod refusal;
mod settings;
mod token;
mod user_id;
mod verifier;

pub use refusal::AuthError;
pub use settings::{
    AuthArgs, ConfigError, DEFAULT_LEEWAY, DEFAULT_MIN_REFETCH_INTERVAL, DEV_SECRET, Exposure,
    Hs256, MIN_SECRET_BYTES, VerifierOptions,
};
pub use user_id::{InvalidUserId, MAX_USER_ID_CHARS, UserId};
pub use verifier::Verifier;

#[cfg(test)]
mod hunt;

#[cfg(feature = "test-support")]
pub mod mint;
