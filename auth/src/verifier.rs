//! [`Verifier`]: the one place a token becomes a [`UserId`]. The key is chosen by the header's
//! `alg` before verification, and only HS256 uses the secret, so an RS256 public key can never
//! be abused as an HMAC secret; `exp` is required, and `iss`/`aud` are required when configured.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use crate::jwks::Jwks;
use crate::refusal::map_jwt_error;
use crate::settings::{hs256_secret, non_blank};
use crate::token::{parse_header, strip_bearer, truncate};
use crate::{AuthArgs, AuthError, ConfigError, Hs256, InvalidUserId, UserId, VerifierOptions};

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

    /// Verifies a token and returns the user id. Accepts the raw JWT or `Bearer <jwt>`.
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
