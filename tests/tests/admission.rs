//! Hostile input against the real stack: the log's one rule, "accepted ⇒ stored
//! exactly", U+0000 refused at every door, poison that costs the projector little, and a
//! projector that says when it has set records aside.

#[path = "../../events/tests/hostile/mod.rs"]
mod hostile;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chat_tests::fixtures::{append_all, created, message};
use chat_tests::{RestClient, TestEnv, WsClient, eventually};
use events::{
    ConversationCreated, Envelope, Event, MAX_CONTENT_CHARS, MAX_TEMP_MESSAGE_ID_CHARS,
    MAX_TITLE_CHARS, MAX_USER_ID_CHARS, MessageSent, MessagesRead, Timestamp,
};
use hostile::hostile_field;
use projector::{Folder, Record};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::PgPool;
use store::{Order, Page, Store};
use uuid::Uuid;

/// One generated history: a group, a message in it and a read, with hostile text everywhere.
#[derive(Debug, Clone)]
struct Case {
    creator: String,
    recipients: Vec<String>,
    title: String,
    content: String,
    temp_message_id: String,
}

/// A hostile field, usually without U+0000, so that most cases get past the rule and are folded
/// (five fields per case would otherwise rarely all pass).
fn field(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostile_field(max).prop_map(|s| s.replace('\0', "")),
        1 => hostile_field(max),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        field(MAX_USER_ID_CHARS),
        prop::collection::vec(field(MAX_USER_ID_CHARS), 1..3),
        field(MAX_TITLE_CHARS),
        field(MAX_CONTENT_CHARS),
        field(MAX_TEMP_MESSAGE_ID_CHARS),
    )
        .prop_map(
            |(creator, recipients, title, content, temp_message_id)| Case {
                creator,
                recipients,
                title,
                content,
                temp_message_id,
            },
        )
}

/// Offsets of the records folded by the property test (one partition, always forward).
static NEXT_OFFSET: AtomicI64 = AtomicI64::new(0);

fn record(envelope: &Envelope) -> Record {
    Record {
        partition: 0,
        offset: NEXT_OFFSET.fetch_add(1, Ordering::Relaxed),
        key: Some(envelope.key().into_bytes()),
        payload: Some(envelope.encode()),
    }
}

