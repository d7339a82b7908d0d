//! Secure by default, tried on the real binaries: no forgeable token is accepted, settings that
//! would allow one stop the process, operational endpoints can leave the public listener, and no
//! token or secret reaches a log.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chat_tests::tokens::mint;
use chat_tests::{JWT_SECRET, RestClient, Service, TestEnv, WsClient, binary_path, eventually, ws};
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

/// The public development secret (auth::DEV_SECRET).
const DEV_SECRET: &str = "pagenow-dev-secret";

/// A valid token for `user`, signed with `secret` (HS256).
fn hs256(secret: &str, user: &str) -> String {
    mint::hs256(secret, &mint::claims_for(user))
}

/// Runs `binary` with only `env` (and PATH) and waits for it to exit; returns its status and
/// everything it wrote.
async fn run_to_exit(binary: &str, env: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(binary_path(binary))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{binary} {env:?} did not exit: it started"))
        .expect("wait for the process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

#[tokio::test]
async fn services_refuse_to_start_where_a_token_could_be_forged() {
    // Port 0: the process must stop before it binds anything.
    let public = || "0.0.0.0:0".to_owned();
    let loopback = || "127.0.0.1:0".to_owned();
    let jwks = "http://127.0.0.1:9/.well-known/jwks.json".to_owned();
    for (binary, addr_var) in [
        ("chat-api", "CHAT_HTTP_ADDR"),
        ("socket-edge", "CHAT_WS_ADDR"),
    ] {
        let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("nothing set, public address", vec![(addr_var, public())]),
            (
                "development secret, public address",
                vec![(addr_var, public()), ("CHAT_JWT_SECRET", DEV_SECRET.into())],
            ),
            (
                "development secret next to a key set, loopback",
                vec![
                    (addr_var, loopback()),
                    ("CHAT_JWT_SECRET", DEV_SECRET.into()),
                    ("CHAT_JWKS_URL", jwks.clone()),
                ],
            ),
            (
                "a 31-byte secret, public address",
                vec![(addr_var, public()), ("CHAT_JWT_SECRET", "s".repeat(31))],
            ),
        ];
        for (case, env) in cases {
            let (status, output) = run_to_exit(binary, &env).await;
            assert!(!status.success(), "{binary}, {case}: {output}");
            assert!(
                output.contains("CHAT_JWT_SECRET") && output.contains("at least 32"),
                "{binary}, {case}: the message names the setting and what to do: {output}"
            );
            assert!(!output.contains(DEV_SECRET), "{binary}, {case}: {output}");
        }
    }
}

#[tokio::test]
async fn hs256_is_refused_with_a_key_set_and_no_secret() {
    let env = TestEnv::new().await;
    // A key set nobody serves: HS256 must be refused before it is ever asked.
    let production = [
        ("CHAT_JWT_SECRET", ""),
        ("CHAT_JWKS_URL", "http://127.0.0.1:9/.well-known/jwks.json"),
    ];
    let api = env.spawn_api_with(&production).await;
    let edge = env.spawn_edge_with(&production).await;
    for secret in [JWT_SECRET, DEV_SECRET] {
        let token = hs256(secret, "mallory");
        let (status, body) = RestClient::new(api.url(""), token.clone())
            .get("/conversations")
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "unsupported_algorithm");
        let url = ws::url(edge.addr, &ws::root_with_token(&token));
        assert_eq!(ws::refusal(&url).await, 401);
    }
}

