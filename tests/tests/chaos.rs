//! Faults under load (issue 11): WebSocket clients send at a steady pace and retry every
//! unacknowledged send with the same `tempMessageId` (after error frames, silences and
//! reconnects), a REST client creates groups under idempotency keys and retries them, while the
//! projector, the edge and the API are SIGKILLed in turn and started again. Afterwards every
//! acknowledged message is in history exactly once, under the id its echo carried, each
//! sender's messages in sending order; every acknowledged group is readable; verify is clean.
//!
//! Kafka and Redis are shared by every test of the suite here, so this test does not kill them
//! (the broker restart has its own serial test in websocket.rs).
//!
//! Its size is set by the environment, so that the same test runs as a longer soak
//! (docs/reliability.md): `CHAOS_PAIRS` pairs of senders, each pair in a conversation of its own
//! (default 1), and `CHAOS_ROUNDS` rounds of the three faults (default 2).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_tests::fixtures::{append_all, created};
use chat_tests::{RestClient, TestEnv, binary_path};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// A killed edge's registrations live on in Redis until they expire (`CHAT_WS_PRESENCE_TTL_SECS`,
/// 120 s) and count against the per-user connection limit (16): with an edge killed every few
/// seconds, reconnects would be refused (429) for want of room, which is not what is measured
/// here.
const EDGE: &[(&str, &str)] = &[("CHAT_WS_MAX_CONNECTIONS_PER_USER", "0")];

/// Pause between one acknowledged send and the next: a steady pace for the whole run.
const PACE: Duration = Duration::from_millis(50);
/// Longest a sender waits for its echo before it retries on a fresh connection: more than an
/// append in flight can hold a `tempMessageId` (`writer::LONGEST_APPEND`).
const ECHO_PATIENCE: Duration = Duration::from_secs(15);

/// What a sender saw: (tempMessageId, messageId, sentAt) of each acknowledged message in
/// sending order, how many attempts were retries, and the longest wait for one echo.
type Sent = (Vec<(String, String, String)>, usize, Duration);

/// Sends messages one after another until told to stop, each retried until its echo arrives.
async fn sender(
    env: Arc<TestEnv>,
    edge: watch::Receiver<String>,
    stop: watch::Receiver<bool>,
    user: String,
    conversation: Uuid,
    acks: Arc<Mutex<Vec<Instant>>>,
) -> Sent {
    let mut acknowledged = Vec::new();
    let (mut retries, mut longest) = (0, Duration::ZERO);
    let mut ws = None;
    for i in 0.. {
        if *stop.borrow() {
            break;
        }
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        let temp = Uuid::new_v4().to_string();
        let frame = json!({
            "action": "send-message", "conversationId": conversation,
            "content": format!("{user} {i}"), "tempMessageId": temp,
        })
        .to_string();
        'retry: loop {
            attempts += 1;
            let socket = match ws.as_mut() {
                Some(socket) => socket,
                None => {
                    let url = format!(
                        "ws://{}/?Authorization={}",
                        edge.borrow().clone(),
                        env.token(&user)
                    );
                    match tokio_tungstenite::connect_async(url).await {
                        Ok((socket, _)) => ws.insert(socket),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            attempts -= 1; // no attempt without a connection
                            continue 'retry;
                        }
                    }
                }
            };
            if socket.send(Message::text(frame.clone())).await.is_err() {
                ws = None;
                continue 'retry;
            }
            let deadline = tokio::time::Instant::now() + ECHO_PATIENCE;
            loop {
                let next = tokio::time::timeout_at(deadline, socket.next()).await;
                let Ok(Some(Ok(message))) = next else {
                    ws = None; // silence, or the edge went away: retry on a new connection
                    continue 'retry;
                };
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["tempMessageId"] != temp.as_str() {
                    continue;
                }
                if value["type"] == "new-message" {
                    acks.lock().unwrap().push(Instant::now());
                    acknowledged.push((
                        temp.clone(),
                        value["messageId"].as_str().unwrap().to_owned(),
                        value["sentAt"].as_str().unwrap().to_owned(),
                    ));
                    break 'retry;
                }
                // An error frame: retry after a pause.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'retry;
            }
        }
        retries += attempts - 1;
        longest = longest.max(started.elapsed());
        tokio::time::sleep(PACE).await;
    }
    (acknowledged, retries, longest)
}

