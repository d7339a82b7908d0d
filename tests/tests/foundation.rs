//! The foundation through the real stack: the writer appends, the projector folds exactly once
//! (even when killed mid-batch), and any consumer of the log sees the same events.

use std::time::Duration;

use chat_tests::fixtures::{
    POSITIONS_TOTAL, PROJECTION_TABLES, created, message, read, table_digest, wait_for_count,
};
use chat_tests::{TestEnv, eventually};
use events::{Envelope, Event, MessagesRead};
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use sqlx::PgPool;
use uuid::Uuid;

#[tokio::test]
async fn appended_event_is_projected_and_seen_by_consumers() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let writer = env.writer();
    let conversation_id = events::direct_conversation_id("alice", "bob");
    let event = created(conversation_id, &["alice", "bob"]);
    let position = writer.append(&event).await.expect("append");
    assert!(position.offset >= 0);

    let pool = env.pool().await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM conversations",
        1,
        Duration::from_secs(20),
    )
    .await;
    let (created_by, is_group): (String, bool) =
        sqlx::query_as("SELECT created_by, is_group FROM conversations WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((created_by.as_str(), is_group), ("alice", false));
    let participants: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM participants WHERE conversation_id = $1 ORDER BY user_id",
    )
    .bind(conversation_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(participants, ["alice", "bob"]);
    let stored = store::projection::positions_of(&pool, &env.topic, &[position.partition])
        .await
        .unwrap()[&position.partition];
    assert_eq!(
        stored,
        position.offset + 1,
        "the position is stored with the rows"
    );

    // Any other consumer of the log (the socket-edge, analytics) reads the same event, keyed by
    // its conversation.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{}-reader", env.name))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.topic]).unwrap();
    let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("a record within 20 s")
        .unwrap();
    assert_eq!(record.key(), Some(conversation_id.to_string().as_bytes()));
    assert_eq!(record.partition(), position.partition);
    assert_eq!(Envelope::decode(record.payload().unwrap()).unwrap(), event);
}

#[tokio::test]
async fn projector_killed_mid_batch_resumes_exactly() {
    let env = TestEnv::new().await;
    let writer = env.writer();
    let users = ["ann", "ben", "cat", "dan", "eve"];
    let conversations: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    for (i, c) in conversations.iter().enumerate() {
        let a = users[i % users.len()];
        let b = users[(i + 1) % users.len()];
        let d = users[(i + 2) % users.len()];
        writer.append(&created(*c, &[a, b, d])).await.unwrap();
    }
    let total_messages = 6_000usize;
    let mut projector = env.spawn_projector().await;

    // Append in waves while the projector folds, and kill it with SIGKILL in the middle.
    let mut appended = 0;
    let mut reads = 0;
    for wave in 0..6 {
        let batch: Vec<Envelope> = (0..total_messages / 6)
            .map(|i| {
                let c = conversations[(wave * 1000 + i) % conversations.len()];
                let sender = users[i % users.len()];
                if i % 10 == 9 {
                    Envelope::new(Event::MessagesRead(MessagesRead {
                        conversation_id: c,
                        user_id: users[(i + 1) % users.len()].to_owned(),
                    }))
                } else {
                    message(c, sender, &format!("w{wave}-m{i}"))
                }
            })
            .collect();
        reads += batch
            .iter()
            .filter(|e| matches!(e.event, Event::MessagesRead(_)))
            .count();
        appended += batch.len();
        for result in join_all(batch.iter().map(|e| writer.append(e))).await {
            result.expect("append");
        }
        if wave == 2 {
            // Give it a moment to be inside a batch, then pull the plug.
            tokio::time::sleep(Duration::from_millis(30)).await;
            projector.kill().await;
        }
        if wave == 3 {
            projector = env.spawn_projector().await;
        }
    }
    let messages = (appended - reads) as i64;
    let pool = env.pool().await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM messages",
        messages,
        Duration::from_secs(60),
    )
    .await;

    // A second, uninterrupted projector folds the same log into another database.
    let reference = TestEnv::new().await;
    let mut uninterrupted = reference.spawn_projector_of(&env.topic).await;
    let reference_pool = reference.pool().await;
    wait_for_count(
        &reference_pool,
        "SELECT count(*) FROM messages",
        messages,
        Duration::from_secs(60),
    )
    .await;
    // Both have applied the whole log: compare every table, row for row.
    wait_positions_equal(&pool, &reference_pool).await;
    assert_eq!(
        table_digest(&pool, &PROJECTION_TABLES).await,
        table_digest(&reference_pool, &PROJECTION_TABLES).await
    );
    uninterrupted.kill().await;
}

