//! Catch-up: the frames a user was owed between a cursor and the moment its connection joined,
//! read back from the log itself (the same events, the same frames as the live path).
//!
//! Served from Kafka, not from the projection: the log is exact by construction (a
//! `read-messages` frame is owed even when nothing was unread, which no table keeps), and it
//! is what the live path reads, so the seam between the two is a position, not a guess.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use events::{Envelope, Event};
use store::Store;
use tokio::time::Instant;

use crate::cursor;
use crate::delivery::{new_message_frame, read_messages_frame};
use crate::log_reader::{LogReader, Record};

/// The bounds of one catch-up.
#[derive(Clone, Copy, Debug)]
pub struct CatchUpLimits {
    /// Most log events a catch-up reads (so also most frames it sends).
    pub max_events: u64,
    /// Oldest event a catch-up replays.
    pub max_age: Duration,
    /// Longest a catch-up may take to read the log.
    pub patience: Duration,
}

/// Why a catch-up answers with a gap instead of frames (the `reason` of `catch-up-gap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub enum Gap {
    /// More than `CHAT_WS_CATCH_UP_MAX_EVENTS` events of the log followed the cursor.
    #[serde(rename = "too_many_events")]
    TooMany,
    /// An event to replay is older than `CHAT_WS_CATCH_UP_MAX_AGE_SECS`.
    #[serde(rename = "too_old")]
    TooOld,
    /// The log no longer holds the events after the cursor (retention).
    #[serde(rename = "log_truncated")]
    Truncated,
}

impl Gap {
    /// Every reason, for the document and the tests.
    pub const ALL: [Gap; 3] = [Gap::TooMany, Gap::TooOld, Gap::Truncated];

    pub fn as_str(self) -> &'static str {
        match self {
            Gap::TooMany => "too_many_events",
            Gap::TooOld => "too_old",
            Gap::Truncated => "log_truncated",
        }
    }
}

/// A catch-up's frames, or why there are none.
pub enum Replay {
    Frames(Vec<Utf8Bytes>),
    Gap(Gap),
    /// The cursor is past the end of the log: it belongs to a log that was deleted and made
    /// again under the same name (whose offsets started again at 0).
    BeyondTheEnd,
}

/// Reads events `from..to` of each partition and returns the frames `user` is owed, each with
/// the cursor after its event.
pub async fn replay(
    kafka: &writer::KafkaArgs,
    store: &Store,
    user: &str,
    from: &[i64],
    to: &[i64],
    limits: CatchUpLimits,
) -> Result<Replay, String> {
    let ranges: Vec<(usize, i64, i64)> = from
        .iter()
        .zip(to)
        .enumerate()
        .filter(|(_, (f, t))| f < t)
        .map(|(p, (f, t))| (p, *f, *t))
        .collect();
    // Ahead of this edge is normal (the client's last edge had read further); ahead of the
    // log itself is not.
    let ahead: Vec<(usize, i64)> = from
        .iter()
        .zip(to)
        .enumerate()
        .filter(|(_, (f, t))| f > t)
        .map(|(p, (f, _))| (p, *f))
        .collect();
    // One deadline for all the catch-up asks of the log.
    let deadline = Instant::now() + limits.patience;
    let mut reader = LogReader::new(&kafka.brokers, &kafka.topic);
    let mut bounds = None;
    if !ahead.is_empty() {
        let known = within(deadline, reader.bounds()).await?;
        if beyond_the_end(&known, &ahead)? {
            return Ok(Replay::BeyondTheEnd);
        }
        bounds = Some(known);
    }
    let events: i64 = ranges.iter().map(|(_, f, t)| t - f).sum();
    if events as u64 > limits.max_events {
        return Ok(Replay::Gap(Gap::TooMany));
    }
    if ranges.is_empty() {
        return Ok(Replay::Frames(Vec::new()));
    }
    let bounds = match bounds {
        Some(bounds) => bounds,
        None => within(deadline, reader.bounds()).await?,
    };
    let records = match within(deadline, read_ranges(&mut reader, &bounds, &ranges)).await? {
        Ok(records) => records,
        Err(gap) => return Ok(Replay::Gap(gap)),
    };
    let oldest = events::Timestamp::now().as_datetime().timestamp_millis()
        - i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX);
    if records
        .iter()
        .any(|r| r.timestamp.is_some_and(|at| at < oldest))
    {
        return Ok(Replay::Gap(Gap::TooOld));
    }

    let tag = cursor::topic_tag(&kafka.topic);
    let mut next = from.to_vec();
    let mut seen = HashSet::new();
    let mut frames = Vec::new();
    for record in records {
        next[record.partition] = record.offset + 1;
        let Some(Ok(envelope)) = record.payload.as_deref().map(Envelope::decode) else {
            continue;
        };
        let frame = match &envelope.event {
            Event::MessageSent(m) => {
                let participants = store
                    .participants(m.conversation_id)
                    .await
                    .map_err(|e| format!("cannot read participants: {e}"))?;
                // A retried send appends its message again: the live path delivers it once.
                if !participants.is_some_and(|p| p.iter().any(|u| u == user))
                    || !seen.insert(m.message_id)
                {
                    continue;
                }
                new_message_frame(m, m.sent_at, &cursor::encode(tag, &next))
            }
            Event::MessagesRead(r) if r.user_id == user => {
                read_messages_frame(r, &cursor::encode(tag, &next))
            }
            _ => continue,
        };
        frames.push(frame.into());
    }
    Ok(Replay::Frames(frames))
}

/// `asking`'s answer, if it comes before `deadline`.
async fn within<T, E: std::fmt::Display>(
    deadline: Instant,
    asking: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::time::timeout_at(deadline, asking)
        .await
        .map_err(|_| "the log did not answer in time".to_owned())?
        .map_err(|e| e.to_string())
}

/// Whether one of these (partition, position) is past the end of its partition, given each
/// partition's (first offset, end).
fn beyond_the_end(bounds: &[(i64, i64)], positions: &[(usize, i64)]) -> Result<bool, String> {
    positions
        .iter()
        .try_fold(false, |beyond, &(partition, position)| {
            let &(_, end) = bounds
                .get(partition)
                .ok_or_else(|| format!("the log has no partition {partition}"))?;
            Ok(beyond || position > end)
        })
}

/// Reads each (partition, from, to) range in full, in log order per partition, or finds that
/// the log no longer holds one.
async fn read_ranges(
    reader: &mut LogReader,
    bounds: &[(i64, i64)],
    ranges: &[(usize, i64, i64)],
) -> Result<Result<Vec<Record>, Gap>, String> {
    let mut left: HashMap<usize, i64> = HashMap::new();
    for &(partition, from, to) in ranges {
        let &(first, _) = bounds
            .get(partition)
            .ok_or_else(|| format!("the log has no partition {partition}"))?;
        if first > from {
            return Ok(Err(Gap::Truncated));
        }
        left.insert(partition, to);
    }
    reader.start_some_at(bounds.len(), ranges.iter().map(|&(p, from, _)| (p, from)));
    let (mut records, mut batch) = (Vec::new(), Vec::new());
    while !left.is_empty() {
        reader.read(&mut batch).await;
        for record in batch.drain(..) {
            if left
                .get(&record.partition)
                .is_some_and(|&to| record.offset < to)
            {
                records.push(record);
            }
        }
        // A range ends where the reader's position reaches its end, whether its last offset
        // was a record or something passed over (a transaction marker).
        left.retain(|&partition, to| reader.position(partition).is_some_and(|at| at < *to));
    }
    Ok(Ok(records))
}
