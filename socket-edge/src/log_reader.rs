//! The edge's reader of the log: Kafka's fetch protocol spoken from the runtime's own thread.
//!
//! librdkafka's consumer keeps a thread per broker, which wakes for every fetch response and
//! then wakes the runtime through a pipe: at 1,000 messages/s that thread alone cost the edge
//! ~6 µs of CPU per delivery (docs/performance.md). This reader keeps one connection per
//! partition leader with one fetch in flight on each, and hands each response's records to the
//! task that delivers them, on the thread that delivers them.
//!
//! It only reads: no group, no commits; every edge reads every partition from the positions it
//! chose ([`LogReader::start_at`]). Any failure (a broker gone, a leader moved, an answer that
//! does not decode, no answer in time) drops every connection; after a pause the reader asks
//! the cluster for the leaders again and goes on from the positions it had, so no record is
//! skipped or read twice. Two things move a position otherwise, loudly: a batch that still
//! does not decode after [`DECODE_ATTEMPTS`] fetches (a compression this build lacks, say) is
//! passed over, and a position the broker says is out of its partition's range (a log deleted
//! and made again, or cut by retention) moves to the partition's end, or to its first offset
//! if it was before it.
//!
//! The broker is trusted as far as memory goes: an answer is bounded (8 MiB) and
//! checked, but the counts inside a compressed batch are believed as it declares them.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::time::Instant;
pub use writer::wire::WireError as ReadError;
use writer::wire::{Backoff, Cluster, Connection, code_name};

/// The newest fetch that still names topics (Fetch 13 names them by id), served by Kafka 3.x
/// and 4.x.
const FETCH_VERSION: i16 = 12;

const CLIENT_ID: &str = "socket-edge";
/// The broker answers a fetch as soon as one record is there; this only bounds idle fetches.
const FETCH_WAIT: Duration = Duration::from_millis(100);
/// What one fetch may bring (within the largest answer `writer::wire` accepts): records are
/// delivered before the next fetch, so this bounds the memory of a read-back too.
const FETCH_MAX_BYTES: i32 = 4 << 20;
/// Above the broker's default largest batch (`message.max.bytes`, 1 MiB and 12 bytes); the
/// first partition of each answer gets its first batch whatever its size, and the partitions
/// take turns at being first.
const PARTITION_MAX_BYTES: i32 = 2 << 20;
/// A connection that lasted this long without a failure starts the pauses again from the first.
const STABLE: Duration = Duration::from_secs(10);
/// How many fetches a batch that does not decode gets before it is passed over: a batch
/// damaged on the way is fetched again, one that cannot be read is not fetched forever.
const DECODE_ATTEMPTS: u32 = 3;
/// Kafka's error code for a fetch position outside its partition's offsets.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// The position of a partition the reader does not read.
const UNREAD: i64 = -1;

/// A record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: usize,
    pub offset: i64,
    /// Kafka's timestamp of the record (ms since the epoch), when it has one.
    pub timestamp: Option<i64>,
    pub payload: Option<Bytes>,
}

/// A connection fetching the partitions its broker leads.
struct Session {
    connection: Connection,
    /// In the order of the next fetch: they take turns at being first.
    partitions: Vec<i32>,
}

/// What a session's request brought.
enum Answer {
    Fetch(FetchResponse),
    /// The first offset and end of partitions whose positions were out of range.
    Bounds(Vec<(i32, i64, i64)>),
}

type Fetched = (Session, Result<Answer, ReadError>);

/// What one fetch's answer did.
#[derive(Default)]
struct Taken {
    /// Some position moved (records taken, or batches passed over).
    moved: bool,
    /// Partitions whose positions the broker does not hold.
    out_of_range: Vec<i32>,
}

/// A batch that did not decode, and how many fetches brought it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Failing {
    partition: usize,
    base: i64,
    attempts: u32,
}

