//! The REST API built in-process, on connections that are never made: routes, authentication,
//! CORS and the OpenAPI document answer without Postgres, Kafka or Redis running, so these
//! tests need nothing but `cargo test -p api` (axum's `examples/testing` shape).
//!
//! A request that gets as far as the database fails within [`DATABASE_PATIENCE`]: nothing
//! listens on port 1.

#![allow(dead_code)] // each test file uses its own part of this module

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The HS256 secret the in-process API verifies tokens with.
pub const SECRET: &str = "in-process-test-secret-of-32-bytes!";

/// How long a handler that reaches the (absent) database waits for a connection.
pub const DATABASE_PATIENCE: Duration = Duration::from_millis(200);

/// The API's settings: `base_path` and `cors_origins` as the environment would give them.
pub fn http_args(base_path: &str, cors_origins: &str) -> api::HttpArgs {
    api::HttpArgs {
        base_path: telemetry::BasePath::new(base_path),
        cors_origins: cors_origins.split(',').map(str::to_owned).collect(),
        projection_wait_ms: 1_000,
    }
}

/// The whole HTTP surface (`api::app`) over lazy connections to nowhere.
pub fn app(http: &api::HttpArgs) -> Router {
    let settings = auth::AuthArgs {
        jwt_secret: Some(SECRET.into()),
        jwks_url: None,
        jwt_issuer: None,
        jwt_audience: Vec::new(),
        jwt_user_claim: "sub".to_owned(),
    };
    let loopback = "127.0.0.1:0".parse().expect("an address");
    let verifier = auth::Verifier::new(&settings, loopback).expect("a verifier");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(DATABASE_PATIENCE)
        .connect_lazy("postgres://chat@127.0.0.1:1/chat")
        .expect("a lazy pool");
    let writer = writer::Writer::new(&writer::KafkaArgs::new("127.0.0.1:1", "in-process.events"))
        .expect("a producer (it connects only when it sends)");
    let state = api::AppState::new(store::Store::new(pool), writer, verifier, http);
    api::app(state, http, Router::new())
}

/// An HS256 token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(json!({ "sub": user, "exp": now_secs() + 3600 }))
}

/// Signs `claims` with [`SECRET`].
pub fn token_with(claims: Value) -> String {
    auth::mint::hs256(SECRET, &claims)
}

pub fn now_secs() -> u64 {
    auth::mint::now()
}

/// One request through `app`: the status, the headers and the JSON body (`Null` if empty).
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "status {}: body is not JSON: {}",
                parts.status,
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (parts.status, parts.headers, body)
}
