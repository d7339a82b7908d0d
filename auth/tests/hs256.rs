//! HS256 (shared secret) mode, claim checks, header forms and every refusal that needs no key
//! server.

mod common;

use auth::{AuthArgs, AuthError, ConfigError, Verifier};
use clap::Parser;
use common::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn verifier(args: AuthArgs) -> Verifier {
    Verifier::new(&args, LOOPBACK).unwrap()
}

async fn check(v: &Verifier, token: &str) -> Result<String, AuthError> {
    v.verify(token).await.map(|id| id.into_string())
}

#[tokio::test]
async fn hs256_happy_path_raw_and_bearer() {
    let v = verifier(args());
    let token = hs256(SECRET, &claims_for("alice"));
    for value in [
        token.clone(),
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER   {token}"),
        format!("  \t{token}\n "),
        format!("  Bearer {token}  "),
    ] {
        let id = v.verify(&value).await.unwrap();
        assert_eq!(id.as_str(), "alice");
        assert_eq!(id.to_string(), "alice");
    }
}

#[tokio::test]
async fn missing_token() {
    let v = verifier(args());
    for value in ["", "   ", "Bearer", "bearer   "] {
        assert_eq!(v.verify(value).await, Err(AuthError::Missing), "{value:?}");
    }
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_panicking() {
    let v = verifier(args());
    let good = hs256(SECRET, &claims_for("alice"));
    let long = "a".repeat(100_000);
    let cases = [
        "garbage".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        "a.b.c.d.e".to_string(),
        "!!!.b.c".to_string(),
        "Basic dXNlcjpwYXNz".to_string(),
        format!("Token {good}"),
        format!("{}.x.y", base64url(b"not json")),
        format!("{}.x.y", base64url(b"{\"typ\":\"JWT\"}")),
        format!("{}.x.y", base64url(b"{\"alg\":5}")),
        long,
        format!("{good}é"),
        "é.é.é".to_string(),
        "..".to_string(),
    ];
    for value in &cases {
        let err = v.verify(value).await.unwrap_err();
        assert_eq!(err.code(), "malformed_token", "{value:.40}: {err}");
    }
    // A valid header and signature over a payload that is not JSON.
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let t = with_header(&header, &json!("just a string"), Some(SECRET.as_bytes()));
    assert_eq!(v.verify(&t).await.unwrap_err().code(), "malformed_token");
}

#[tokio::test]
async fn bad_signature_wrong_secret_and_tampering() {
    let v = verifier(args());
    let forged = hs256("another-secret", &claims_for("alice"));
    assert_eq!(v.verify(&forged).await, Err(AuthError::BadSignature));

    // Swap in a payload for another user, keeping the original signature.
    let token = hs256(SECRET, &claims_for("alice"));
    let parts: Vec<&str> = token.split('.').collect();
    let evil = base64url(claims_for("mallory").to_string().as_bytes());
    let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
    assert_eq!(v.verify(&tampered).await, Err(AuthError::BadSignature));

    // No signature at all.
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(v.verify(&unsigned).await, Err(AuthError::BadSignature));
}

#[tokio::test]
async fn alg_none_and_other_algorithms_are_refused() {
    let v = verifier(args());
    let c = claims_for("alice");
    for alg in [
        "none", "None", "NONE", "HS512", "HS384", "ES256", "PS256", "RS512", "EdDSA",
    ] {
        let header = json!({"alg": alg, "typ": "JWT"});
        for secret in [None, Some(SECRET.as_bytes())] {
            let t = with_header(&header, &c, secret);
            assert_eq!(
                v.verify(&t).await,
                Err(AuthError::UnsupportedAlgorithm(alg.to_string())),
                "{alg}"
            );
        }
    }
    // Properly HS512-signed with the right secret: still refused.
    let t = auth::mint::hmac(jsonwebtoken::Algorithm::HS512, SECRET, &c);
    assert_eq!(
        v.verify(&t).await.unwrap_err().code(),
        "unsupported_algorithm"
    );
}

#[tokio::test]
async fn rs256_refused_when_no_jwks_is_configured() {
    let v = verifier(args());
    let t = rs256('a', Some(KID_A), &claims_for("alice"));
    assert_eq!(v.verify(&t).await, Err(AuthError::KeySetNotConfigured));
    // An RS256 header with an HMAC signature made with the shared secret is never checked
    // against that secret.
    let header = json!({"alg": "RS256", "kid": KID_A});
    let t = with_header(&header, &claims_for("alice"), Some(SECRET.as_bytes()));
    assert_eq!(v.verify(&t).await, Err(AuthError::KeySetNotConfigured));
}

#[tokio::test]
async fn exp_is_required() {
    let v = verifier(args());
    let t = hs256(SECRET, &json!({"sub": "alice"}));
    assert_eq!(v.verify(&t).await, Err(AuthError::MissingExpiry));
    for bad_exp in [json!(null), json!("tomorrow"), json!(-5)] {
        let t = hs256(SECRET, &json!({"sub": "alice", "exp": bad_exp}));
        assert_eq!(
            v.verify(&t).await,
            Err(AuthError::MissingExpiry),
            "{bad_exp}"
        );
    }
}

#[tokio::test]
async fn expiry_with_leeway() {
    let v = verifier(args());
    let expired = hs256(SECRET, &json!({"sub": "alice", "exp": now() - 120}));
    assert_eq!(v.verify(&expired).await, Err(AuthError::Expired));
    let long_expired = hs256(SECRET, &json!({"sub": "alice", "exp": 1}));
    assert_eq!(v.verify(&long_expired).await, Err(AuthError::Expired));
    // Within the 30 s leeway.
    let just_expired = hs256(SECRET, &json!({"sub": "alice", "exp": now() - 5}));
    assert_eq!(check(&v, &just_expired).await.unwrap(), "alice");
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let v = verifier(args());
    let t = hs256(
        SECRET,
        &json!({"sub": "alice", "exp": now() + 3600, "nbf": now() + 600}),
    );
    assert_eq!(v.verify(&t).await, Err(AuthError::NotYetValid));
    let t = hs256(
        SECRET,
        &json!({"sub": "alice", "exp": now() + 3600, "nbf": now() - 10}),
    );
    assert_eq!(check(&v, &t).await.unwrap(), "alice");
}

#[tokio::test]
async fn issuer_checked_only_when_configured() {
    let iss = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Pool";
    let with = |iss_claim: serde_json::Value| {
        let mut c = claims_for("alice");
        c["iss"] = iss_claim;
        hs256(SECRET, &c)
    };
    let unchecked = verifier(args());
    assert_eq!(
        check(&unchecked, &with(json!("whoever"))).await.unwrap(),
        "alice"
    );
    assert_eq!(
        check(&unchecked, &hs256(SECRET, &claims_for("alice")))
            .await
            .unwrap(),
        "alice"
    );

    let checked = verifier(AuthArgs {
        jwt_issuer: Some(iss.into()),
        ..args()
    });
    assert_eq!(check(&checked, &with(json!(iss))).await.unwrap(), "alice");
    for bad in [json!("https://evil.example"), json!(""), json!(42)] {
        assert_eq!(
            checked.verify(&with(bad.clone())).await,
            Err(AuthError::WrongIssuer),
            "{bad}"
        );
    }
    // Missing iss.
    assert_eq!(
        checked.verify(&hs256(SECRET, &claims_for("alice"))).await,
        Err(AuthError::WrongIssuer)
    );
}

#[tokio::test]
async fn audience_checked_only_when_configured() {
    let with = |aud: serde_json::Value| {
        let mut c = claims_for("alice");
        c["aud"] = aud;
        hs256(SECRET, &c)
    };
    // Not configured: any aud (or none) is fine.
    let unchecked = verifier(args());
    assert!(unchecked.verify(&with(json!("some-client"))).await.is_ok());
    assert!(unchecked.verify(&with(json!(["x", "y"]))).await.is_ok());
    assert!(
        unchecked
            .verify(&hs256(SECRET, &claims_for("alice")))
            .await
            .is_ok()
    );

    let checked = verifier(AuthArgs {
        jwt_audience: vec!["client-one".into(), " client-two ".into(), "".into()],
        ..args()
    });
    for ok in [
        json!("client-one"),
        json!("client-two"),
        json!(["other", "client-two"]),
        json!(["client-one"]),
    ] {
        assert!(checked.verify(&with(ok.clone())).await.is_ok(), "{ok}");
    }
    for bad in [
        json!("other"),
        json!(["other", "another"]),
        json!([]),
        json!(""),
        json!(7),
        json!("client-one,client-two"),
    ] {
        assert_eq!(
            checked.verify(&with(bad.clone())).await,
            Err(AuthError::WrongAudience),
            "{bad}"
        );
    }
    assert_eq!(
        checked.verify(&hs256(SECRET, &claims_for("alice"))).await,
        Err(AuthError::WrongAudience)
    );
}

#[tokio::test]
async fn user_claim_is_configurable() {
    let v = verifier(AuthArgs {
        jwt_user_claim: "cognito:username".into(),
        ..args()
    });
    let t = hs256(
        SECRET,
        &json!({
            "sub": "5f3c1a2e-0000-4000-8000-000000000000",
            "cognito:username": "google_337456865285275482928",
            "exp": now() + 60,
        }),
    );
    assert_eq!(check(&v, &t).await.unwrap(), "google_337456865285275482928");
    // `sub` alone is not enough when another claim is configured.
    let t = hs256(SECRET, &claims_for("alice"));
    assert_eq!(
        v.verify(&t).await,
        Err(AuthError::MissingUserClaim("cognito:username".into()))
    );
}

#[tokio::test]
async fn user_claim_missing_invalid_empty_or_too_long() {
    let v = verifier(args());
    let exp = now() + 60;
    let cases = [
        (json!({"exp": exp}), "missing_user_claim"),
        (json!({"exp": exp, "sub": null}), "missing_user_claim"),
        (json!({"exp": exp, "sub": 42}), "invalid_user_claim"),
        // jsonwebtoken's own claim parser chokes on an array or object `sub` (a registered
        // claim), so those are refused as malformed; in any other claim they are "invalid".
        (json!({"exp": exp, "sub": ["alice"]}), "malformed_token"),
        (
            json!({"exp": exp, "sub": {"id": "alice"}}),
            "malformed_token",
        ),
        (json!({"exp": exp, "sub": true}), "invalid_user_claim"),
        (json!({"exp": exp, "sub": ""}), "empty_user_claim"),
        (
            json!({"exp": exp, "sub": "x".repeat(51)}),
            "user_claim_too_long",
        ),
        (
            json!({"exp": exp, "sub": "é".repeat(51)}),
            "user_claim_too_long",
        ),
    ];
    for (c, code) in cases {
        let err = v.verify(&hs256(SECRET, &c)).await.unwrap_err();
        assert_eq!(err.code(), code, "{c}");
    }
    // Exactly 50 characters is fine, counted as characters, not bytes (100 bytes here).
    let fifty = "é".repeat(50);
    let t = hs256(SECRET, &json!({"exp": exp, "sub": fifty}));
    assert_eq!(check(&v, &t).await.unwrap(), fifty);
    let t = hs256(SECRET, &json!({"exp": exp, "sub": "x".repeat(50)}));
    assert!(v.verify(&t).await.is_ok());

    let v = verifier(AuthArgs {
        jwt_user_claim: "cognito:username".into(),
        ..args()
    });
    for bad in [json!(["alice"]), json!({"id": "alice"}), json!(7)] {
        let t = hs256(SECRET, &json!({"exp": exp, "cognito:username": bad}));
        assert_eq!(v.verify(&t).await.unwrap_err().code(), "invalid_user_claim");
    }
}

#[test]
fn error_codes_are_stable_unique_snake_case() {
    let all = [
        AuthError::Missing,
        AuthError::Malformed("x"),
        AuthError::UnsupportedAlgorithm("none".into()),
        AuthError::KeySetNotConfigured,
        AuthError::BadSignature,
        AuthError::MissingExpiry,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::UnknownKey,
        AuthError::MissingUserClaim("sub".into()),
        AuthError::InvalidUserClaim("sub".into()),
        AuthError::EmptyUserClaim("sub".into()),
        AuthError::UserClaimTooLong("sub".into()),
        AuthError::KeySetUnavailable,
    ];
    let mut seen = std::collections::HashSet::new();
    for e in &all {
        let code = e.code();
        assert!(
            !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{code}"
        );
        assert!(seen.insert(code), "duplicate code {code}");
        assert!(!e.to_string().is_empty());
    }
    assert!(AuthError::KeySetUnavailable.is_server_fault());
    assert!(!AuthError::BadSignature.is_server_fault());
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    auth: AuthArgs,
}

#[test]
fn args_parse_from_the_command_line() {
    let cli = Cli::try_parse_from([
        "bin",
        "--jwt-secret",
        "s3cret-value",
        "--jwks-url",
        "https://cognito-idp.us-east-1.amazonaws.com/pool/.well-known/jwks.json",
        "--jwt-issuer",
        "https://cognito-idp.us-east-1.amazonaws.com/pool",
        "--jwt-audience",
        "client-one,client-two",
        "--jwt-user-claim",
        "cognito:username",
    ])
    .unwrap();
    assert_eq!(
        cli.auth.jwt_secret.as_ref().unwrap().expose_secret(),
        "s3cret-value"
    );
    assert_eq!(cli.auth.jwt_audience, ["client-one", "client-two"]);
    assert_eq!(cli.auth.jwt_user_claim, "cognito:username");
    // The secret never shows in Debug output.
    let debug = format!("{cli:?}");
    assert!(!debug.contains("s3cret-value"), "{debug}");
    assert!(Verifier::new(&cli.auth, LOOPBACK).is_ok());

    // Defaults (only checkable when the environment does not override them).
    let cli = Cli::try_parse_from(["bin"]).unwrap();
    if std::env::var_os("CHAT_JWT_SECRET").is_none() {
        // Unset stays unset: the verifier decides what that means where it listens.
        assert!(cli.auth.jwt_secret.is_none());
        assert_eq!(auth::DEV_SECRET, "pagenow-dev-secret");
    }
    if std::env::var_os("CHAT_JWT_USER_CLAIM").is_none() {
        assert_eq!(cli.auth.jwt_user_claim, "sub");
    }
    if std::env::var_os("CHAT_JWKS_URL").is_none() {
        assert!(cli.auth.jwks_url.is_none());
    }
}

#[test]
fn bad_config_is_refused() {
    // An empty secret is an unset one: nothing to verify with on a public address.
    let empty_secret = AuthArgs {
        jwt_secret: Some(SecretString::from("")),
        ..args()
    };
    assert!(matches!(
        Verifier::new(&empty_secret, PUBLIC),
        Err(ConfigError::NoKey(_))
    ));
    for url in [
        "not a url",
        "ftp://example.com/jwks.json",
        "file:///etc/passwd",
    ] {
        let a = AuthArgs {
            jwks_url: Some(url.into()),
            ..args()
        };
        assert!(
            matches!(
                Verifier::new(&a, LOOPBACK),
                Err(ConfigError::InvalidJwksUrl(_))
            ),
            "{url}"
        );
    }
    let a = AuthArgs {
        jwt_user_claim: " ".into(),
        ..args()
    };
    assert!(matches!(
        Verifier::new(&a, LOOPBACK),
        Err(ConfigError::EmptyUserClaim)
    ));
    // Blank optional settings mean "unset".
    let a = AuthArgs {
        jwks_url: Some("".into()),
        jwt_issuer: Some("  ".into()),
        ..args()
    };
    assert!(Verifier::new(&a, LOOPBACK).is_ok());
}
