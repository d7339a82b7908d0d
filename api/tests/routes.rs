//! What the router answers before anything is read: a malformed conversation id names its
//! parameter, a path outside the API is a JSON 404. In-process.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{send, token};
use serde_json::{Value, json};

fn assert_error(status: u16, body: &Value, want_status: u16, field: &str) {
    assert_eq!(status, want_status, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("'{field}'")),
        "{message} should name {field}"
    );
}

#[tokio::test]
async fn malformed_ids_and_unknown_routes_are_named() {
    let app = common::app(&common::http_args("", "http://localhost:4200"));
    let get = |path: String| {
        let app = app.clone();
        async move {
            let request = Request::get(path)
                .header("Authorization", token("mallory"))
                .body(Body::empty())
                .unwrap();
            let (status, _, body) = send(&app, request).await;
            (status.as_u16(), body)
        }
    };
    for suffix in [
        "",
        "/messages",
        "/participants",
        "/messages?limit=5&order=asc",
    ] {
        let (status, body) = get(format!("/conversations/not-a-uuid{suffix}")).await;
        assert_error(status, &body, 400, "conversationId");
    }
    let (status, body) = get("/no/such/route".to_owned()).await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));
}