/// Runs one case: the events the rule admits are folded by the projector's own code into the
/// real Postgres and must read back exactly; the rule's refusals must be the documented ones.
/// Returns how many events were admitted and folded.
async fn accepted_is_stored_exactly(pool: &PgPool, case: Case) -> Result<usize, TestCaseError> {
    let conversation_id = Uuid::new_v4();
    let mut participants = case.recipients.clone();
    participants.push(case.creator.clone());
    participants.sort();
    participants.dedup();
    let created = Event::ConversationCreated(ConversationCreated {
        conversation_id,
        created_by: case.creator.clone(),
        participants: participants.clone(),
        is_group: true,
        title: case.title.clone(),
        idempotency_key: None,
    });
    let sent = Event::MessageSent(MessageSent {
        conversation_id,
        message_id: Uuid::new_v4(),
        sender_id: case.creator.clone(),
        content: case.content.clone(),
        temp_message_id: case.temp_message_id.clone(),
        sent_at: Timestamp::now(),
    });
    let read = Event::MessagesRead(MessagesRead {
        conversation_id,
        user_id: participants.last().expect("one participant").clone(),
    });
    let created_ok = created.admit().is_ok();
    prop_assert_eq!(
        created_ok,
        participants
            .iter()
            .all(|p| hostile::follows_rule(p, MAX_USER_ID_CHARS, false))
            && participants.len() >= 2
            && hostile::follows_rule(&case.title, MAX_TITLE_CHARS, true)
    );
    if !created_ok {
        return Ok(0);
    }
    let sent_ok = sent.admit().is_ok();
    prop_assert_eq!(
        sent_ok,
        hostile::follows_rule(&case.content, MAX_CONTENT_CHARS, true)
            && hostile::follows_rule(&case.temp_message_id, MAX_TEMP_MESSAGE_ID_CHARS, false)
    );
    let mut records = vec![record(&Envelope::new(created))];
    if sent_ok {
        records.push(record(&Envelope::new(sent)));
        records.push(record(&Envelope::new(read)));
    }
    let outcome = Folder::new("property", None)
        .apply(pool, &records)
        .await
        .map_err(|e| TestCaseError::fail(format!("fold failed: {e}")))?;
    prop_assert!(
        outcome.poison.is_empty(),
        "an admitted event was set aside: {:?}",
        outcome.poison
    );

    // Read back through the same store the REST API and the edge read from.
    let store = Store::new(pool.clone());
    let stored_participants = store.participants(conversation_id).await.unwrap();
    prop_assert_eq!(
        stored_participants.as_deref(),
        Some(participants.as_slice())
    );
    let view = store
        .conversation(conversation_id, &case.creator)
        .await
        .unwrap()
        .expect("the conversation");
    prop_assert_eq!(&view.title, &case.title);
    let (created_by, title): (String, String) =
        sqlx::query_as("SELECT created_by, title FROM conversations WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_one(pool)
            .await
            .unwrap();
    prop_assert_eq!(created_by, case.creator.clone());
    prop_assert_eq!(title, case.title.clone());
    if sent_ok {
        let page = Page {
            limit: 10,
            offset: 0,
            order: Order::Desc,
        };
        let messages = store.messages(conversation_id, page).await.unwrap();
        prop_assert_eq!(messages.len(), 1);
        prop_assert_eq!(&messages[0].content, &case.content);
        prop_assert_eq!(&messages[0].sender_id, &case.creator);
        let (temp, latest): (String, String) = sqlx::query_as(
            "SELECT m.temp_message_id, c.latest_content FROM messages m
               JOIN conversations c USING (conversation_id) WHERE m.conversation_id = $1",
        )
        .bind(conversation_id)
        .fetch_one(pool)
        .await
        .unwrap();
        prop_assert_eq!(temp, case.temp_message_id.clone());
        prop_assert_eq!(latest, case.content.clone());
        // JSON carries the stored text to clients unchanged.
        let wire = serde_json::to_string(&messages[0]).unwrap();
        let back: Value = serde_json::from_str(&wire).unwrap();
        prop_assert_eq!(back["content"].as_str(), Some(case.content.as_str()));
    }
    Ok(records.len())
}

#[test]
fn accepted_events_are_stored_and_read_back_exactly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_env, pool) = runtime.block_on(async {
        let env = TestEnv::new().await;
        let pool = env.pool().await;
        (env, pool)
    });
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let folded = std::cell::Cell::new(0usize);
    runner
        .run(&case(), |case| {
            let events = runtime.block_on(accepted_is_stored_exactly(&pool, case))?;
            folded.set(folded.get() + events);
            Ok(())
        })
        .unwrap();
    // The generator must reach both sides of the rule.
    println!("{} events admitted and folded in 256 cases", folded.get());
    assert!(folded.get() > 100, "too few events were admitted");
}

