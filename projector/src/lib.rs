//! The projector: folds `chat.events` into the Postgres projection, exactly once.
//!
//! It reads the log as a member of a consumer group. Each batch is applied in one Postgres
//! transaction together with the positions it reaches ([`store::projection::advance_positions`]), and records
//! below the stored positions are skipped inside that same transaction: a crash anywhere, a
//! rebalance or a replay leaves the tables as one uninterrupted run would. Kafka's own committed
//! offsets are only a hint for where to resume reading (and for lag monitoring).
//!
//! Where reading starts is decided by Postgres, not by Kafka: on every partition assignment the
//! consumer is positioned at the offsets stored with the rows, and a batch whose records start
//! past a partition's stored position (the tables were restored from a backup, say, while
//! running) is dropped and reading starts again there ([`transaction::FoldError::Gap`]).
//!
//! A record that cannot be decoded, or whose event the database refuses as data, goes to the
//! dead-letter topic with the reason and its original position; the projector moves on. A
//! database fault (an outage) is retried, never skipped. An event of a schema version newer
//! than this build knows is neither: its partition's projection stops there, and `/readyz`
//! names it, until a build that knows the version runs.

pub mod dead_letter;
pub mod sql;
pub mod transaction;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use dead_letter::{DeadLetters, dead_letter_topic};
use events::Envelope;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgPool};
pub use transaction::{Decoded, Folder, Outcome, Poison};
use writer::KafkaArgs;

/// The projector's own settings.
#[derive(clap::Args, Clone, Debug)]
pub struct ProjectorArgs {
    /// Consumer group of the projector workers (one per partition at most does work).
    #[arg(long, env = "PROJECTOR_GROUP", default_value = "chat-projector")]
    pub group: String,
    /// Most records applied in one transaction.
    #[arg(long, env = "PROJECTOR_MAX_BATCH", default_value_t = 2000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_batch: usize,
    /// Longest a batch gathers records after its first one, in milliseconds. A batch closes
    /// sooner when the log goes quiet (no record for a fetch's wait and a little more), so this
    /// only stretches batches under load: fewer, larger transactions.
    #[arg(long, env = "PROJECTOR_GATHER_MS", default_value_t = 50)]
    pub gather_ms: u64,
}

/// A record as read from the log, before decoding.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Record {
    pub fn from_message(message: &impl Message) -> Self {
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Partitions whose projection stopped at an event this build cannot read, with why.
type Stopped = Arc<Mutex<BTreeMap<i32, Poison>>>;

/// Positions each assigned partition where Postgres says the projection stands, logs
/// rebalances and publishes the consumer lag that librdkafka reports.
struct Context {
    /// Where the stored positions are read from (a connection of its own: the rebalance
    /// callback runs inside the consumer's poll).
    database: PgConnectOptions,
    topic: String,
    stopped: Stopped,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!("chat_projector_lag", "partition" => partition.to_string())
                        .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_at_stored_positions(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "cannot take the assigned partitions");
                }
                self.pause_stopped(consumer, tpl);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = revoked {
                    tracing::warn!(error = %e, "cannot give up the revoked partitions");
                }
                let mut stopped = self.stopped.lock().expect("lock is never poisoned");
                for element in tpl.elements() {
                    stopped.remove(&element.partition());
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            other => tracing::warn!(error = ?other, "rebalance failed"),
        }
    }
}

impl Context {
    /// Sets each assigned partition's start to its position stored in Postgres (the log's
    /// beginning for a partition never applied). If Postgres does not answer, Kafka's
    /// committed offsets stand in, and the contiguity check of each batch corrects them.
    fn start_at_stored_positions(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        if partitions.is_empty() {
            return;
        }
        match read_positions_blocking(
            self.database.clone(),
            self.topic.clone(),
            partitions.clone(),
        ) {
            Ok(stored) => {
                for partition in partitions {
                    let offset = stored
                        .get(&partition)
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    if let Err(e) = tpl.set_partition_offset(&self.topic, partition, offset) {
                        tracing::error!(error = %e, partition, "cannot set a start position");
                    }
                }
                tracing::info!(positions = ?stored, "reading from the positions stored in Postgres");
            }
            Err(e) => tracing::warn!(error = %e,
                "cannot read the stored positions; starting from Kafka's hint until a batch shows the gap"),
        }
    }

    /// Keeps a partition stopped at an unreadable event paused across a reassignment.
    fn pause_stopped(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let stopped = self.stopped.lock().expect("lock is never poisoned");
        let mut paused = TopicPartitionList::new();
        for element in tpl.elements() {
            if stopped.contains_key(&element.partition()) {
                paused.add_partition(&self.topic, element.partition());
            }
        }
        if paused.count() > 0 {
            let _ = consumer.pause(&paused);
        }
    }
}

