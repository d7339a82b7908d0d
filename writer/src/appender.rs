//! The writer's producer: Kafka's produce protocol, idempotent with `acks=all`, spoken from a
//! task of the runtime that appends.
//!
//! librdkafka's producer keeps a thread per broker: every append woke it through a pipe, and
//! every acknowledgement woke the runtime back, some 66 µs of CPU per append at 1,000 appends/s
//! (docs/performance.md). Here one task holds a connection to each partition leader, and an
//! append costs the runtime the request's write and the answer's read.
//!
//! Idempotence is Kafka's own: a producer id given out by the cluster (`InitProducerId`), a
//! sequence number for every record of a partition, and a batch retried with the numbers it
//! was first sent with, so the broker writes it once however often it arrives. At most one batch
//! per partition is in flight, so a retry cannot reorder a partition; the records that queued
//! meanwhile go together in the next batch (one request per broker carries every partition it
//! leads that has records). A broker with no request under way is sent a record once it has
//! lingered (`CHAT_APPEND_LINGER_US`, timed by a timerfd: tokio's timers round up to the next
//! millisecond), so that those that come meanwhile share its request: the broker's cost is its
//! request rate, not its bytes. Records linger only while appends come close enough together
//! to find company (`linger::Spacing`); a quiet writer sends at once.
//!
//! A batch is given up only when the delivery timeout of its records passes. Then the broker may
//! or may not hold it, so whether its sequence numbers are spent is unknown: the producer asks
//! for a new producer id (numbers from 0 again) instead of guessing. A record given up may thus
//! be in the log after all, which the design allows (a message's id is derived from what names
//! it, so a second event is never a second message).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::Position;
use crate::linger::{PreciseTimer, Spacing};
use crate::wire::{Backoff, Cluster, Connection, Leaders, WireError, code_name};

/// Produce 9 is the first flexible version (Kafka 2.8); Kafka 4 serves 3 to 12.
const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
pub(crate) const CLIENT_ID: &str = "chat-writer";
/// How long the broker may wait for the partition's replicas before it answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a produce request may go unanswered before its connection is given up.
const ANSWER_PATIENCE: Duration = Duration::from_secs(7);
/// A batch stops taking records at this size (the broker's default largest batch is 1 MiB).
const BATCH_BYTES: usize = 512 << 10;
/// Records waiting in all: beyond this an append is refused at once, not queued.
const MOST_QUEUED: usize = 100_000;
/// Kafka's error codes for a batch refused because the broker does not know the producer, or
/// expected other sequence numbers.
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const UNKNOWN_PRODUCER_ID: i16 = 59;
/// How often records waiting for a pause to end are checked against their timeout.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Why a record was not acknowledged. The broker may still hold a record that timed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    #[error("a producer must be created within a Tokio runtime")]
    NoRuntime,
    #[error("the producer has stopped: the runtime that served it has shut down")]
    Stopped,
    #[error("{0} records are waiting for the log already")]
    Full(usize),
    #[error("no broker answers: {0}")]
    Unreachable(String),
    #[error("not acknowledged within {timeout:?} (last trouble: {trouble})")]
    TimedOut { timeout: Duration, trouble: String },
    #[error("partition {partition} refused the record: {reason}")]
    Refused { partition: i32, reason: String },
}

/// Appends records to one topic and waits for their acknowledgement. Cloning shares it; its
/// task ends when the last clone is gone and every record it took has been answered.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::UnboundedSender<Queued>,
    shared: Arc<Shared>,
}

struct Shared {
    /// No broker answered the last attempt to learn the cluster's leaders, and none answered
    /// since.
    brokers_down: AtomicBool,
    /// Records taken and not yet answered.
    waiting: AtomicUsize,
    /// Produce requests sent so far.
    requests: AtomicU64,
}

