//! The transaction of the fold: applying records of the log to a projection exactly once,
//! together with the positions they reach, setting poison aside. The rows' SQL is in
//! [`crate::sql`]; the positions' in [`store::projection`].
//!
//! The same [`Folder`] serves the live projector and the operator's rebuild and verify: the
//! projection it writes is whatever the pool's `search_path` names (the live tables in
//! `public`, or fresh ones in another schema).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use sqlx::{PgConnection, PgPool};
use store::projection;

use crate::dead_letter::DeadLetters;
use crate::sql::{Batch, Positioned};
use crate::{Record, decode};

/// A record that could not be decoded or applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// What one call of [`Folder::apply`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Records not applied before (the others were skipped as already applied).
    pub fresh: usize,
    /// Events applied, per type name.
    pub counts: HashMap<&'static str, u64>,
    /// Records set aside (and dead-lettered, if the folder sends dead letters).
    pub poison: Vec<Poison>,
    /// Records of a schema version newer than this build knows: their partition's projection
    /// stops there (its position stays on the record, nothing after it is applied).
    pub stopped: Vec<Poison>,
}

impl Outcome {
    pub fn record_metrics(&self) {
        for (type_name, count) in &self.counts {
            metrics::counter!("chat_events_projected_total", "type" => *type_name)
                .increment(*count);
        }
    }
}

/// Why a batch was not applied. Nothing of it was committed; the caller retries it.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("the projection database failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    DeadLetter(#[from] anyhow::Error),
    /// The records skip part of the log: reading must start again at the stored position.
    #[error(
        "partition {partition}: the projection stands at offset {stored} but the records start at {found}"
    )]
    Gap {
        partition: i32,
        stored: i64,
        found: i64,
    },
}

/// A record of the log with its event, decoded (or why it cannot be).
#[derive(Debug)]
pub struct Decoded {
    pub record: Record,
    pub event: Result<Positioned, String>,
    /// The event is of a schema version newer than this build knows: not poison, it must wait.
    pub newer: bool,
}

impl Decoded {
    pub fn new(record: Record) -> Self {
        let mut newer = false;
        let event = decode(&record)
            .map(|envelope| Positioned {
                partition: record.partition,
                offset: record.offset,
                envelope,
            })
            .map_err(|e| {
                newer = e.newer;
                e.reason
            });
        Self {
            record,
            event,
            newer,
        }
    }
}

/// Applies batches of records of one topic to a projection.
pub struct Folder {
    topic: String,
    /// Where poison goes; `None` only collects it in the [`Outcome`] (verify reads the log, it
    /// does not write to it).
    dead_letters: Option<DeadLetters>,
    /// Positions already in the dead-letter topic, not sent again (a rebuild meets the poison
    /// the live projector has set aside already).
    already_dead_lettered: HashSet<(i32, i64)>,
    /// Refuse records that start past a partition's stored position ([`FoldError::Gap`]):
    /// the live projector reads from where Postgres stands, never from a hint ahead of it.
    contiguous: bool,
}

impl Folder {
    pub fn new(topic: &str, dead_letters: Option<DeadLetters>) -> Self {
        Self {
            topic: topic.to_owned(),
            dead_letters,
            already_dead_lettered: HashSet::new(),
            contiguous: false,
        }
    }

    /// Every partition's records must start at its stored position (offsets of the log are
    /// consecutive: the producer is idempotent, never transactional, and nothing is deleted).
    pub fn contiguous(mut self) -> Self {
        self.contiguous = true;
        self
    }

    /// Positions that need not be dead-lettered again.
    pub fn with_already_dead_lettered(mut self, positions: HashSet<(i32, i64)>) -> Self {
        self.already_dead_lettered = positions;
        self
    }

    /// Applies the records not yet applied (in log order within each partition), with their
    /// positions, in one transaction.
    ///
    /// An event that decodes but that the database refuses as data (SQLSTATE class 22 or 23:
    /// a value too long, a broken constraint) fails its whole batch; the batch is then applied
    /// again in savepoints, halving each refused part until the refused events stand alone, and
    /// those are set aside. (Events that break the log's rule never get this far: they are set
    /// aside as they are decoded.)
    /// Any other failure (the database is down, say) is returned: the batch must be retried,
    /// never skipped.
    pub async fn apply(&self, pool: &PgPool, records: &[Record]) -> Result<Outcome, FoldError> {
        let decoded: Vec<Decoded> = records.iter().cloned().map(Decoded::new).collect();
        self.apply_decoded(pool, &decoded).await
    }

