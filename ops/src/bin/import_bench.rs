//! The import benchmark: `chatctl import-pagenow` of an old PageNow database of at least a
//! million messages into a fresh topic, and, in the same run, the floor: the same old rows moved
//! by `COPY` (out of the old tables, into empty tables of the same schema).
//!
//! `cargo run --release -p ops --bin import-bench` (see docs/performance.md). The old database
//! (`pagenow_bench`) is generated once and reused while it holds --messages messages; the topic
//! is made anew each run and deleted at the end.

use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use ops::{bench, import};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

const SCHEMA: &str = include_str!("../../../tests/fixtures/pagenow_old_schema.sql");
const TABLES: [&str; 4] = [
    "conversation_table",
    "participant_table",
    "message_table",
    "message_is_read_table",
];

#[derive(Parser, Debug)]
#[command(
    about = "Import benchmark: chatctl import-pagenow of N old messages vs COPY of the same rows"
)]
struct Args {
    /// Messages in the old database.
    #[arg(long, default_value_t = 1_000_000)]
    messages: i64,
    /// Old conversations (one in five a group of three, the others direct).
    #[arg(long, default_value_t = 10_000)]
    conversations: i64,
    /// Distinct users.
    #[arg(long, default_value_t = 2_000)]
    users: i64,
    /// Partitions of the fresh topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The old database (generated when it does not hold exactly --messages messages).
    #[arg(long, default_value = "pagenow_bench")]
    database: String,
    /// Appends in flight.
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    #[command(flatten)]
    target: bench::Target,
}

