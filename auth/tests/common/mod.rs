//! What the integration tests share: the fixture keys, tokens (minted by `auth::mint`) and a
//! real JWKS HTTP server.
// Each test file uses a part of this module.
#![allow(dead_code, unused_imports)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::AuthArgs;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;
use serde_json::{Value, json};

pub const SECRET: &str = "unit-test-secret-0123456789";

/// Where a development service listens.
pub const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Where a deployed service listens (every interface).
pub const PUBLIC: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));

pub const KID_A: &str = "test-only-key-a";
pub const KID_B: &str = "test-only-key-b";

pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn jwk(which: char) -> Value {
    serde_json::from_str(&fixture(&format!("test_only_jwk_{which}.json"))).unwrap()
}

pub fn jwks(keys: &[char]) -> Value {
    json!({ "keys": keys.iter().map(|&k| jwk(k)).collect::<Vec<_>>() })
}

pub use auth::mint::{base64url, claims_for, hs256, now, with_header};

/// RS256 token signed with fixture key `which`, header `kid` = `kid`.
pub fn rs256(which: char, kid: Option<&str>, claims: &Value) -> String {
    auth::mint::rs256(&fixture(&format!("test_only_rsa_{which}.pem")), kid, claims)
}

pub fn args() -> AuthArgs {
    AuthArgs {
        jwt_secret: Some(SecretString::from(SECRET)),
        jwks_url: None,
        jwt_issuer: None,
        jwt_audience: Vec::new(),
        jwt_user_claim: "sub".into(),
    }
}

/// A JWKS endpoint over real HTTP on 127.0.0.1, counting its hits.
#[derive(Clone)]
pub struct KeyServer {
    pub url: String,
    body: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    delay: Duration,
}

impl KeyServer {
    pub async fn start(body: Value, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = KeyServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            body: Arc::new(Mutex::new(body)),
            hits: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(AtomicU16::new(200)),
            delay,
        };
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve_jwks))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_body(&self, body: Value) {
        *self.body.lock().unwrap() = body;
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// A production configuration: this key set and no HS256 secret.
    pub fn args(&self) -> AuthArgs {
        AuthArgs {
            jwks_url: Some(self.url.clone()),
            jwt_secret: None,
            ..args()
        }
    }
}

async fn serve_jwks(State(server): State<KeyServer>) -> impl IntoResponse {
    server.hits.fetch_add(1, Ordering::SeqCst);
    if !server.delay.is_zero() {
        tokio::time::sleep(server.delay).await;
    }
    let status = StatusCode::from_u16(server.status.load(Ordering::SeqCst)).unwrap();
    let body = server.body.lock().unwrap().clone();
    (status, axum::Json(body))
}
