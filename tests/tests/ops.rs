//! The operator's tool against the real stack: `chatctl rebuild` switches a live projection to
//! a fresh fold of the log under a running projector and a running REST API; `chatctl verify`
//! finds a corrupted row; a poison event is dead-lettered and the projector moves on.

use std::time::Duration;

use chat_tests::fixtures::{
    POSITIONS_TOTAL, append_all, created, message, read, table_digest, wait_for_count as wait_for,
};
use chat_tests::{RestClient, TestEnv, binary_path, eventually, eventually_every};
use events::{Envelope, Timestamp};
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use uuid::Uuid;

/// A small but complete history: conversations, messages and reads across partitions.
fn history(conversations: &[Uuid], waves: usize) -> Vec<Envelope> {
    let users = ["ann", "ben", "cat", "dan"];
    let mut out = Vec::new();
    for wave in 0..waves {
        for (i, c) in conversations.iter().enumerate() {
            let sender = users[(i + wave) % users.len()];
            out.push(message(*c, sender, &format!("c{i}-w{wave}")));
            if wave % 3 == 2 {
                out.push(read(*c, users[(i + wave + 1) % users.len()]));
            }
        }
    }
    out
}

/// The log's end offsets summed: what the projection's positions reach once caught up.
async fn log_end(env: &TestEnv) -> i64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .create()
        .unwrap();
    let mut total = 0;
    for p in 0..4 {
        total += consumer
            .fetch_watermarks(&env.topic, p, Duration::from_secs(5))
            .unwrap()
            .1;
    }
    total
}

async fn wait_caught_up(env: &TestEnv, pool: &PgPool) {
    let end = log_end(env).await;
    wait_for(pool, POSITIONS_TOTAL, end, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn chatctl_topics_creates_the_log_and_its_dead_letter_topic_and_never_changes_them() {
    let env = TestEnv::new().await;
    let topic = format!("{}-created", env.topic);
    let dead_letters = projector::dead_letter_topic(&topic);
    let topics = |partitions: &'static str| {
        let topic = topic.clone();
        let env = &env;
        async move {
            let args = [
                "--events-topic",
                &topic,
                "topics",
                "--partitions",
                partitions,
            ];
            env.chatctl(&args).await
        }
    };
    let (code, out, err) = topics("3").await;
    assert_eq!(code, 0, "{err}");
    for created in [
        format!("topic {topic}: created, 3 partition(s)"),
        format!("topic {dead_letters}: created, 1 partition(s)"),
    ] {
        assert!(out.contains(&created), "{out}");
    }
    assert!(!out.contains("warning"), "{out}");

    // Asked again for another partition count: both are left as they are, the difference said.
    let (code, out, err) = topics("5").await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("topic {topic}: exists, 3 partition(s)")),
        "{out}"
    );
    assert!(out.contains("warning: 3 partitions, not 5"), "{out}");
    assert!(
        out.contains(&format!("topic {dead_letters}: exists, 1 partition(s)")),
        "{out}"
    );
}

async fn table_oid(pool: &PgPool, table: &str) -> u32 {
    let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("SELECT $1::regclass::oid")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
    oid.0
}

