//! Hostile clients against the real stack (issue 9): slow and silent sockets, peers that stop
//! answering pings, floods of frames and requests, invented methods, strangers' preflights and
//! nonsensical settings. Every timeout is set short through the environment so the tests run
//! quickly; nothing here asserts how fast anything is.

use std::time::Duration;

use chat_tests::fixtures::projected_conversation;
use chat_tests::registry::registrations;
use chat_tests::{RestClient, Service, TestEnv, WsClient, eventually, ws};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);

/// Reads and throws away everything until the peer closes; panics after `patience`.
async fn until_closed(socket: &mut TcpStream, patience: Duration) {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Err(_) => panic!("the server kept the socket open for {patience:?}"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

// --- Part 3: slow and silent clients -------------------------------------------------------

#[tokio::test]
async fn half_a_request_line_is_closed_after_the_header_timeout_on_both_ports() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CHAT_HTTP_HEADER_TIMEOUT_SECS", "1")])
        .await;
    let edge = env
        .spawn_edge_with(&[("CHAT_WS_HEADER_TIMEOUT_SECS", "1")])
        .await;
    for service in [&api, &edge] {
        // Half a request line, then nothing.
        let mut slow = TcpStream::connect(service.addr).await.unwrap();
        slow.write_all(b"GET /conversa").await.unwrap();
        // A keep-alive connection that went idle after one answered request.
        let mut idle = TcpStream::connect(service.addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        idle.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200", "{}", service.name);
        until_closed(&mut slow, PATIENCE).await;
        until_closed(&mut idle, PATIENCE).await;
    }
}

#[tokio::test]
async fn a_rest_body_that_never_ends_is_cut_off_with_a_json_408() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CHAT_HTTP_REQUEST_TIMEOUT_SECS", "1")])
        .await;
    let mut slow = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /conversation HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"isGr",
        env.token("alice")
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, slow.read_to_end(&mut answer))
        .await
        .expect("the connection was held open")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
}

#[tokio::test]
async fn rest_connections_are_capped_and_a_freed_slot_serves_again() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[
            ("CHAT_HTTP_MAX_CONNECTIONS", "2"),
            ("CHAT_HTTP_HEADER_TIMEOUT_SECS", "2"),
        ])
        .await;
    // The readiness probe's connection may still hold a slot until its own timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(api.addr).await.unwrap());
    }
    // The kernel completes a third handshake, but the API does not serve it while both
    // slots are held.
    let client = reqwest::Client::new();
    let refused = client
        .get(api.url("/healthz"))
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(refused.is_err(), "served beyond the cap: {refused:?}");
    // The silent ones are closed by the header timeout; then the API serves again.
    for socket in &mut silent {
        until_closed(socket, PATIENCE).await;
    }
    let served = client
        .get(api.url("/healthz"))
        .timeout(PATIENCE)
        .send()
        .await
        .expect("served once the slots are free");
    assert_eq!(served.status(), 200);
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_and_unregistered() {
    let env = TestEnv::new().await;
    let edge = env
        .spawn_edge_with(&[
            ("CHAT_WS_PING_INTERVAL_SECS", "1"),
            ("CHAT_WS_MAX_MISSED_PONGS", "2"),
        ])
        .await;
    // A healthy client of the same user: tungstenite answers every ping while it is read.
    let mut healthy = WsClient::connect(&env, &edge, "alice").await;

    // A raw client that upgrades and then never reads nor answers anything.
    let mut dead = TcpStream::connect(edge.addr).await.unwrap();
    let request = format!(
        "GET /?Authorization={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        env.token("alice"),
        edge.addr
    );
    dead.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        dead.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let upgraded = tokio::time::Instant::now();
    eventually("both connections registered", PATIENCE, || async {
        registrations(&env, "alice").await.len() == 2
    })
    .await;

    // Reaped after 2 unanswered pings (2-3 s), and unregistered, while the healthy client,
    // idle but answering, stays.
    eventually("the silent peer unregistered", PATIENCE, async || {
        if registrations(&env, "alice").await.len() == 1 {
            return true;
        }
        assert_eq!(healthy.next_within(Duration::from_millis(100)).await, None);
        false
    })
    .await;
    println!(
        "silent peer unregistered {:?} after its upgrade (ping every 1 s, 2 missed pongs allowed)",
        upgraded.elapsed()
    );
    until_closed(&mut dead, PATIENCE).await;
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("chat_ws_unresponsive_disconnects_total 1"),
        "{metrics}"
    );

    // The healthy client lived through more pings than the limit and still works.
    healthy.expect_silence(Duration::from_secs(3)).await;
    healthy.send(json!({"action": "heartbeat"})).await;
    healthy.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(registrations(&env, "alice").await.len(), 1);
}