/// The database refuses an event the rule admitted (here a constraint the rule does not know,
/// added to this test's database): the batch is halved until that event stands alone, and
/// every other event of it is applied.
#[tokio::test]
async fn an_event_the_database_refuses_costs_its_batch_little() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    sqlx::query("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')")
        .execute(&pool)
        .await
        .unwrap();
    let conversation = Uuid::new_v4();
    let mut envelopes = vec![created(conversation, &["ann", "ben"])];
    for i in 0..1000 {
        let content = if i == 617 {
            "poison".to_owned()
        } else {
            format!("m{i}")
        };
        envelopes.push(message(conversation, "ann", &content));
    }
    let records: Vec<Record> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            partition: 0,
            offset: i as i64,
            key: Some(e.key().into_bytes()),
            payload: Some(e.encode()),
        })
        .collect();
    let started = Instant::now();
    let outcome = Folder::new(&env.topic, None)
        .apply(&pool, &records)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(outcome.poison.len(), 1, "{:?}", outcome.poison);
    assert_eq!(outcome.poison[0].offset, 618);
    assert!(outcome.poison[0].reason.starts_with("cannot be applied"));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 999);
    println!("a batch of 1001 with one refused event: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The log's end offsets summed: how many records it holds.
fn log_size(env: &TestEnv) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .create()
        .unwrap();
    (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks(&env.topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .sum()
}

#[tokio::test]
async fn send_message_with_nul_gets_an_error_frame_and_appends_nothing() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let edge = env.spawn_edge().await;
    let conversation = Uuid::new_v4();
    append_all(&env, &[created(conversation, &["alice", "bob"])]).await;
    let pool = env.pool().await;
    let store = Store::new(pool.clone());
    let what = "the projection has the conversation";
    eventually(what, Duration::from_secs(10), || async {
        store.participants(conversation).await.unwrap().is_some()
    })
    .await;
    // Frames the document refuses, and their answers echoing them: sent and read unchecked.
    let mut ws = WsClient::connect(&env, &edge, "alice")
        .await
        .reading(chat_tests::ws::as_sent);
    let before = log_size(&env);
    for (content, temp, code) in [
        ("hi\u{0}there", "t-nul-content", "invalid_content"),
        ("\u{0}", "t-only-nul", "invalid_content"),
        ("hi", "t\u{0}nul", "invalid_field"),
    ] {
        let frame = chat_tests::ws::send_message(conversation, content, temp);
        ws.send_text(&frame.to_string()).await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert_eq!(reply["tempMessageId"], temp, "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("U+0000"),
            "{reply}"
        );
    }
    // The connection still works, and only that message enters the log.
    let frame = chat_tests::ws::send_message(conversation, "\u{202e}fine\u{1}\u{fffe}👋", "t-ok");
    ws.send_text(&frame.to_string()).await;
    let echo = ws.next().await;
    assert_eq!(echo["type"], "new-message", "{echo}");
    assert_eq!(echo["content"], "\u{202e}fine\u{1}\u{fffe}👋");
    assert_eq!(
        log_size(&env),
        before + 1,
        "only the valid message was appended"
    );
}

#[tokio::test]
async fn post_conversation_with_nul_is_a_prompt_400_naming_the_field() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let api = env.spawn_api().await;
    let client = RestClient::new(api.url(""), env.token("alice"));
    let before = log_size(&env);
    for (body, field) in [
        (
            json!({"recipientIdArr": ["bob", "carol"], "isGroup": true, "title": "a\u{0}b"}),
            "title",
        ),
        (
            json!({"recipientIdArr": ["bob", "ca\u{0}rol"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["b\u{0}b"], "isGroup": false}),
            "recipientIdArr",
        ),
    ] {
        let started = Instant::now();
        let (status, reply) = client.post("/conversation", &body).await;
        let took = started.elapsed();
        assert_eq!(status, 400, "{body} → {reply}");
        assert!(
            reply["message"]
                .as_str()
                .unwrap()
                .contains(&format!("'{field}'")),
            "{reply}"
        );
        assert!(took < Duration::from_secs(2), "{body} took {took:?}");
    }
    let (status, _) = client.get("/conversation/direct/b%00b").await;
    assert_eq!(status, 400);
    assert_eq!(log_size(&env), before, "nothing was appended");
    // Odd but lawful text is stored and returned exactly.
    let title = "\u{202e}\u{1}ti\u{301}tle\u{ffff}\u{10ffff}";
    let (status, reply) = client
        .post(
            "/conversation",
            &json!({"recipientIdArr": ["bob", "c\u{7f}arol"], "isGroup": true, "title": title}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let id = reply["conversationId"].as_str().unwrap();
    let (status, view) = client.get(&format!("/conversations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["title"], title);
    let (_, participants) = client
        .get(&format!("/conversations/{id}/participants"))
        .await;
    assert_eq!(participants, json!(["alice", "bob", "c\u{7f}arol"]));
}

#[tokio::test]
async fn the_projector_is_not_ready_while_dead_letters_wait() {
    let env = TestEnv::new().await;
    let projector = env.spawn_projector().await;
    // A record from a foreign producer that breaks the rule: set aside, never applied.
    let bad = Uuid::new_v4();
    let foreign = message(bad, "ann", "x");
    let mut value: Value = serde_json::from_slice(&foreign.encode()).unwrap();
    value["data"]["content"] = json!("nul\u{0}inside");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let key = bad.to_string();
    let payload = value.to_string();
    producer
        .send(
            FutureRecord::to(&env.topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let what = "readyz reports the dead letter";
    let body = eventually(what, Duration::from_secs(20), || async {
        let response = http.get(projector.url("/readyz")).send().await.unwrap();
        if response.status() != 503 {
            return None;
        }
        let body: Value = response.json().await.unwrap();
        (body["dependencies"]["dead_letters"] == false).then_some(body)
    })
    .await;
    let detail = body["details"]["dead_letters"].as_str().unwrap();
    assert!(
        detail.starts_with("1 new record(s)") && detail.contains(&env.dead_letter_topic()),
        "{body}"
    );
    // A projector started after it (the operator's acknowledgement) is ready, and names it.
    let restarted = env.spawn_projector().await;
    let body: Value = http
        .get(restarted.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["ready"], true, "{body}");
    assert!(
        body["details"]["dead_letters"]
            .as_str()
            .unwrap()
            .contains("from before this start"),
        "{body}"
    );
}