impl Appender {
    /// Starts the producer's task on the current runtime, which must outlive the appends.
    /// Connecting starts at once, and is retried until the cluster answers.
    pub fn new(
        brokers: &str,
        topic: &str,
        delivery_timeout: Duration,
        linger: Duration,
    ) -> Result<Self, ProduceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ProduceError::NoRuntime)?;
        let (queue, incoming) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            brokers_down: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        });
        let task = Task {
            topic: TopicName(StrBytes::from_string(topic.to_owned())),
            cluster: Cluster::new(brokers),
            delivery_timeout,
            linger,
            linger_until: None,
            spacing: Spacing::default(),
            shared: shared.clone(),
            incoming,
            open: true,
            leaders: None,
            identity: None,
            partitions: Vec::new(),
            unplaced: VecDeque::new(),
            idle: HashMap::new(),
            requests: FuturesUnordered::new(),
            busy: HashSet::new(),
            retry_at: None,
            backoff: Backoff::default(),
            next_check: Instant::now(),
            trouble: "none".into(),
        };
        runtime.spawn(task.run());
        Ok(Self { queue, shared })
    }

    /// Appends a record keyed by `key` to the partition Kafka's own producers would choose
    /// (murmur2 of the key) and waits for the acknowledgement, for at most the delivery timeout
    /// (and a request's patience, when the timeout passes while the record is in flight).
    pub async fn send(&self, key: Bytes, value: Bytes) -> Result<Position, ProduceError> {
        let waiting = self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        let _counted = Counted(&self.shared.waiting);
        if waiting >= MOST_QUEUED {
            return Err(ProduceError::Full(waiting));
        }
        let (ack, acknowledged) = oneshot::channel();
        let record = Queued {
            key,
            value,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            queued_at: Instant::now(),
            ack,
        };
        self.queue.send(record).map_err(|_| ProduceError::Stopped)?;
        acknowledged.await.unwrap_or(Err(ProduceError::Stopped))
    }

    /// Whether the last attempt to reach the cluster found no broker, with no answer since.
    pub fn brokers_down(&self) -> bool {
        self.shared.brokers_down.load(Ordering::Acquire)
    }

    /// Produce requests sent so far (each carries every batch of one broker).
    pub fn requests_sent(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// A broker answered someone else (a probe): clears [`Appender::brokers_down`].
    pub fn mark_reachable(&self) {
        self.shared.brokers_down.store(false, Ordering::Release);
    }
}

/// Takes a record off the count of those waiting when its append ends, however it ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The partition of `key` among `partitions`, as Kafka's Java client and librdkafka's
/// `murmur2_random` choose it for a key.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions
}

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("four bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The sequence number `by` records after `sequence`: Kafka's numbers wrap to 0 past
/// `i32::MAX` (`DefaultRecordBatch.incrementSequence`).
fn advance(sequence: i32, by: i32) -> i32 {
    if sequence > i32::MAX - by {
        by - (i32::MAX - sequence) - 1
    } else {
        sequence + by
    }
}

/// A record waiting for its acknowledgement.
struct Queued {
    key: Bytes,
    value: Bytes,
    /// Its CreateTime, ms since the epoch.
    timestamp: i64,
    queued_at: Instant,
    ack: oneshot::Sender<Result<Position, ProduceError>>,
}

/// Who the cluster knows this producer as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    id: i64,
    epoch: i16,
}

#[derive(Default)]
struct Partition {
    queue: VecDeque<Queued>,
    /// The batch sent and not yet acknowledged (or to be sent again).
    flight: Option<Flight>,
    /// The sequence number of the next record of a new batch.
    next_sequence: i32,
}

struct Flight {
    /// The identity and numbers the batch was encoded with: a retry sends the same bytes.
    identity: Identity,
    records: Vec<Queued>,
    batch: Bytes,
    /// A request carrying it is under way.
    sent: bool,
}

impl Partition {
    /// Puts the batch's records back at the head of the queue, to be numbered anew.
    fn requeue(&mut self) {
        if let Some(flight) = self.flight.take() {
            let mut records: VecDeque<Queued> = flight.records.into();
            records.append(&mut self.queue);
            self.queue = records;
        }
    }
}

impl Flight {
    fn oldest(&self) -> Instant {
        self.records[0].queued_at
    }
}

/// A produce request's outcome, with its connection if it is still good.
struct Outcome {
    broker: i32,
    connection: Option<Connection>,
    partitions: Vec<usize>,
    answer: Result<ProduceResponse, WireError>,
}

