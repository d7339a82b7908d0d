//! The token as it arrives: the `Authorization` value (a raw JWT or `Bearer <jwt>`, any case,
//! surrounding whitespace tolerated) and its JOSE header, read before any key is chosen.
//!
//! What [`strip_bearer`] lets through is a non-empty run of base64url characters and dots of at
//! most [`MAX_TOKEN_BYTES`]; everything else is refused before any parsing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::AuthError;

/// Tokens longer than this are refused as malformed before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Returns the JWT from a raw token or a `Bearer <token>` value.
pub(crate) fn strip_bearer(authorization: &str) -> Result<&str, AuthError> {
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

/// The JOSE header's fields that choose the key.
#[derive(Deserialize)]
pub(crate) struct RawHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// Parses the JOSE header ourselves, so that algorithms jsonwebtoken does not know (`none`)
/// get a precise refusal and the key can be chosen before verification.
pub(crate) fn parse_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    serde_json::from_slice::<RawHeader>(&bytes)
        .map_err(|_| AuthError::Malformed("header is not a JOSE header"))
}

/// At most `max_chars` of a value taken from a token, for logs and refusals.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_any_algorithm() {
        let header = parse_header("eyJhbGciOiJub25lIn0.e30.").unwrap();
        assert_eq!(header.alg, "none");
        assert_eq!(header.kid, None);
        assert!(matches!(
            parse_header("eyJhbGciOiJub25lIn0=.e30."),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_header("eyJhbGciOiJub25lIn0.e30"),
            Err(AuthError::Malformed(_))
        ));
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
}