    /// [`Folder::apply`] of records decoded already (decoding can then run ahead, elsewhere).
    pub async fn apply_decoded(
        &self,
        pool: &PgPool,
        records: &[Decoded],
    ) -> Result<Outcome, FoldError> {
        match self.apply_with(pool, records, false).await {
            Err(FoldError::Database(e)) if is_data_error(&e) => {
                tracing::warn!(error = %e, records = records.len(),
                    "the database refused an event of the batch; applying it event by event");
                self.apply_with(pool, records, true).await
            }
            other => other,
        }
    }

    async fn apply_with(
        &self,
        pool: &PgPool,
        records: &[Decoded],
        one_by_one: bool,
    ) -> Result<Outcome, FoldError> {
        let partitions: Vec<i32> = records
            .iter()
            .map(|r| r.record.partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut tx = pool.begin().await?;
        let stored = projection::lock_positions(&mut tx, &self.topic, &partitions).await?;
        let mut outcome = Outcome::default();
        let mut events = Vec::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut poison: Vec<(&Record, String)> = Vec::new();
        let mut stopped: HashSet<i32> = HashSet::new();
        for Decoded {
            record,
            event,
            newer,
        } in records
        {
            let at = stored.get(&record.partition).copied().unwrap_or(0);
            if record.offset < at {
                continue; // applied already
            }
            if stopped.contains(&record.partition) {
                continue; // behind an event this build cannot read
            }
            // A partition never applied may start wherever the log does.
            let expected = next
                .get(&record.partition)
                .copied()
                .or((at > 0).then_some(at));
            if let Some(expected) = expected
                && self.contiguous
                && record.offset > expected
            {
                return Err(FoldError::Gap {
                    partition: record.partition,
                    stored: expected,
                    found: record.offset,
                });
            }
            if *newer {
                stopped.insert(record.partition);
                outcome.stopped.push(Poison {
                    partition: record.partition,
                    offset: record.offset,
                    reason: event.as_ref().err().cloned().unwrap_or_default(),
                });
                continue;
            }
            outcome.fresh += 1;
            let end = next.entry(record.partition).or_default();
            *end = (*end).max(record.offset + 1);
            match event {
                Ok(event) => events.push(event),
                Err(reason) => poison.push((record, reason.clone())),
            }
        }
        if next.is_empty() {
            return Ok(outcome); // a replay of what is applied already
        }
        if one_by_one {
            // Halve every slice the database refuses, in log order, until each refused event
            // stands alone: k bad events among n cost about 2·k·log2(n) savepoints, not n.
            let mut pending: VecDeque<&[&Positioned]> = VecDeque::from([events.as_slice()]);
            while let Some(slice) = pending.pop_front() {
                match apply_in_savepoint(&mut tx, slice).await {
                    Ok(counts) => {
                        for (type_name, n) in counts {
                            *outcome.counts.entry(type_name).or_default() += n;
                        }
                    }
                    Err(e) if is_data_error(&e) && slice.len() > 1 => {
                        let (first, second) = slice.split_at(slice.len() / 2);
                        pending.push_front(second);
                        pending.push_front(first);
                    }
                    Err(e) if is_data_error(&e) => {
                        let event = slice[0];
                        let record = records
                            .iter()
                            .map(|d| &d.record)
                            .find(|r| r.partition == event.partition && r.offset == event.offset)
                            .expect("every event comes from a record");
                        poison.push((record, format!("cannot be applied: {e}")));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            let batch = Batch::new(events.iter().copied());
            batch.apply(&mut tx).await?;
            outcome.counts = batch.counts;
        }
        projection::advance_positions(&mut tx, &self.topic, &next).await?;
        // Poison is in the dead-letter topic before the positions that pass it are committed.
        for (record, reason) in &poison {
            if let Some(dead_letters) = &self.dead_letters
                && !self
                    .already_dead_lettered
                    .contains(&(record.partition, record.offset))
            {
                dead_letters.send(record, reason).await?;
            }
            outcome.poison.push(Poison {
                partition: record.partition,
                offset: record.offset,
                reason: reason.clone(),
            });
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Applies `events` (in log order) in a savepoint; returns the events applied per type.
async fn apply_in_savepoint(
    tx: &mut PgConnection,
    events: &[&Positioned],
) -> Result<HashMap<&'static str, u64>, sqlx::Error> {
    sqlx::query("SAVEPOINT events").execute(&mut *tx).await?;
    let batch = Batch::new(events.iter().copied());
    match batch.apply(&mut *tx).await {
        Ok(()) => {
            sqlx::query("RELEASE SAVEPOINT events")
                .execute(&mut *tx)
                .await?;
            Ok(batch.counts)
        }
        Err(e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT events")
                .execute(&mut *tx)
                .await?;
            Err(e)
        }
    }
}

/// Whether the database refused the data itself (SQLSTATE class 22, data exception, or 23,
/// integrity constraint violation): applying the same event again would fail again.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}
