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
//! skipped or read twice. A batch that does not decode (a compression this build lacks, say)
//! is the one thing skipped, loudly.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Protocol versions: the newest that still name topics (Fetch 13 names them by id), all
/// served by Kafka 3.x and 4.x.
const METADATA_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
const FETCH_VERSION: i16 = 12;

const CLIENT_ID: &str = "socket-edge";
/// The broker answers a fetch as soon as one record is there; this only bounds idle fetches.
const FETCH_WAIT: Duration = Duration::from_millis(100);
/// What one fetch may bring: records are delivered before the next fetch, so this bounds the
/// memory of a read-back too.
const FETCH_MAX_BYTES: i32 = 4 << 20;
const PARTITION_MAX_BYTES: i32 = 1 << 20;
/// The largest answer accepted: a fetch's limit, with room for its framing.
const MAX_FRAME: usize = 2 * FETCH_MAX_BYTES as usize;
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// How long a broker has to answer a request, beyond what the request lets it wait.
const ANSWER_PATIENCE: Duration = Duration::from_secs(10);
/// Pauses before asking the cluster again after a failure: doubling from the first to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

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

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: no answer within {patience:?}")]
    Timeout { address: String, patience: Duration },
    #[error("an answer that does not decode: {0}")]
    Protocol(String),
    #[error("{0}")]
    Cluster(String),
}

fn protocol(e: impl std::fmt::Display) -> ReadError {
    ReadError::Protocol(e.to_string())
}

/// The name of a Kafka error code, for logs.
fn code_name(code: i16) -> String {
    ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error code {code}"))
}

/// A request this reader sends, and its answer. (kafka-protocol's own `Request` needs the
/// broker's side of each message too.)
trait Ask: Encodable + HeaderVersion {
    const KEY: ApiKey;
    type Answer: Decodable + HeaderVersion;
}

impl Ask for MetadataRequest {
    const KEY: ApiKey = ApiKey::Metadata;
    type Answer = MetadataResponse;
}

impl Ask for ListOffsetsRequest {
    const KEY: ApiKey = ApiKey::ListOffsets;
    type Answer = ListOffsetsResponse;
}

impl Ask for FetchRequest {
    const KEY: ApiKey = ApiKey::Fetch;
    type Answer = FetchResponse;
}

/// One connection to a broker, one request at a time.
struct Connection {
    address: String,
    stream: TcpStream,
    /// What was read and not yet taken: the start of the next answer.
    read: BytesMut,
    correlation: i32,
}

impl Connection {
    async fn open(address: &str) -> Result<Self, ReadError> {
        let io = |source| ReadError::Io {
            address: address.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_PATIENCE, TcpStream::connect(address))
            .await
            .map_err(|_| ReadError::Timeout {
                address: address.to_owned(),
                patience: CONNECT_PATIENCE,
            })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Self {
            address: address.to_owned(),
            stream,
            read: BytesMut::new(),
            correlation: 0,
        })
    }

    /// Sends `request` and waits for its answer, for at most `wait` plus [`ANSWER_PATIENCE`].
    async fn call<R: Ask>(
        &mut self,
        version: i16,
        request: &R,
        wait: Duration,
    ) -> Result<R::Answer, ReadError> {
        let patience = wait + ANSWER_PATIENCE;
        tokio::time::timeout(patience, self.exchange(version, request))
            .await
            .unwrap_or_else(|_| {
                Err(ReadError::Timeout {
                    address: self.address.clone(),
                    patience,
                })
            })
    }

    async fn exchange<R: Ask>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<R::Answer, ReadError> {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut out = BytesMut::with_capacity(256);
        out.put_i32(0);
        header
            .encode(&mut out, R::header_version(version))
            .map_err(protocol)?;
        request.encode(&mut out, version).map_err(protocol)?;
        let size = i32::try_from(out.len() - 4).map_err(protocol)?;
        out[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(&out)
            .await
            .map_err(|source| ReadError::Io {
                address: self.address.clone(),
                source,
            })?;

        let mut answer = self.read_frame().await?;
        let header = ResponseHeader::decode(&mut answer, R::Answer::header_version(version))
            .map_err(protocol)?;
        if header.correlation_id != self.correlation {
            return Err(ReadError::Protocol(format!(
                "{}: an answer to request {} where {} was expected",
                self.address, header.correlation_id, self.correlation
            )));
        }
        R::Answer::decode(&mut answer, version).map_err(protocol)
    }

    /// The next size-prefixed answer, without its size.
    async fn read_frame(&mut self) -> Result<Bytes, ReadError> {
        while self.read.len() < 4 {
            self.fill(4).await?;
        }
        let size = i32::from_be_bytes(self.read[..4].try_into().expect("four bytes"));
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= MAX_FRAME)
            .ok_or_else(|| {
                ReadError::Protocol(format!("{}: an answer of {size} bytes", self.address))
            })?;
        while self.read.len() < 4 + size {
            self.fill(4 + size).await?;
        }
        let mut frame = self.read.split_to(4 + size).freeze();
        frame.advance(4);
        Ok(frame)
    }

    /// Reads what the socket has, with room for at least `want` bytes in all.
    async fn fill(&mut self, want: usize) -> Result<(), ReadError> {
        self.read
            .reserve(want.saturating_sub(self.read.len()).max(16 << 10));
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(ReadError::Io {
                address: self.address.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(_) => Ok(()),
            Err(source) => Err(ReadError::Io {
                address: self.address.clone(),
                source,
            }),
        }
    }
}