/// The stored positions of `partitions`, read on a thread and connection of their own (the
/// caller is inside the consumer's poll, on a runtime thread); at most a few seconds.
fn read_positions_blocking(
    database: PgConnectOptions,
    topic: String,
    partitions: Vec<i32>,
) -> Result<HashMap<i32, i64>, String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let read = async {
                let mut conn = sqlx::PgConnection::connect_with(&database).await?;
                let stored =
                    store::projection::positions_of(&mut conn, &topic, &partitions).await?;
                let _ = conn.close().await;
                Ok::<_, sqlx::Error>(stored)
            };
            match tokio::time::timeout(Duration::from_secs(5), read).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("Postgres did not answer within 5 s".to_owned()),
            }
        })
    })
    .join()
    .map_err(|_| "the position reader panicked".to_owned())?
}

/// Folds the log into Postgres.
pub struct Projector {
    consumer: Arc<StreamConsumer<Context>>,
    folder: Folder,
    pool: PgPool,
    topic: String,
    max_batch: usize,
    /// How long a batch gathers records after its first one.
    gather: Duration,
    /// False while the last batch could not be applied (the database is down, say).
    healthy: Arc<AtomicBool>,
    /// Partitions stopped at an event of a newer schema version.
    stopped: Stopped,
    /// Next offset per partition not yet told to Kafka, and when Kafka was last told.
    unhinted: HashMap<i32, i64>,
    last_hint: Instant,
}

/// How often the projector tells Kafka how far it got. Only a hint (Postgres holds the real
/// positions), so once a second is plenty; a commit per batch would make the broker write its
/// offsets topic ~100 times a second under load.
const HINT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest the broker holds a fetch while it has less than 64 KiB for us.
const FETCH_WAIT: Duration = Duration::from_millis(10);

/// How long a projector that died without a goodbye holds its partitions.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// No record for this long (a fetch's wait and a margin) means the log is quiet: the batch in
/// hand is applied without waiting out the gather window.
const QUIET: Duration = Duration::from_millis(12);

