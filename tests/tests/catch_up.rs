//! Catch-up after a reconnect, against the real stack: real clients, two edges, the projector,
//! Kafka (4 partitions), Postgres and Redis. Every frame a client sends or receives here must be
//! a message of the AsyncAPI document (`socket-edge/asyncapi.json`), as in tests/websocket.rs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chat_tests::fixtures::projected_conversation;
use chat_tests::{Service, TestEnv, WsClient, asyncapi, ws};
use serde_json::{Value, json};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(15);
/// Bob sends hundreds of messages at once.
const SENDS: &[(&str, &str)] = &[
    ("CHAT_RATE_SEND_MESSAGE_BURST", "1000"),
    ("CHAT_RATE_SEND_MESSAGE_PER_MINUTE", "60000"),
];

/// A client whose every frame is checked as [`with_cursor`] says.
async fn client(env: &TestEnv, edge: &Service, user: &str) -> WsClient {
    WsClient::connect(env, edge, user)
        .await
        .reading(with_cursor)
        .with_patience(PATIENCE)
}

/// A frame from the edge, described by the AsyncAPI document (as one message, with no field it
/// does not declare). Every frame here but `error` comes from the log or ends a catch-up, so it
/// carries a cursor.
fn with_cursor(frame: Value) -> Value {
    let name = asyncapi::check_server_frame(&frame).unwrap_or_else(|e| {
        panic!("the AsyncAPI document does not describe the received frame {frame}:\n{e}")
    });
    if name != "frame.error" {
        assert!(
            frame["cursor"].is_string(),
            "{name} without a cursor: {frame}"
        );
    }
    frame
}

async fn catch_up(client: &mut WsClient, cursor: &str) {
    client
        .send(json!({ "action": "catch-up", "cursor": cursor }))
        .await;
}

/// Reads `count` `new-message` frames; returns how many came.
async fn until_count(client: &mut WsClient, count: usize) -> usize {
    let mut n = 0;
    while n < count {
        if client.next().await["type"] == "new-message" {
            n += 1;
        }
    }
    n
}

/// A `send-message` frame whose temp id is its content.
fn send(conversation: Uuid, content: &str) -> Value {
    ws::send_message(conversation, content, content)
}

/// Sends `count` messages, `tag-0` … spread round-robin over `conversations`, without waiting.
async fn burst(sender: &mut WsClient, conversations: &[Uuid], tag: &str, count: usize) {
    for i in 0..count {
        let c = conversations[i % conversations.len()];
        sender.send(send(c, &format!("{tag}-{i}"))).await;
    }
}

/// Every `new-message` content, checking that each conversation's are in sending order.
fn contents(frames: &[Value]) -> Vec<String> {
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for f in frames.iter().filter(|f| f["type"] == "new-message") {
        let content = f["content"].as_str().unwrap().to_owned();
        let n: usize = content.rsplit('-').next().unwrap().parse().unwrap();
        let conversation = f["conversationId"].as_str().unwrap().to_owned();
        let key = format!("{conversation}/{}", content.rsplit_once('-').unwrap().0);
        if let Some(before) = last.insert(key, n) {
            assert!(
                before < n,
                "per-conversation order broken: {before} then {n}"
            );
        }
        assert!(
            f["cursor"].as_str().is_some_and(|c| c.starts_with("c1.")),
            "{f}"
        );
        out.push(content);
    }
    out
}

#[tokio::test]
async fn a_reconnect_to_the_other_edge_gets_exactly_what_it_missed_then_live_frames() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let edge_a = env.spawn_edge_with(SENDS).await;
    let edge_b = env.spawn_edge_with(SENDS).await;
    // Enough conversations to land on every partition.
    let mut conversations = Vec::new();
    for _ in 0..8 {
        conversations.push(projected_conversation(&env, &["ann", "bob"]).await);
    }

    let mut bob = client(&env, &edge_b, "bob").await;
    let mut ann = client(&env, &edge_a, "ann").await;
    // Ann's cursor: the one of the last frame she received before dropping.
    bob.send(send(conversations[0], "before-0")).await;
    let first = ann.next().await;
    assert_eq!(first["content"], "before-0");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    drop(ann);

    // While Ann is away: 200 messages over 8 conversations, sent back to back (many share a
    // millisecond), one read of Ann's (owed to her) and one of Bob's (not hers).
    burst(&mut bob, &conversations, "away", 200).await;
    bob.send(json!({"action": "read-messages", "conversationId": conversations[1]}))
        .await;
    let mut ann_elsewhere = client(&env, &edge_b, "ann").await;
    ann_elsewhere
        .send(json!({"action": "read-messages", "conversationId": conversations[2]}))
        .await;
    ann_elsewhere.until("read-messages").await;
    // Bob's own echoes tell when all of it is in the log.
    let echoes = until_count(&mut bob, 201).await;
    assert_eq!(echoes, 201);
    drop(ann_elsewhere);

    // Reconnect to the other edge and catch up while Bob keeps sending: the seam.
    let mut ann = client(&env, &edge_b, "ann").await;
    let started = std::time::Instant::now();
    catch_up(&mut ann, &cursor).await;
    burst(&mut bob, &conversations, "during", 100).await;
    let replay = ann.until("caught-up").await;
    eprintln!(
        "catch-up: {} frames (201 replayed, then the live ones held meanwhile) until caught-up in {:?}",
        replay.len(),
        started.elapsed()
    );
    let caught_up = replay.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    // Then the rest of the live frames.
    let mut live = Vec::new();
    while live
        .iter()
        .filter(|f: &&Value| f["type"] == "new-message")
        .count()
        + replay
            .iter()
            .filter(|f| {
                f["type"] == "new-message" && f["content"].as_str().unwrap().starts_with("during")
            })
            .count()
        < 100
    {
        live.push(ann.next().await);
    }
    assert!(
        ann.next_within(Duration::from_millis(500)).await.is_none(),
        "nothing more"
    );

    let all: Vec<Value> = replay.iter().chain(&live).cloned().collect();
    let got = contents(&all);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no frame twice");
    let expected: HashSet<String> = (0..200)
        .map(|i| format!("away-{i}"))
        .chain((0..100).map(|i| format!("during-{i}")))
        .collect();
    assert_eq!(
        unique,
        expected.iter().collect(),
        "none missed, nothing else"
    );
    // Replayed frames all come before the live ones of the catch-up's seam.
    let reads: Vec<&Value> = all
        .iter()
        .filter(|f| f["type"] == "read-messages")
        .collect();
    assert_eq!(reads.len(), 1, "only Ann's own read: {reads:?}");
    assert_eq!(reads[0]["userId"], "ann");
    assert_eq!(reads[0]["conversationId"], conversations[2].to_string());

    // The cursor of the last frame, on a third edge started now (a restart): nothing missed.
    let last_cursor = all.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(ann);
    let edge_c = env.spawn_edge_with(SENDS).await;
    let mut ann = client(&env, &edge_c, "ann").await;
    catch_up(&mut ann, &last_cursor).await;
    let again = ann.until("caught-up").await;
    assert_eq!(again.len(), 1, "nothing to replay: {again:?}");
    // The caught-up cursor from before replays exactly the frames that followed it.
    let mut ann2 = client(&env, &edge_a, "ann").await;
    catch_up(&mut ann2, &caught_up).await;
    let after = ann2.until("caught-up").await;
    let after: HashSet<String> = contents(&after).into_iter().collect();
    let after_live: HashSet<String> = contents(&live).into_iter().collect();
    assert_eq!(after, after_live, "the same frames as went live after it");
    drop(edge_a);
}