/// Who leads each partition of the topic, and where the brokers are.
struct Leaders {
    addresses: BTreeMap<i32, String>,
    /// Each partition's leader, by partition number.
    leaders: Vec<i32>,
}

impl Leaders {
    /// The partitions each broker leads, with its address.
    fn by_broker(&self, partitions: usize) -> Result<Vec<(String, Vec<i32>)>, ReadError> {
        if self.leaders.len() < partitions {
            return Err(ReadError::Cluster(format!(
                "the topic has {} partitions, not {partitions}",
                self.leaders.len()
            )));
        }
        let mut led: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (partition, &leader) in self.leaders.iter().enumerate().take(partitions) {
            led.entry(leader).or_default().push(partition as i32);
        }
        Ok(led
            .into_iter()
            .map(|(broker, partitions)| (self.addresses[&broker].clone(), partitions))
            .collect())
    }
}

/// A connection fetching the partitions its broker leads.
struct Session {
    connection: Connection,
    partitions: Vec<i32>,
}

type Fetched = (Session, Result<FetchResponse, ReadError>);

/// Reads every partition of one topic.
pub struct LogReader {
    topic: TopicName,
    /// Where to ask for the cluster's metadata: the configured brokers first, then those the
    /// cluster named.
    bootstrap: Vec<String>,
    known: Vec<String>,
    /// The next offset to fetch, by partition ([`UNREAD`] for a partition not read).
    next: Vec<i64>,
    fetching: FuturesUnordered<BoxFuture<'static, Fetched>>,
    /// After a failure: when to ask the cluster again, and the pause after the next failure.
    retry_at: Option<Instant>,
    pause: Duration,
}

impl LogReader {
    /// A reader of `topic` on the cluster `brokers` (comma-separated `host:port`) leads to.
    /// Connecting waits for the first read.
    pub fn new(brokers: &str, topic: &str) -> Self {
        let bootstrap = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .collect();
        Self {
            topic: TopicName(StrBytes::from_string(topic.to_owned())),
            bootstrap,
            known: Vec::new(),
            next: Vec::new(),
            fetching: FuturesUnordered::new(),
            retry_at: None,
            pause: FIRST_PAUSE,
        }
    }