impl Projector {
    pub fn new(kafka: &KafkaArgs, args: &ProjectorArgs, pool: PgPool) -> anyhow::Result<Self> {
        let stopped = Stopped::default();
        let consumer: StreamConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &args.group)
            // A projector that dies without leaving the group (SIGKILL, a lost machine) holds
            // its partitions until its session expires: the shortest the broker allows by
            // default (group.min.session.timeout.ms), not librdkafka's 45 s.
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (SESSION_TIMEOUT / 3).as_millis().to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            // Under load, let the broker gather records for a while rather than answer one
            // fetch per record: far fewer requests for Kafka.
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
            .create_with_context(Context {
                database: (*pool.connect_options()).clone(),
                topic: kafka.topic.clone(),
                stopped: stopped.clone(),
            })?;
        consumer.subscribe(&[&kafka.topic])?;
        let dead_letters = DeadLetters::new(kafka)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            folder: Folder::new(&kafka.topic, Some(dead_letters)).contiguous(),
            pool,
            topic: kafka.topic.clone(),
            max_batch: args.max_batch.max(1),
            gather: Duration::from_millis(args.gather_ms),
            healthy: Arc::new(AtomicBool::new(true)),
            stopped,
            unhinted: HashMap::new(),
            last_hint: Instant::now(),
        })
    }

    /// Dependencies' answers for `/readyz`.
    pub fn readiness(&self) -> telemetry::Readiness {
        let consumer = self.consumer.clone();
        let pool = self.pool.clone();
        let healthy = self.healthy.clone();
        let topic = self.topic.clone();
        let dead_letters_at_start = Arc::new(OnceLock::new());
        let stopped = self.stopped.clone();
        telemetry::Readiness::new(move || {
            let consumer = consumer.clone();
            let pool = pool.clone();
            let healthy = healthy.clone();
            let topic = topic.clone();
            let topic_name = topic.clone();
            let dead_letters_at_start = dead_letters_at_start.clone();
            // A partition stopped on an event from a newer build, in words an operator can act on.
            let stopped_reason = {
                let stopped = stopped.lock().expect("lock is never poisoned");
                let said: Vec<String> = stopped
                    .values()
                    .map(|s| {
                        format!(
                            "partition {} stopped at offset {}: {}",
                            s.partition, s.offset, s.reason
                        )
                    })
                    .collect();
                (!said.is_empty()).then(|| said.join("; "))
            };
            async move {
                let (kafka, dead_letters) = tokio::task::spawn_blocking(move || {
                    let kafka = consumer
                        .client()
                        .fetch_metadata(Some(&topic), Duration::from_secs(2))
                        .is_ok();
                    (kafka, dead_letters_held(&consumer, &topic))
                })
                .await
                .unwrap_or((false, None));
                // Whatever the topic held when first read is "from before this start".
                vec![
                    telemetry::Check {
                        dependency: "kafka",
                        ok: kafka,
                        detail: None,
                    },
                    telemetry::Check {
                        dependency: "postgres",
                        ok: store::ping(&pool).await,
                        detail: None,
                    },
                    telemetry::Check {
                        dependency: "projection",
                        ok: healthy.load(Ordering::Relaxed) && stopped_reason.is_none(),
                        detail: stopped_reason,
                    },
                    dead_letter_check(dead_letters, &dead_letters_at_start, &topic_name),
                ]
            }
        })
    }

    /// Runs until `shutdown` resolves; the batch in hand is finished first.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let records = tokio::select! {
                records = self.next_records() => records,
                () = &mut shutdown => {
                    self.commit_hint();
                    return Ok(());
                }
            };
            let records: Vec<Record> = {
                let stopped = self.stopped.lock().expect("lock is never poisoned");
                records
                    .into_iter()
                    .filter(|r| !stopped.contains_key(&r.partition))
                    .collect()
            };
            if records.is_empty() {
                continue;
            }
            let mut backoff = Duration::from_millis(100);
            let started = Instant::now();
            let applied = loop {
                match self.folder.apply(&self.pool, &records).await {
                    Ok(outcome) => {
                        outcome.record_metrics();
                        metrics::histogram!("chat_projector_batch_seconds")
                            .record(started.elapsed().as_secs_f64());
                        self.healthy.store(true, Ordering::Relaxed);
                        for stop in outcome.stopped {
                            self.stop(stop);
                        }
                        break true;
                    }
                    Err(transaction::FoldError::Gap {
                        partition,
                        stored,
                        found,
                    }) => {
                        tracing::warn!(
                            partition,
                            stored,
                            found,
                            "the log was read past the stored position; reading again from Postgres's positions"
                        );
                        self.rewind(&records).await;
                        break false;
                    }
                    Err(e) => {
                        self.healthy.store(false, Ordering::Relaxed);
                        tracing::error!(error = %e, records = records.len(), "batch not applied; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {},
                            () = &mut shutdown => {
                                self.commit_hint();
                                return Ok(());
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            if !applied {
                continue;
            }
            for r in &records {
                let next = self.unhinted.entry(r.partition).or_default();
                *next = (*next).max(r.offset + 1);
            }
            if self.last_hint.elapsed() >= HINT_INTERVAL {
                self.commit_hint();
            }
        }
    }

    /// Stops a partition's projection at an event this build cannot read: paused, and named
    /// by `/readyz`, until a build that knows its version runs.
    fn stop(&mut self, stop: Poison) {
        tracing::error!(partition = stop.partition, offset = stop.offset, reason = %stop.reason,
            "projection of this partition stopped: deploy a build that knows this event version");
        metrics::counter!("chat_projector_stopped_partitions_total").increment(1);
        let mut paused = TopicPartitionList::new();
        paused.add_partition(&self.topic, stop.partition);
        if let Err(e) = self.consumer.pause(&paused) {
            tracing::warn!(error = %e, "cannot pause the stopped partition");
        }
        self.unhinted.remove(&stop.partition);
        self.stopped
            .lock()
            .expect("lock is never poisoned")
            .insert(stop.partition, stop);
    }

    /// Moves every partition of `records` back to its position stored in Postgres.
    async fn rewind(&mut self, records: &[Record]) {
        let partitions: Vec<i32> = records
            .iter()
            .map(|r| r.partition)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let stored: HashMap<i32, i64> = loop {
            match store::projection::positions_of(&self.pool, &self.topic, &partitions).await {
                Ok(stored) => break stored,
                Err(e) => {
                    self.healthy.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot read the stored positions; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        for partition in partitions {
            let offset = stored
                .get(&partition)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            self.unhinted.remove(&partition);
            let consumer = self.consumer.clone();
            let topic = self.topic.clone();
            let sought = tokio::task::spawn_blocking(move || {
                consumer.seek(&topic, partition, offset, Duration::from_secs(5))
            })
            .await;
            match sought {
                Ok(Ok(())) => {
                    tracing::info!(partition, ?offset, "reading again from the stored position")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, partition, "cannot seek to the stored position")
                }
                Err(e) => tracing::error!(error = %e, partition, "seek task failed"),
            }
        }
    }

    /// Waits for at least one record, then takes what else is ready, up to the batch limit.
    async fn next_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    records.push(Record::from_message(&message));
                    break;
                }
                // librdkafka reconnects by itself; these are reports of what it is going
                // through, queued in order with the records. Never sleep on one: during an
                // outage they pile up faster than a sleeping reader drains them, and the
                // records behind them would wait long after the broker is back.
                Err(e) => tracing::debug!(error = %e, "the log reported an error"),
            }
        }
        let gather_until = tokio::time::Instant::now() + self.gather;
        while records.len() < self.max_batch {
            let until = gather_until.min(tokio::time::Instant::now() + QUIET);
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Ok(Ok(message)) => records.push(Record::from_message(&message)),
                Ok(Err(e)) => tracing::debug!(error = %e, "the log reported an error"),
                Err(_) => break,
            }
        }
        records
    }

    /// Tells Kafka how far we got, so a restart resumes reading near there. Postgres holds the
    /// real positions; losing this commit only means re-reading records that are then skipped.
    fn commit_hint(&mut self) {
        self.last_hint = Instant::now();
        if self.unhinted.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in self.unhinted.drain() {
            let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit hint failed");
        }
    }
}

