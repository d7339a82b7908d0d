//! RS256 against a JWKS served over real HTTP by the test itself (127.0.0.1:0).

mod common;

use std::time::Duration;

use auth::{AuthArgs, AuthError, Verifier, VerifierOptions};
use common::*;
use serde_json::json;

fn options(min_refetch_interval: Duration) -> VerifierOptions {
    VerifierOptions {
        min_refetch_interval,
        http_timeout: Duration::from_secs(2),
        ..VerifierOptions::default()
    }
}

#[tokio::test]
async fn rs256_happy_path_and_cache() {
    let server = KeyServer::start(jwks(&['a', 'b']), Duration::ZERO).await;
    let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
    assert_eq!(server.hits(), 0, "keys are fetched lazily");

    let t = rs256('a', Some(KID_A), &claims_for("alice"));
    assert_eq!(v.verify(&t).await.unwrap().as_str(), "alice");
    assert_eq!(server.hits(), 1);
    // Known kids (both came in the first fetch) never refetch; clones share the cache.
    let clone = v.clone();
    for _ in 0..5 {
        assert!(v.verify(&t).await.is_ok());
        let tb = rs256('b', Some(KID_B), &claims_for("bob"));
        assert_eq!(
            clone
                .verify(&format!("Bearer {tb}"))
                .await
                .unwrap()
                .as_str(),
            "bob"
        );
    }
    assert_eq!(server.hits(), 1);
    // With a key set and no secret, HS256 is refused, whoever signed it.
    for secret in [SECRET, auth::DEV_SECRET] {
        assert_eq!(
            v.verify(&hs256(secret, &claims_for("dev"))).await,
            Err(AuthError::UnsupportedAlgorithm("HS256".into()))
        );
    }
}

