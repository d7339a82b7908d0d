//! What the edge answers over plain HTTP, tested in-process through its router with nothing
//! else running: upgrades without a valid token are refused with a JSON 401 before anything is
//! registered, the AsyncAPI document is served under the base path, and everything else is a
//! JSON error.

use std::sync::Arc;

use auth::mint;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use socket_edge::startup::{Config, edge};
use tower::ServiceExt;

const SECRET: &str = "in-process-test-secret-of-32-bytes!";

/// The edge's router under `base_path`, on connections to nowhere (nothing listens on port 1;
/// none is made before an upgrade is authenticated).
fn app(base_path: &str) -> (Router, tokio::sync::watch::Sender<bool>) {
    let config = Config::from_flags([
        "socket-edge",
        "--ws-addr=127.0.0.1:0",
        &format!("--base-path={base_path}"),
        &format!("--jwt-secret={SECRET}"),
        "--database-url=postgres://chat@127.0.0.1:1/chat",
        "--kafka-brokers=127.0.0.1:1",
        "--redis-url=redis://127.0.0.1:1",
    ])
    .expect("the flags parse");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let edge = edge(&config, shutdown).expect("an edge");
    let base = config.edge.base_path.to_string();
    let router = socket_edge::server::app(Arc::clone(&edge), &base, Router::new());
    (router, stop)
}

fn token(claims: Value) -> String {
    mint::hs256(SECRET, &claims)
}

fn now_secs() -> u64 {
    mint::now()
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{uri}: {status}: not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

#[tokio::test]
async fn upgrades_without_a_valid_token_are_refused_with_json() {
    let (app, _stop) = app("/prod/");
    let expired = token(json!({"sub": "alice", "exp": now_secs() - 3600}));
    let forged = mint::hs256(
        "not the secret",
        &json!({"sub": "alice", "exp": now_secs() + 60}),
    );
    for path in ["/prod", "/prod/"] {
        let (status, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(body["error"], "unauthorized", "{path}");
        assert!(body["message"].is_string(), "{path}: {body}");
        for bad in ["garbage", expired.as_str(), forged.as_str()] {
            let (status, body) = get(&app, &format!("{path}?Authorization={bad}")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {bad}: {body}");
            assert!(
                body["error"].is_string() && body["message"].is_string(),
                "{body}"
            );
        }
    }
    // A valid token on a request that is no upgrade: refused as such, still JSON.
    let good = token(json!({"sub": "alice", "exp": now_secs() + 60}));
    let (status, body) = get(&app, &format!("/prod/?Authorization={good}")).await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert_eq!(body["error"], "bad_upgrade");
}

#[tokio::test]
async fn the_asyncapi_document_is_served_under_the_base_path() {
    let (app, _stop) = app("/prod");
    let (status, document) = get(&app, "/prod/asyncapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let published: Value = serde_json::from_str(socket_edge::asyncapi::PUBLISHED).unwrap();
    assert_eq!(document, published);
    assert_eq!(get(&app, "/asyncapi.json").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn outside_the_websocket_path_errors_are_json() {
    let (app, _stop) = app("/prod");
    for path in ["/", "/nope", "/prod/nope", "/conversations"] {
        let (status, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"], "not_found", "{path}");
    }
    let request = Request::post("/prod/asyncapi.json")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}