/// The old database with `args.messages` messages, generated unless it is there already.
async fn old_database(args: &Args) -> anyhow::Result<PgPool> {
    let url = args.target.url_of(&args.database);
    if let Ok(pool) = PgPoolOptions::new().max_connections(2).connect(&url).await {
        let count: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM message_table")
            .fetch_one(&pool)
            .await
            .ok();
        if count == Some(args.messages) {
            return Ok(pool);
        }
        pool.close().await;
    }
    let url = args.target.fresh_database(&args.database).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let started = Instant::now();
    let (m, c, u) = (args.messages, args.conversations, args.users);
    // Every fifth conversation a group of three; pairs may repeat, as the old race made them.
    sqlx::raw_sql(&format!(
        "CREATE TEMP TABLE members AS
           SELECT c, ('00000000-0000-4000-8000-' || lpad(to_hex(c), 12, '0'))::uuid AS id,
                  CASE WHEN c % 5 = 0
                       THEN ARRAY['user' || c % {u}, 'user' || (c % {u} + 1 + c / {u}) % {u}, 'user' || (c % {u} + {u} / 2) % {u}]
                       ELSE ARRAY['user' || c % {u}, 'user' || (c % {u} + 1 + c / {u}) % {u}] END AS users
             FROM generate_series(1, {c}) c;
         INSERT INTO conversation_table
           SELECT id, users[1], timestamp '2021-01-01' + c * interval '1 second',
                  CASE WHEN c % 5 = 0 THEN 'group ' || c END, c % 5 = 0
             FROM members;
         INSERT INTO participant_table SELECT unnest(users), id FROM members;
         CREATE TEMP TABLE generated AS
           SELECT gen_random_uuid() AS message_id, id AS conversation_id,
                  -- Two messages per 20 ms instant: equal timestamps are common.
                  timestamptz '2021-02-01 00:00:00+00' + (n / 2) * interval '20 ms' AS sent_at,
                  users[1 + (n / {c}) % array_length(users, 1)] AS sender_id,
                  'message ' || n || ': the quick brown fox jumps over the lazy dog' AS content,
                  users, n
             FROM generate_series(1, {m}) n JOIN members ON members.c = 1 + n % {c};
         INSERT INTO message_table
           SELECT message_id, conversation_id, sent_at, sender_id, content FROM generated;
         -- What the old code wrote: a row per participant, read by the sender; everyone has read
         -- all but the last five messages of each conversation.
         INSERT INTO message_is_read_table
           SELECT message_id, r, r = sender_id OR n <= {m} - 5 * {c} FROM generated, unnest(users) r;
         ANALYZE;"
    ))
    .execute(&pool)
    .await
    .context("generate the old database")?;
    println!(
        "generated the old database in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(pool)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let old = old_database(&args).await?;
    let rows: Vec<i64> = {
        let mut rows = Vec::new();
        for table in TABLES {
            rows.push(
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(&old)
                    .await?,
            );
        }
        rows
    };
    let total_rows: i64 = rows.iter().sum();
    println!(
        "old database {}: {} conversations, {} participants, {} messages, {} read rows ({total_rows} rows)",
        args.database, rows[0], rows[1], rows[2], rows[3]
    );

    let kafka = writer::KafkaArgs::new(
        args.target.brokers.clone(),
        format!("bench.import.{}", &Uuid::new_v4().simple().to_string()[..8]),
    );
    writer::admin::ensure_topic(&kafka.brokers, &kafka.topic, args.partitions).await?;
    let outcome = run(&args, &old, &kafka).await;
    writer::admin::delete_topics(&kafka.brokers, &[&kafka.topic]).await?;
    outcome?;

    // The floor: the same old rows moved by COPY into empty tables of the same schema.
    let url = args.target.url_of(&args.database);
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS floor CASCADE; CREATE SCHEMA floor; SET search_path = floor; {SCHEMA}"
    ))
    .execute(&mut conn)
    .await?;
    let bench::Copied {
        rows: copied,
        out: out_time,
        into: in_time,
        ..
    } = bench::copy_tables(&mut conn, TABLES, "public", "floor").await?;
    let both = out_time + in_time;
    println!(
        "floor:  {copied} rows by COPY in {:.2} s (out {:.2} s, in {:.2} s) = {:.0} rows/s, {:.0} messages/s",
        both.as_secs_f64(),
        out_time.as_secs_f64(),
        in_time.as_secs_f64(),
        copied as f64 / both.as_secs_f64(),
        rows[2] as f64 / both.as_secs_f64(),
    );
    sqlx::query("DROP SCHEMA floor CASCADE")
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The import's phases, timed, then a second run (everything held already).
async fn run(args: &Args, old: &PgPool, kafka: &writer::KafkaArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data = import::load(old).await?;
    let loaded = started.elapsed();
    let plan = import::plan(&data);
    drop(data);
    let planned = started.elapsed() - loaded;
    let held = import::event_ids_in_log(kafka).await?;
    let rest = import::remaining(&plan, &held);
    let writer = writer::Writer::new(kafka)?;
    let bar = ops::replay::progress(rest.events.len() as u64, "import");
    let appending = Instant::now();
    let appended = import::append(&writer, &rest.events, args.in_flight, &bar).await?;
    let append_time = appending.elapsed();
    bar.finish_and_clear();
    let total = started.elapsed();
    let counts = plan.counts();
    println!(
        "import: {} messages ({} events: {} conversations, {} read markers; {} refused rows) in {:.2} s \
         = {:.0} messages/s (read the old database {:.2} s, plan {:.2} s, append {appended} events {:.2} s = {:.0} events/s)",
        counts.messages,
        counts.events(),
        counts.conversations,
        counts.reads,
        plan.refused.len(),
        total.as_secs_f64(),
        counts.messages as f64 / total.as_secs_f64(),
        loaded.as_secs_f64(),
        planned.as_secs_f64(),
        append_time.as_secs_f64(),
        appended as f64 / append_time.as_secs_f64(),
    );
    drop(rest);
    // A second run: read the old database and the log, plan, find nothing to append.
    let started = Instant::now();
    let data = import::load(old).await?;
    let plan = import::plan(&data);
    let held = import::event_ids_in_log(kafka).await?;
    let rest = import::remaining(&plan, &held);
    anyhow::ensure!(
        rest.events.is_empty(),
        "a second run would append {}",
        rest.events.len()
    );
    println!(
        "rerun:  nothing to append ({} events already in the log), found in {:.2} s",
        rest.held,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