/// Reads every partition of one topic.
pub struct LogReader {
    topic: TopicName,
    /// Where to ask who leads what.
    cluster: Cluster,
    /// The next offset to fetch, by partition ([`UNREAD`] for a partition not read).
    next: Vec<i64>,
    fetching: FuturesUnordered<BoxFuture<'static, Fetched>>,
    /// After a failure: when to ask the cluster again, and the pause after the next failure.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// When the sessions now fetching were connected.
    connected_at: Option<Instant>,
    /// The last batch that did not decode.
    failing: Option<Failing>,
}

impl LogReader {
    /// A reader of `topic` on the cluster `brokers` (comma-separated `host:port`) leads to.
    /// Connecting waits for the first read.
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            topic: TopicName(StrBytes::from_string(topic.to_owned())),
            cluster: Cluster::new(brokers),
            next: Vec::new(),
            fetching: FuturesUnordered::new(),
            retry_at: None,
            backoff: Backoff::default(),
            connected_at: None,
            failing: None,
        }
    }

    /// Each partition's first offset and end (the offset its next record will have), in
    /// partition order.
    pub async fn bounds(&mut self) -> Result<Vec<(i64, i64)>, ReadError> {
        let leaders = self.cluster.leaders(&self.topic, CLIENT_ID).await?;
        let partitions = leaders.leaders.len();
        let mut bounds = vec![(0, 0); partitions];
        for (address, led) in leaders.by_broker(partitions)? {
            let mut connection = Connection::open(&address, CLIENT_ID).await?;
            let first = connection.offsets(&self.topic, &led, -2).await?;
            let end = connection.offsets(&self.topic, &led, -1).await?;
            for ((&p, first), end) in led.iter().zip(first).zip(end) {
                bounds[p as usize] = (first, end);
            }
        }
        Ok(bounds)
    }

    /// Where partition `partition` is read from next, if it is read.
    pub fn position(&self, partition: usize) -> Option<i64> {
        self.next.get(partition).copied().filter(|&n| n != UNREAD)
    }

    /// Reads each partition from the offset given for it (in partition order), forgetting any
    /// fetch under way.
    pub fn start_at(&mut self, next: Vec<i64>) {
        self.fetching.clear();
        self.next = next;
    }

    /// Reads only the given (partition, offset) of a topic of `partitions` partitions.
    pub fn start_some_at(
        &mut self,
        partitions: usize,
        from: impl IntoIterator<Item = (usize, i64)>,
    ) {
        let mut next = vec![UNREAD; partitions];
        for (partition, offset) in from {
            if let Some(n) = next.get_mut(partition) {
                *n = offset.max(0);
            }
        }
        self.start_at(next);
    }

    /// Waits for the next records and appends them to `out`, each partition's in log order.
    /// Also returns, with no records, when a position moved past records not handed out (a
    /// transaction marker, a batch passed over, a position out of range). Never fails: trouble
    /// is logged and the reader tries again. Cancel-safe: records are either in `out` or still
    /// to come.
    pub async fn read(&mut self, out: &mut Vec<Record>) {
        loop {
            if self.fetching.is_empty() {
                if self.next.iter().all(|&n| n == UNREAD) {
                    // Nothing to read (before `start_at`, say).
                    std::future::pending::<()>().await;
                }
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match self.connect().await {
                    Ok(sessions) => {
                        self.retry_at = None;
                        self.connected_at = Some(Instant::now());
                        for session in sessions {
                            self.fetch(session);
                        }
                    }
                    Err(e) => {
                        self.failed(&e);
                        continue;
                    }
                }
            }
            let Some((session, answer)) = self.fetching.next().await else {
                continue;
            };
            let taken = match answer {
                Ok(Answer::Fetch(answer)) => self.take(&session, answer, out),
                Ok(Answer::Bounds(bounds)) => Ok(self.reposition(&bounds)),
                Err(e) => Err(e),
            };
            let moved = match taken {
                Ok(taken) if taken.out_of_range.is_empty() => {
                    self.fetch(session);
                    taken.moved
                }
                Ok(taken) => {
                    self.ask_bounds(session, taken.out_of_range);
                    taken.moved
                }
                Err(e) => {
                    self.fetching.clear();
                    self.failed(&e);
                    false
                }
            };
            if moved || !out.is_empty() {
                return;
            }
        }
    }

    fn failed(&mut self, e: &ReadError) {
        // Pauses grow across failures that come soon after connecting, however many answers
        // came in between.
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE)
        {
            self.backoff.reset();
        }
        tracing::warn!(error = %e, pause = ?self.backoff.pause(), "reading the log failed; asking the cluster for the leaders again");
        metrics::counter!("chat_ws_log_read_failures_total").increment(1);
        self.retry_at = Some(Instant::now() + self.backoff.take());
    }

    /// Puts in flight a request for the bounds of `partitions`, whose positions the broker
    /// said are out of range.
    fn ask_bounds(&mut self, mut session: Session, partitions: Vec<i32>) {
        let topic = self.topic.clone();
        self.fetching.push(Box::pin(async move {
            let connection = &mut session.connection;
            let answer = async {
                let first = connection.offsets(&topic, &partitions, -2).await?;
                let end = connection.offsets(&topic, &partitions, -1).await?;
                Ok(Answer::Bounds(
                    partitions
                        .iter()
                        .zip(first)
                        .zip(end)
                        .map(|((&p, first), end)| (p, first, end))
                        .collect(),
                ))
            }
            .await;
            (session, answer)
        }));
    }

    /// Moves positions the broker does not hold into their partitions: to the first offset
    /// from before it, to the end otherwise (the log was deleted and made again, or cut back).
    fn reposition(&mut self, bounds: &[(i32, i64, i64)]) -> Taken {
        for &(partition, first, end) in bounds {
            let Some(next) = self.next.get_mut(partition as usize) else {
                continue;
            };
            // The answer may be older than the bounds: a position inside them stays.
            let to = (*next).clamp(first, end.max(first));
            if to == *next {
                continue;
            }
            tracing::error!(
                partition,
                position = *next,
                first,
                end,
                to,
                "the log does not hold this position; reading on from its bounds"
            );
            metrics::counter!("chat_ws_log_repositions_total").increment(1);
            *next = to;
        }
        Taken {
            moved: true,
            out_of_range: Vec::new(),
        }
    }

    /// Connects to each partition's leader.
    async fn connect(&mut self) -> Result<Vec<Session>, ReadError> {
        let leaders = self.cluster.leaders(&self.topic, CLIENT_ID).await?;
        if leaders.leaders.len() > self.next.len() {
            tracing::warn!(
                partitions = leaders.leaders.len(),
                read = self.next.len(),
                "the topic has partitions this reader does not read (added since it started)"
            );
        }
        let mut sessions = Vec::new();
        for (address, mut partitions) in leaders.by_broker(self.next.len())? {
            partitions.retain(|&p| self.next[p as usize] != UNREAD);
            if partitions.is_empty() {
                continue;
            }
            sessions.push(Session {
                connection: Connection::open(&address, CLIENT_ID).await?,
                partitions,
            });
        }
        Ok(sessions)
    }

    /// Puts `session`'s next fetch in flight, from the partitions' current positions.
    fn fetch(&mut self, mut session: Session) {
        session.partitions.rotate_left(1);
        let partitions = session
            .partitions
            .iter()
            .map(|&p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(self.next[p as usize])
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(PARTITION_MAX_BYTES)
            })
            .collect();
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(FETCH_WAIT.as_millis() as i32)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            // Our producers are not transactional: nothing to hold back.
            .with_isolation_level(0)
            // A full fetch each time: no fetch session to keep (few partitions per broker).
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(self.topic.clone())
                    .with_partitions(partitions),
            ]);
        self.fetching.push(Box::pin(async move {
            let answer = session
                .connection
                .call(FETCH_VERSION, &request, FETCH_WAIT)
                .await
                .map(Answer::Fetch);
            (session, answer)
        }));
    }

    /// Takes the records of a fetch's answer past each partition's position, and moves the
    /// positions past them.
    fn take(
        &mut self,
        session: &Session,
        answer: FetchResponse,
        out: &mut Vec<Record>,
    ) -> Result<Taken, ReadError> {
        if answer.error_code != 0 {
            return Err(ReadError::Cluster(format!(
                "{}: fetch refused: {}",
                session.connection.address,
                code_name(answer.error_code)
            )));
        }
        let mut taken = Taken::default();
        for topic in answer.responses {
            if topic.topic != self.topic {
                continue;
            }
            for p in topic.partitions {
                let Some(partition) = usize::try_from(p.partition_index)
                    .ok()
                    .filter(|&i| session.partitions.contains(&(i as i32)))
                else {
                    continue;
                };
                if p.error_code == OFFSET_OUT_OF_RANGE {
                    taken.out_of_range.push(p.partition_index);
                    continue;
                }
                if p.error_code != 0 {
                    return Err(ReadError::Cluster(format!(
                        "{}: partition {partition}: {}",
                        session.connection.address,
                        code_name(p.error_code)
                    )));
                }
                let Some(records) = p.records else {
                    continue;
                };
                let next = &mut self.next[partition];
                let before = *next;
                let took = take_batches(records, partition, next, out);
                if let Err(bad) = took {
                    let attempts = match self.failing {
                        Some(f) if f.partition == partition && f.base == bad.base => f.attempts + 1,
                        _ => 1,
                    };
                    if attempts < DECODE_ATTEMPTS {
                        self.failing = Some(Failing {
                            partition,
                            base: bad.base,
                            attempts,
                        });
                        return Err(ReadError::Protocol(format!(
                            "{}: partition {partition}: {bad}",
                            session.connection.address
                        )));
                    }
                    tracing::error!(partition, %bad, attempts, "passing over a record batch that does not decode");
                    metrics::counter!("chat_ws_log_undecodable_batches_total").increment(1);
                    self.failing = None;
                    *next = (*next).max(bad.last.saturating_add(1));
                }
                taken.moved |= *next != before;
            }
        }
        Ok(taken)
    }
}