// --- Part 4: rate limits ---------------------------------------------------------------------

/// The defaults, set explicitly (the harness lifts the limits for the other tests).
const SEND_DEFAULTS: [(&str, &str); 2] = [
    ("CHAT_RATE_SEND_MESSAGE_PER_MINUTE", "120"),
    ("CHAT_RATE_SEND_MESSAGE_BURST", "20"),
];

#[tokio::test]
async fn a_burst_of_150_sends_across_two_edges_is_mostly_refused_and_the_budget_refills() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let edge_a = env.spawn_edge_with(&SEND_DEFAULTS).await;
    let edge_b = env.spawn_edge_with(&SEND_DEFAULTS).await;
    let id = projected_conversation(&env, &["alice", "bob"]).await;
    let mut on_a = WsClient::connect(&env, &edge_a, "alice").await;
    let mut on_b = WsClient::connect(&env, &edge_b, "alice").await;

    // 150 sends at once, half through each edge: the budget is one, in Redis.
    for i in 0..150 {
        let ws = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        ws.feed(ws::send_message(id, &format!("m{i}"), &format!("t{i}")))
            .await;
    }
    on_a.flush().await;
    on_b.flush().await;

    // Each connection gets an error for each of its refused sends and an echo of every
    // accepted one (from both edges: they are the same user's connections).
    let (mut refused, mut accepted) = (Vec::new(), std::collections::BTreeSet::new());
    let mut retry_after_ms = 0;
    for ws in [&mut on_a, &mut on_b] {
        while let Some(frame) = ws.next_within(Duration::from_secs(3)).await {
            match frame["type"].as_str() {
                Some("error") => {
                    assert_eq!(frame["code"], "rate_limited", "{frame}");
                    assert!(frame["tempMessageId"].is_string(), "{frame}");
                    let wait = frame["retryAfterMs"].as_u64().expect("retryAfterMs");
                    assert!(wait > 0 && wait <= 500, "{frame}");
                    retry_after_ms = retry_after_ms.max(wait);
                    refused.push(frame["tempMessageId"].as_str().unwrap().to_owned());
                }
                Some("new-message") => {
                    accepted.insert(frame["tempMessageId"].as_str().unwrap().to_owned());
                }
                _ => panic!("unexpected {frame}"),
            }
        }
    }
    println!("{} accepted, {} refused", accepted.len(), refused.len());
    assert_eq!(accepted.len() + refused.len(), 150);
    // 20 at once plus 2 a second while the flood is handled (each accepted send is an append).
    assert!(accepted.len() >= 20, "a person's burst was refused");
    assert!(
        accepted.len() <= 40,
        "the script was not stopped: {}",
        accepted.len()
    );

    // Both connections stay open and send again once the budget refilled.
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 100)).await;
    for (n, ws) in [&mut on_a, &mut on_b].into_iter().enumerate() {
        let temp = format!("after{n}");
        ws.send_message(id, "after", &temp).await;
        // (The echo of the other connection's send may come first: same user.)
        let answer = ws.next_where(|f| f["tempMessageId"] == temp.as_str()).await;
        assert_eq!(answer["type"], "new-message", "{answer}");
        // One more send fits every 500 ms.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Someone else's budget is untouched.
    let mut bob = WsClient::connect(&env, &edge_a, "bob").await;
    bob.send_message(id, "hi", "b1").await;
    let frame = bob.next_where(|f| f["tempMessageId"] == "b1").await;
    assert_eq!(frame["type"], "new-message", "{frame}");
}

