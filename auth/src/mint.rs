//! Minting tokens, for tests, benchmarks and load tools (feature `test-support`; no service
//! calls it): HS256 with a shared secret, RS256 with a PEM private key, and tokens with any
//! header at all for the refusal tests. Every token of the workspace's tests is made here.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// How long [`claims_for`]'s tokens are valid.
pub const VALIDITY_SECS: u64 = 3600;

/// Seconds since the Unix epoch (what `exp`, `nbf` and `iat` count in).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The claims of a valid token for `user`: `sub`, `iat` now, `exp` an hour ahead.
pub fn claims_for(user: &str) -> Value {
    let now = now();
    json!({ "sub": user, "iat": now, "exp": now + VALIDITY_SECS })
}

/// `claims` signed with HS256 and `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    hmac(Algorithm::HS256, secret, claims)
}

/// `claims` signed with `secret` and an HMAC `algorithm` (HS384 and HS512 for the tests of
/// algorithms the services refuse).
pub fn hmac(algorithm: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

/// `claims` signed with RS256 and the PEM private key `pem`, `kid` in the header.
pub fn rs256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("an RSA private key in PEM");
    jsonwebtoken::encode(&header, claims, &key).expect("sign a token")
}

/// A token with any header, HMAC-SHA256-signed with `hmac_secret` whatever the header says
/// (algorithm-confusion tests), or with an empty signature when `None` (`alg: none`).
pub fn with_header(header: &Value, claims: &Value, hmac_secret: Option<&[u8]>) -> String {
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = match hmac_secret {
        Some(secret) => jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .expect("sign a token"),
        None => String::new(),
    };
    format!("{signing_input}.{signature}")
}

/// Base64url without padding, as JWT segments are written.
pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsigned_token_has_three_segments_and_an_empty_signature() {
        let token = with_header(&json!({"alg": "none"}), &claims_for("ann"), None);
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3);
        assert_eq!(segments[0], base64url(br#"{"alg":"none"}"#));
        assert!(segments[2].is_empty());
    }
}