#[tokio::test]
async fn rebuild_switches_to_a_fresh_fold_under_live_traffic() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let api = env.spawn_api().await;
    let ann = RestClient::new(api.url(""), env.token("ann"));
    let conversations: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let setup: Vec<Envelope> = conversations
        .iter()
        .enumerate()
        .map(|(i, c)| match i % 3 {
            0 => created(*c, &["ann", "ben"]),
            1 => created(*c, &["ann", "cat", "dan"]),
            _ => created(*c, &["ann", "ben", "cat", "dan"]),
        })
        .collect();
    append_all(&env, &setup).await;
    append_all(&env, &history(&conversations, 9)).await;
    let pool = env.pool().await;
    wait_caught_up(&env, &pool).await;
    // The API has its statements prepared against the live tables.
    let (status, before) = ann.get("/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(before.as_array().unwrap().len(), conversations.len());
    let live_oid = table_oid(&pool, "conversations").await;

    // An interrupted rebuild (folded, not switched) leaves the live projection alone, and
    // resumes where it stopped.
    let (code, _, err) = env
        .chatctl(&["rebuild", "--no-switch", "--batch-size", "40"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(table_oid(&pool, "conversations").await, live_oid);
    let folded: i64 = sqlx::query_scalar("SELECT count(*) FROM rebuild.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(folded > 0);

    // More traffic while the rebuild resumes and switches: the projector keeps folding.
    let more = history(&conversations, 6);
    let appending = {
        let writer = env.writer();
        let more = more.clone();
        tokio::spawn(async move {
            for chunk in more.chunks(8) {
                for result in join_all(chunk.iter().map(|e| writer.append(e))).await {
                    result.expect("append");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (code, _, err) = env.chatctl(&["rebuild", "--batch-size", "40"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming the interrupted rebuild"), "{err}");
    assert!(err.contains("switched"), "{err}");
    appending.await.unwrap();

    // The live names are the rebuilt tables now; the old ones are kept aside.
    assert_ne!(table_oid(&pool, "conversations").await, live_oid);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM rebuild_previous.conversations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, conversations.len() as i64);

    // The projector goes on in the new tables, and the running API reads them.
    let last = message(conversations[0], "ben", "after the switch");
    append_all(&env, std::slice::from_ref(&last)).await;
    wait_caught_up(&env, &pool).await;
    let (status, page) = ann
        .get(&format!(
            "/conversations/{}/messages?limit=1",
            conversations[0]
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page[0]["content"], "after the switch", "{page}");

    // Row for row the same as an uninterrupted projector's fold of the same log.
    let reference = TestEnv::new().await;
    let _uninterrupted = reference.spawn_projector_of(&env.topic).await;
    let reference_pool = reference.pool().await;
    wait_caught_up(&env, &reference_pool).await;
    assert_eq!(
        projection_digest(&pool).await,
        projection_digest(&reference_pool).await
    );
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK"), "{out}");

    // --discard drops an unfinished rebuild and nothing else.
    let (code, _, err) = env.chatctl(&["rebuild", "--no-switch"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.chatctl(&["rebuild", "--discard"]).await;
    assert_eq!(code, 0, "{err}");
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'rebuild'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0);
    let (status, after) = ann.get("/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(after.as_array().unwrap().len(), conversations.len());
}

#[tokio::test]
async fn verify_finds_a_corrupted_row() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let conversations: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let setup: Vec<Envelope> = conversations
        .iter()
        .map(|c| created(*c, &["ann", "ben", "cat"]))
        .collect();
    append_all(&env, &setup).await;
    append_all(&env, &history(&conversations, 6)).await;
    let pool = env.pool().await;
    wait_caught_up(&env, &pool).await;

    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK"), "{out}");

    let target = conversations[2];
    let (latest_content,): (String,) =
        sqlx::query_as("SELECT latest_content FROM conversations WHERE conversation_id = $1")
            .bind(target)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE conversations SET latest_content = 'tampered' WHERE conversation_id = $1")
        .bind(target)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM participants WHERE conversation_id = $1 AND user_id = 'cat'")
        .bind(conversations[4])
        .execute(&pool)
        .await
        .unwrap();

    let (reader, read_seq): (String, i64) = sqlx::query_as(
        "UPDATE read_markers SET read_seq = read_seq - 1
          WHERE (conversation_id, user_id) = (SELECT conversation_id, user_id FROM read_markers
                                               WHERE conversation_id = $1 LIMIT 1)
          RETURNING user_id, read_seq + 1",
    )
    .bind(conversations[1])
    .fetch_one(&pool)
    .await
    .unwrap();

    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("MISMATCH: 3 difference(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "conversation {}: {reader} has read up to log offset {read_seq} in the log but {} in the projection",
            conversations[1],
            read_seq - 1
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "conversation {target}: latest message's content is {latest_content:?} in the log but \"tampered\" in the projection"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "conversation {}: participant cat is in the log but missing from the projection",
            conversations[4]
        )),
        "{out}"
    );
    assert!(out.contains("chatctl rebuild"), "{out}");
}

#[tokio::test]
async fn poison_events_are_dead_lettered_and_the_projector_moves_on() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let good = Uuid::new_v4();
    let bad = Uuid::new_v4();
    let too_long = "x".repeat(60);
    append_all(&env, &[created(good, &["ann", "ben"])]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    // Decodes, but breaks the log's rule (a user id over 50 characters): our writer refuses to
    // append it, so it comes from another producer.
    let unappliable = created(bad, &["ann", &too_long]);
    let bad_key = bad.to_string();
    let value = unappliable.encode();
    producer
        .send(
            FutureRecord::to(&env.topic).key(&bad_key).payload(&value),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // Cannot be decoded at all, in the same partition as the good conversation.
    let key = good.to_string();
    let delivered = producer
        .send(
            FutureRecord::to(&env.topic)
                .key(&key)
                .payload(r#"{"type":"MessageSent","version":1,"data":"#),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (garbage_partition, garbage_offset) = (delivered.partition, delivered.offset);
    // Good events after both, in one go, so the poison shares batches with them.
    let after: Vec<Envelope> = (0..30)
        .map(|i| message(good, "ann", &format!("after {i}")))
        .chain([message(bad, "ann", "to a conversation that never was")])
        .collect();
    append_all(&env, &after).await;

    let pool = env.pool().await;
    wait_caught_up(&env, &pool).await;
    let messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE conversation_id = $1")
            .bind(good)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(messages, 30, "the events after the poison are applied");
    let bad_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM conversations WHERE conversation_id = $1)
              + (SELECT count(*) FROM participants WHERE conversation_id = $1)",
    )
    .bind(bad)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(bad_rows, 0, "nothing of the refused event is half-applied");

    // Both are in the dead-letter topic, with the reason and the original position.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{}-dlq-reader", env.name))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.dead_letter_topic()]).unwrap();
    let mut letters = Vec::new();
    while letters.len() < 2 {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("a dead letter within 20 s")
            .unwrap();
        let headers = record.headers().expect("dead letters carry headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
                .unwrap_or_else(|| panic!("header {name}"))
        };
        letters.push((
            header("chat-dlq-partition").parse::<i32>().unwrap(),
            header("chat-dlq-offset").parse::<i64>().unwrap(),
            header("chat-dlq-reason"),
            header("chat-dlq-topic"),
            record.payload().map(<[u8]>::to_vec),
        ));
    }
    letters.sort();
    let garbage = letters
        .iter()
        .find(|l| (l.0, l.1) == (garbage_partition, garbage_offset))
        .expect("the undecodable record is dead-lettered at its position");
    assert!(garbage.2.contains("not an event envelope"), "{}", garbage.2);
    assert_eq!(garbage.3, env.topic);
    let refused = letters
        .iter()
        .find(|l| (l.0, l.1) != (garbage_partition, garbage_offset))
        .unwrap();
    assert!(
        refused
            .2
            .contains("breaks the log's rule: Invalid 'participants'"),
        "{}",
        refused.2
    );
    assert_eq!(refused.4.as_deref(), Some(unappliable.encode().as_slice()));

    // verify agrees with the projection, lists what was set aside, and fails while those
    // dead letters are not accepted: each is an event missing from the projection.
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL: 2 dead-lettered event(s)"), "{out}");
    assert!(out.contains("--accept-dead-letter"), "{out}");
    let garbage_at = format!("{garbage_partition}:{garbage_offset}");
    let (code, out, _) = env
        .chatctl(&["verify", "--accept-dead-letter", &garbage_at])
        .await;
    assert_eq!(code, 1, "one is still not accepted: {out}");
    let refused_at = format!("{}:{}", refused.0, refused.1);
    let (code, out, err) = env
        .chatctl(&[
            "verify",
            "--accept-dead-letter",
            &garbage_at,
            "--accept-dead-letter",
            &refused_at,
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 dead-lettered event(s)"), "{out}");
    assert!(out.contains("(accepted)"), "{out}");
    assert!(
        out.contains(&format!(
            "partition {garbage_partition} offset {garbage_offset} (accepted): the record is not an event envelope"
        )),
        "{out}"
    );
    assert!(!out.contains("SKIPPED SILENTLY"), "{out}");
}

#[tokio::test]
async fn events_exports_json_lines_filtered_by_type_conversation_and_time() {
    let env = TestEnv::new().await;
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    append_all(
        &env,
        &[created(a, &["ann", "ben"]), created(b, &["cat", "dan"])],
    )
    .await;
    append_all(&env, &[message(a, "ann", "a1"), message(b, "cat", "b1")]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = Timestamp::now().to_string();
    append_all(&env, &[message(a, "ben", "a2"), read(a, "ann")]).await;

    let (code, out, err) = env.chatctl(&["events"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| l["partition"].is_i64() && l["offset"].is_i64())
    );

    let conversation = a.to_string();
    let (code, out, err) = env
        .chatctl(&[
            "events",
            "--conversation",
            &conversation,
            "--type",
            "MessageSent",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let contents: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| l["data"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents, ["a1", "a2"]);

    let (code, out, err) = env.chatctl(&["events", "--from-time", &since]).await;
    assert_eq!(code, 0, "{err}");
    let types: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| l["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["MessageSent", "MessagesRead"], "{out}");
}

#[tokio::test]
async fn every_command_has_help() {
    for command in [&[][..], &["rebuild"], &["verify"], &["events"], &["schema"]] {
        let output = std::process::Command::new(binary_path("chatctl"))
            .args(command)
            .arg("--help")
            .output()
            .expect("run chatctl");
        assert!(output.status.success(), "{command:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage: chatctl"), "{command:?}: {text}");
    }
}

#[tokio::test]
async fn the_same_message_appended_twice_is_projected_once() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let c = Uuid::new_v4();
    let first = message(c, "ann", "first");
    let twice = message(c, "ben", "twice");
    append_all(&env, &[created(c, &["ann", "ben"])]).await;
    // Once in one batch, then again in a batch of its own: the first copy in the log wins.
    append_all(&env, std::slice::from_ref(&first)).await;
    append_all(&env, std::slice::from_ref(&twice)).await;
    let pool = env.pool().await;
    wait_caught_up(&env, &pool).await;
    append_all(&env, &[twice.clone(), first.clone()]).await;
    wait_caught_up(&env, &pool).await;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT content FROM messages WHERE conversation_id = $1 ORDER BY seq")
            .bind(c)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, [("first".to_owned(),), ("twice".to_owned(),)]);
    let (latest,): (String,) =
        sqlx::query_as("SELECT latest_content FROM conversations WHERE conversation_id = $1")
            .bind(c)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(latest, "twice");
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn rebuild_killed_mid_fold_resumes_and_switches() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let conversations: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let setup: Vec<Envelope> = conversations
        .iter()
        .map(|c| created(*c, &["ann", "ben", "cat"]))
        .collect();
    append_all(&env, &setup).await;
    append_all(&env, &history(&conversations, 60)).await;
    let pool = env.pool().await;
    wait_caught_up(&env, &pool).await;
    let before = projection_digest(&pool).await;
    let live_oid = table_oid(&pool, "messages").await;

    // Small batches make the fold long enough to be killed in the middle of it.
    let mut rebuild = tokio::process::Command::new(binary_path("chatctl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.service_env())
        .args(["rebuild", "--batch-size", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chatctl");
    // Polled often, to kill it in the middle of the fold.
    let poll = Duration::from_millis(5);
    let what = "the rebuild got going";
    eventually_every(poll, what, Duration::from_secs(30), || async {
        let folded: Result<i64, _> = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM rebuild.projector_positions",
        )
        .fetch_one(&pool)
        .await;
        folded.is_ok_and(|n| n > 60)
    })
    .await;
    assert!(
        rebuild.try_wait().unwrap().is_none(),
        "the rebuild finished before it could be killed"
    );
    rebuild.kill().await.unwrap();

    // The live projection is untouched; the partial fold is kept.
    assert_eq!(table_oid(&pool, "messages").await, live_oid);
    assert_eq!(projection_digest(&pool).await, before);
    let (code, _, err) = env.chatctl(&["rebuild"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming the interrupted rebuild"), "{err}");
    assert_ne!(table_oid(&pool, "messages").await, live_oid);
    assert_eq!(projection_digest(&pool).await, before);
}

#[tokio::test]
async fn a_database_fault_is_retried_never_skipped() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let c = Uuid::new_v4();
    append_all(&env, &[created(c, &["ann", "ben"])]).await;
    let pool = env.pool().await;
    wait_caught_up(&env, &pool).await;

    // Not a problem of the event: the table is gone for a while (SQLSTATE 42P01).
    sqlx::query("ALTER TABLE messages RENAME TO messages_away")
        .execute(&pool)
        .await
        .unwrap();
    let positions = POSITIONS_TOTAL;
    let stuck: i64 = sqlx::query_scalar(positions)
        .fetch_one(&pool)
        .await
        .unwrap();
    append_all(&env, &[message(c, "ann", "waits for the database")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still: i64 = sqlx::query_scalar(positions)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(still, stuck, "nothing is skipped while the database fails");
    sqlx::query("ALTER TABLE messages_away RENAME TO messages")
        .execute(&pool)
        .await
        .unwrap();

    wait_caught_up(&env, &pool).await;
    let (content,): (String,) =
        sqlx::query_as("SELECT content FROM messages WHERE conversation_id = $1")
            .bind(c)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(content, "waits for the database");
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No dead-lettered events."), "{out}");
}

/// The projection's tables and its positions, compared row for row.
async fn projection_digest(pool: &PgPool) -> Vec<(String, i64, String)> {
    table_digest(pool, &store::projection::TABLES).await
}

/// The tables as they are now, copied into `schema` (a backup).
async fn back_up(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(pool)
        .await
        .unwrap();
    for table in store::projection::TABLES.map(|t| t.name) {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{table} AS SELECT * FROM public.{table}"
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Puts a backup taken with [`back_up`] back in place of the tables, in one transaction.
async fn restore(pool: &PgPool, schema: &str) {
    let mut tx = pool.begin().await.unwrap();
    let tables = store::projection::TABLES.map(|t| t.name);
    sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
        .execute(&mut *tx)
        .await
        .unwrap();
    for table in tables {
        sqlx::query(&format!(
            "INSERT INTO public.{table} SELECT * FROM {schema}.{table}"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// The stored positions summed.
async fn stored_total(pool: &PgPool) -> i64 {
    sqlx::query_scalar(POSITIONS_TOTAL)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Postgres, not Kafka's committed offsets, decides where the projector reads:
/// with the tables put back to an older copy, a restarted projector (whose committed offsets
/// are ahead) and a running one (which notices at its next batch) both fold exactly the
/// missing events again, and the tables equal a fresh fold of the log.
#[tokio::test]
async fn a_restored_projection_is_refolded_from_its_own_positions() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let conversations: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let all: Vec<Envelope> = conversations
        .iter()
        .map(|c| created(*c, &["ann", "ben", "cat", "dan"]))
        .chain(history(&conversations, 3))
        .collect();
    append_all(&env, &all).await;
    let mut projector = env.spawn_projector().await;
    wait_caught_up(&env, &pool).await;
    back_up(&pool, "backup_a").await;
    let backed_up = stored_total(&pool).await;

    // More is projected after the copy, and Kafka hears how far (the hint is committed at
    // most once a second, and on a graceful stop).
    append_all(&env, &history(&conversations, 3)).await;
    wait_caught_up(&env, &pool).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    append_all(&env, &history(&conversations[..1], 1)).await;
    wait_caught_up(&env, &pool).await;
    projector.terminate(Duration::from_secs(10)).await;
    let hint: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{}-projector", env.name))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&env.topic, p);
    }
    let committed: i64 = hint
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum();
    assert!(
        committed > backed_up,
        "Kafka's committed offsets ({committed}) are ahead of the backup's positions ({backed_up})"
    );

    // The old copy is put back; the restarted projector reads from its positions.
    restore(&pool, "backup_a").await;
    assert_eq!(stored_total(&pool).await, backed_up);
    let projector = env.spawn_projector().await;
    wait_caught_up(&env, &pool).await;
    assert!(
        projector
            .log_tail()
            .contains("reading from the positions stored in Postgres"),
        "{}",
        projector.log_tail()
    );

    // Put back under a running projector: its next batch starts past the stored positions,
    // so it reads again from them.
    back_up(&pool, "backup_b").await;
    append_all(&env, &history(&conversations, 2)).await;
    wait_caught_up(&env, &pool).await;
    restore(&pool, "backup_b").await;
    append_all(&env, &history(&conversations, 1)).await;
    wait_caught_up(&env, &pool).await;
    assert!(
        projector
            .log_tail()
            .contains("reading again from the stored position"),
        "{}",
        projector.log_tail()
    );

    let fresh = TestEnv::new().await;
    let fresh_pool = fresh.pool().await;
    let _fresh_projector = fresh.spawn_projector_of(&env.topic).await;
    wait_caught_up(&env, &fresh_pool).await;
    assert_eq!(
        projection_digest(&pool).await,
        projection_digest(&fresh_pool).await,
        "the restored projection, refolded, equals a fresh fold"
    );
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

/// verify checks the projection against the log with code of its own (not the fold), and
/// names what differs in words.
#[tokio::test]
async fn verify_checks_the_log_without_the_fold() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let pool = env.pool().await;
    let conversations: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let all: Vec<Envelope> = conversations
        .iter()
        .map(|c| created(*c, &["ann", "ben", "cat", "dan"]))
        .chain(history(&conversations, 6))
        .collect();
    append_all(&env, &all).await;
    wait_caught_up(&env, &pool).await;
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: the log's 18 message(s)"), "{out}");

    // A message lost, a latest message that is not the last, a read marker past the end.
    let [a, b, c] = [conversations[0], conversations[1], conversations[2]];
    sqlx::query(
        "DELETE FROM messages WHERE conversation_id = $1
            AND seq = (SELECT min(seq) FROM messages WHERE conversation_id = $1)",
    )
    .bind(a)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE conversations c SET latest_seq = m.seq, latest_message_id = m.message_id
           FROM (SELECT seq, message_id FROM messages WHERE conversation_id = $1
                  ORDER BY seq LIMIT 1) m
          WHERE c.conversation_id = $1",
    )
    .bind(b)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO read_markers (conversation_id, user_id, read_seq) VALUES ($1, 'zed', 1000000)",
    )
    .bind(c)
    .execute(&pool)
    .await
    .unwrap();
    let (code, out, err) = env.chatctl(&["verify", "--max-differences", "50"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("found without the fold"), "{out}");
    assert!(
        out.contains("is in the log but missing from the projection"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "conversation {a} has 6 message(s) in the log but 5 in the projection"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("conversation {b}: its latest message is message")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "conversation {c}: zed has read up to log offset 1000000, past its latest message"
        )),
        "{out}"
    );
}

/// An event of a schema version newer than this build knows stops its partition's projection
/// (it is not malformed: a newer build wrote it) and `/readyz` names it; other partitions
/// carry on, and a version-1 `ConversationCreated` of the first release is upcast.
#[tokio::test]
async fn an_event_from_a_newer_build_stops_its_partition() {
    let env = TestEnv::new().await;
    let projector = env.spawn_projector().await;
    let pool = env.pool().await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let raw = |conversation: Uuid, version: u32, extra: &str| {
        format!(
            r#"{{"type":"ConversationCreated","version":{version},"eventId":"{}","acceptedAt":"2021-09-26T10:33:11.123Z","data":{{"conversationId":"{conversation}","createdBy":"ann","participants":["ann","ben"],"isGroup":false,"title":""{extra}}}}}"#,
            Uuid::new_v4()
        )
    };
    let produce = |conversation: Uuid, payload: String| {
        let producer = producer.clone();
        let key = conversation.to_string();
        let topic = env.topic.clone();
        async move {
            let delivered = producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            (delivered.partition, delivered.offset)
        }
    };

    // As the first release wrote it: version 1, upcast to version 2 when read.
    let old = Uuid::new_v4();
    produce(old, raw(old, 1, "")).await;
    let writer = env.writer();
    let stuck = Uuid::new_v4();
    let at = writer
        .append(&created(stuck, &["ann", "ben"]))
        .await
        .unwrap();
    writer
        .append(&message(stuck, "ann", "before"))
        .await
        .unwrap();
    // From a newer build: version 3 of the type, with a field this build has never seen.
    let (partition, offset) = produce(stuck, raw(stuck, 3, r#","mood":"sunny""#)).await;
    assert_eq!(partition, at.partition);
    writer
        .append(&message(stuck, "ann", "after"))
        .await
        .unwrap();
    // Conversations of the other partitions.
    let mut elsewhere = Vec::new();
    while elsewhere.len() < 3 {
        let c = Uuid::new_v4();
        if writer
            .append(&created(c, &["ann", "ben"]))
            .await
            .unwrap()
            .partition
            != partition
        {
            writer
                .append(&message(c, "ann", "elsewhere"))
                .await
                .unwrap();
            elsewhere.push(c);
        }
    }

    wait_for(
        &pool,
        "SELECT count(*) FROM messages WHERE content = 'elsewhere'",
        3,
        Duration::from_secs(30),
    )
    .await;
    wait_for(
        &pool,
        &format!("SELECT count(*) FROM conversations WHERE conversation_id = '{old}'"),
        1,
        Duration::from_secs(30),
    )
    .await;
    let client = reqwest::Client::new();
    let what = "readyz reports the stopped partition";
    let body = eventually(what, Duration::from_secs(30), || async {
        let response = client.get(projector.url("/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        if status == 503 && body["details"]["projection"].is_string() {
            Ok(body)
        } else {
            Err(format!("still ready: {body}"))
        }
    })
    .await;
    assert_eq!(body["dependencies"]["projection"], false, "{body}");
    let reason = body["details"]["projection"].as_str().unwrap();
    assert!(
        reason.contains(&format!("partition {partition} stopped at offset {offset}")),
        "{reason}"
    );
    assert!(
        reason.contains("ConversationCreated v3 is newer than this build knows (v2)"),
        "{reason}"
    );

    // Nothing after it in its partition is applied, and it is not a dead letter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let contents: Vec<String> =
        sqlx::query_scalar("SELECT content FROM messages WHERE conversation_id = $1 ORDER BY seq")
            .bind(stuck)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(contents, ["before"]);
    let stored = store::projection::positions_of(&pool, &env.topic, &[partition])
        .await
        .unwrap()[&partition];
    assert_eq!(stored, offset, "the partition waits on the newer event");
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No dead-lettered events."), "{out}");
}
