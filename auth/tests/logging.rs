//! Refusals are logged at debug, never with the token or the secret.
//!
//! Alone in its own test binary: it installs a scoped `tracing` subscriber, and tracing caches
//! each log site's interest process-wide, so a test running in parallel on another thread could
//! make those sites invisible to it.

mod common;

use auth::{AuthArgs, Verifier};
use common::*;
use serde_json::json;

fn verifier(args: AuthArgs) -> Verifier {
    Verifier::new(&args, LOOPBACK).unwrap()
}

#[test]
fn refusals_are_logged_at_debug_without_token_or_secret() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let forged = hs256("another-secret", &claims_for("alice"));
    let expired = hs256(SECRET, &json!({"sub": "alice", "exp": 1}));
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let v = verifier(args());
            assert!(v.verify(&forged).await.is_err());
            assert!(v.verify(&format!("Bearer {expired}")).await.is_err());
        });
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("bad_signature"), "{logs}");
    assert!(logs.contains("expired"), "{logs}");
    assert!(logs.contains("DEBUG"), "{logs}");
    for token in [&forged, &expired] {
        for part in token.split('.') {
            assert!(!logs.contains(part), "token part leaked: {logs}");
        }
    }
    assert!(!logs.contains(SECRET), "{logs}");
}