/// A record batch that does not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the record batch at offsets {base}..={last} does not decode: {reason}")]
pub struct Undecodable {
    pub base: i64,
    pub last: i64,
    pub reason: String,
}

/// Appends the records of `batches` (a fetch's record batches for `partition`) at or past
/// `*next`, and moves `*next` past the last whole batch. A batch cut short by the fetch's size
/// limit is left for the next fetch; control batches are passed over. Stops at a batch that
/// does not decode, with `*next` not past it.
pub fn take_batches(
    mut batches: Bytes,
    partition: usize,
    next: &mut i64,
    out: &mut Vec<Record>,
) -> Result<(), Undecodable> {
    // Base offset (8 bytes), length (4), then the rest of the batch: its leader epoch (4),
    // magic byte (1), CRC (4), attributes (2), last offset delta (4), first and last
    // timestamps (8 + 8), producer id (8), producer epoch (2), first sequence (4), and the
    // number of records (4) before the records.
    const HEAD: usize = 12;
    const ATTRIBUTES: usize = HEAD + 4 + 1 + 4;
    const LAST_OFFSET_DELTA: usize = ATTRIBUTES + 2;
    const RECORD_COUNT: usize = LAST_OFFSET_DELTA + 4 + 8 + 8 + 8 + 2 + 4;
    const RECORDS: usize = RECORD_COUNT + 4;
    /// The smallest record: seven one-byte fields (length, attributes, timestamp and offset
    /// deltas, key and value lengths, header count).
    const SMALLEST_RECORD: usize = 7;
    while batches.len() >= HEAD {
        let base = i64::from_be_bytes(batches[..8].try_into().expect("eight bytes"));
        let length = i32::from_be_bytes(batches[8..12].try_into().expect("four bytes"));
        let Some(size) = usize::try_from(length).ok().map(|l| l + HEAD) else {
            return Err(Undecodable {
                base,
                last: base,
                reason: format!("a length of {length}"),
            });
        };
        if batches.len() < size {
            break;
        }
        let mut batch = batches.split_to(size);
        let field = |at: usize| {
            batch
                .get(at..at + 4)
                .map(|b| i32::from_be_bytes(b.try_into().expect("four bytes")))
        };
        let last = field(LAST_OFFSET_DELTA)
            .map(|delta| base.saturating_add(i64::from(delta)))
            .unwrap_or(base);
        if last < *next {
            continue;
        }
        // An uncompressed batch cannot hold more records than its bytes allow: checked before
        // the decoder believes the count and makes room for that many.
        let uncompressed = batch.get(ATTRIBUTES + 1).is_some_and(|a| a & 0b111 == 0);
        let count = field(RECORD_COUNT).unwrap_or(0);
        if uncompressed
            && usize::try_from(count).map_or(true, |count| {
                count > size.saturating_sub(RECORDS) / SMALLEST_RECORD
            })
        {
            return Err(Undecodable {
                base,
                last,
                reason: format!("{count} records in {size} bytes"),
            });
        }
        match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => out.extend(
                set.records
                    .into_iter()
                    .filter(|r| !r.control && r.offset >= *next)
                    .map(|r| Record {
                        partition,
                        offset: r.offset,
                        timestamp: (r.timestamp >= 0).then_some(r.timestamp),
                        payload: r.value,
                    }),
            ),
            Err(e) => {
                return Err(Undecodable {
                    base,
                    last,
                    reason: e.to_string(),
                });
            }
        }
        *next = (*next).max(last.saturating_add(1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    /// A batch as a producer (or the broker's transaction marker) writes it.
    #[derive(Debug, Clone)]
    struct Batch {
        /// Offsets skipped before it (a compacted log has gaps).
        gap: i64,
        values: Vec<Option<Vec<u8>>>,
        control: bool,
        compression: Compression,
    }

    fn batch() -> impl Strategy<Value = Batch> {
        (
            0i64..3,
            prop::collection::vec(
                prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                1..5,
            ),
            prop::bool::weighted(0.1),
            prop_oneof![
                Just(Compression::None),
                Just(Compression::Gzip),
                Just(Compression::Snappy),
                Just(Compression::Lz4),
            ],
        )
            .prop_map(|(gap, values, control, compression)| Batch {
                gap,
                values,
                control,
                compression,
            })
    }

    /// The batches one after another, and each batch's end in the bytes, with its records.
    fn encode(batches: &[Batch]) -> (Bytes, Vec<(usize, Vec<Record>, bool)>) {
        let mut out = BytesMut::new();
        let mut written = Vec::new();
        let mut offset = 0;
        for b in batches {
            offset += b.gap;
            let records: Vec<_> = b
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| kafka_protocol::records::Record {
                    transactional: false,
                    control: b.control,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: 7,
                    producer_epoch: 0,
                    timestamp_type: TimestampType::Creation,
                    offset: offset + i as i64,
                    sequence: (offset + i as i64) as i32,
                    timestamp: 1_700_000_000_000 + offset + i as i64,
                    key: None,
                    value: v.clone().map(Bytes::from),
                    headers: Default::default(),
                })
                .collect();
            let options = RecordEncodeOptions {
                version: 2,
                compression: b.compression,
            };
            RecordBatchEncoder::encode(&mut out, &records, &options).unwrap();
            let expected = records
                .iter()
                .map(|r| Record {
                    partition: 3,
                    offset: r.offset,
                    timestamp: Some(r.timestamp),
                    payload: r.value.clone(),
                })
                .collect();
            written.push((out.len(), expected, b.control));
            offset += b.values.len() as i64;
        }
        (out.freeze(), written)
    }

    proptest! {
        /// Whatever the fetch's size limit cut off and wherever the position stood, the records
        /// taken are exactly those of the whole batches at or past the position, in order, and
        /// the position ends past the last whole batch.
        #[test]
        fn records_of_whole_batches_past_the_position_are_taken_once(
            batches in prop::collection::vec(batch(), 0..6),
            cut in any::<prop::sample::Index>(),
            start in 0i64..30,
        ) {
            let (bytes, written) = encode(&batches);
            let cut = cut.index(bytes.len() + 1);
            let mut expected = Vec::new();
            let mut expected_next = start;
            for (end, records, control) in &written {
                if *end > cut {
                    break;
                }
                if !control {
                    expected.extend(records.iter().filter(|r| r.offset >= start).cloned());
                }
                expected_next = expected_next.max(records.last().unwrap().offset + 1);
            }
            let mut next = start;
            let mut out = Vec::new();
            prop_assert!(take_batches(bytes.slice(..cut), 3, &mut next, &mut out).is_ok());
            prop_assert_eq!(out, expected);
            prop_assert_eq!(next, expected_next);
        }

        /// Bytes that are no record batches never panic, and never move the position back.
        #[test]
        fn garbage_never_panics_nor_moves_the_position_back(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            start in any::<i64>(),
        ) {
            let mut next = start;
            let mut out = Vec::new();
            // Garbage may well be reported as undecodable: what matters is how it ends.
            let _ = take_batches(Bytes::from(bytes), 0, &mut next, &mut out);
            prop_assert!(next >= start);
            prop_assert!(out.iter().all(|r| r.offset >= start));
        }
    }

    fn two_batches() -> [Batch; 2] {
        [
            Batch {
                gap: 0,
                values: vec![Some(b"a".to_vec()), Some(b"b".to_vec())],
                control: false,
                compression: Compression::None,
            },
            Batch {
                gap: 0,
                values: vec![Some(b"c".to_vec())],
                control: false,
                compression: Compression::None,
            },
        ]
    }

    /// A batch corrupted in flight (its checksum fails) is reported with the offsets it spans,
    /// and nothing of it or after it is taken: the reader fetches it again, and passes over it
    /// only when it never decodes.
    #[test]
    fn a_batch_that_does_not_decode_is_reported_not_taken() {
        let (bytes, written) = encode(&two_batches());
        let mut corrupt = BytesMut::from(&bytes[..]);
        corrupt[written[0].0 - 1] ^= 0xff;
        let (mut next, mut out) = (0, Vec::new());
        let error = take_batches(corrupt.freeze(), 3, &mut next, &mut out).unwrap_err();
        assert_eq!((error.base, error.last), (0, 1));
        assert!(out.is_empty(), "nothing of or after the corrupt batch");
        assert_eq!(next, 0, "the position stays at the corrupt batch");
    }

    /// An uncompressed batch claiming more records than its bytes can hold is refused before
    /// the decoder makes room for them.
    #[test]
    fn a_batch_claiming_more_records_than_it_holds_is_refused() {
        let (bytes, written) = encode(&two_batches());
        let mut forged = BytesMut::from(&bytes[..]);
        // The record count of the second batch, the last field before its records.
        let second = written[0].0;
        forged[second + 57..second + 61].copy_from_slice(&i32::MAX.to_be_bytes());
        let (mut next, mut out) = (0, Vec::new());
        let error = take_batches(forged.freeze(), 3, &mut next, &mut out).unwrap_err();
        assert_eq!((error.base, error.last), (2, 2));
        assert!(error.reason.contains("records in"), "{}", error.reason);
        assert_eq!(out, written[0].1, "the intact batch before it is taken");
        assert_eq!(next, 2);
    }
}
