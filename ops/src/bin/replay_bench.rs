//! The replay benchmark: folds at least a million events of the log into fresh tables with the
//! projector's own fold, and measures, in the same run, the floor: loading the same rows into
//! the same tables with `COPY`.
//!
//! `cargo run --release -p ops --bin replay-bench` (see docs/operations.md). The generated
//! topic is kept and reused by later runs; the database `chat_bench` is made anew each run.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use events::{ConversationCreated, Envelope, Event, MessageSent, MessagesRead, Timestamp};
use ops::bench;
use ops::log::{self, Span};
use ops::replay;
use projector::Folder;
use sqlx::{Connection, PgConnection};
use store::projection;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(about = "Replay benchmark: the projector's fold of N events vs COPY of the same rows")]
struct Args {
    /// Events in the log to replay.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Conversations the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    conversations: u64,
    /// Partitions of the generated topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The generated topic (reused when it already holds exactly --events events).
    #[arg(long, default_value = "bench.replay.v3")]
    topic: String,
    /// The database made anew for the run.
    #[arg(long, default_value = "chat_bench")]
    database: String,
    /// Records per transaction of the fold.
    #[arg(long, default_value_t = replay::DEFAULT_BATCH)]
    batch_size: usize,
    /// Folds applying at once, each on its own connection, over disjoint partitions.
    #[arg(long, default_value_t = replay::LANES)]
    lanes: usize,
    #[command(flatten)]
    target: bench::Target,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = writer::KafkaArgs::new(args.target.brokers.clone(), args.topic.clone());
    let in_log = ensure_log(&args).await?;
    println!(
        "log: {in_log} events in topic {} ({} partitions)",
        args.topic, args.partitions
    );

    let url = args.target.fresh_database(&args.database).await?;
    let database = store::DatabaseArgs {
        database_url: url.clone().into(),
        max_connections: 4,
    };
    let pool = replay::migrate_schema(&database, "public").await?;

