//! schemathesis (PyPI) against a real `chat-api` and its served `openapi.json`, with every check:
//! the document must say exactly what the server accepts and answers. The pinned version is
//! installed under target/ by scripts/schemathesis (scripts/test runs it first).

use std::path::Path;
use std::process::Stdio;

use chat_tests::TestEnv;

/// Installs schemathesis if needed; the path of its `st` command.
fn schemathesis() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/schemathesis");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/schemathesis");
    assert!(output.status.success(), "scripts/schemathesis failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn schemathesis_finds_nothing_against_the_served_document() {
    let st = schemathesis();
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let api = env.spawn_api().await;
    // Hypothesis keeps nothing (no example database), but works in a directory of its own.
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{}", env.name));
    std::fs::create_dir_all(&work).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schemathesis.toml");
    let output = tokio::process::Command::new(&st)
        .current_dir(&work)
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &api.url("/openapi.json"),
            "--url",
            &api.url(""),
            "--checks",
            "all",
            "--header",
            &format!("Authorization: {}", env.token("schemathesis")),
            "--generation-database",
            "none",
            "--seed",
            "20261202",
            "--request-timeout",
            "30",
            "--no-color",
        ])
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}{stderr}\n(api log: {})",
        api.log_path.display()
    );
}
