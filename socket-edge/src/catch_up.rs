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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use store::Store;

use crate::cursor;
use crate::delivery::{new_message_frame, read_messages_frame};

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

/// A record read back: partition, offset, Kafka timestamp (ms), payload.
type Record = (usize, i64, Option<i64>, Option<Vec<u8>>);

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
    if !ahead.is_empty() {
        let (brokers, topic) = (kafka.brokers.clone(), kafka.topic.clone());
        let beyond = tokio::task::spawn_blocking(move || beyond_the_end(&brokers, &topic, &ahead))
            .await
            .map_err(|e| format!("catch-up reader failed: {e}"))??;
        if beyond {
            return Ok(Replay::BeyondTheEnd);
        }
    }
    let events: i64 = ranges.iter().map(|(_, f, t)| t - f).sum();
    if events as u64 > limits.max_events {
        return Ok(Replay::Gap(Gap::TooMany));
    }
    if ranges.is_empty() {
        return Ok(Replay::Frames(Vec::new()));
    }
    let (brokers, topic) = (kafka.brokers.clone(), kafka.topic.clone());
    let read = tokio::task::spawn_blocking(move || read_ranges(&brokers, &topic, &ranges, limits))
        .await
        .map_err(|e| format!("catch-up reader failed: {e}"))??;
    let records = match read {
        Ok(records) => records,
        Err(gap) => return Ok(Replay::Gap(gap)),
    };
    let oldest = events::Timestamp::now().as_datetime().timestamp_millis()
        - i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX);
    if records
        .iter()
        .any(|(_, _, at, _)| at.is_some_and(|at| at < oldest))
    {
        return Ok(Replay::Gap(Gap::TooOld));
    }

    let tag = cursor::topic_tag(&kafka.topic);
    let mut next = from.to_vec();
    let mut seen = HashSet::new();
    let mut frames = Vec::new();
    for (partition, offset, _, payload) in records {
        next[partition] = offset + 1;
        let Some(Ok(envelope)) = payload.as_deref().map(Envelope::decode) else {
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

/// Whether one of these (partition, position) is past the end of its partition.
fn beyond_the_end(brokers: &str, topic: &str, positions: &[(usize, i64)]) -> Result<bool, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    for &(partition, position) in positions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition as i32, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        if position > high {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads each (partition, from, to) range in full, in log order per partition.
fn read_ranges(
    brokers: &str,
    topic: &str,
    ranges: &[(usize, i64, i64)],
    limits: CatchUpLimits,
) -> Result<Result<Vec<Record>, Gap>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("socket-edge-catch-up-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(5);
    let mut assignment = TopicPartitionList::new();
    let mut left: HashMap<usize, i64> = HashMap::new();
    for &(partition, from, to) in ranges {
        let (low, _) = consumer
            .fetch_watermarks(topic, partition as i32, timeout)
            .map_err(|e| e.to_string())?;
        if low > from {
            return Ok(Err(Gap::Truncated));
        }
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Offset(from))
            .map_err(|e| e.to_string())?;
        left.insert(partition, to);
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + limits.patience;
    let mut records = Vec::new();
    while !left.is_empty() {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        if wait.is_zero() {
            return Err("the log did not answer in time".into());
        }
        let Some(record) = consumer.poll(wait.min(Duration::from_millis(200))) else {
            continue;
        };
        let record = record.map_err(|e| e.to_string())?;
        let partition = record.partition() as usize;
        let Some(&to) = left.get(&partition) else {
            continue;
        };
        if record.offset() >= to {
            left.remove(&partition);
            continue;
        }
        records.push((
            partition,
            record.offset(),
            record.timestamp().to_millis(),
            record.payload().map(<[u8]>::to_vec),
        ));
        if record.offset() + 1 >= to {
            left.remove(&partition);
        }
    }
    Ok(Ok(records))
}
