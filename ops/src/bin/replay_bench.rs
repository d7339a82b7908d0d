//! The replay benchmark: folds at least a million events of the log into fresh tables with the
//! projector's own fold, and measures, in the same run, the floor: loading the same rows into
//! the same tables with `COPY`.
//!
//! `cargo run --release -p ops --bin replay-bench` (see docs/operations.md). The generated
//! topic is kept and reused by later runs; the database `chat_bench` is made anew each run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use events::{ConversationCreated, Envelope, Event, MessageSent, MessagesRead, Timestamp};
use futures_util::StreamExt;
use ops::log::{self, Span};
use ops::replay;
use projector::Folder;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sqlx::{Connection, PgConnection};
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
    #[arg(long, default_value = "bench.replay.v2")]
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
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// A database the benchmark can create databases from.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://chat:chat@127.0.0.1:5432/chat",
        hide_env_values = true
    )]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = writer::KafkaArgs {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
    };
    let in_log = ensure_log(&args).await?;
    println!(
        "log: {in_log} events in topic {} ({} partitions)",
        args.topic, args.partitions
    );

    let url = fresh_database(&args).await?;
    let database = store::DatabaseArgs {
        database_url: url.clone().into(),
        max_connections: 4,
    };
    let pool = replay::migrate_schema(&database, "public").await?;

    // The fold: the live projector's code, reading the log from offset 0.
    let spans = spans(&kafka).await?;
    let bar = replay::progress(log::total(&spans), "replay");
    let folder = Folder::new(&kafka.topic, None);
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
    anyhow::ensure!(
        replayed.poison.is_empty(),
        "the benchmark log has poison: {:?}",
        &replayed.poison[..1]
    );
    let fold_rate = replayed.per_second();
    println!(
        "fold:  {} events in {:.2} s = {:.0} events/s (batches of {}, {} lane(s))",
        replayed.records,
        replayed.elapsed.as_secs_f64(),
        fold_rate,
        args.batch_size,
        args.lanes
    );

    // The floor: the rows the fold produced, COPYed into the same, empty tables.
    let floor = replay::migrate_schema(&database, "floor").await?;
    floor.close().await;
    let mut conn = PgConnection::connect(&url).await?;
    let mut copied = Duration::ZERO;
    let mut rows = 0u64;
    for table in [
        "conversations",
        "participants",
        "messages",
        "read_markers",
        "projector_positions",
    ] {
        let mut data = Vec::new();
        let mut out = conn
            .copy_out_raw(&format!("COPY public.{table} TO STDOUT"))
            .await?;
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
        drop(out);
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw(&format!("COPY floor.{table} FROM STDIN"))
            .await?;
        for chunk in data.chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        rows += copy.finish().await?;
        copied += started.elapsed();
    }
    let floor_rate = replayed.records as f64 / copied.as_secs_f64();
    println!(
        "floor: {rows} rows by COPY (one stream) in {:.2} s = {:.0} events/s",
        copied.as_secs_f64(),
        floor_rate
    );
    let share = fold_rate / floor_rate;
    println!(
        "fold / floor = {:.0}%  (targets: >= 50000 events/s {}, >= 50% of the floor {})",
        share * 100.0,
        if fold_rate >= 50_000.0 {
            "met"
        } else {
            "MISSED"
        },
        if share >= 0.5 { "met" } else { "MISSED" },
    );
    Ok(())
}

async fn spans(kafka: &writer::KafkaArgs) -> anyhow::Result<Vec<Span>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = log::reader(&kafka.brokers)?;
        let marks = log::watermarks(&consumer, &kafka.topic)?;
        Ok(marks
            .into_iter()
            .map(|(partition, (low, high))| Span {
                partition,
                start: low,
                end: high,
            })
            .collect())
    })
    .await?
}

/// Makes sure the topic holds exactly `args.events` generated events.
async fn ensure_log(args: &Args) -> anyhow::Result<u64> {
    let kafka = writer::KafkaArgs {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
    };
    writer::admin::ensure_topic(&args.brokers, &args.topic, args.partitions).await?;
    let held = log::total(&spans(&kafka).await?);
    if held == args.events {
        return Ok(held);
    }
    if held > 0 {
        println!(
            "topic {} holds {held} events, not {}: making it anew",
            args.topic, args.events
        );
        writer::admin::delete_topics(&args.brokers, &[&args.topic]).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut tries = 0;
        while let Err(e) =
            writer::admin::ensure_topic(&args.brokers, &args.topic, args.partitions).await
        {
            tries += 1;
            anyhow::ensure!(tries < 30, "cannot recreate {}: {e}", args.topic);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let events = args.events;
    let conversations = args.conversations.min(events).max(1);
    let brokers = args.brokers.clone();
    let topic = args.topic.clone();
    tokio::task::spawn_blocking(move || produce(&brokers, &topic, events, conversations)).await??;
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
        let mut participants = vec![user(i), user(i + 1), user(i + 7)];
        participants.sort();
        participants.dedup();
        Event::ConversationCreated(ConversationCreated {
            conversation_id: conversation(i),
            created_by: user(i),
            participants,
            is_group: i.is_multiple_of(4),
            title: if i.is_multiple_of(4) {
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

fn produce(brokers: &str, topic: &str, events: u64, conversations: u64) -> anyhow::Result<()> {
    // Throughput settings: big lingering batches, lz4, one acknowledgement.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "1")
        .create()
        .context("create the benchmark producer")?;
    let bar = replay::progress(events, "produce");
    for i in 0..events {
        let envelope = generate(i, conversations);
        // Straight to Kafka for speed, but never past the log's rule.
        envelope
            .event
            .admit()
            .context("a generated event breaks the log's rule")?;
        let key = envelope.key();
        let value = envelope.encode();
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("produce a benchmark event"),
            }
        }
        if i % 10_000 == 0 {
            bar.set_position(i);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    bar.finish_and_clear();
    Ok(())
}

/// Drops and creates the benchmark database; returns its URL.
async fn fresh_database(args: &Args) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(&args.database_url)
        .await
        .context("connect to DATABASE_URL")?;
    let name = &args.database;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = args.database_url.split('?').next().unwrap_or_default();
    let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
    Ok(format!("{prefix}/{name}"))
}
