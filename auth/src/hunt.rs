//! Property tests that hunt over the token parser: any `Authorization` value is refused with a
//! reason or yields the user id of a correctly signed token; nothing panics.

#[path = "../../events/tests/hostile/mod.rs"]
mod hostile;

use hostile::{follows_rule, hostile_field, hostile_string};
use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;
use secrecy::SecretString;

use crate::token::{MAX_TOKEN_BYTES, parse_header, strip_bearer};
use crate::{AuthArgs, MAX_USER_ID_CHARS, Verifier};

const SECRET: &str = "hunt-secret";
const BASE64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn verifier() -> Verifier {
    Verifier::new(
        &AuthArgs {
            jwt_secret: Some(SecretString::from(SECRET)),
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: Vec::new(),
            jwt_user_claim: "sub".into(),
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .expect("a verifier")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Text shaped like a token: base64url runs and dots, sometimes a scheme, sometimes noise.
fn token_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        prop::collection::vec(prop::sample::select(BASE64URL.as_bytes().to_vec()), 0..24)
            .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII")),
        Just("eyJhbGciOiJIUzI1NiJ9".to_owned()),
        Just("eyJhbGciOiJub25lIn0".to_owned()),
        hostile_string(0..6),
    ];
    (
        prop_oneof![
            Just(""),
            Just("Bearer "),
            Just("bearer\t"),
            Just("Bearer"),
            Just(" ")
        ],
        prop::collection::vec(part, 0..5),
    )
        .prop_map(|(scheme, parts)| format!("{scheme}{}", parts.join(".")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `strip_bearer` never panics; what it lets through is a non-empty base64url-and-dots run
    /// of the input, within the size limit.
    #[test]
    fn strip_bearer_refuses_or_extracts(value in prop_oneof![hostile_string(0..40), token_like()]) {
        if let Ok(token) = strip_bearer(&value) {
            prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
            prop_assert!(value.contains(token));
        }
    }

    /// `parse_header` never panics, and accepts only three parts with a JSON header.
    #[test]
    fn parse_header_refuses_or_reads(token in prop_oneof![hostile_string(0..40), token_like()]) {
        if let Ok(header) = parse_header(&token) {
            prop_assert_eq!(token.split('.').count(), 3);
            prop_assert!(header.alg.len() < token.len());
        }
    }

    /// Unsigned noise is always refused, never a server fault.
    #[test]
    fn verify_refuses_noise(value in prop_oneof![hostile_string(0..40), token_like()]) {
        let refused = runtime().block_on(verifier().verify(&value)).unwrap_err();
        prop_assert!(!refused.is_server_fault());
    }

    /// A correctly signed token is accepted exactly when its user id follows the log's rule,
    /// and the id comes back unchanged.
    #[test]
    fn signed_tokens_carry_any_rule_abiding_user_id(sub in hostile_field(MAX_USER_ID_CHARS)) {
        let claims = serde_json::json!({ "sub": sub, "exp": 4_102_444_800u64 });
        let token = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let verdict = runtime().block_on(verifier().verify(&format!("Bearer {token}")));
        match verdict {
            Ok(id) => {
                prop_assert!(follows_rule(&sub, MAX_USER_ID_CHARS, false));
                prop_assert_eq!(id.as_str(), sub.as_str());
            }
            Err(e) => {
                prop_assert!(!follows_rule(&sub, MAX_USER_ID_CHARS, false), "{e}");
            }
        }
    }
}
