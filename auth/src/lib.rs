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

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The public development secret: used when `CHAT_JWT_SECRET` is unset, only while the service
/// listens on loopback and no key set is configured.
pub const DEV_SECRET: &str = "pagenow-dev-secret";

/// Shortest `CHAT_JWT_SECRET` accepted outside loopback, in bytes (HS256's own key size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest accepted user id, in Unicode characters (the log's rule: [`events::admission`]).
pub use events::MAX_USER_ID_CHARS;

/// Clock-skew leeway applied to `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY: u64 = 30;

/// Default minimum time between two key-set fetches triggered by unknown `kid`s.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Tokens longer than this are refused as malformed before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Key-set responses larger than this are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Settings, read from the environment by clap (flatten into each binary's config).
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// HS256 shared secret (at least 32 bytes outside loopback). Unset: HS256 tokens are
    /// refused, except on a loopback address with no key set (the development secret)
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// URL of the RS256 JSON Web Key Set; when set, RS256 tokens are verified against it
    #[arg(long, env = "CHAT_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// required `iss` value, when set
    #[arg(long, env = "CHAT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// comma-separated accepted `aud` values
    #[arg(long, env = "CHAT_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// the claim holding the user id (`cognito:username` for PageNow)
    #[arg(long, env = "CHAT_JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,
}

/// Tuning knobs that are not part of the operator's contract (tests shorten them).
#[derive(Clone, Debug)]
pub struct VerifierOptions {
    /// Minimum time between two key-set fetches (successful or not).
    pub min_refetch_interval: Duration,
    /// Timeout of one key-set HTTP request.
    pub http_timeout: Duration,
    /// Leeway for `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            http_timeout: Duration::from_secs(5),
            leeway_secs: DEFAULT_LEEWAY,
        }
    }
}

/// A verified user id: 1..=50 Unicode characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Checks the 1..=[`MAX_USER_ID_CHARS`] rule (used for ids that do not come from a token,
    /// e.g. recipients).
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidUserId> {
        let id = id.into();
        match events::admission::user_id(&id) {
            Ok(()) => Ok(Self(id)),
            Err(events::admission::Flaw::Empty) => Err(InvalidUserId::Empty),
            Err(events::admission::Flaw::Nul) => Err(InvalidUserId::Nul),
            Err(_) => Err(InvalidUserId::TooLong),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

/// Why a string is not a valid [`UserId`].
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidUserId {
    #[error("user id is empty")]
    Empty,
    #[error("user id is longer than {MAX_USER_ID_CHARS} characters")]
    TooLong,
    /// No text of the log may hold U+0000, so no user could ever act.
    #[error("user id contains U+0000")]
    Nul,
}

/// Invalid settings: the service refuses to start, and the message says what to set.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error(
        "CHAT_JWT_SECRET is the public development secret, which is accepted only on a loopback \
         address with no key set, and this service {0}: set CHAT_JWT_SECRET to at least \
         {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`), or unset it and verify \
         RS256 tokens with CHAT_JWKS_URL"
    )]
    DevSecretRefused(Exposure),
    #[error(
        "CHAT_JWT_SECRET has {bytes} bytes, and this service listens on {listen}, not a loopback \
         address: set CHAT_JWT_SECRET to at least {MIN_SECRET_BYTES} random bytes (e.g. \
         `openssl rand -base64 48`), or unset it and verify RS256 tokens with CHAT_JWKS_URL"
    )]
    ShortSecret { bytes: usize, listen: SocketAddr },
    #[error(
        "no way to verify tokens: CHAT_JWT_SECRET and CHAT_JWKS_URL are both unset, and this \
         service listens on {0}, not a loopback address (the development secret works only \
         there): set CHAT_JWKS_URL to the RS256 key set (production, e.g. the Cognito pool's \
         /.well-known/jwks.json), or CHAT_JWT_SECRET to at least {MIN_SECRET_BYTES} random bytes \
         (e.g. `openssl rand -base64 48`)"
    )]
    NoKey(SocketAddr),
    #[error("CHAT_JWKS_URL is not a valid http(s) URL: {0}")]
    InvalidJwksUrl(String),
    #[error("CHAT_JWT_USER_CLAIM must not be empty")]
    EmptyUserClaim,
    #[error("cannot build the HTTP client for the key set: {0}")]
    HttpClient(String),
}

