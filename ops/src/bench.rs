//! What the benchmarks share (`replay-bench`, `import-bench`, and the REST benchmark of `api`):
//! where they run, a database made anew for a run, a fast producer of generated events, and the
//! `COPY` floor each one measures beside its own figure.
//!
//! Benchmarks only: nothing here is used by `chatctl` or the services. Generated events still
//! pass the log's rule ([`events::Event::admit`]) before they are appended, so a benchmark's log
//! is one the projector applies without setting anything aside.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use events::Envelope;
use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sqlx::{Connection, PgConnection, PgPool};

/// The broker and the database server a benchmark runs against.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = writer::DEFAULT_BROKERS)]
    pub brokers: String,
    /// A database the benchmark can create databases from.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = store::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
}

impl Target {
    /// From `KAFKA_BROKERS` and `DATABASE_URL`, or the local stack's defaults (for a benchmark
    /// without a command line, such as one run by `cargo bench`).
    pub fn from_env() -> Self {
        Self {
            brokers: std::env::var("KAFKA_BROKERS")
                .unwrap_or_else(|_| writer::DEFAULT_BROKERS.to_owned()),
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| store::DEFAULT_DATABASE_URL.to_owned()),
        }
    }

    /// The URL of database `name` on the same server.
    pub fn url_of(&self, name: &str) -> String {
        let base = self.database_url.split('?').next().unwrap_or_default();
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        format!("{server}/{name}")
    }

    /// Drops database `name` (whoever is connected) and creates it empty; returns its URL.
    pub async fn fresh_database(&self, name: &str) -> anyhow::Result<String> {
        let mut admin = PgConnection::connect(&self.database_url)
            .await
            .context("connect to DATABASE_URL")?;
        self.drop_database(&mut admin, name).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create database {name}"))?;
        Ok(self.url_of(name))
    }

    /// Drops database `name` if it exists, whoever is connected.
    pub async fn forget_database(&self, name: &str) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.database_url)
            .await
            .context("connect to DATABASE_URL")?;
        self.drop_database(&mut admin, name).await
    }

    async fn drop_database(&self, admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
        let forced = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut *admin)
            .await;
        match forced {
            // An autovacuum worker on the database (after a large fold there often is one) has
            // no role a non-superuser may terminate, so FORCE refuses with insufficient_privilege.
            // A plain DROP asks autovacuum workers to stop and waits for them (up to 5 s).
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(admin)
                    .await
                    .with_context(|| format!("drop database {name}"))?;
            }
            forced => {
                forced.with_context(|| format!("drop database {name}"))?;
            }
        }
        Ok(())
    }
}

/// Appends `events` (`count` of them, for the progress bar) to `topic` as fast as the broker
/// takes them: big lingering lz4 batches, one acknowledgement. Not the writer's settings: a
/// benchmark's log is generated, not acknowledged to anyone.
pub fn produce(
    brokers: &str,
    topic: &str,
    events: impl Iterator<Item = Envelope>,
    count: u64,
) -> anyhow::Result<()> {
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
    let bar = crate::replay::progress(count, "produce");
    for (i, envelope) in events.enumerate() {
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
            bar.set_position(i as u64);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    bar.finish_and_clear();
    Ok(())
}

/// What a `COPY` floor took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub rows: u64,
    /// `COPY … TO STDOUT` of the source tables, into memory.
    pub out: Duration,
    /// `COPY … FROM STDIN` into the empty tables: the floor of a load.
    pub into: Duration,
    /// CPU time the server spent on the `COPY … FROM STDIN`s (zero when it is not on this
    /// machine): unlike `into`, it barely moves with what else runs.
    pub into_cpu: Duration,
}

/// Copies `tables` from schema `from` into the same, empty tables of schema `to`, one table
/// after the other on `conn`: each table is read into memory first, so `into` times the load
/// alone.
pub async fn copy_tables(
    conn: &mut PgConnection,
    tables: impl IntoIterator<Item = &str>,
    from: &str,
    to: &str,
) -> anyhow::Result<Copied> {
    let mut copied = Copied::default();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await?;
    for table in tables {
        let started = Instant::now();
        let mut data = Vec::new();
        let mut out = conn
            .copy_out_raw(&format!("COPY {from}.{table} TO STDOUT"))
            .await?;
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
        drop(out);
        copied.out += started.elapsed();
        let started = Instant::now();
        let cpu_before = cpu_time(backend);
        let mut copy = conn
            .copy_in_raw(&format!("COPY {to}.{table} FROM STDIN"))
            .await?;
        for chunk in data.chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        copied.rows += copy.finish().await?;
        copied.into += started.elapsed();
        copied.into_cpu += cpu_time(backend).saturating_sub(cpu_before);
    }
    Ok(copied)
}

/// CPU time (user and system) used so far by the server's backends serving the database the
/// `pool` connects to, by process id. Empty when the server is not on this machine.
pub async fn backends_cpu(pool: &PgPool) -> anyhow::Result<HashMap<i32, Duration>> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await?;
    Ok(pids.into_iter().map(|pid| (pid, cpu_time(pid))).collect())
}

/// CPU time the backends used between two [`backends_cpu`] readings (a backend that started
/// in between counts from zero).
pub fn cpu_between(before: &HashMap<i32, Duration>, after: &HashMap<i32, Duration>) -> Duration {
    after
        .iter()
        .map(|(pid, cpu)| cpu.saturating_sub(before.get(pid).copied().unwrap_or_default()))
        .sum()
}

/// CPU time (user and system) process `pid` has used, from `/proc/<pid>/stat`; zero when it
/// cannot be read (the process is on another machine).
fn cpu_time(pid: i32) -> Duration {
    // Linux reports it in clock ticks of USER_HZ, 100 a second on every architecture we run on.
    const TICK: Duration = Duration::from_millis(10);
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The fields after the command name (in parentheses, which may hold spaces): state is the
    // first, utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u32>().ok())
            .unwrap_or(0)
    };
    TICK * (ticks(11) + ticks(12))
}
