//! CORS under a base path: preflights on every route, headers for configured origins only,
//! errors included; the routes live under the base path only. In-process.

mod common;

use axum::body::Body;
use axum::http::{Method, Request};
use common::{send, token};
use uuid::Uuid;

#[tokio::test]
async fn cors_preflight_on_every_route_and_base_path() {
    let app = common::app(&common::http_args(
        "/prod/",
        "http://localhost:4200,https://chat.pagenow.example,chrome-extension://*",
    ));
    let base = "/prod";
    let id = Uuid::new_v4();
    let paths = [
        "/conversation".to_owned(),
        "/conversation/direct/x".to_owned(),
        "/conversations".to_owned(),
        format!("/conversations/{id}"),
        format!("/conversations/{id}/messages"),
        format!("/conversations/{id}/participants"),
    ];
    for path in &paths {
        for origin in [
            "http://localhost:4200",
            "https://chat.pagenow.example",
            "chrome-extension://abcdefgh",
        ] {
            let request = Request::builder()
                .method(Method::OPTIONS)
                .uri(format!("{base}{path}"))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .header(
                    "Access-Control-Request-Headers",
                    "authorization,content-type",
                )
                .body(Body::empty())
                .unwrap();
            let (status, headers, _) = send(&app, request).await;
            assert!(status.is_success(), "{path} {origin}: {status}");
            assert_eq!(headers["access-control-allow-origin"], origin);
            let allowed_headers = headers["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .to_lowercase();
            for h in ["content-type", "authorization", "x-amz-date", "x-api-key"] {
                assert!(allowed_headers.contains(h), "{allowed_headers}");
            }
            let methods = headers["access-control-allow-methods"].to_str().unwrap();
            for m in ["GET", "POST", "OPTIONS"] {
                assert!(methods.contains(m), "{methods}");
            }
        }
        let request = Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("{base}{path}"))
            .header("Origin", "https://evil.example")
            .header("Access-Control-Request-Method", "GET")
            .body(Body::empty())
            .unwrap();
        let (_, headers, _) = send(&app, request).await;
        assert!(!headers.contains_key("access-control-allow-origin"));
    }
    // Actual responses (errors included) carry the header for a configured origin only (a
    // served 200 is checked against the real stack, in tests/tests/rest.rs).
    let request = Request::get(format!("{base}/conversations"))
        .header("Origin", "http://localhost:4200")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&app, request).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:4200"
    );
    let request = Request::get(format!("{base}/conversations"))
        .header("Origin", "https://evil.example")
        .header("Authorization", token("vic"))
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = send(&app, request).await;
    assert!(!headers.contains_key("access-control-allow-origin"));
    // The routes live under the base path only.
    let request = Request::get("/conversations")
        .header("Authorization", token("vic"))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, 404);
}