#[tokio::test]
async fn key_rotation_refetches_once_and_drops_removed_keys() {
    let interval = Duration::from_millis(300);
    let server = KeyServer::start(jwks(&['a']), Duration::ZERO).await;
    let v = Verifier::with_options(&server.args(), LOOPBACK, options(interval)).unwrap();

    let token_a = rs256('a', Some(KID_A), &claims_for("alice"));
    let token_b = rs256('b', Some(KID_B), &claims_for("bob"));
    assert!(v.verify(&token_a).await.is_ok());
    assert!(v.verify(&token_a).await.is_ok());
    assert_eq!(server.hits(), 1);

    // The issuer rotates: the key set is now {B}.
    server.set_body(jwks(&['b']));
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    assert_eq!(v.verify(&token_b).await.unwrap().as_str(), "bob");
    assert_eq!(server.hits(), 2, "exactly one refetch for the new kid");
    assert!(v.verify(&token_b).await.is_ok());
    assert_eq!(server.hits(), 2, "kid B is cached now");

    // Key A left the set: its tokens are refused (and, within the interval, without a fetch).
    assert_eq!(v.verify(&token_a).await, Err(AuthError::UnknownKey));
    assert_eq!(server.hits(), 2);

    // An unknown kid, once the interval has passed, costs one fetch, then is refused.
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    let stranger = rs256('a', Some("no-such-kid"), &claims_for("eve"));
    assert_eq!(v.verify(&stranger).await, Err(AuthError::UnknownKey));
    assert_eq!(server.hits(), 3);
    assert_eq!(v.verify(&stranger).await, Err(AuthError::UnknownKey));
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn unknown_kid_flood_is_rate_limited() {
    // Default options: at most one fetch per 10 s.
    let server = KeyServer::start(jwks(&['a']), Duration::ZERO).await;
    let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
    assert!(
        v.verify(&rs256('a', Some(KID_A), &claims_for("alice")))
            .await
            .is_ok()
    );
    assert_eq!(server.hits(), 1);
    for i in 0..50 {
        let t = rs256('a', Some(&format!("garbage-{i}")), &claims_for("eve"));
        assert_eq!(v.verify(&t).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(
        server.hits(),
        1,
        "garbage kids must not hammer the key server"
    );
    // Known kids still work meanwhile.
    assert!(
        v.verify(&rs256('a', Some(KID_A), &claims_for("alice")))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_share_one_fetch() {
    let server = KeyServer::start(jwks(&['a']), Duration::from_millis(300)).await;
    let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
    let token = rs256('a', Some(KID_A), &claims_for("alice"));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let v = v.clone();
            let token = token.clone();
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().as_str(), "alice");
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_one_fetch() {
    let server = KeyServer::start(jwks(&['a']), Duration::from_millis(200)).await;
    let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let v = v.clone();
            let token = rs256('a', Some(&format!("garbage-{i}")), &claims_for("eve"));
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(AuthError::UnknownKey));
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn signature_must_match_the_kid_key() {
    let server = KeyServer::start(jwks(&['a', 'b']), Duration::ZERO).await;
    let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
    // Signed by B but claims to be A.
    let t = rs256('b', Some(KID_A), &claims_for("alice"));
    assert_eq!(v.verify(&t).await, Err(AuthError::BadSignature));
    // RS256 without kid.
    let t = rs256('a', None, &claims_for("alice"));
    assert_eq!(v.verify(&t).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let server = KeyServer::start(jwks(&['a']), Duration::ZERO).await;
    // HS256 on too (the operator set a secret): the HMAC key is that secret, never a public key.
    let args = AuthArgs {
        jwt_secret: Some(SECRET.into()),
        ..server.args()
    };
    let v = Verifier::new(&args, LOOPBACK).unwrap();
    // Warm the cache so key A is definitely loaded.
    assert!(
        v.verify(&rs256('a', Some(KID_A), &claims_for("alice")))
            .await
            .is_ok()
    );
    let public_pem = fixture("test_only_rsa_a_pub.pem");
    let jwk_a = jwk('a');
    let c = claims_for("mallory");
    // HS256 tokens signed with the RSA public key (PEM, and the raw JWK `n`) as HMAC secret.
    for secret in [
        public_pem.as_bytes(),
        public_pem.trim().as_bytes(),
        jwk_a["n"].as_str().unwrap().as_bytes(),
    ] {
        for header in [
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"alg": "HS256", "kid": KID_A}),
        ] {
            let t = with_header(&header, &c, Some(secret));
            assert_eq!(v.verify(&t).await, Err(AuthError::BadSignature));
        }
    }
    // An RS256 header over an HMAC signature made with the shared secret: never checked with
    // the secret, so refused.
    let t = with_header(
        &json!({"alg": "RS256", "kid": KID_A}),
        &c,
        Some(SECRET.as_bytes()),
    );
    assert_eq!(v.verify(&t).await, Err(AuthError::BadSignature));
    // `none` with a known kid.
    let t = with_header(&json!({"alg": "none", "kid": KID_A}), &c, None);
    assert_eq!(
        v.verify(&t).await,
        Err(AuthError::UnsupportedAlgorithm("none".into()))
    );
}

#[tokio::test]
async fn rs256_claim_checks_cognito_style() {
    let iss = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_TestPool";
    let server = KeyServer::start(jwks(&['a']), Duration::ZERO).await;
    let args = AuthArgs {
        jwt_issuer: Some(iss.into()),
        jwt_audience: vec!["client-one".into(), "client-two".into()],
        jwt_user_claim: "cognito:username".into(),
        ..server.args()
    };
    let v = Verifier::new(&args, LOOPBACK).unwrap();
    let base = json!({
        "sub": "0b7c6a8e-1111-4222-8333-444455556666",
        "cognito:username": "google_337456865285275482928",
        "iss": iss,
        "aud": "client-two",
        "token_use": "id",
        "exp": now() + 3600,
        "iat": now(),
    });
    let sign = |c: &serde_json::Value| rs256('a', Some(KID_A), c);
    assert_eq!(
        v.verify(&sign(&base)).await.unwrap().as_str(),
        "google_337456865285275482928"
    );

    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let cases = [
        (
            with("iss", json!("https://evil.example")),
            AuthError::WrongIssuer,
        ),
        (without("iss"), AuthError::WrongIssuer),
        (with("aud", json!("client-three")), AuthError::WrongAudience),
        (without("aud"), AuthError::WrongAudience),
        (with("exp", json!(now() - 3600)), AuthError::Expired),
        (without("exp"), AuthError::MissingExpiry),
        (
            without("cognito:username"),
            AuthError::MissingUserClaim("cognito:username".into()),
        ),
        (
            with("cognito:username", json!("")),
            AuthError::EmptyUserClaim("cognito:username".into()),
        ),
        (
            with("cognito:username", json!("u".repeat(51))),
            AuthError::UserClaimTooLong("cognito:username".into()),
        ),
    ];
    for (c, expected) in cases {
        assert_eq!(v.verify(&sign(&c)).await, Err(expected), "{c}");
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn key_set_unavailable_http_error_then_recovery() {
    let interval = Duration::from_millis(300);
    let server = KeyServer::start(jwks(&['a']), Duration::ZERO).await;
    server.set_status(500);
    let v = Verifier::with_options(&server.args(), LOOPBACK, options(interval)).unwrap();
    let t = rs256('a', Some(KID_A), &claims_for("alice"));

    let err = v.verify(&t).await.unwrap_err();
    assert_eq!(err, AuthError::KeySetUnavailable);
    assert!(err.is_server_fault());
    assert_eq!(server.hits(), 1);
    // Failures are rate-limited too.
    assert_eq!(v.verify(&t).await, Err(AuthError::KeySetUnavailable));
    assert_eq!(server.hits(), 1);

    server.set_status(200);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    assert!(v.verify(&t).await.is_ok());
    assert_eq!(server.hits(), 2);

    // The server breaks again: cached keys keep working without a fetch.
    server.set_status(503);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    assert!(v.verify(&t).await.is_ok());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn key_set_unavailable_bad_bodies() {
    for body in [
        json!({"nope": true}),
        json!({"keys": []}),
        json!({"keys": [{"kty": "EC", "kid": KID_A, "crv": "P-256", "x": "AA", "y": "AA"}]}),
        json!({"keys": [{"kty": "RSA", "kid": KID_A, "n": "AQAB", "e": "AQAB", "use": "enc"}]}),
        json!("just a string"),
    ] {
        let server = KeyServer::start(body.clone(), Duration::ZERO).await;
        let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
        let t = rs256('a', Some(KID_A), &claims_for("alice"));
        assert_eq!(
            v.verify(&t).await,
            Err(AuthError::KeySetUnavailable),
            "{body}"
        );
    }
    // Unusable entries are skipped, usable ones kept.
    let mut mixed = jwks(&['a']);
    mixed["keys"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"kty": "EC", "kid": "ec-key", "crv": "P-256"}));
    let server = KeyServer::start(mixed, Duration::ZERO).await;
    let v = Verifier::new(&server.args(), LOOPBACK).unwrap();
    assert!(
        v.verify(&rs256('a', Some(KID_A), &claims_for("alice")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn key_set_unavailable_connection_refused() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let args = AuthArgs {
        jwks_url: Some(format!("http://127.0.0.1:{port}/jwks.json")),
        ..args()
    };
    let v = Verifier::new(&args, LOOPBACK).unwrap();
    let t = rs256('a', Some(KID_A), &claims_for("alice"));
    assert_eq!(v.verify(&t).await, Err(AuthError::KeySetUnavailable));
    // HS256 does not depend on the key server.
    assert!(v.verify(&hs256(SECRET, &claims_for("dev"))).await.is_ok());
}
