//! `chatctl verify`: is the live projection what the log says?
//!
//! It takes a snapshot of the live tables (one repeatable-read transaction) with the positions
//! stored in it, folds the log up to exactly those positions into a scratch schema with the
//! projector's own fold, and compares the two table by table, row by row. Differences are
//! reported in words; so are the dead-lettered events, and any event the fold had to set aside
//! that is missing from the dead-letter topic (a silent skip).
//!
//! Since the fold is the projector's own, a bug in it would be made twice and never show: the
//! [`crate::audit`] checks the same snapshot against the log with code of its own.
//!
//! It fails (exit 1) on any difference, and while the dead-letter topic holds events of this
//! log: each is an acknowledged event that is not in the projection. An operator who has dealt
//! with some accepts them by position (`--accept-dead-letter 0:42`).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt::Write as _;

use anyhow::Context as _;
use futures_util::StreamExt;
use projector::Folder;
use projector::dead_letter::DeadLetter;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool, Row};
use store::DatabaseArgs;
use store::projection::{self, Table};
use writer::KafkaArgs;

use crate::log::{self, Span};
use crate::replay::{self, DEFAULT_BATCH};

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Most differences listed (all are counted).
    #[arg(long, default_value_t = 20)]
    pub max_differences: usize,
    /// Records per transaction of the scratch fold.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
    /// A dead letter already dealt with, as `<partition>:<offset>` of the log (repeatable):
    /// it no longer fails the verification.
    #[arg(long = "accept-dead-letter", value_name = "PARTITION:OFFSET", value_parser = parse_position)]
    pub accept_dead_letters: Vec<(i32, i64)>,
}

fn parse_position(text: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not <partition>:<offset>"))?;
    Ok((
        partition
            .trim()
            .parse()
            .map_err(|_| format!("{partition:?} is not a partition number"))?,
        offset
            .trim()
            .parse()
            .map_err(|_| format!("{offset:?} is not an offset"))?,
    ))
}

/// What verify found.
#[derive(Debug, Default)]
pub struct Report {
    /// Events of the log the live projection has applied (its stored positions).
    pub events_checked: u64,
    /// Differences, in words, at most `max_differences` of them.
    pub differences: Vec<String>,
    /// Every difference, counted per table.
    pub counts: Vec<(&'static str, u64)>,
    /// Events set aside, as the dead-letter topic holds them.
    pub dead_letters: Vec<DeadLetter>,
    /// Events the fold set aside that are not in the dead-letter topic.
    pub silently_skipped: Vec<projector::Poison>,
    /// Dead letters accepted with `--accept-dead-letter`.
    pub accepted: HashSet<(i32, i64)>,
    /// The checks that do not reuse the fold.
    pub audit: crate::audit::Findings,
}

impl Report {
    pub fn total_differences(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// Dead letters nobody accepted: acknowledged events missing from the projection.
    pub fn unaccepted_dead_letters(&self) -> usize {
        self.dead_letters
            .iter()
            .filter(|l| !self.accepted.contains(&(l.partition, l.offset)))
            .count()
    }

    pub fn is_clean(&self) -> bool {
        self.total_differences() == 0
            && self.silently_skipped.is_empty()
            && self.audit.count == 0
            && self.unaccepted_dead_letters() == 0
    }

    /// The report as a person reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let total = self.total_differences();
        if total == 0 {
            let _ = writeln!(
                out,
                "OK: the projection equals a fresh fold of the log ({} events checked).",
                self.events_checked
            );
        } else {
            let _ = writeln!(
                out,
                "MISMATCH: {total} difference(s) between the projection and a fresh fold of the first {} events of the log:",
                self.events_checked
            );
            for line in &self.differences {
                let _ = writeln!(out, "  - {line}");
            }
            if (self.differences.len() as u64) < total {
                let _ = writeln!(
                    out,
                    "  … and {} more",
                    total - self.differences.len() as u64
                );
            }
            let per_table: Vec<String> = self
                .counts
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(t, n)| format!("{t}: {n}"))
                .collect();
            let _ = writeln!(out, "  per table: {}", per_table.join(", "));
            let _ = writeln!(
                out,
                "  To repair: `chatctl rebuild` replaces the projection with a fresh fold of the log."
            );
        }
        if self.audit.count == 0 {
            let _ = writeln!(
                out,
                "OK: the log's {} message(s) are in the projection once each, with their fields, counts, latest messages and read markers (checked without the fold).",
                self.audit.messages
            );
        } else {
            let _ = writeln!(
                out,
                "MISMATCH: {} difference(s) between the log and the projection, found without the fold:",
                self.audit.count
            );
            for line in &self.audit.differences {
                let _ = writeln!(out, "  - {line}");
            }
            if (self.audit.differences.len() as u64) < self.audit.count {
                let _ = writeln!(
                    out,
                    "  … and {} more",
                    self.audit.count - self.audit.differences.len() as u64
                );
            }
        }
        if self.dead_letters.is_empty() {
            let _ = writeln!(out, "No dead-lettered events.");
        } else {
            let unaccepted = self.unaccepted_dead_letters();
            let _ = writeln!(
                out,
                "{}{} dead-lettered event(s) (not in the projection; fix the writer or add an upcast, then re-append them):",
                if unaccepted > 0 { "FAIL: " } else { "" },
                self.dead_letters.len()
            );
            for letter in &self.dead_letters {
                let accepted = self.accepted.contains(&(letter.partition, letter.offset));
                let _ = writeln!(
                    out,
                    "  - partition {} offset {}{}: {}",
                    letter.partition,
                    letter.offset,
                    if accepted { " (accepted)" } else { "" },
                    letter.reason
                );
            }
            if unaccepted > 0 {
                let _ = writeln!(
                    out,
                    "  Once one is dealt with, accept it: chatctl verify --accept-dead-letter <partition>:<offset>"
                );
            }
        }
        for poison in &self.silently_skipped {
            let _ = writeln!(
                out,
                "SKIPPED SILENTLY: partition {} offset {} cannot be applied ({}) and is not in the dead-letter topic",
                poison.partition, poison.offset, poison.reason
            );
        }
        out
    }
}