#[tokio::test]
async fn heartbeat_and_read_floods_are_refused_at_their_default_budgets() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let edge = env
        .spawn_edge_with(&[
            ("CHAT_RATE_READ_MESSAGES_PER_MINUTE", "300"),
            ("CHAT_RATE_READ_MESSAGES_BURST", "60"),
            ("CHAT_RATE_HEARTBEAT_PER_MINUTE", "12"),
            ("CHAT_RATE_HEARTBEAT_BURST", "20"),
        ])
        .await;
    let id = projected_conversation(&env, &["alice", "bob"]).await;
    let mut alice = WsClient::connect(&env, &edge, "alice").await;
    for (frame, count, budget) in [
        (json!({"action": "heartbeat"}), 60, 20),
        (
            json!({"action": "read-messages", "conversationId": id}),
            200,
            60,
        ),
    ] {
        for _ in 0..count {
            alice.feed(frame.clone()).await;
        }
        alice.flush().await;
        let (mut refused, mut read_frames) = (0, 0);
        while let Some(answer) = alice.next_within(Duration::from_secs(2)).await {
            match answer["type"].as_str() {
                Some("error") => {
                    assert_eq!(answer["code"], "rate_limited", "{answer}");
                    assert!(answer["retryAfterMs"].as_u64().is_some(), "{answer}");
                    refused += 1;
                }
                Some("read-messages") => read_frames += 1,
                _ => panic!("unexpected {answer}"),
            }
        }
        println!("{frame}: {refused} of {count} refused");
        // The budget at once, plus what refilled while the frames were handled (each accepted
        // read is an append to Kafka): most of the flood is refused.
        assert!(refused >= count / 2, "{frame}: only {refused} refused");
        assert!(refused <= count - budget, "{frame}: {refused} refused");
        if frame["action"] == "read-messages" {
            assert_eq!(read_frames + refused, count);
        }
    }
}