struct Task {
    topic: TopicName,
    cluster: Cluster,
    delivery_timeout: Duration,
    /// How long the first record of a batch waits for others before it is sent (when its
    /// broker has no request under way; one that has sends what queued once it answers).
    linger: Duration,
    /// When the oldest record held back by the linger is due.
    linger_until: Option<Instant>,
    /// How closely appends follow each other: the linger holds records only while one can
    /// expect company within it.
    spacing: Spacing,
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<Queued>,
    /// Some [`Appender`] is left to send records.
    open: bool,
    leaders: Option<Leaders>,
    identity: Option<Identity>,
    partitions: Vec<Partition>,
    /// Records that came before the topic's partitions were known.
    unplaced: VecDeque<Queued>,
    /// Connections with no request under way, by broker.
    idle: HashMap<i32, Connection>,
    requests: FuturesUnordered<BoxFuture<'static, Outcome>>,
    /// Brokers with a request under way: one at a time on each (a broker reads a connection's
    /// next request only once it answered the last, so more would only queue in the socket).
    busy: HashSet<i32>,
    /// After a failure: nothing is asked or sent before this.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// When records waiting out a pause are next checked against their timeout.
    next_check: Instant,
    /// The last failure, for the records that time out.
    trouble: String,
}

impl Task {
    async fn run(mut self) {
        // One timer for the task, armed again only when its deadline changes.
        let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        let mut armed = None;
        // The linger's own timer: tokio's would hold a record up to a millisecond longer.
        let mut lingering = if self.linger.is_zero() {
            None
        } else {
            match PreciseTimer::new() {
                Ok(timer) => Some(timer),
                Err(e) => {
                    tracing::warn!(error = %e, "no timerfd: records are sent without lingering");
                    self.linger = Duration::ZERO;
                    None
                }
            }
        };
        loop {
            let now = Instant::now();
            self.expire(now);
            if !self.open && self.is_idle() {
                return;
            }
            if self.retry_at.is_none_or(|at| at <= now) {
                self.retry_at = None;
                if self.leaders.is_none() || self.identity.is_none() {
                    self.set_up().await;
                }
                if self.retry_at.is_none() {
                    self.dispatch();
                }
            }
            if self.next_check <= now {
                self.next_check = now + EXPIRY_TICK;
            }
            let tick = (!self.is_idle()).then_some(self.next_check);
            let wake = match (self.retry_at, tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(lingering) = &mut lingering {
                // Nothing is sent during a pause, so a linger that ends in one must not wake
                // the task over and over; the pause's end looks at the records again.
                lingering.arm(self.linger_until.filter(|_| self.retry_at.is_none()));
            }
            if let Some(at) = wake
                && (armed != Some(at) || timer.is_elapsed())
            {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
            tokio::select! {
                Some(outcome) = self.requests.next(), if !self.requests.is_empty() => {
                    self.answered(outcome);
                }
                queued = self.incoming.recv(), if self.open => match queued {
                    Some(record) => {
                        self.take(record);
                        while let Ok(record) = self.incoming.try_recv() {
                            self.take(record);
                        }
                    }
                    None => self.open = false,
                },
                () = &mut timer, if wake.is_some() => {}
                () = async { lingering.as_mut().expect("armed").fired().await },
                    if lingering.as_ref().is_some_and(PreciseTimer::is_armed) => {}
            }
        }
    }

    /// Nothing waits to be sent or answered.
    fn is_idle(&self) -> bool {
        self.unplaced.is_empty()
            && self.requests.is_empty()
            && self
                .partitions
                .iter()
                .all(|p| p.queue.is_empty() && p.flight.is_none())
    }

    /// A new append: counted into the spacing of appends, then queued.
    fn take(&mut self, record: Queued) {
        self.spacing.arrived(record.queued_at, self.linger);
        self.place(record);
    }

    fn place(&mut self, record: Queued) {
        if self.partitions.is_empty() {
            self.unplaced.push_back(record);
        } else {
            let partition = partition_for(&record.key, self.partitions.len());
            self.partitions[partition].queue.push_back(record);
        }
    }

    /// Learns the leaders and the producer's identity, whichever is missing.
    async fn set_up(&mut self) {
        if self.leaders.is_none() {
            match self.cluster.leaders(&self.topic, CLIENT_ID).await {
                Ok(leaders) => self.adopt(leaders),
                Err(e) => {
                    if matches!(e, WireError::Io { .. } | WireError::Timeout { .. }) {
                        self.unreachable(&e);
                    }
                    return self.failed(e);
                }
            }
        }
        if self.identity.is_none() {
            let address = self
                .leaders
                .as_ref()
                .and_then(|leaders| leaders.addresses.values().next().cloned());
            match init_producer_id(address).await {
                Ok(identity) => {
                    tracing::info!(
                        producer_id = identity.id,
                        epoch = identity.epoch,
                        "producer id"
                    );
                    self.identity = Some(identity);
                    for partition in &mut self.partitions {
                        partition.next_sequence = 0;
                    }
                }
                Err(e) => return self.failed(e),
            }
        }
        self.shared.brokers_down.store(false, Ordering::Release);
    }

    fn adopt(&mut self, leaders: Leaders) {
        let count = leaders.leaders.len();
        if !self.partitions.is_empty() && count != self.partitions.len() {
            tracing::warn!(
                was = self.partitions.len(),
                now = count,
                "the topic's partition count changed; keys may move to other partitions"
            );
        }
        if count > self.partitions.len() {
            self.partitions.resize_with(count, Partition::default);
        }
        self.leaders = Some(leaders);
        while let Some(record) = self.unplaced.pop_front() {
            self.place(record);
        }
    }

    /// Sends, to each broker with no request under way, every batch it leads that waits.
    fn dispatch(&mut self) {
        let (Some(leaders), Some(identity)) = (&self.leaders, self.identity) else {
            return;
        };
        // A broker is due when a batch waits to be sent again, or its oldest record has
        // lingered long enough; then it takes every partition it leads that has records.
        // Otherwise the linger of its oldest record is when to look again.
        let now = Instant::now();
        let linger = if self.spacing.lingers(self.linger) {
            self.linger
        } else {
            Duration::ZERO
        };
        let mut due: HashSet<i32> = HashSet::new();
        let mut lingering: BTreeMap<i32, Instant> = BTreeMap::new();
        for (index, partition) in self.partitions.iter().enumerate() {
            let Some(&leader) = leaders.leaders.get(index) else {
                continue;
            };
            if self.busy.contains(&leader) {
                continue;
            }
            let resend = partition.flight.as_ref().is_some_and(|f| !f.sent);
            let ready_at = partition.queue.front().map(|r| r.queued_at + linger);
            if resend || ready_at.is_some_and(|at| at <= now) {
                due.insert(leader);
            } else if let Some(at) = ready_at {
                let soonest = lingering.entry(leader).or_insert(at);
                *soonest = (*soonest).min(at);
            }
        }
        let linger_until = lingering
            .into_iter()
            .filter(|(broker, _)| !due.contains(broker))
            .map(|(_, at)| at)
            .min();
        self.linger_until = linger_until;
        let mut by_broker: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (index, partition) in self.partitions.iter_mut().enumerate() {
            let Some(&leader) = leaders.leaders.get(index) else {
                continue;
            };
            if !due.contains(&leader) {
                continue;
            }
            if let Some(flight) = &mut partition.flight {
                if flight.sent {
                    continue;
                }
                if flight.identity != identity {
                    // Given a new identity since it was encoded: numbered anew.
                    partition.requeue();
                }
            }
            if partition.flight.is_none() && !partition.queue.is_empty() {
                partition.flight = Some(form(index, partition, identity));
            }
            if partition.flight.is_some() {
                by_broker.entry(leader).or_default().push(index);
            }
        }
        for (broker, indexes) in by_broker {
            let Some(address) = leaders.addresses.get(&broker).cloned() else {
                continue;
            };
            let data = indexes
                .iter()
                .map(|&index| {
                    let flight = self.partitions[index]
                        .flight
                        .as_mut()
                        .expect("chosen for its flight");
                    flight.sent = true;
                    PartitionProduceData::default()
                        .with_index(index as i32)
                        .with_records(Some(flight.batch.clone()))
                })
                .collect();
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(REQUEST_TIMEOUT.as_millis() as i32)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(self.topic.clone())
                        .with_partition_data(data),
                ]);
            let connection = self.idle.remove(&broker);
            self.busy.insert(broker);
            metrics::counter!("chat_append_requests_total").increment(1);
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            self.requests.push(Box::pin(async move {
                let mut connection = match connection {
                    Some(connection) => connection,
                    None => match Connection::open(&address, CLIENT_ID).await {
                        Ok(connection) => connection,
                        Err(e) => {
                            return Outcome {
                                broker,
                                connection: None,
                                partitions: indexes,
                                answer: Err(e),
                            };
                        }
                    },
                };
                let answer = connection
                    .call_within(PRODUCE_VERSION, &request, ANSWER_PATIENCE)
                    .await;
                Outcome {
                    broker,
                    connection: answer.is_ok().then_some(connection),
                    partitions: indexes,
                    answer,
                }
            }));
        }
    }

