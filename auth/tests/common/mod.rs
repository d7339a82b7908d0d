//! Helpers shared by the integration tests: token minting and a real JWKS HTTP server.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::AuthArgs;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims with `sub` and an `exp` one hour ahead.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 3600, "iat": now() })
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// RS256 token signed with fixture key `which`, header `kid` = `kid`.
pub fn rs256(which: char, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture(&format!("test_only_rsa_{which}.pem"));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token with an arbitrary header, HMAC-SHA256-signed with `hmac_secret` (or with an empty
/// signature when `None`), whatever the header claims.
pub fn raw_token(header: &Value, claims: &Value, hmac_secret: Option<&[u8]>) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = match hmac_secret {
        Some(secret) => jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap(),
        None => String::new(),
    };
    format!("{signing_input}.{signature}")
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