#[tokio::test]
async fn a_flood_of_post_conversation_gets_429_with_retry_after() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let api = env
        .spawn_api_with(&[
            ("CHAT_RATE_CREATE_CONVERSATION_PER_MINUTE", "30"),
            ("CHAT_RATE_CREATE_CONVERSATION_BURST", "10"),
        ])
        .await;
    let alice = RestClient::new(api.url(""), env.token("alice"));
    let http = reqwest::Client::new();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..30 {
        let response = http
            .post(api.url("/conversation"))
            .header("Authorization", &alice.token)
            .json(&json!({"recipientIdArr": [format!("friend{i}")], "isGroup": false}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .expect("Retry-After in seconds");
                assert!((1..=2).contains(&retry_after), "{retry_after}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited", "{body}");
                assert!(body["message"].is_string(), "{body}");
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    println!("{ok} created, {limited} refused");
    assert!(ok >= 10, "the burst was refused");
    assert!(limited >= 10, "the flood was not stopped");
    // Another user is not affected; the flooder gets through again after the wait.
    let (status, body) = RestClient::new(api.url(""), env.token("bob"))
        .post(
            "/conversation",
            &json!({"recipientIdArr": ["alice"], "isGroup": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = alice
        .post(
            "/conversation",
            &json!({"recipientIdArr": ["late"], "isGroup": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

// --- Part 5: bounded telemetry ---------------------------------------------------------------

/// The lines of the `chat_http_` series in a Prometheus scrape.
async fn http_series(api: &Service) -> Vec<String> {
    let text = api.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("chat_http_"))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// Sends one raw request and reads the answer's status line.
async fn raw_request(service: &Service, request: &str) -> String {
    let mut socket = TcpStream::connect(service.addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn invented_methods_and_paths_make_no_new_metric_series() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    // One of each kind first, so that `other` and `unmatched` exist.
    raw_request(
        &api,
        "FOO0 /conversations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    raw_request(
        &api,
        "BAR0 /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // (A scrape is itself counted: the first one makes the `/metrics` series.)
    http_series(&api).await;
    let before = http_series(&api).await;
    for i in 1..=30 {
        let status = raw_request(
            &api,
            &format!("FOO{i} /conversations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 4"), "{status}");
        raw_request(
            &api,
            &format!("BAR{i} /made/up/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
    }
    let after = http_series(&api).await;
    assert_eq!(before.len(), after.len(), "new series: {after:#?}");
    assert!(
        after.iter().any(|s| s.contains(r#"method="other""#)),
        "{after:#?}"
    );
    assert!(
        after.iter().any(|s| s.contains(r#"route="unmatched""#)),
        "{after:#?}"
    );
    assert!(
        !after
            .iter()
            .any(|s| s.contains("FOO") || s.contains("made/up"))
    );
}

// --- Part 6: the remaining corners -----------------------------------------------------------

#[tokio::test]
async fn errors_outside_the_base_path_are_json() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_with(&[("CHAT_BASE_PATH", "/prod")]).await;
    let edge = env.spawn_edge_with(&[("CHAT_BASE_PATH", "/prod")]).await;
    let http = reqwest::Client::new();
    for (service, path, method) in [
        (&api, "/nowhere", "GET"),
        (&api, "/prod/nowhere", "GET"),
        (&api, "/healthz", "POST"),
        (&api, "/", "GET"),
        (&edge, "/nowhere", "GET"),
        (&edge, "/prod", "GET"),
        (&edge, "/healthz", "POST"),
    ] {
        let response = http
            .request(method.parse().unwrap(), service.url(path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{method} {path}: {status}");
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{} {method} {path}: not JSON: {e}", service.name));
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_preflight_from_an_unconfigured_origin_gets_no_cors_headers() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CHAT_CORS_ORIGINS", "http://localhost:4200")])
        .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, api.url("/conversations"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let stranger = preflight("https://evil.example.com").await.unwrap();
    let cors: Vec<_> = stranger
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers for a stranger: {cors:?}");
    let friend = preflight("http://localhost:4200").await.unwrap();
    assert!(friend.status().is_success());
    assert_eq!(
        friend.headers()["access-control-allow-origin"],
        "http://localhost:4200"
    );
    assert!(
        friend
            .headers()
            .contains_key("access-control-allow-methods")
    );
}

/// Starts `binary` with one nonsensical setting; it must exit at once, naming the variable.
async fn refuses_to_start(env: &TestEnv, binary: &str, variable: &str, value: &str) {
    let output = tokio::process::Command::new(chat_tests::binary_path(binary))
        .env_clear()
        .envs(env.service_env())
        .env(variable, value)
        .env("CHAT_HTTP_ADDR", "127.0.0.1:0")
        .env("CHAT_WS_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap_or_else(|_| panic!("{binary} started with {variable}={value}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{binary} accepted {variable}={value}"
    );
    assert!(
        stderr.contains(variable),
        "{binary}, {variable}={value}: {stderr}"
    );
}

#[tokio::test]
async fn nonsensical_settings_stop_the_service_at_start_up_naming_the_variable() {
    let env = TestEnv::new().await;
    for (variable, value) in [
        ("CHAT_WS_DEDUPE_WINDOW_SECS", "0"),
        ("CHAT_WS_MAX_CONNECTIONS", "0"),
        ("CHAT_WS_OUTBOUND_QUEUE", "0"),
        ("CHAT_WS_MAX_FRAME_BYTES", "0"),
        ("CHAT_WS_PRESENCE_TTL_SECS", "0"),
        ("CHAT_WS_HEADER_TIMEOUT_SECS", "0"),
        ("CHAT_WS_UPGRADE_TIMEOUT_SECS", "0"),
        ("CHAT_WS_PING_INTERVAL_SECS", "0"),
        ("CHAT_WS_MAX_MISSED_PONGS", "0"),
        ("CHAT_RATE_SEND_MESSAGE_PER_MINUTE", "0"),
        ("CHAT_RATE_HEARTBEAT_BURST", "0"),
    ] {
        refuses_to_start(&env, "socket-edge", variable, value).await;
    }
    for (variable, value) in [
        ("CHAT_HTTP_MAX_CONNECTIONS", "0"),
        ("CHAT_HTTP_HEADER_TIMEOUT_SECS", "0"),
        ("CHAT_PROJECTION_WAIT_MS", "0"),
        ("CHAT_RATE_CREATE_CONVERSATION_PER_MINUTE", "0"),
        ("CHAT_RATE_CREATE_CONVERSATION_BURST", "-1"),
    ] {
        refuses_to_start(&env, "chat-api", variable, value).await;
    }
    refuses_to_start(&env, "chat-api", "DATABASE_MAX_CONNECTIONS", "0").await;
    refuses_to_start(&env, "projector", "PROJECTOR_MAX_BATCH", "0").await;
}