    fn answered(&mut self, outcome: Outcome) {
        self.busy.remove(&outcome.broker);
        let response = match outcome.answer {
            Ok(response) => response,
            Err(e) => {
                for &index in &outcome.partitions {
                    if let Some(flight) = &mut self.partitions[index].flight {
                        flight.sent = false;
                    }
                }
                return self.failed(e);
            }
        };
        if let Some(connection) = outcome.connection {
            self.idle.insert(outcome.broker, connection);
        }
        self.shared.brokers_down.store(false, Ordering::Release);
        let mut unanswered: HashSet<usize> = outcome.partitions.iter().copied().collect();
        let mut retry: Option<String> = None;
        for answer in response
            .responses
            .iter()
            .filter(|t| t.name == self.topic)
            .flat_map(|t| &t.partition_responses)
        {
            let Ok(index) = usize::try_from(answer.index) else {
                continue;
            };
            if !unanswered.remove(&index) {
                continue;
            }
            let partition = &mut self.partitions[index];
            let Some(flight) = partition.flight.as_mut() else {
                continue;
            };
            match answer.error_code {
                0 => {
                    let flight = partition.flight.take().expect("checked above");
                    for (i, record) in flight.records.into_iter().enumerate() {
                        let _ = record.ack.send(Ok(Position {
                            partition: answer.index,
                            offset: answer.base_offset + i as i64,
                        }));
                    }
                    self.backoff.reset();
                }
                UNKNOWN_PRODUCER_ID | OUT_OF_ORDER_SEQUENCE_NUMBER => {
                    // Refused, so not written: the broker forgot this producer (its state
                    // expires after a quiet spell) or missed numbers of a batch given up. The
                    // records go again under a new producer id.
                    partition.requeue();
                    self.identity = None;
                    retry = Some(format!(
                        "partition {}: {}",
                        answer.index,
                        code_name(answer.error_code)
                    ));
                }
                code if ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable()) => {
                    // Sent again, with the same numbers, once the pause is over.
                    flight.sent = false;
                    retry = Some(format!("partition {}: {}", answer.index, code_name(code)));
                }
                code => {
                    let flight = partition.flight.take().expect("checked above");
                    let reason = code_name(code);
                    tracing::error!(partition = answer.index, %reason, records = flight.records.len(), "the broker refused a batch");
                    for record in flight.records {
                        let _ = record.ack.send(Err(ProduceError::Refused {
                            partition: answer.index,
                            reason: reason.clone(),
                        }));
                    }
                    // Whether the numbers are spent is unknown: start again from a new id.
                    self.identity = None;
                }
            }
        }
        for index in unanswered {
            if let Some(flight) = &mut self.partitions[index].flight {
                flight.sent = false;
            }
            retry = Some(format!("no answer for partition {index}"));
        }
        if let Some(trouble) = retry {
            // Leaders may have moved: ask again before sending again.
            self.failed(WireError::Cluster(trouble));
        }
    }

    /// Gives up records whose delivery timeout passed, unless a request carrying them is still
    /// under way (its answer, or its patience running out, decides).
    fn expire(&mut self, now: Instant) {
        let timeout = self.delivery_timeout;
        let expired = |record: &Queued| now.duration_since(record.queued_at) >= timeout;
        let mut lost_numbers = false;
        let mut given_up = Vec::new();
        while self.unplaced.front().is_some_and(expired) {
            given_up.extend(self.unplaced.pop_front());
        }
        for partition in &mut self.partitions {
            if partition
                .flight
                .as_ref()
                .is_some_and(|f| !f.sent && now.duration_since(f.oldest()) >= timeout)
            {
                let flight = partition.flight.take().expect("checked above");
                lost_numbers = true;
                given_up.extend(flight.records);
            }
            while partition.queue.front().is_some_and(expired) {
                given_up.extend(partition.queue.pop_front());
            }
        }
        if given_up.is_empty() {
            return;
        }
        tracing::warn!(records = given_up.len(), trouble = %self.trouble, "records not acknowledged in time");
        metrics::counter!("chat_append_timeouts_total").increment(given_up.len() as u64);
        for record in given_up {
            let _ = record.ack.send(Err(ProduceError::TimedOut {
                timeout,
                trouble: self.trouble.clone(),
            }));
        }
        if lost_numbers {
            self.identity = None;
        }
    }

    /// No broker answers: marks the brokers down (appends are refused until one answers a
    /// probe) and answers every record waiting at once instead of at its timeout, as librdkafka
    /// did for the appends it refused. A batch sent before may be in the log after all; whether
    /// its numbers are spent is unknown, so the producer will ask for a new id.
    fn unreachable(&mut self, e: &WireError) {
        self.shared.brokers_down.store(true, Ordering::Release);
        let mut given_up: Vec<Queued> = self.unplaced.drain(..).collect();
        for partition in &mut self.partitions {
            if partition.flight.as_ref().is_some_and(|f| !f.sent) {
                given_up.extend(partition.flight.take().expect("checked above").records);
                self.identity = None;
            }
            given_up.extend(partition.queue.drain(..));
        }
        if given_up.is_empty() {
            return;
        }
        tracing::warn!(records = given_up.len(), error = %e, "no broker answers; records given up");
        metrics::counter!("chat_append_unreachable_total").increment(given_up.len() as u64);
        for record in given_up {
            let _ = record
                .ack
                .send(Err(ProduceError::Unreachable(e.to_string())));
        }
    }

    /// After a failure: forget the leaders, and ask again after a pause.
    fn failed(&mut self, e: WireError) {
        tracing::warn!(error = %e, pause = ?self.backoff.pause(), "appending to the log failed; asking the cluster for the leaders again");
        metrics::counter!("chat_append_retries_total").increment(1);
        self.trouble = e.to_string();
        self.leaders = None;
        self.retry_at = Some(Instant::now() + self.backoff.take());
    }
}

