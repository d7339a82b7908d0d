//! The served OpenAPI document describes exactly the routes the router serves: in-process.

mod common;

use std::collections::HashSet;

use axum::body::Body;
use axum::http::Request;
use common::send;

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let app = common::app(&common::http_args("", "http://localhost:4200"));
    let request = Request::get("/openapi.json").body(Body::empty()).unwrap();
    let (status, _, doc) = send(&app, request).await;
    assert_eq!(status, 200);
    let documented: HashSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: HashSet<(String, String)> = api::operations()
        .into_iter()
        .map(|(method, path, _)| (method.to_string(), path.to_owned()))
        .collect();
    assert_eq!(documented, routed);
}
