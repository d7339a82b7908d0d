//! What the operator configures, and the one start-up rule that follows from it.
//!
//! [`AuthArgs`] are the contract's `CHAT_JWT_*` variables; [`VerifierOptions`] are tuning knobs
//! that are not part of it. `hs256_secret` decides, from the settings and the address the
//! service listens on, whether HS256 tokens are verified and with which secret, or refuses to
//! start ([`ConfigError`]): nothing forgeable is ever a default outside loopback.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The public development secret: used when `CHAT_JWT_SECRET` is unset, only while the service
/// listens on loopback and no key set is configured.
pub const DEV_SECRET: &str = "pagenow-dev-secret";

/// Shortest `CHAT_JWT_SECRET` accepted outside loopback, in bytes (HS256's own key size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock-skew leeway applied to `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY: u64 = 30;

/// Default minimum time between two key-set fetches triggered by unknown `kid`s.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

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
pub(crate) fn hs256_secret(
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

/// A setting's value, unless it is unset or blank (an empty variable means "unset").
pub(crate) fn non_blank(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}