    /// Each partition's first offset and end (the offset its next record will have), in
    /// partition order.
    pub async fn bounds(&mut self) -> Result<Vec<(i64, i64)>, ReadError> {
        let leaders = self.leaders().await?;
        let partitions = leaders.leaders.len();
        let mut bounds = vec![(0, 0); partitions];
        for (address, led) in leaders.by_broker(partitions)? {
            let mut connection = Connection::open(&address).await?;
            // Two requests: a request may name a partition only once.
            for (timestamp, earliest) in [(-2, true), (-1, false)] {
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        ListOffsetsTopic::default()
                            .with_name(self.topic.clone())
                            .with_partitions(
                                led.iter()
                                    .map(|&p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_current_leader_epoch(-1)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            ),
                    ]);
                let answer = connection
                    .call(LIST_OFFSETS_VERSION, &request, Duration::ZERO)
                    .await?;
                let mut answered = 0;
                for p in answer.topics.iter().flat_map(|t| &t.partitions) {
                    if p.error_code != 0 {
                        return Err(ReadError::Cluster(format!(
                            "the offsets of partition {}: {}",
                            p.partition_index,
                            code_name(p.error_code)
                        )));
                    }
                    let Some(bound) = usize::try_from(p.partition_index)
                        .ok()
                        .and_then(|p| bounds.get_mut(p))
                    else {
                        continue;
                    };
                    if earliest {
                        bound.0 = p.offset;
                    } else {
                        bound.1 = p.offset;
                    }
                    answered += 1;
                }
                if answered != led.len() {
                    return Err(ReadError::Cluster(format!(
                        "{address} gave the offsets of {answered} of {} partitions",
                        led.len()
                    )));
                }
            }
        }
        Ok(bounds)
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
    /// Never fails: trouble is logged and the reader tries again. Cancel-safe: records are
    /// either in `out` or still to come.
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
            match answer.and_then(|answer| self.take(&session, answer, out)) {
                Ok(()) => {
                    // Connected and answered: the next failure starts from the first pause.
                    self.retry_at = None;
                    self.pause = FIRST_PAUSE;
                    self.fetch(session);
                }
                Err(e) => {
                    self.fetching.clear();
                    self.failed(&e);
                }
            }
            if !out.is_empty() {
                return;
            }
        }
    }

    fn failed(&mut self, e: &ReadError) {
        tracing::warn!(error = %e, pause = ?self.pause, "reading the log failed; asking the cluster for the leaders again");
        metrics::counter!("chat_ws_log_read_failures_total").increment(1);
        self.retry_at = Some(Instant::now() + self.pause);
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }

    /// Connects to each partition's leader.
    async fn connect(&mut self) -> Result<Vec<Session>, ReadError> {
        let leaders = self.leaders().await?;
        let mut sessions = Vec::new();
        for (address, mut partitions) in leaders.by_broker(self.next.len())? {
            partitions.retain(|&p| self.next[p as usize] != UNREAD);
            if partitions.is_empty() {
                continue;
            }
            sessions.push(Session {
                connection: Connection::open(&address).await?,
                partitions,
            });
        }
        Ok(sessions)
    }

    /// Asks the configured brokers, then those the cluster named before, who leads what.
    async fn leaders(&mut self) -> Result<Leaders, ReadError> {
        let mut last = ReadError::Cluster("no broker is configured".into());
        let candidates: Vec<String> = self
            .bootstrap
            .iter()
            .chain(self.known.iter().filter(|a| !self.bootstrap.contains(a)))
            .cloned()
            .collect();
        for address in candidates {
            let attempt = async {
                let mut connection = Connection::open(&address).await?;
                let request = MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(self.topic.clone())),
                    ]))
                    .with_allow_auto_topic_creation(false);
                connection
                    .call(METADATA_VERSION, &request, Duration::ZERO)
                    .await
            };
            match attempt.await {
                Ok(metadata) => {
                    self.known = metadata
                        .brokers
                        .iter()
                        .map(|b| format!("{}:{}", b.host.as_str(), b.port))
                        .collect();
                    return self.leaders_in(metadata);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn leaders_in(&self, metadata: MetadataResponse) -> Result<Leaders, ReadError> {
        let addresses: BTreeMap<i32, String> = metadata
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let topic = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref() == Some(&self.topic))
            .ok_or_else(|| ReadError::Cluster(format!("no topic {}", self.topic.as_str())))?;
        if topic.error_code != 0 {
            return Err(ReadError::Cluster(format!(
                "topic {}: {}",
                self.topic.as_str(),
                code_name(topic.error_code)
            )));
        }
        let mut leaders = vec![-1; topic.partitions.len()];
        for p in &topic.partitions {
            let leader = usize::try_from(p.partition_index)
                .ok()
                .and_then(|i| leaders.get_mut(i))
                .ok_or_else(|| {
                    ReadError::Cluster(format!(
                        "topic {} reports partition {} of {}",
                        self.topic.as_str(),
                        p.partition_index,
                        topic.partitions.len()
                    ))
                })?;
            if p.error_code != 0 && p.leader_id.0 < 0 {
                return Err(ReadError::Cluster(format!(
                    "partition {}: {}",
                    p.partition_index,
                    code_name(p.error_code)
                )));
            }
            if !addresses.contains_key(&p.leader_id.0) {
                return Err(ReadError::Cluster(format!(
                    "partition {} has no leader",
                    p.partition_index
                )));
            }
            *leader = p.leader_id.0;
        }
        if leaders.is_empty() {
            return Err(ReadError::Cluster(format!(
                "topic {} has no partitions",
                self.topic.as_str()
            )));
        }
        Ok(Leaders { addresses, leaders })
    }

    /// Puts `session`'s next fetch in flight, from the partitions' current positions.
    fn fetch(&mut self, mut session: Session) {
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
                .await;
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
    ) -> Result<(), ReadError> {
        if answer.error_code != 0 {
            return Err(ReadError::Cluster(format!(
                "{}: fetch refused: {}",
                session.connection.address,
                code_name(answer.error_code)
            )));
        }
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
                if p.error_code != 0 {
                    return Err(ReadError::Cluster(format!(
                        "{}: partition {partition}: {}",
                        session.connection.address,
                        code_name(p.error_code)
                    )));
                }
                if let Some(records) = p.records {
                    take_batches(records, partition, &mut self.next[partition], out);
                }
            }
        }
        Ok(())
    }
}

