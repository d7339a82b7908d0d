//! When HS256 is accepted: every combination of the secret (unset, the public development one,
//! a strong one, a short one), the key set (set or not) and the listen address (loopback or not).

mod common;

use std::net::SocketAddr;

use auth::{AuthArgs, AuthError, ConfigError, Exposure, Hs256, Verifier};
use common::*;
use secrecy::SecretString;

const STRONG: &str = "0123456789abcdef0123456789abcdef-strong";

#[derive(Clone, Copy, Debug)]
enum Secret {
    Unset,
    Dev,
    Strong,
    /// Under 32 bytes.
    Short,
}

impl Secret {
    fn value(self) -> Option<&'static str> {
        match self {
            Secret::Unset => None,
            Secret::Dev => Some(auth::DEV_SECRET),
            Secret::Strong => Some(STRONG),
            Secret::Short => Some(SECRET),
        }
    }
}

/// What a combination must give.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Starts(Hs256),
    Refused(&'static str),
}

fn expected(secret: Secret, key_set: bool, loopback: bool) -> Outcome {
    use Outcome::*;
    match (secret, key_set, loopback) {
        (Secret::Unset, false, true) => Starts(Hs256::DevSecret),
        (Secret::Unset, false, false) => Refused("no_key"),
        (Secret::Unset, true, _) => Starts(Hs256::Refused),
        (Secret::Dev, false, true) => Starts(Hs256::DevSecret),
        (Secret::Dev, _, _) => Refused("dev_secret"),
        (Secret::Strong, _, _) => Starts(Hs256::Secret),
        (Secret::Short, _, true) => Starts(Hs256::Secret),
        (Secret::Short, _, false) => Refused("short_secret"),
    }
}

fn kind(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::NoKey(_) => "no_key",
        ConfigError::DevSecretRefused(_) => "dev_secret",
        ConfigError::ShortSecret { .. } => "short_secret",
        _ => "other",
    }
}

#[tokio::test]
async fn every_combination_of_secret_key_set_and_address() {
    let server = KeyServer::start(jwks(&['a']), std::time::Duration::ZERO).await;
    let addresses: [(SocketAddr, bool); 5] = [
        (LOOPBACK, true),
        ("[::1]:8080".parse().unwrap(), true),
        (PUBLIC, false),
        ("[::]:8080".parse().unwrap(), false),
        ("10.1.2.3:8080".parse().unwrap(), false),
    ];
    let rs256_token = rs256('a', Some(KID_A), &claims_for("alice"));
    let dev_token = hs256(auth::DEV_SECRET, &claims_for("mallory"));
    for secret in [Secret::Unset, Secret::Dev, Secret::Strong, Secret::Short] {
        for key_set in [false, true] {
            for (listen, loopback) in addresses {
                let case = format!("secret {secret:?}, key set {key_set}, listening on {listen}");
                let args = AuthArgs {
                    jwt_secret: secret.value().map(SecretString::from),
                    jwks_url: key_set.then(|| server.url.clone()),
                    ..args()
                };
                let outcome = match Verifier::new(&args, listen) {
                    Ok(v) => {
                        // The verifier does what it says.
                        let mode = v.hs256();
                        let dev = v.verify(&dev_token).await;
                        match mode {
                            Hs256::DevSecret => assert!(dev.is_ok(), "{case}"),
                            Hs256::Secret => {
                                assert_eq!(dev, Err(AuthError::BadSignature), "{case}");
                                let own = hs256(secret.value().unwrap(), &claims_for("alice"));
                                assert_eq!(v.verify(&own).await.unwrap().as_str(), "alice");
                            }
                            Hs256::Refused => {
                                assert_eq!(
                                    dev.unwrap_err().code(),
                                    "unsupported_algorithm",
                                    "{case}"
                                );
                            }
                        }
                        let rs256 = v.verify(&rs256_token).await;
                        if key_set {
                            assert!(rs256.is_ok(), "{case}: {rs256:?}");
                        } else {
                            assert_eq!(rs256, Err(AuthError::KeySetNotConfigured), "{case}");
                        }
                        Outcome::Starts(mode)
                    }
                    Err(err) => {
                        // The message names the setting and says what to do.
                        let message = err.to_string();
                        assert!(message.contains("CHAT_JWT_SECRET"), "{case}: {message}");
                        assert!(message.contains("at least 32"), "{case}: {message}");
                        assert!(!message.contains(auth::DEV_SECRET), "{case}: {message}");
                        Outcome::Refused(kind(&err))
                    }
                };
                assert_eq!(outcome, expected(secret, key_set, loopback), "{case}");
            }
        }
    }
}

#[test]
fn refusals_say_why() {
    let dev = AuthArgs {
        jwt_secret: Some(auth::DEV_SECRET.into()),
        ..args()
    };
    let err = Verifier::new(&dev, PUBLIC).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::DevSecretRefused(Exposure::Listens(PUBLIC))
    ));
    assert!(err.to_string().contains("0.0.0.0:8080"), "{err}");
    let with_key_set = AuthArgs {
        jwks_url: Some("https://example.invalid/.well-known/jwks.json".into()),
        ..dev
    };
    let err = Verifier::new(&with_key_set, LOOPBACK).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::DevSecretRefused(Exposure::KeySet)
    ));
    assert!(err.to_string().contains("CHAT_JWKS_URL"), "{err}");

    let short = AuthArgs {
        jwt_secret: Some("x".repeat(31).into()),
        ..args()
    };
    let err = Verifier::new(&short, PUBLIC).unwrap_err();
    assert!(matches!(err, ConfigError::ShortSecret { bytes: 31, .. }));
    let long_enough = AuthArgs {
        jwt_secret: Some("x".repeat(32).into()),
        ..args()
    };
    assert_eq!(
        Verifier::new(&long_enough, PUBLIC).unwrap().hs256(),
        Hs256::Secret
    );

    let nothing = AuthArgs {
        jwt_secret: None,
        ..args()
    };
    let err = Verifier::new(&nothing, PUBLIC).unwrap_err();
    assert!(matches!(err, ConfigError::NoKey(PUBLIC)));
    assert!(err.to_string().contains("CHAT_JWKS_URL"), "{err}");
}
