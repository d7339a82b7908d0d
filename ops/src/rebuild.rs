//! `chatctl rebuild`: fold the whole log into fresh tables while the live projection keeps
//! serving, then switch to them in one transaction.
//!
//! The fresh tables live in schema `rebuild`, made by the same migrations, and are written by
//! the live projector's own fold with their own positions: a rebuild interrupted anywhere
//! resumes from those positions (or is dropped with `--discard`), and the live tables in
//! `public` are not touched until the switch. The switch locks the live tables (the projector
//! locks `projector_positions` first in each of its transactions, so it waits), checks that the
//! rebuild has reached at least the live positions (otherwise it folds the rest and tries
//! again), then moves the live tables to schema `rebuild_previous` and the rebuilt ones to
//! `public`. The projector then continues from the rebuilt positions, which are in the same
//! tables; readers' prepared statements are re-planned against the new tables by Postgres.

use std::collections::HashSet;

use anyhow::Context as _;
use projector::{DeadLetters, Folder};
use sqlx::{Connection, PgPool};
use store::DatabaseArgs;
use store::projection::{self, TABLES};
use writer::KafkaArgs;

use crate::log;
use crate::replay::{self, DEFAULT_BATCH};

/// Where a rebuild folds to.
pub const SCHEMA: &str = "rebuild";
/// Where the replaced projection is kept after a switch, until the next one.
pub const PREVIOUS: &str = "rebuild_previous";
/// Advisory lock held by the one rebuild that may run at a time.
const LOCK_KEY: i64 = 0x6368_6174_5245_4255;

#[derive(clap::Args, Debug, Clone)]
pub struct RebuildArgs {
    /// Drop an interrupted rebuild (schema `rebuild`) instead of resuming it.
    #[arg(long)]
    pub discard: bool,
    /// Fold (or resume folding) without switching; a later `chatctl rebuild` resumes and
    /// switches.
    #[arg(long)]
    pub no_switch: bool,
    /// Records per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
    /// Longest wait for the live tables' locks at the switch, in seconds (readers queue behind
    /// the switch meanwhile).
    #[arg(long, default_value_t = 10)]
    pub lock_timeout: u64,
}

/// How a rebuild ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Switched { events: u64, rounds: u32 },
    Folded { events: u64 },
    Discarded,
}

pub async fn run(
    kafka: &KafkaArgs,
    database: &DatabaseArgs,
    args: &RebuildArgs,
) -> anyhow::Result<Ended> {
    let live = replay::pool_in_schema(database, "public").await?;
    let mut guard = live.acquire().await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *guard)
        .await?;
    anyhow::ensure!(
        ours,
        "another rebuild is running on this database (it holds advisory lock {LOCK_KEY})"
    );
    if args.discard {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .execute(&live)
            .await?;
        eprintln!(
            "discarded the unfinished rebuild (schema {SCHEMA}); the live projection is unchanged"
        );
        return Ok(Ended::Discarded);
    }

    let existed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(SCHEMA)
    .fetch_one(&live)
    .await?;
    let fresh = replay::migrate_schema(database, SCHEMA).await?;
    let known = known_dead_letters(kafka).await?;
    let folder =
        Folder::new(&kafka.topic, Some(DeadLetters::new(kafka)?)).with_already_dead_lettered(known);

    let mut events = 0;
    for round in 1..=20 {
        let done = projection::positions(&fresh, &kafka.topic).await?;
        let spans = log::spans_to_end(kafka, &done).await?;
        let already: i64 = done.values().sum();
        if round == 1 && existed && already > 0 {
            eprintln!(
                "resuming the interrupted rebuild: {already} events folded already, {} to go",
                log::total(&spans)
            );
        }
        let bar = replay::progress(log::total(&spans), "rebuild");
        let replayed = replay::replay(&fresh, &folder, kafka, spans, args.batch_size, &bar).await?;
        bar.finish_and_clear();
        events += replayed.records;
        for poison in &replayed.poison {
            eprintln!(
                "set aside partition {} offset {}: {}",
                poison.partition, poison.offset, poison.reason
            );
        }
        if args.no_switch {
            eprintln!(
                "folded {events} events into schema {SCHEMA}; run `chatctl rebuild` to finish and switch"
            );
            return Ok(Ended::Folded { events });
        }
        match switch(&live, &kafka.topic, args.lock_timeout).await? {
            None => {
                eprintln!(
                    "switched: the projection is now a fresh fold of the log ({events} events folded in {round} round(s)); the previous tables are in schema {PREVIOUS}"
                );
                return Ok(Ended::Switched {
                    events,
                    rounds: round,
                });
            }
            Some(behind) => {
                tracing::info!(behind, "the live projection moved ahead; folding the rest");
            }
        }
    }
    anyhow::bail!(
        "the live projection kept moving ahead of the rebuild; the fold is kept in schema {SCHEMA}: run `chatctl rebuild` again"
    )
}

/// The positions of the dead letters already sent, so the rebuild does not send them twice.
async fn known_dead_letters(kafka: &KafkaArgs) -> anyhow::Result<HashSet<(i32, i64)>> {
    let kafka = kafka.clone();
    let letters = tokio::task::spawn_blocking(move || log::dead_letters(&kafka)).await??;
    Ok(letters.iter().map(|l| (l.partition, l.offset)).collect())
}

/// Switches the live names to the rebuilt tables, in one transaction, if the rebuild has
/// reached the live positions; otherwise changes nothing and returns how many events the
/// rebuild is behind.
async fn switch(live: &PgPool, topic: &str, lock_timeout: u64) -> anyhow::Result<Option<i64>> {
    let mut conn = live.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}s'",
        lock_timeout.max(1)
    ))
    .execute(&mut *tx)
    .await?;
    // In the projector's order: it waits on the positions before it touches a row.
    let list: Vec<String> = TABLES
        .iter()
        .map(|t| format!("public.{}", t.name))
        .collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        list.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .context("lock the live tables for the switch")?;
    let live_positions = projection::positions_in(&mut *tx, Some("public"), topic).await?;
    let rebuilt = projection::positions_in(&mut *tx, Some(SCHEMA), topic).await?;
    let behind: i64 = live_positions
        .iter()
        .map(|(p, live)| (live - rebuilt.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    if behind > 0 {
        tx.rollback().await?;
        return Ok(Some(behind));
    }
    let mut statements = vec![
        format!("DROP SCHEMA IF EXISTS {PREVIOUS} CASCADE"),
        format!("CREATE SCHEMA {PREVIOUS}"),
    ];
    statements.extend(
        TABLES
            .iter()
            .map(|t| format!("ALTER TABLE public.{} SET SCHEMA {PREVIOUS}", t.name)),
    );
    statements.extend(
        TABLES
            .iter()
            .map(|t| format!("ALTER TABLE {SCHEMA}.{} SET SCHEMA public", t.name)),
    );
    statements.push(format!("DROP SCHEMA {SCHEMA} CASCADE"));
    for statement in statements {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("switch: {statement}"))?;
    }
    tx.commit().await.context("commit the switch")?;
    Ok(None)
}