/// Asks the broker at `address` for a producer id.
async fn init_producer_id(address: Option<String>) -> Result<Identity, WireError> {
    let address =
        address.ok_or_else(|| WireError::Cluster("the cluster names no broker".into()))?;
    let mut connection = Connection::open(&address, CLIENT_ID).await?;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let answer = connection
        .call(INIT_PRODUCER_ID_VERSION, &request, Duration::ZERO)
        .await?;
    if answer.error_code != 0 {
        return Err(WireError::Cluster(format!(
            "{address}: a producer id: {}",
            code_name(answer.error_code)
        )));
    }
    Ok(Identity {
        id: answer.producer_id.0,
        epoch: answer.producer_epoch,
    })
}

/// Takes the records of partition `index`'s next batch off its queue and encodes them.
fn form(index: usize, partition: &mut Partition, identity: Identity) -> Flight {
    let mut records = Vec::new();
    let mut bytes = 0;
    while let Some(record) = partition.queue.front() {
        let size = record.key.len() + record.value.len() + 32;
        if !records.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        records.extend(partition.queue.pop_front());
    }
    let base = partition.next_sequence;
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, record)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: identity.id,
            producer_epoch: identity.epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base.wrapping_add(i as i32),
            timestamp: record.timestamp,
            key: Some(record.key.clone()),
            value: Some(record.value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut batch = BytesMut::with_capacity(bytes + 64);
    RecordBatchEncoder::encode(
        &mut batch,
        &encoded,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap_or_else(|e| panic!("partition {index}: a batch of plain records encodes: {e}"));
    partition.next_sequence = advance(base, records.len() as i32);
    Flight {
        identity,
        records,
        batch: batch.freeze(),
        sent: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur2_is_kafkas() {
        // org.apache.kafka.common.utils.UtilsTest.testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, hash) in cases {
            assert_eq!(murmur2(data), hash, "{}", String::from_utf8_lossy(data));
        }
    }

    proptest! {
        /// Every key lands where librdkafka's `murmur2_random` puts it (the partitioner the
        /// writer used before, and every Kafka client's default for keyed records).
        #[test]
        fn partitions_agree_with_librdkafka(key in proptest::collection::vec(any::<u8>(), 1..80), partitions in 1usize..64) {
            // SAFETY: librdkafka's murmur2 partitioner reads only the key; the topic and
            // opaques are not used.
            let theirs = unsafe {
                rdkafka::bindings::rd_kafka_msg_partitioner_murmur2(
                    std::ptr::null(),
                    key.as_ptr().cast(),
                    key.len(),
                    partitions as i32,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            prop_assert_eq!(partition_for(&key, partitions) as i32, theirs);
        }
    }

    #[test]
    fn sequence_numbers_wrap_as_kafkas_do() {
        assert_eq!(advance(0, 1), 1);
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 3), 1);
    }
}