#[tokio::test]
async fn bounds_bad_cursors_and_rate_limits() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    // Every edge of a deployment has the same budgets (they share them in Redis).
    let rates = [
        ("CHAT_RATE_CATCH_UP_PER_MINUTE", "1"),
        ("CHAT_RATE_CATCH_UP_BURST", "8"),
        SENDS[0],
        SENDS[1],
    ];
    let edge = env
        .spawn_edge_with(&[&rates[..], &[("CHAT_WS_CATCH_UP_MAX_EVENTS", "20")]].concat())
        .await;
    let c = projected_conversation(&env, &["ann", "bob"]).await;
    let mut bob = client(&env, &edge, "bob").await;
    let mut ann = client(&env, &edge, "ann").await;
    bob.send(send(c, "x-0")).await;
    let cursor = ann.next().await["cursor"].as_str().unwrap().to_owned();
    drop(ann);
    burst(&mut bob, &[c], "y", 30).await;
    assert_eq!(until_count(&mut bob, 31).await, 31);

    // Too far behind: the answer says so, with a cursor to go on from after reading REST.
    let mut ann = client(&env, &edge, "ann").await;
    catch_up(&mut ann, &cursor).await;
    let gap = ann.next().await;
    assert_eq!(gap["type"], "catch-up-gap", "{gap}");
    assert_eq!(gap["reason"], "too_many_events");
    assert!(gap["cursor"].as_str().unwrap().starts_with("c1."));

    // Too old: an edge that replays nothing older than a second.
    let strict = env
        .spawn_edge_with(&[&rates[..], &[("CHAT_WS_CATCH_UP_MAX_AGE_SECS", "1")]].concat())
        .await;
    let mut ann = client(&env, &strict, "ann").await;
    let mut bob_strict = client(&env, &strict, "bob").await;
    bob_strict.send(send(c, "z-0")).await;
    let recent = ann.next().await["cursor"].as_str().unwrap().to_owned();
    drop(ann);
    bob_strict.send(send(c, "z-1")).await;
    assert_eq!(until_count(&mut bob_strict, 2).await, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ann = client(&env, &strict, "ann").await;
    catch_up(&mut ann, &recent).await;
    let old = ann.next().await;
    assert_eq!(old["type"], "catch-up-gap", "{old}");
    assert_eq!(old["reason"], "too_old");

    // Malformed and foreign cursors.
    let tag = socket_edge::cursor::topic_tag(&env.topic);
    let beyond_the_end = socket_edge::cursor::encode(tag, &[1 << 40; 4]);
    let other_topic = socket_edge::cursor::encode(socket_edge::cursor::topic_tag("other"), &[0; 4]);
    let too_few = socket_edge::cursor::encode(tag, &[0; 3]);
    for bad in [
        "nonsense".to_owned(),
        format!("c1.{}", "A".repeat(20)),
        foreign(&cursor),
        other_topic,
        too_few,
        beyond_the_end,
    ] {
        let mut ann = client(&env, &edge, "ann").await;
        catch_up(&mut ann, &bad).await;
        let error = ann.next().await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "invalid_cursor", "{bad}: {error}");
    }
    // Not the first frame.
    let mut ann = client(&env, &edge, "ann").await;
    ann.send(json!({"action": "heartbeat"})).await;
    catch_up(&mut ann, &cursor).await;
    assert_eq!(ann.next().await["code"], "catch_up_too_late");
    // The budget (8 at once: the gap, the too-old one, the six bad cursors; the late one was
    // refused before it) is spent, on every edge: the next catch-up is refused.
    let mut ann = client(&env, &edge, "ann").await;
    catch_up(&mut ann, gap["cursor"].as_str().unwrap()).await;
    let limited = ann.next().await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
}

/// The same positions under another log's tag (the tag is the first 8 characters after `c1.`).
fn foreign(cursor: &str) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}