#[tokio::test]
async fn operational_endpoints_can_leave_the_public_listener() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CHAT_HTTP_OPS_ADDR", "127.0.0.1:0")])
        .await;
    let edge = env
        .spawn_edge_with(&[("CHAT_WS_OPS_ADDR", "127.0.0.1:0")])
        .await;
    let api_ops = api
        .ops_addr
        .expect("the bound operational address")
        .to_string();
    let edge_ops = edge
        .ops_addr
        .expect("the bound operational address")
        .to_string();
    let http = reqwest::Client::new();
    for (service, ops) in [(&api, &api_ops), (&edge, &edge_ops)] {
        let get = |url: String| {
            let http = http.clone();
            async move { http.get(url).send().await.expect("GET").status().as_u16() }
        };
        assert_eq!(get(service.url("/healthz")).await, 200, "{}", service.name);
        assert_eq!(get(service.url("/readyz")).await, 404, "{}", service.name);
        assert_eq!(get(service.url("/metrics")).await, 404, "{}", service.name);
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                get(format!("http://{ops}{path}")).await,
                200,
                "{} {path}",
                service.name
            );
        }
    }

    // A flood of probes is answered from the cached result: 2,000 probes, 50 at a time.
    let started = Instant::now();
    for _ in 0..40 {
        let probes = (0..50).map(|_| http.get(format!("http://{api_ops}/readyz")).send());
        for answer in join_all(probes).await {
            assert_eq!(answer.expect("probe").status(), 200);
        }
    }
    let elapsed = started.elapsed();
    eprintln!("2000 /readyz probes (50 concurrent) answered in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[tokio::test]
async fn no_token_or_secret_in_any_log_at_debug() {
    let env = TestEnv::new().await;
    let debug = [("RUST_LOG", "debug")];
    let projector = env.spawn("projector", "PROJECTOR_HTTP_ADDR", &debug).await;
    let api = env.spawn_api_with(&debug).await;
    let edge = env.spawn_edge_with(&debug).await;

    let alice = env.token("alice");
    let bob = env.token("bob");
    let forged = hs256("not-the-secret-of-this-deployment", "alice");

    // REST: a command, reads, and refusals.
    let rest = RestClient::new(api.url(""), alice.clone());
    let (status, body) = rest
        .post(
            "/conversation",
            &json!({"recipientIdArr": ["bob"], "isGroup": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let conversation: Uuid = body["conversationId"].as_str().unwrap().parse().unwrap();
    let bearer = RestClient::new(api.url(""), format!("Bearer {bob}"));
    assert_eq!(bearer.get("/conversations").await.0, 200);
    assert_eq!(
        RestClient::new(api.url(""), forged.clone())
            .get("/conversations")
            .await
            .0,
        401
    );

    // WebSocket: a connect (token in the query string), a send and its delivery, a refusal.
    let mut ws = WsClient::connect_at(&edge, &ws::root_with_token(&alice))
        .await
        .with_patience(Duration::from_secs(20));
    ws.send_message(conversation, "hello", "t1").await;
    let delivered = ws.next().await;
    assert_eq!(delivered["type"], "new-message", "{delivered}");
    let url = ws::url(edge.addr, &ws::root_with_token(&forged));
    assert!(WsClient::connect_url(&url).await.is_err());
    // The history has it once the projector folded it.
    let history = format!("/conversations/{conversation}/messages");
    eventually(
        "the message in history",
        Duration::from_secs(20),
        || async {
            let (status, body) = rest.get(&history).await;
            assert_eq!(status, 200, "{body}");
            if body[0]["content"] == "hello" {
                Ok(())
            } else {
                Err(format!("not projected: {body}"))
            }
        },
    )
    .await;
    ws.close().await;
    // Let the services log what they do after the last request (disconnect, projection).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut secrets: Vec<(&str, String)> = vec![
        ("the secret", JWT_SECRET.to_owned()),
        ("the development secret", DEV_SECRET.to_owned()),
    ];
    for (name, token) in [
        ("alice's token", &alice),
        ("bob's token", &bob),
        ("a forged token", &forged),
    ] {
        secrets.push((name, token.clone()));
        // Payload and signature: each part alone identifies the token.
        let parts: Vec<&str> = token.split('.').collect();
        secrets.push((name, parts[1].to_owned()));
        secrets.push((name, parts[2].to_owned()));
    }
    for service in [&projector, &api, &edge] {
        check_log(service, &secrets);
    }
}

fn check_log(service: &Service, secrets: &[(&str, String)]) {
    let log = std::fs::read_to_string(&service.log_path).expect("read the service's log");
    assert!(
        log.contains("DEBUG"),
        "{} did not log at debug:\n{}",
        service.name,
        service.log_tail()
    );
    for (what, secret) in secrets {
        if let Some(at) = log.find(secret.as_str()) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!(
                "{what} appears in the log of {} ({}):\n{}",
                service.name,
                service.log_path.display(),
                &log[line_start..line_end]
            );
        }
    }
}

#[tokio::test]
async fn help_never_shows_a_configured_secret() {
    let env = [
        (
            "CHAT_JWT_SECRET",
            "help-secret-0123456789-0123456789".to_owned(),
        ),
        (
            "DATABASE_URL",
            "postgres://chat:help-db-password@db/chat".to_owned(),
        ),
        (
            "REDIS_URL",
            "redis://:help-redis-password@redis:6379".to_owned(),
        ),
    ];
    for binary in ["chat-api", "socket-edge", "projector"] {
        let mut with_help = env.to_vec();
        with_help.push(("RUST_LOG", "debug".to_owned()));
        let output = std::process::Command::new(binary_path(binary))
            .arg("--help")
            .env_clear()
            .envs(with_help.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run --help");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{binary}: {text}");
        for secret in [
            "help-secret-0123456789-0123456789",
            "help-db-password",
            "help-redis-password",
        ] {
            assert!(
                !text.contains(secret),
                "{binary} --help shows {secret}:\n{text}"
            );
        }
    }
}