/// How many records the dead-letter topic of `topic` holds; `None` when it cannot be read (the
/// `kafka` check reports that) or does not exist yet.
fn dead_letters_held(consumer: &StreamConsumer<Context>, topic: &str) -> Option<i64> {
    let dlq = dead_letter_topic(topic);
    let timeout = Duration::from_secs(2);
    let metadata = consumer.fetch_metadata(Some(&dlq), timeout).ok()?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == dlq)?
        .partitions()
        .len();
    Some(
        (0..partitions as i32)
            .filter_map(|p| consumer.fetch_watermarks(&dlq, p, timeout).ok())
            .map(|(low, high)| (high - low).max(0))
            .sum(),
    )
}

/// The `dead_letters` readiness check. Our writer appends nothing the projector cannot apply, so
/// a dead letter is a record from elsewhere or a bug of ours: the projector is not ready once
/// the dead-letter topic has gained a record since it started (by any projector of the topic),
/// until an operator has looked (`chatctl verify` lists them) and restarted it. Records held
/// from before the start are named but do not hold the projector back, so a restart is the
/// acknowledgement and a stack with old dead letters still starts.
fn dead_letter_check(held: Option<i64>, at_start: &OnceLock<i64>, topic: &str) -> telemetry::Check {
    let dlq = dead_letter_topic(topic);
    let Some(held) = held else {
        return telemetry::Check {
            dependency: "dead_letters",
            ok: true,
            detail: None,
        };
    };
    let before = *at_start.get_or_init(|| held);
    let new = held - before;
    let detail = match (new, held) {
        (_, 0) => None,
        (0, _) => Some(format!(
            "{held} record(s) in the dead-letter topic {dlq} from before this start: see chatctl verify"
        )),
        _ => Some(format!(
            "{new} new record(s) in the dead-letter topic {dlq} since this start ({held} held): see chatctl verify"
        )),
    };
    telemetry::Check {
        dependency: "dead_letters",
        ok: new <= 0,
        detail,
    }
}

/// Why a record is not an event this build can apply.
struct Undecodable {
    reason: String,
    /// Written by a newer build ([`events::DecodeError::NewerVersion`]): it must wait, not be
    /// set aside.
    newer: bool,
}

impl From<&str> for Undecodable {
    fn from(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
            newer: false,
        }
    }
}

fn decode(record: &Record) -> Result<Envelope, Undecodable> {
    let payload = record.payload.as_deref().ok_or("the record has no value")?;
    let envelope = Envelope::decode(payload).map_err(|e| Undecodable {
        newer: matches!(e, events::DecodeError::NewerVersion { .. }),
        reason: e.to_string(),
    })?;
    // Our writer appends nothing the rule refuses: such a record comes from elsewhere, and is
    // set aside before it reaches the database (where it would fail its whole batch).
    envelope.event.admit().map_err(|refusal| {
        Undecodable::from(format!("the event breaks the log's rule: {refusal}").as_str())
    })?;
    let expected_key = envelope.key();
    if record.key.as_deref() != Some(expected_key.as_bytes()) {
        return Err(format!(
            "the record's key is not its conversation id {expected_key}: it may be in the wrong partition"
        )
        .as_str()
        .into());
    }
    Ok(envelope)
}
