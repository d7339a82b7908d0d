//! Folding a stretch of the log into a projection, with a progress bar: the engine of rebuild,
//! verify and the replay benchmark. It is the live projector's own [`Folder`], pointed at the
//! tables of another schema.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use projector::{Decoded, Folder, Poison};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use store::DatabaseArgs;
use writer::KafkaArgs;

use crate::log::{self, Span};

/// Records per transaction when replaying: large, because nobody waits for one event.
pub const DEFAULT_BATCH: usize = 50_000;

/// A pool whose connections see the tables of `schema` under their plain names, so the
/// projector's SQL (and the migrations) work there unchanged.
pub async fn pool_in_schema(database: &DatabaseArgs, schema: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database
        .database_url
        .expose_secret()
        .parse()
        .context("DATABASE_URL is not a Postgres URL")?;
    let options = options.options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .with_context(|| format!("connect to the database (schema {schema})"))
}

/// Creates `schema` if needed and brings its projection tables to the current migrations.
pub async fn migrate_schema(database: &DatabaseArgs, schema: &str) -> anyhow::Result<PgPool> {
    let public = pool_in_schema(database, "public").await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&public)
        .await
        .with_context(|| format!("create schema {schema}"))?;
    public.close().await;
    let pool = pool_in_schema(database, schema).await?;
    store::MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("migrate schema {schema}"))?;
    Ok(pool)
}

/// A progress bar on stderr with the rate and the time left (hidden when stderr is not a
/// terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
        )
        .expect("a valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Records read (applied now, applied before, or set aside).
    pub records: u64,
    /// Records applied now.
    pub fresh: u64,
    pub poison: Vec<Poison>,
    pub elapsed: Duration,
}

impl Replayed {
    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Folds `spans` of the log into the projection `pool` points at, `batch` records per
/// transaction. Partitions are independent (a conversation lives in one), so they are folded in
/// two lanes at once, each on its own connection: Postgres then works on both cores. In each
/// lane, reading the log and decoding run a batch ahead of applying.
pub async fn replay(
    pool: &PgPool,
    folder: &Folder,
    kafka: &KafkaArgs,
    spans: Vec<Span>,
    batch: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Replayed> {
    replay_in_lanes(pool, folder, kafka, spans, batch, LANES, bar).await
}

/// [`replay`] with `lanes` folds at once (at most one per partition).
pub async fn replay_in_lanes(
    pool: &PgPool,
    folder: &Folder,
    kafka: &KafkaArgs,
    spans: Vec<Span>,
    batch: usize,
    lanes: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let mut spans: Vec<Span> = spans.into_iter().filter(|s| !s.is_empty()).collect();
    spans.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut lanes: Vec<Vec<Span>> = vec![Vec::new(); lanes.min(spans.len()).max(1)];
    for span in spans {
        // The next largest span to the lightest lane.
        let lightest = lanes
            .iter_mut()
            .min_by_key(|lane| log::total(lane))
            .expect("at least one lane");
        lightest.push(span);
    }
    let done = futures_util::future::try_join_all(
        lanes
            .into_iter()
            .map(|lane| replay_lane(pool, folder, kafka, lane, batch, bar)),
    )
    .await?;
    let mut replayed = Replayed::default();
    for lane in done {
        replayed.records += lane.records;
        replayed.fresh += lane.fresh;
        replayed.poison.extend(lane.poison);
    }
    replayed.elapsed = started.elapsed();
    Ok(replayed)
}

/// Folds applying at once by default: Postgres does most of the work, one core per
/// connection; two is this 2-core machine's worth.
pub const LANES: usize = 2;

async fn replay_lane(
    pool: &PgPool,
    folder: &Folder,
    kafka: &KafkaArgs,
    spans: Vec<Span>,
    batch: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Replayed> {
    let mut replayed = Replayed::default();
    // Three stages, each a batch ahead of the next: read the log, decode, apply.
    let mut batches = log::read(kafka, spans, batch);
    let (decoded_tx, mut decoded) = tokio::sync::mpsc::channel(2);
    std::thread::spawn(move || {
        while let Some(records) = batches.blocking_recv() {
            let batch = records.map(|r| r.into_iter().map(Decoded::new).collect::<Vec<_>>());
            if decoded_tx.blocking_send(batch).is_err() {
                return;
            }
        }
    });
    while let Some(records) = decoded.recv().await {
        let records = records?;
        let outcome = folder
            .apply_decoded(pool, &records)
            .await
            .context("apply a batch of the log")?;
        if let Some(stop) = outcome.stopped.first() {
            anyhow::bail!(
                "partition {} offset {}: {} (this chatctl is older than the log; use the build that wrote it)",
                stop.partition,
                stop.offset,
                stop.reason
            );
        }
        replayed.records += records.len() as u64;
        replayed.fresh += outcome.fresh as u64;
        replayed.poison.extend(outcome.poison);
        bar.inc(records.len() as u64);
    }
    Ok(replayed)
}