/// Appends the records of `batches` (a fetch's record batches for `partition`) at or past
/// `*next`, and moves `*next` past the last whole batch. A batch cut short by the fetch's size
/// limit is left for the next fetch; control batches and batches that do not decode are passed
/// over (the latter with an error).
pub fn take_batches(mut batches: Bytes, partition: usize, next: &mut i64, out: &mut Vec<Record>) {
    // Base offset (8 bytes), length (4), then the rest of the batch: its leader epoch (4),
    // magic byte (1), CRC (4), attributes (2) and last offset delta (4).
    const HEAD: usize = 12;
    const LAST_OFFSET_DELTA: usize = HEAD + 4 + 1 + 4 + 2;
    while batches.len() >= HEAD {
        let base = i64::from_be_bytes(batches[..8].try_into().expect("eight bytes"));
        let length = i32::from_be_bytes(batches[8..12].try_into().expect("four bytes"));
        let Some(size) = usize::try_from(length).ok().map(|l| l + HEAD) else {
            tracing::error!(
                partition,
                base,
                length,
                "a record batch of negative length; passing over the rest of the fetch"
            );
            return;
        };
        if batches.len() < size {
            break;
        }
        let mut batch = batches.split_to(size);
        let last = batch
            .get(LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4)
            .map(|delta| {
                base.saturating_add(i64::from(i32::from_be_bytes(
                    delta.try_into().expect("four bytes"),
                )))
            })
            .unwrap_or(base);
        if last < *next {
            continue;
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
                tracing::error!(partition, base, last, error = %e, "passing over a record batch that does not decode");
                metrics::counter!("chat_ws_log_undecodable_batches_total").increment(1);
            }
        }
        *next = (*next).max(last.saturating_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            take_batches(bytes.slice(..cut), 3, &mut next, &mut out);
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
            take_batches(Bytes::from(bytes), 0, &mut next, &mut out);
            prop_assert!(next >= start);
            prop_assert!(out.iter().all(|r| r.offset >= start));
        }
    }

    /// A batch corrupted in flight (its checksum fails) is passed over, not read, and the
    /// position moves past it, so the reader does not fetch it forever.
    #[test]
    fn a_batch_that_does_not_decode_is_passed_over() {
        let batches = [
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
        ];
        let (bytes, written) = encode(&batches);
        let mut corrupt = BytesMut::from(&bytes[..]);
        let first_end = written[0].0;
        corrupt[first_end - 1] ^= 0xff;
        let (mut next, mut out) = (0, Vec::new());
        take_batches(corrupt.freeze(), 3, &mut next, &mut out);
        assert_eq!(out, written[1].1, "only the intact batch");
        assert_eq!(next, 3);
    }
}