/// Why the development secret is refused where it was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// The service listens on an address other than loopback.
    Listens(SocketAddr),
    /// A key set is configured: the deployment is a real one.
    KeySet,
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exposure::Listens(addr) => write!(f, "listens on {addr}, not a loopback address"),
            Exposure::KeySet => f.write_str("has a key set (CHAT_JWKS_URL)"),
        }
    }
}

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

/// Verifies tokens. Cheap to clone (an `Arc` inside); share one per process.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: HS256 tokens are refused.
    hmac_key: Option<DecodingKey>,
    hs256: Hs256,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Vec<String>,
    user_claim: String,
    leeway_secs: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "jwks_url",
                &self.inner.jwks.as_ref().map(|j| j.url.as_str()),
            )
            .field("hs256", &self.inner.hmac_key.is_some())
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("user_claim", &self.inner.user_claim)
            .finish_non_exhaustive()
    }
}

fn non_blank(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// What verifies HS256 tokens in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hs256 {
    /// `CHAT_JWT_SECRET` verifies HS256 tokens.
    Secret,
    /// The public development secret verifies HS256 tokens (loopback, no key set).
    DevSecret,
    /// HS256 tokens are refused.
    Refused,
}

/// The one rule that decides HS256: from the settings and the address the service listens on,
/// the secret that verifies HS256 tokens (`None`: they are refused), or why the service must not
/// start.
fn hs256_secret(
    args: &AuthArgs,
    listen: SocketAddr,
) -> Result<(Hs256, Option<SecretString>), ConfigError> {
    let loopback = listen.ip().is_loopback();
    let key_set = non_blank(&args.jwks_url).is_some();
    let secret = args
        .jwt_secret
        .as_ref()
        .filter(|s| !s.expose_secret().is_empty());
    match secret {
        Some(secret) if secret.expose_secret() == DEV_SECRET => {
            if key_set {
                Err(ConfigError::DevSecretRefused(Exposure::KeySet))
            } else if !loopback {
                Err(ConfigError::DevSecretRefused(Exposure::Listens(listen)))
            } else {
                Ok((Hs256::DevSecret, Some(secret.clone())))
            }
        }
        Some(secret) => {
            let bytes = secret.expose_secret().len();
            if !loopback && bytes < MIN_SECRET_BYTES {
                Err(ConfigError::ShortSecret { bytes, listen })
            } else {
                Ok((Hs256::Secret, Some(secret.clone())))
            }
        }
        None if key_set => Ok((Hs256::Refused, None)),
        None if loopback => Ok((Hs256::DevSecret, Some(SecretString::from(DEV_SECRET)))),
        None => Err(ConfigError::NoKey(listen)),
    }
}

impl Verifier {
    /// The verifier of a service that listens on `listen` (its public address: the one tokens
    /// come to). Refuses settings that would let anyone mint tokens there (see the crate's rules).
    pub fn new(args: &AuthArgs, listen: SocketAddr) -> Result<Self, ConfigError> {
        Self::with_options(args, listen, VerifierOptions::default())
    }