/// Creates groups until told to stop, each retried under its key until a 200; returns (key, id).
async fn group_creator(
    env: Arc<TestEnv>,
    api: watch::Receiver<String>,
    stop: watch::Receiver<bool>,
) -> Vec<(String, String)> {
    let http = reqwest::Client::new();
    let mut created = Vec::new();
    for i in 0.. {
        if *stop.borrow() {
            break;
        }
        let key = Uuid::new_v4().to_string();
        let body =
            json!({"recipientIdArr": ["bob", "cy"], "isGroup": true, "title": format!("g{i}")});
        loop {
            let url = format!("http://{}/conversation", api.borrow().clone());
            let answer = http
                .post(url)
                .header("Authorization", env.token("alice"))
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(15))
                .json(&body)
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().as_u16() == 200
            {
                let value: Value = response.json().await.unwrap();
                created.push((key, value["conversationId"].as_str().unwrap().to_owned()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    created
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// Two threads: the clients' acknowledgements are timed by this process, which should not be
// the one falling behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_under_load_lose_and_double_nothing() {
    let pairs = setting("CHAOS_PAIRS", 1);
    let rounds = setting("CHAOS_ROUNDS", 2);
    let env = Arc::new(TestEnv::new().await);
    let conversations: Vec<(Uuid, String, String)> = (0..pairs)
        .map(|k| (Uuid::new_v4(), format!("a{k}"), format!("b{k}")))
        .collect();
    let creations: Vec<_> = conversations
        .iter()
        .map(|(c, a, b)| created(*c, &[a, b]))
        .collect();
    append_all(&env, &creations).await;
    let mut projector = env.spawn_projector().await;
    let mut edge = env.spawn_edge_with(EDGE).await;
    let mut api = env.spawn_api().await;
    let (edge_tx, edge_rx) = watch::channel(edge.addr.to_string());
    let (api_tx, api_rx) = watch::channel(api.addr.to_string());

    let (stop_tx, stop) = watch::channel(false);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for (c, a, b) in &conversations {
        for user in [a, b] {
            let task = tokio::spawn(sender(
                env.clone(),
                edge_rx.clone(),
                stop.clone(),
                user.clone(),
                *c,
                acks.clone(),
            ));
            senders.push((*c, user.clone(), task));
        }
    }
    let groups = tokio::spawn(group_creator(env.clone(), api_rx, stop));

    // Each process SIGKILLed in turn, every round, and started again. A restarted projector
    // joins a group of its own (the killed member would hold its partitions until its session
    // times out): where it reads is Postgres's business anyway.
    let started = Instant::now();
    let mut faults: Vec<(Instant, &str)> = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults.push((Instant::now(), "projector"));
        projector.kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let group = format!("{}-projector-{round}", env.name);
        projector = env
            .spawn(
                "projector",
                "PROJECTOR_HTTP_ADDR",
                &[("PROJECTOR_GROUP", &group)],
            )
            .await;

        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults.push((Instant::now(), "socket-edge"));
        edge.kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        edge = env.spawn_edge_with(EDGE).await;
        edge_tx.send_replace(edge.addr.to_string());

        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults.push((Instant::now(), "chat-api"));
        api.kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        api = env.spawn_api().await;
        api_tx.send_replace(api.addr.to_string());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send_replace(true);

    let mut sent: Vec<(Uuid, String, Sent)> = Vec::new();
    for (c, user, task) in senders {
        sent.push((c, user, task.await.unwrap()));
    }
    let loaded = started.elapsed();
    let groups = groups.await.unwrap();
    let messages: usize = sent.iter().map(|(_, _, s)| s.0.len()).sum();
    let retries: usize = sent.iter().map(|(_, _, s)| s.1).sum();
    let longest = sent.iter().map(|(_, _, s)| s.2).max().unwrap_or_default();
    // The longest pause in acknowledgements (every sender silent) around each kind of kill:
    // each silence is charged to the first kill inside it.
    let mut acks = acks.lock().unwrap().clone();
    acks.sort();
    let mut pauses: Vec<(&str, Duration)> = Vec::new();
    for kind in ["projector", "socket-edge", "chat-api"] {
        pauses.push((kind, Duration::ZERO));
    }
    for pair in acks.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        if let Some((_, kind)) = faults.iter().find(|(at, _)| *at > from && *at <= to) {
            let longest = &mut pauses.iter_mut().find(|(k, _)| k == kind).unwrap().1;
            *longest = (*longest).max(to - from);
        }
    }
    eprintln!(
        "chaos: {} SIGKILLs in {loaded:.1?}, {messages} messages acknowledged by {} senders ({retries} retried attempts, longest wait for one echo {longest:.2?}), {} groups; longest pause in acknowledgements after a kill of: {}",
        faults.len(),
        sent.len(),
        groups.len(),
        pauses
            .iter()
            .map(|(k, p)| format!("{k} {p:.2?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (_, user, (acknowledged, _, _)) in &sent {
        assert!(acknowledged.len() > 20, "{user}'s load ran throughout");
    }

    // History, once projected: every acknowledged message exactly once, under its echoed id
    // and sentAt, each sender's in sending order.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (conversation, a, _) in &conversations {
        let mine: Vec<&(Uuid, String, Sent)> =
            sent.iter().filter(|(c, _, _)| c == conversation).collect();
        let expected: usize = mine.iter().map(|(_, _, s)| s.0.len()).sum();
        let rest = RestClient::new(api.url(""), env.token(a));
        let history: Vec<Value> = loop {
            let mut all = Vec::new();
            for offset in (0..).step_by(100) {
                let (status, page) = rest
                    .get(&format!(
                        "/conversations/{conversation}/messages?limit=100&offset={offset}&order=asc"
                    ))
                    .await;
                assert_eq!(status, 200, "{page}");
                let page = page.as_array().unwrap().clone();
                let short = page.len() < 100;
                // Pages are newest first: asc pages come from the newest end.
                all.splice(0..0, page);
                if short {
                    break;
                }
            }
            if all.len() >= expected {
                break all;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {expected} messages in history",
                all.len(),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(history.len(), expected, "nothing doubled");
        let by_id: HashMap<&str, usize> = history
            .iter()
            .enumerate()
            .map(|(i, m)| (m["messageId"].as_str().unwrap(), i))
            .collect();
        assert_eq!(by_id.len(), history.len());
        for (_, user, (acknowledged, _, _)) in mine {
            let mut positions = Vec::new();
            for (i, (_, id, sent_at)) in acknowledged.iter().enumerate() {
                let at = *by_id
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("{user}'s message {i} ({id}) is not in history"));
                assert_eq!(history[at]["sentAt"], sent_at.as_str(), "{user} {i}");
                assert_eq!(history[at]["content"], format!("{user} {i}"));
                positions.push(at);
            }
            assert!(positions.is_sorted(), "{user}'s messages in sending order");
        }
    }

    // Every acknowledged group readable, each key one group.
    let alice_rest = RestClient::new(api.url(""), env.token("alice"));
    let ids: HashSet<&str> = groups.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), groups.len());
    for (key, id) in &groups {
        assert_eq!(*id, events::keyed_group_id("alice", key).to_string());
        let (status, body) = alice_rest.get(&format!("/conversations/{id}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let pool = env.pool().await;
    let all_groups: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations WHERE is_group")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(all_groups, groups.len() as i64);

    let output = tokio::process::Command::new(binary_path("chatctl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.service_env())
        .arg("verify")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}");
    drop((projector, edge, api));
}
