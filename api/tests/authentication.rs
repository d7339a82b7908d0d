//! Every route refuses a request without a valid token, before anything is read: in-process.

mod common;

use auth::mint;
use axum::body::Body;
use axum::http::Request;
use common::{now_secs, send, token_with};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn every_route_requires_a_valid_token() {
    let app = common::app(&common::http_args("", "http://localhost:4200"));
    let id = Uuid::new_v4();
    let expired = token_with(json!({"sub": "tess", "exp": now_secs() - 3600}));
    let no_exp = token_with(json!({"sub": "tess"}));
    let empty_user = token_with(json!({"sub": "", "exp": now_secs() + 60}));
    let long_user = token_with(json!({"sub": "x".repeat(51), "exp": now_secs() + 60}));
    // alg none: header {"alg":"none"} and no signature.
    let none = mint::with_header(
        &json!({"alg": "none", "typ": "JWT"}),
        &json!({"sub": "tess", "exp": now_secs() + 60}),
        None,
    );
    let wrong_secret = mint::hs256(
        "not the secret",
        &json!({"sub": "tess", "exp": now_secs() + 60}),
    );
    let routes = [
        ("POST", "/conversation".to_owned()),
        ("GET", "/conversation/direct/uma".to_owned()),
        ("GET", "/conversations".to_owned()),
        ("GET", format!("/conversations/{id}")),
        ("GET", format!("/conversations/{id}/messages")),
        ("GET", format!("/conversations/{id}/participants")),
    ];
    for (method, path) in &routes {
        for token in [
            None,
            Some("garbage"),
            Some(&expired),
            Some(&no_exp),
            Some(&none),
            Some(&wrong_secret),
            Some(&empty_user),
            Some(&long_user),
        ] {
            let mut request = Request::builder().method(*method).uri(path);
            if let Some(token) = token {
                request = request.header("Authorization", token);
            }
            let body = if *method == "POST" {
                request = request.header("Content-Type", "application/json");
                Body::from(json!({"recipientIdArr": ["uma"], "isGroup": false}).to_string())
            } else {
                Body::empty()
            };
            let (status, _, body) = send(&app, request.body(body).unwrap()).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
            assert!(body["error"].is_string() && body["message"].is_string());
        }
    }
}