    // The fold: the live projector's code, reading the log from offset 0.
    let spans = spans(&kafka).await?;
    let bar = replay::progress(log::total(&spans), "replay");
    let folder = Folder::new(&kafka.topic, None);
    let cpu_before = bench::backends_cpu(&pool).await?;
    let replayed = replay::replay_in_lanes(
        &pool,
        &folder,
        &kafka,
        spans,
        args.batch_size,
        args.lanes,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let fold_cpu = bench::cpu_between(&cpu_before, &bench::backends_cpu(&pool).await?);
    anyhow::ensure!(
        replayed.poison.is_empty(),
        "the benchmark log has poison: {:?}",
        &replayed.poison[..1]
    );
    let fold_rate = replayed.per_second();
    let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e6 / replayed.records.max(1) as f64;
    println!(
        "fold:  {} events in {:.2} s = {:.0} events/s (batches of {}, {} lane(s)); Postgres CPU {:.2} s = {:.1} µs/event",
        replayed.records,
        replayed.elapsed.as_secs_f64(),
        fold_rate,
        args.batch_size,
        args.lanes,
        fold_cpu.as_secs_f64(),
        per_event(fold_cpu)
    );

    // The floor: the rows the fold produced, COPYed into the same, empty tables.
    let floor = replay::migrate_schema(&database, "floor").await?;
    floor.close().await;
    let mut conn = PgConnection::connect(&url).await?;
    let tables = projection::TABLES.iter().map(|t| t.name);
    let copied = bench::copy_tables(&mut conn, tables, "public", "floor").await?;
    let (rows, copied, floor_cpu) = (copied.rows, copied.into, copied.into_cpu);
    let floor_rate = replayed.records as f64 / copied.as_secs_f64();
    println!(
        "floor: {rows} rows by COPY (one stream) in {:.2} s = {:.0} events/s; Postgres CPU {:.2} s = {:.1} µs/event",
        copied.as_secs_f64(),
        floor_rate,
        floor_cpu.as_secs_f64(),
        per_event(floor_cpu)
    );
    let share = fold_rate / floor_rate;
    println!(
        "fold / floor = {:.0}%  (targets: >= 50000 events/s {}, >= 90% of the floor {})",
        share * 100.0,
        if fold_rate >= 50_000.0 {
            "met"
        } else {
            "MISSED"
        },
        if share >= 0.9 { "met" } else { "MISSED" },
    );
    if !floor_cpu.is_zero() {
        // The server's work, which the machine's other load barely moves.
        println!(
            "Postgres CPU, fold / floor = {:.2}",
            fold_cpu.as_secs_f64() / floor_cpu.as_secs_f64()
        );
    }
    Ok(())
}

/// The whole log, from its beginning.
async fn spans(kafka: &writer::KafkaArgs) -> anyhow::Result<Vec<Span>> {
    log::spans_to_end(kafka, &HashMap::new()).await
}

/// Makes sure the topic holds exactly `args.events` generated events.
async fn ensure_log(args: &Args) -> anyhow::Result<u64> {
    let brokers = &args.target.brokers;
    let kafka = writer::KafkaArgs::new(brokers.clone(), args.topic.clone());
    writer::admin::ensure_topic(brokers, &args.topic, args.partitions).await?;
    let held = log::total(&spans(&kafka).await?);
    if held == args.events {
        return Ok(held);
    }
    if held > 0 {
        println!(
            "topic {} holds {held} events, not {}: making it anew",
            args.topic, args.events
        );
        writer::admin::delete_topics(brokers, &[&args.topic]).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut tries = 0;
        while let Err(e) = writer::admin::ensure_topic(brokers, &args.topic, args.partitions).await
        {
            tries += 1;
            anyhow::ensure!(tries < 30, "cannot recreate {}: {e}", args.topic);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let events = args.events;
    let conversations = args.conversations.min(events).max(1);
    let brokers = brokers.clone();
    let topic = args.topic.clone();
    tokio::task::spawn_blocking(move || {
        let history = (0..events).map(|i| generate(i, conversations));
        bench::produce(&brokers, &topic, history, events)
    })
    .await??;
    Ok(log::total(&spans(&kafka).await?))
}

/// A deterministic chat history: the conversations first, then messages with a read every
/// eighth event, spread over the conversations.
fn generate(i: u64, conversations: u64) -> Envelope {
    let conversation =
        |n: u64| Uuid::from_u128(0xbe9c_0000_0000_0000_0000_0000_0000_0000 | n as u128);
    let user = |n: u64| format!("user{:05}", n % 50_000);
    let at = Timestamp::from(
        chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).expect("a time"),
    );
    let event = if i < conversations {
        let group = i.is_multiple_of(4);
        // A direct conversation has two participants; a group, three.
        let mut participants = vec![user(i), user(i + 1)];
        if group {
            participants.push(user(i + 7));
        }
        participants.sort();
        Event::ConversationCreated(ConversationCreated {
            conversation_id: conversation(i),
            created_by: user(i),
            participants,
            is_group: group,
            title: if group {
                format!("group {i}")
            } else {
                String::new()
            },
            idempotency_key: None,
        })
    } else {
        // A multiplicative hash (its high bits) spreads consecutive events over the
        // conversations.
        let c = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % conversations;
        if i.is_multiple_of(8) {
            Event::MessagesRead(MessagesRead {
                conversation_id: conversation(c),
                user_id: user(c + 1),
            })
        } else {
            Event::MessageSent(MessageSent {
                conversation_id: conversation(c),
                message_id: Uuid::from_u128(0x5e4d_0000_0000_0000_0000_0000_0000_0000 | i as u128),
                sender_id: user(c + (i % 2)),
                content: format!("message {i}: see you on the page about rust and kafka later"),
                temp_message_id: format!("tmp-{i}"),
                sent_at: at,
            })
        }
    };
    Envelope {
        event_id: Uuid::from_u128(0xe7e7_0000_0000_0000_0000_0000_0000_0000 | i as u128),
        accepted_at: at,
        event,
    }
}