    pub fn with_options(
        args: &AuthArgs,
        listen: SocketAddr,
        options: VerifierOptions,
    ) -> Result<Self, ConfigError> {
        let (hs256, secret) = hs256_secret(args, listen)?;
        let user_claim = args.jwt_user_claim.trim();
        if user_claim.is_empty() {
            return Err(ConfigError::EmptyUserClaim);
        }
        let jwks = match non_blank(&args.jwks_url) {
            None => None,
            Some(url) => Some(Jwks::new(&url, &options)?),
        };
        match hs256 {
            Hs256::DevSecret => tracing::warn!(
                %listen,
                "HS256 tokens are verified with the public development secret (loopback only); \
                 set CHAT_JWT_SECRET or CHAT_JWKS_URL for anything but development"
            ),
            Hs256::Secret => {
                tracing::info!(%listen, "HS256 tokens are verified with CHAT_JWT_SECRET")
            }
            Hs256::Refused => {
                tracing::info!(%listen, "HS256 tokens are refused (no CHAT_JWT_SECRET)")
            }
        }
        let audience: Vec<String> = args
            .jwt_audience
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                hmac_key: secret.map(|s| DecodingKey::from_secret(s.expose_secret().as_bytes())),
                hs256,
                jwks,
                issuer: non_blank(&args.jwt_issuer),
                audience,
                user_claim: user_claim.to_owned(),
                leeway_secs: options.leeway_secs,
            }),
        })
    }

    /// What verifies HS256 tokens here.
    pub fn hs256(&self) -> Hs256 {
        self.inner.hs256
    }

    /// Verifies a token and returns the user id. Accepts the raw JWT or "Bearer <jwt>".
    pub async fn verify(&self, authorization: &str) -> Result<UserId, AuthError> {
        let result = self.verify_inner(authorization).await;
        if let Err(err) = &result {
            tracing::debug!(code = err.code(), reason = %err, "token refused");
        }
        result
    }

    async fn verify_inner(&self, authorization: &str) -> Result<UserId, AuthError> {
        let token = strip_bearer(authorization)?;
        let header = parse_header(token)?;
        let (algorithm, key) = match header.alg.as_str() {
            "HS256" => match &self.inner.hmac_key {
                Some(key) => (Algorithm::HS256, KeyRef::Hmac(key)),
                // No secret was configured: HS256 is an algorithm this deployment does not use.
                None => return Err(AuthError::UnsupportedAlgorithm("HS256".into())),
            },
            "RS256" => {
                let jwks = self
                    .inner
                    .jwks
                    .as_ref()
                    .ok_or(AuthError::KeySetNotConfigured)?;
                let Some(kid) = header.kid.as_deref() else {
                    tracing::debug!("RS256 token without kid");
                    return Err(AuthError::UnknownKey);
                };
                (Algorithm::RS256, KeyRef::Rsa(jwks.key_for(kid).await?))
            }
            _ => return Err(AuthError::UnsupportedAlgorithm(truncate(&header.alg, 20))),
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            key.as_key(),
            &self.validation(algorithm),
        )
        .map_err(map_jwt_error)?
        .claims;
        self.user_id(&claims)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        // jsonwebtoken only checks `iss`/`aud` when they are present in the token, so a
        // configured one is also made a required claim (a missing or non-string value is then
        // refused too).
        let mut required = vec!["exp"];
        let mut v = Validation::new(algorithm);
        v.leeway = self.inner.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        match &self.inner.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        if self.inner.audience.is_empty() {
            // jsonwebtoken 9 refuses any token carrying `aud` unless told not to look at it.
            v.validate_aud = false;
            v.aud = None;
        } else {
            v.set_audience(&self.inner.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn user_id(&self, claims: &Map<String, Value>) -> Result<UserId, AuthError> {
        let name = &self.inner.user_claim;
        match claims.get(name) {
            None | Some(Value::Null) => Err(AuthError::MissingUserClaim(name.clone())),
            Some(Value::String(id)) => UserId::new(id.as_str()).map_err(|e| match e {
                InvalidUserId::Empty => AuthError::EmptyUserClaim(name.clone()),
                InvalidUserId::TooLong => AuthError::UserClaimTooLong(name.clone()),
                InvalidUserId::Nul => AuthError::UserClaimNul(name.clone()),
            }),
            Some(_) => Err(AuthError::InvalidUserClaim(name.clone())),
        }
    }
}

enum KeyRef<'a> {
    Hmac(&'a DecodingKey),
    Rsa(Arc<DecodingKey>),
}

impl KeyRef<'_> {
    fn as_key(&self) -> &DecodingKey {
        match self {
            KeyRef::Hmac(k) => k,
            KeyRef::Rsa(k) => k,
        }
    }
}

fn map_jwt_error(err: jsonwebtoken::errors::Error) -> AuthError {
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

/// Returns the JWT from a raw token or a `Bearer <token>` value.
fn strip_bearer(authorization: &str) -> Result<&str, AuthError> {
    let value = authorization.trim();
    let token = match value.get(..6) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer") => {
            let rest = &value[6..];
            if rest.is_empty() {
                return Err(AuthError::Missing);
            }
            if !rest.starts_with(|c: char| c.is_whitespace()) {
                // "Bearerxyz" is not a scheme; let the JWT parser refuse it.
                value
            } else {
                rest.trim_start()
            }
        }
        _ => value,
    };
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("token too long"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthError::Malformed("characters outside base64url"));
    }
    Ok(token)
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Parses the JOSE header ourselves, so that algorithms jsonwebtoken does not know (`none`)
/// get a precise refusal and the key can be chosen before verification.
fn parse_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let bytes = base64url_decode(header).ok_or(AuthError::Malformed("header is not base64url"))?;
    serde_json::from_slice::<RawHeader>(&bytes)
        .map_err(|_| AuthError::Malformed("header is not a JOSE header"))
}

/// Unpadded base64url (RFC 7515 §2). `None` on any invalid input.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for byte in input.bytes() {
        let v = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// The RS256 key set: fetched over HTTP(S), cached by `kid`.
struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    min_refetch_interval: Duration,
    state: RwLock<JwksState>,
    /// Held for the whole of a fetch: concurrent verifiers wait for it and then read the cache.
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// When the last fetch (successful or not) finished.
    last_attempt: Option<Instant>,
    last_ok: bool,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RsaJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl Jwks {
    fn new(url: &str, options: &VerifierOptions) -> Result<Self, ConfigError> {
        let url =
            reqwest::Url::parse(url).map_err(|e| ConfigError::InvalidJwksUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::InvalidJwksUrl(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(options.http_timeout)
            .connect_timeout(options.http_timeout)
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        Ok(Self {
            url,
            client,
            min_refetch_interval: options.min_refetch_interval,
            state: RwLock::new(JwksState::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.keys.get(kid).cloned()
    }

    async fn key_for(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let _fetching = self.fetch_lock.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let (recent, last_ok) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let recent = state
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.min_refetch_interval);
            (recent, state.last_ok)
        };
        if recent {
            tracing::debug!(kid = %truncate(kid, 64), "unknown kid; key set fetched recently, not refetching");
            return Err(if last_ok {
                AuthError::UnknownKey
            } else {
                AuthError::KeySetUnavailable
            });
        }
        let fetched = self.fetch().await;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.last_attempt = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the JWT key set");
                state.keys = keys;
                state.last_ok = true;
                state.keys.get(kid).cloned().ok_or_else(|| {
                    tracing::debug!(kid = %truncate(kid, 64), "kid not in the fresh key set");
                    AuthError::UnknownKey
                })
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, %reason, "cannot fetch the JWT key set; keeping the cached keys");
                state.last_ok = false;
                Err(AuthError::KeySetUnavailable)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("body larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = parse_rsa_keys(set);
        if keys.is_empty() {
            return Err("the key set has no usable RS256 key".into());
        }
        Ok(keys)
    }
}

/// Keeps the RSA signing keys with a `kid`; skips (with a debug log) anything else.
fn parse_rsa_keys(set: JwkSet) -> HashMap<String, Arc<DecodingKey>> {
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<RsaJwk>(value) else {
            tracing::debug!("skipping an unparsable JWK");
            continue;
        };
        let usable = jwk.kty == "RSA"
            && jwk.use_.as_deref().is_none_or(|u| u == "sig")
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256");
        let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e) else {
            tracing::debug!(kty = %jwk.kty, "skipping a JWK that is not an RS256 signing key with a kid");
            continue;
        };
        match DecodingKey::from_rsa_components(&n, &e) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(err) => {
                tracing::debug!(kid = %truncate(&kid, 64), %err, "skipping an invalid RSA JWK")
            }
        }
    }
    keys
}

#[cfg(test)]
mod hunt;

#[cfg(feature = "test-support")]
pub mod mint;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn base64url_roundtrip_known_vectors() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(base64url_decode("Zm9vY").is_none());
        assert!(base64url_decode("Zg==").is_none());
        assert!(base64url_decode("Z+9v").is_none());
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(strip_bearer("a.b.c"), Ok("a.b.c"));
        assert_eq!(strip_bearer("  a.b.c \n"), Ok("a.b.c"));
        assert_eq!(strip_bearer("Bearer a.b.c"), Ok("a.b.c"));
        assert_eq!(strip_bearer("bearer a.b.c"), Ok("a.b.c"));
        assert_eq!(strip_bearer(" BEARER \t a.b.c  "), Ok("a.b.c"));
        assert_eq!(strip_bearer(""), Err(AuthError::Missing));
        assert_eq!(strip_bearer("   "), Err(AuthError::Missing));
        assert_eq!(strip_bearer("Bearer"), Err(AuthError::Missing));
        assert_eq!(strip_bearer("Bearer   "), Err(AuthError::Missing));
        // Multi-byte input must not panic on slicing.
        assert!(matches!(
            strip_bearer("ééééé"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            strip_bearer("Bearéé x"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            strip_bearer("Token a.b.c"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            strip_bearer("Bearer a.b c"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn user_id_rules() {
        assert_eq!(UserId::new(""), Err(InvalidUserId::Empty));
        assert_eq!(UserId::new("x".repeat(51)), Err(InvalidUserId::TooLong));
        assert!(UserId::new("é".repeat(50)).is_ok());
        assert_eq!(UserId::new("a\0b"), Err(InvalidUserId::Nul));
        let id = UserId::new("google_337456865285275482928").unwrap();
        assert_eq!(id.to_string(), "google_337456865285275482928");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"google_337456865285275482928\""
        );
        assert_eq!(id.clone().into_string(), id.as_str());
    }
}
