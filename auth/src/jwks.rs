//! The RS256 key set (`CHAT_JWKS_URL`): fetched over HTTP(S), cached by `kid`.
//!
//! Invariants: a token whose `kid` is not cached triggers at most one fetch per
//! [`VerifierOptions::min_refetch_interval`], and concurrent verifications share it; a
//! successful fetch replaces the whole cache (a key removed from the set stops being accepted);
//! a failed one keeps the cached keys; a body over [`MAX_JWKS_BYTES`] is refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;

use crate::token::truncate;
use crate::{AuthError, ConfigError, VerifierOptions};

/// Key-set responses larger than this are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The RS256 key set: fetched over HTTP(S), cached by `kid`.
pub(crate) struct Jwks {
    pub(crate) url: reqwest::Url,
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

/// A key set as served. Each key is read on its own (not as jsonwebtoken's `JwkSet`), so one
/// key of a kind we do not know cannot hide the others.
#[derive(Deserialize)]
struct ServedKeySet {
    keys: Vec<Value>,
}

impl Jwks {
    pub(crate) fn new(url: &str, options: &VerifierOptions) -> Result<Self, ConfigError> {
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

    pub(crate) async fn key_for(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
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
        let set: ServedKeySet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = parse_rsa_keys(set);
        if keys.is_empty() {
            return Err("the key set has no usable RS256 key".into());
        }
        Ok(keys)
    }
}

/// Keeps the RS256 signing keys with a `kid`; skips (with a debug log) anything else.
fn parse_rsa_keys(set: ServedKeySet) -> HashMap<String, Arc<DecodingKey>> {
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            tracing::debug!("skipping an unparsable JWK");
            continue;
        };
        let usable = matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            && jwk
                .common
                .public_key_use
                .as_ref()
                .is_none_or(|u| *u == PublicKeyUse::Signature)
            && jwk
                .common
                .key_algorithm
                .is_none_or(|a| a == KeyAlgorithm::RS256);
        let (true, Some(kid)) = (usable, jwk.common.key_id.clone()) else {
            tracing::debug!("skipping a JWK that is not an RS256 signing key with a kid");
            continue;
        };
        match DecodingKey::from_jwk(&jwk) {
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