pub async fn run(
    kafka: &KafkaArgs,
    database: &DatabaseArgs,
    args: &VerifyArgs,
) -> anyhow::Result<Report> {
    let scratch_schema = format!(
        "verify_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let live_pool = replay::pool_in_schema(database, "public").await?;
    let result = verify_into(kafka, database, args, &live_pool, &scratch_schema).await;
    // The scratch fold is thrown away whatever happened.
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {scratch_schema} CASCADE"))
        .execute(&live_pool)
        .await;
    result
}

async fn verify_into(
    kafka: &KafkaArgs,
    database: &DatabaseArgs,
    args: &VerifyArgs,
    live_pool: &PgPool,
    scratch_schema: &str,
) -> anyhow::Result<Report> {
    // The live snapshot: every later read of the live tables sees them as of these positions.
    let mut live = live_pool.acquire().await?;
    let mut snapshot = live.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    let positions = projection::positions(&mut *snapshot, &kafka.topic).await?;
    let spans: Vec<Span> = positions
        .iter()
        .map(|(p, next)| Span {
            partition: *p,
            start: 0,
            end: *next,
        })
        .collect();

    let audit_spans = spans.clone();
    let scratch = replay::migrate_schema(database, scratch_schema).await?;
    let folder = Folder::new(&kafka.topic, None);
    let bar = replay::progress(log::total(&spans), "verify");
    let replayed = replay::replay(&scratch, &folder, kafka, spans, args.batch_size, &bar).await?;
    bar.finish_and_clear();

    let mut report = Report {
        events_checked: replayed.records,
        accepted: args.accept_dead_letters.iter().copied().collect(),
        ..Report::default()
    };
    let mut scratch_conn = scratch.acquire().await?;
    for table in projection::ROWS {
        let count = compare(
            table,
            &mut snapshot,
            &mut scratch_conn,
            &mut report.differences,
            args.max_differences,
        )
        .await
        .with_context(|| format!("compare table {}", table.name))?;
        report.counts.push((table.name, count));
    }
    report.audit = crate::audit::audit(kafka, audit_spans, &mut snapshot, args.max_differences)
        .await
        .context("check the projection against the log")?;
    snapshot.rollback().await?;
    drop(scratch_conn);
    scratch.close().await;

    let kafka_copy = kafka.clone();
    report.dead_letters =
        tokio::task::spawn_blocking(move || log::dead_letters(&kafka_copy)).await??;
    let lettered: HashSet<(i32, i64)> = report
        .dead_letters
        .iter()
        .map(|l| (l.partition, l.offset))
        .collect();
    report.silently_skipped = replayed
        .poison
        .into_iter()
        .filter(|p| !lettered.contains(&(p.partition, p.offset)))
        .collect();
    Ok(report)
}

/// A row named for a person: "conversation X: message M".
fn subject(table: &Table, row: &Value) -> String {
    let conversation = || text(&row["conversation_id"]);
    match table.name {
        "conversations" => format!("conversation {}", conversation()),
        "participants" => format!(
            "conversation {}: participant {}",
            conversation(),
            text(&row["user_id"])
        ),
        "messages" => format!(
            "conversation {}: message {} (log offset {})",
            conversation(),
            text(&row["message_id"]),
            text(&row["seq"])
        ),
        "read_markers" => format!(
            "conversation {}: read marker of {}",
            conversation(),
            text(&row["user_id"])
        ),
        "idempotency_keys" => format!(
            "Idempotency-Key {} of {}",
            shown(&row["idempotency_key"]),
            text(&row["created_by"])
        ),
        // A table added to the catalog is named by its key until it gets words of its own.
        other => {
            let key: Vec<String> = table
                .key
                .iter()
                .map(|column| format!("{column} {}", text(&row[*column])))
                .collect();
            format!("{other} row {}", key.join(", "))
        }
    }
}

/// What a column means to a person.
fn label(column: &str) -> &str {
    match column {
        "latest_message_id" => "latest message",
        "latest_seq" => "latest message's log offset",
        "latest_content" => "latest message's content",
        "latest_sender_id" => "latest message's sender",
        "latest_sent_at" => "latest message's sentAt",
        "created_by" => "creator",
        "created_at" => "creation time",
        "is_group" => "isGroup",
        "sender_id" => "sender",
        "sent_at" => "sentAt",
        "temp_message_id" => "tempMessageId",
        "message_id" => "message id",
        other => other,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "nothing".into(),
        other => other.to_string(),
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() > 60 => {
            format!("{:?}…", s.chars().take(60).collect::<String>())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Null => "nothing".into(),
        other => other.to_string(),
    }
}

/// Merges the two tables in key order; returns how many rows differ, and appends the first
/// ones, in words, to `out`.
async fn compare(
    table: Table,
    live: &mut PgConnection,
    fold: &mut PgConnection,
    out: &mut Vec<String>,
    max: usize,
) -> anyhow::Result<u64> {
    let sql = format!(
        "SELECT ({key}) COLLATE \"C\" AS k, to_jsonb(t) AS r FROM {name} t ORDER BY 1",
        key = table.sort_key,
        name = table.name
    );
    let mut live_rows = sqlx::query(&sql).fetch(live);
    let mut fold_rows = sqlx::query(&sql).fetch(fold);
    let mut next_live = next(&mut live_rows).await?;
    let mut next_fold = next(&mut fold_rows).await?;
    let mut count = 0u64;
    let mut say = |line: String| {
        count += 1;
        if out.len() < max {
            out.push(line);
        }
    };
    loop {
        match (&next_live, &next_fold) {
            (None, None) => break,
            (Some((lk, lrow)), Some((fk, frow))) if lk == fk => {
                let empty = serde_json::Map::new();
                let fields = frow.as_object().unwrap_or(&empty);
                for (column, in_log) in fields {
                    if table.key.contains(&column.as_str()) {
                        continue;
                    }
                    let in_projection = &lrow[column.as_str()];
                    if in_projection != in_log && column == "read_seq" {
                        say(format!(
                            "conversation {}: {} has read up to log offset {} in the log but {} in the projection",
                            text(&frow["conversation_id"]),
                            text(&frow["user_id"]),
                            shown(in_log),
                            shown(in_projection)
                        ));
                    } else if in_projection != in_log {
                        say(format!(
                            "{}: {} is {} in the log but {} in the projection",
                            subject(&table, frow),
                            label(column),
                            shown(in_log),
                            shown(in_projection)
                        ));
                    }
                }
                next_live = next(&mut live_rows).await?;
                next_fold = next(&mut fold_rows).await?;
            }
            (Some((lk, lrow)), fold_side)
                if fold_side
                    .as_ref()
                    .is_none_or(|(fk, _)| lk.cmp(fk) == Ordering::Less) =>
            {
                say(format!(
                    "{} is in the projection but not in the log",
                    subject(&table, lrow)
                ));
                next_live = next(&mut live_rows).await?;
            }
            (_, Some((_, frow))) => {
                say(format!(
                    "{} is in the log but missing from the projection",
                    subject(&table, frow)
                ));
                next_fold = next(&mut fold_rows).await?;
            }
            (Some(_), None) => unreachable!("handled above"),
        }
    }
    Ok(count)
}

async fn next(
    rows: &mut (impl futures_util::Stream<Item = Result<sqlx::postgres::PgRow, sqlx::Error>> + Unpin),
) -> anyhow::Result<Option<(String, Value)>> {
    match rows.next().await {
        None => Ok(None),
        Some(row) => {
            let row = row?;
            Ok(Some((row.try_get("k")?, row.try_get("r")?)))
        }
    }
}
