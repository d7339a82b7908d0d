//! The AsyncAPI document of the WebSocket protocol and the event log
//! (`socket-edge/asyncapi.json`): served by the edge, and accepted by the AsyncAPI initiative's
//! own parser (npm `@asyncapi/parser`, pinned and installed under target/ by scripts/asyncapi;
//! scripts/test runs it first). The frames and records of the WebSocket tests are checked
//! against it by `chat_tests::asyncapi`.

use std::path::Path;
use std::process::Stdio;

use chat_tests::TestEnv;

fn published() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../socket-edge/asyncapi.json"),
    )
    .expect("read socket-edge/asyncapi.json")
}

#[test]
fn the_asyncapi_parser_accepts_the_document() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/asyncapi");
    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("../socket-edge/asyncapi.json");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(&document)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/asyncapi");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the AsyncAPI parser refuses the document:\n{stdout}"
    );
    assert!(
        stdout.contains("valid AsyncAPI 3.0.0, 2 channels"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_edge_serves_the_document_under_the_base_path() {
    let env = TestEnv::new().await;
    let edge = env.spawn_edge_with(&[("CHAT_BASE_PATH", "/prod")]).await;
    let response = reqwest::get(edge.url("/prod/asyncapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.text().await.unwrap(),
        published(),
        "the edge serves the published copy (rebuild it after regenerating the document)"
    );
    // Only under the base path, like the WebSocket path.
    let elsewhere = reqwest::get(edge.url("/asyncapi.json")).await.unwrap();
    assert_eq!(elsewhere.status(), 404);
}
