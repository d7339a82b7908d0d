//! The writer's producer is served by the runtime it was created on (no polling thread): every
//! append is acknowledged, however the appends interleave with the queue going empty; a
//! producer without a runtime to serve it is refused, not a panic, and one whose runtime has
//! shut down fails its appends at once instead of leaving them waiting.

use std::collections::HashSet;
use std::time::Duration;

use chat_tests::TestEnv;
use chat_tests::fixtures::message;
use futures_util::future::join_all;
use uuid::Uuid;

/// Appends from `tasks` tasks, each pausing a little between appends so that the producer's
/// queue of acknowledgements keeps going empty and filling again from every thread, and now and
/// then holding its thread (a busy runtime) so that several acknowledgements queue up before
/// they are served; returns every position Kafka acknowledged.
async fn appends_from_tasks(env: &TestEnv, tasks: usize, each: usize) -> Vec<writer::Position> {
    let writer = env.writer();
    let conversation_id = Uuid::new_v4();
    let runs = (0..tasks).map(|task| {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut positions = Vec::with_capacity(each);
            for i in 0..each {
                let envelope = message(conversation_id, "alice", &format!("{task}-{i}"));
                positions.push(writer.append(&envelope).await.expect("acknowledged"));
                // 0, 1 or 2 ms: bursts, single appends and quiet spells.
                tokio::time::sleep(Duration::from_millis(((task + i) % 3) as u64)).await;
                if i % 10 == task % 10 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            positions
        })
    });
    join_all(runs)
        .await
        .into_iter()
        .flat_map(|run| run.expect("the appending task"))
        .collect()
}

fn assert_all_distinct(positions: &[writer::Position], expected: usize) {
    assert_eq!(positions.len(), expected);
    let distinct: HashSet<_> = positions.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(
        distinct.len(),
        expected,
        "each append has a position of its own"
    );
}

#[tokio::test]
async fn every_append_is_acknowledged_on_a_single_threaded_runtime() {
    let env = TestEnv::new().await;
    let positions = appends_from_tasks(&env, 8, 150).await;
    assert_all_distinct(&positions, 8 * 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_is_acknowledged_on_a_multi_threaded_runtime() {
    let env = TestEnv::new().await;
    let positions = appends_from_tasks(&env, 8, 150).await;
    assert_all_distinct(&positions, 8 * 150);
}

#[test]
fn a_writer_without_a_runtime_to_serve_it_is_refused() {
    let refused = writer::Writer::new(&writer::KafkaArgs::new(
        writer::DEFAULT_BROKERS,
        writer::DEFAULT_TOPIC,
    ));
    let error = refused
        .err()
        .expect("refused outside a runtime")
        .to_string();
    assert!(error.contains("Tokio runtime"), "{error}");
}

#[test]
fn a_writer_whose_runtime_has_shut_down_fails_its_appends_instead_of_waiting() {
    let serving = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let writer = {
        let _inside = serving.enter();
        writer::Writer::new(&writer::KafkaArgs::new(
            writer::DEFAULT_BROKERS,
            writer::DEFAULT_TOPIC,
        ))
        .expect("created within a runtime")
    };
    drop(serving);
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let envelope = message(Uuid::new_v4(), "alice", "nobody serves this");
    let outcome = other.block_on(writer.append(&envelope));
    // Refused before queueing: a queued record would wait out the whole append's patience.
    assert!(
        matches!(
            outcome,
            Err(writer::AppendError::Unacknowledged {
                source: writer::ProduceError::Stopped,
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// Appends made while the first of them lingers go to the broker together: one produce request
/// for all of them, every one acknowledged at a position of its own, in the order they were
/// made.
#[tokio::test]
async fn appends_made_while_one_lingers_share_one_request() {
    let env = TestEnv::new().await;
    let writer = writer::Writer::new(&writer::KafkaArgs {
        // Long enough that every append below is queued before the first is due.
        append_linger_us: 300_000,
        ..env.kafka_args()
    })
    .expect("a writer");
    // The first append learns the leaders and the producer id.
    let conversation_id = Uuid::new_v4();
    writer
        .append(&message(conversation_id, "alice", "first"))
        .await
        .expect("acknowledged");
    let before = writer.requests_sent();

    // Spread over ~40 ms: without the linger, each would be a request of its own.
    let appends = (0..20).map(|i| {
        let writer = writer.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2 * i)).await;
            writer
                .append(&message(conversation_id, "alice", &format!("{i}")))
                .await
                .expect("acknowledged")
        }
    });
    let positions = join_all(appends).await;
    assert_all_distinct(&positions, 20);
    assert_eq!(
        writer.requests_sent() - before,
        1,
        "twenty appends made within one linger travel in one request"
    );
    // One conversation, one partition: the log holds them in the order they were made.
    let offsets: Vec<i64> = positions.iter().map(|p| p.offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
}