async fn wait_positions_equal(a: &PgPool, b: &PgPool) {
    let query = POSITIONS_TOTAL;
    let what = "the two projections at the same log positions";
    eventually(what, Duration::from_secs(10), || async {
        let x: i64 = sqlx::query_scalar(query).fetch_one(a).await.unwrap();
        let y: i64 = sqlx::query_scalar(query).fetch_one(b).await.unwrap();
        if x == y {
            Ok(())
        } else {
            Err(format!("{x} and {y}"))
        }
    })
    .await;
}

#[tokio::test]
async fn applying_a_batch_twice_changes_nothing() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let c = Uuid::new_v4();
    let envelopes = vec![
        created(c, &["amy", "bo", "cy"]),
        message(c, "amy", "one"),
        message(c, "bo", "two"),
        Envelope::new(Event::MessagesRead(MessagesRead {
            conversation_id: c,
            user_id: "cy".into(),
        })),
        message(c, "cy", "three"),
    ];
    let events = in_one_partition(envelopes);
    apply_batch(&pool, &events).await;
    let once = table_digest(&pool, &PROJECTION_TABLES).await;
    assert_eq!(
        once.iter().map(|(_, n, _)| *n).collect::<Vec<_>>(),
        [1, 3, 3, 1, 0]
    );
    apply_batch(&pool, &events).await;
    assert_eq!(
        table_digest(&pool, &PROJECTION_TABLES).await,
        once,
        "the same batch again"
    );
    apply_batch(&pool, &events[1..3]).await;
    assert_eq!(
        table_digest(&pool, &PROJECTION_TABLES).await,
        once,
        "a replayed prefix"
    );
    let marker: i64 = sqlx::query_scalar("SELECT read_seq FROM read_markers WHERE user_id = 'cy'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(marker, 2, "a read covers the messages before it in the log");
}

/// A batch with many messages inserts them all at once, without looking for each first: applied
/// again, or after a part of it was applied (the insert then finds messages there already and
/// looks), it leaves the same rows as applying it once.
#[tokio::test]
async fn a_batch_of_many_messages_applied_twice_changes_nothing() {
    use projector::sql::BULK_MESSAGES;
    let c = Uuid::new_v4();
    let mut envelopes = vec![created(c, &["amy", "bo"])];
    for i in 0..BULK_MESSAGES + 100 {
        let sender = if i % 2 == 0 { "amy" } else { "bo" };
        envelopes.push(message(c, sender, &format!("m{i}")));
        if i % 97 == 0 {
            envelopes.push(read(c, "bo"));
        }
    }
    let events = in_one_partition(envelopes);
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    apply_batch(&pool, &events).await;
    let once = table_digest(&pool, &PROJECTION_TABLES).await;
    assert_eq!(
        once.iter().map(|(_, n, _)| *n).collect::<Vec<_>>(),
        [1, 2, BULK_MESSAGES as i64 + 100, 1, 0]
    );
    apply_batch(&pool, &events).await;
    assert_eq!(
        table_digest(&pool, &PROJECTION_TABLES).await,
        once,
        "the same batch again"
    );

    let env = TestEnv::new().await;
    let pool = env.pool().await;
    apply_batch(&pool, &events[..events.len() / 3]).await;
    apply_batch(&pool, &events).await;
    assert_eq!(
        table_digest(&pool, &PROJECTION_TABLES).await,
        once,
        "a part of the batch first, then all of it"
    );
}

/// Events at offsets 0, 1, 2… of partition 0, in the given order.
fn in_one_partition(envelopes: Vec<Envelope>) -> Vec<projector::sql::Positioned> {
    envelopes
        .into_iter()
        .enumerate()
        .map(|(i, envelope)| projector::sql::Positioned {
            partition: 0,
            offset: i as i64,
            envelope,
        })
        .collect()
}

/// Folds `events` as one batch, in a transaction of its own.
async fn apply_batch(pool: &PgPool, events: &[projector::sql::Positioned]) {
    let mut tx = pool.begin().await.unwrap();
    projector::sql::Batch::new(events)
        .apply(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
