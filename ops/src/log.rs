//! Reading the event log directly, partition by partition, between known offsets (no consumer
//! group): what rebuild, verify and export need.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use projector::dead_letter::DeadLetter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use writer::KafkaArgs;

pub use projector::Record;

/// How long a metadata or watermark request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The records `[start, end)` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl Span {
    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Total records of `spans`.
pub fn total(spans: &[Span]) -> u64 {
    spans.iter().map(Span::len).sum()
}

/// A consumer that belongs to no group and commits nothing: it only reads.
pub fn reader(brokers: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "chatctl-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Large fetches: replay is throughput, not latency.
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "262144")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("create a Kafka consumer")
}

/// The partitions of `topic`, in order.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .with_context(|| format!("read the metadata of topic {topic}"))?;
    let topic_metadata = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} does not exist"))?;
    if let Some(e) = topic_metadata.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    let mut partitions: Vec<i32> = topic_metadata.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    Ok(partitions)
}

/// The first and one-past-last offset of every partition of `topic`.
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    partitions(consumer, topic)?
        .into_iter()
        .map(|p| {
            let marks = consumer
                .fetch_watermarks(topic, p, ADMIN_TIMEOUT)
                .with_context(|| format!("read the offsets of {topic}/{p}"))?;
            Ok((p, marks))
        })
        .collect()
}

/// From `done` (the next offset to read of each partition; the log's beginning for one not in
/// it) to the end of the log as it is now, partition by partition.
pub async fn spans_to_end(
    kafka: &KafkaArgs,
    done: &HashMap<i32, i64>,
) -> anyhow::Result<Vec<Span>> {
    let brokers = kafka.brokers.clone();
    let topic = kafka.topic.clone();
    let marks = tokio::task::spawn_blocking(move || {
        let consumer = reader(&brokers)?;
        watermarks(&consumer, &topic)
    })
    .await??;
    let mut spans: Vec<Span> = marks
        .into_iter()
        .map(|(partition, (low, high))| Span {
            partition,
            start: done.get(&partition).copied().unwrap_or(0).max(low),
            end: high,
        })
        .collect();
    spans.sort_by_key(|s| s.partition);
    Ok(spans)
}

/// The first offset of each partition whose records were appended at or after `time_ms`
/// (the high watermark where there is none).
pub fn offsets_at(
    consumer: &BaseConsumer,
    topic: &str,
    time_ms: i64,
) -> anyhow::Result<HashMap<i32, i64>> {
    let marks = watermarks(consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in marks.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Offset(time_ms))?;
    }
    let found = consumer
        .offsets_for_times(tpl, ADMIN_TIMEOUT)
        .context("look offsets up by time")?;
    let mut out = HashMap::new();
    for element in found.elements() {
        let high = marks[&element.partition()].1;
        let offset = match element.offset() {
            Offset::Offset(o) => o,
            _ => high,
        };
        out.insert(element.partition(), offset);
    }
    Ok(out)
}

/// Reads `spans` on a thread of its own and hands over batches of at most `batch` records,
/// in log order within each partition, until every span is read. Reading runs ahead of the
/// receiver by a few batches, so fetching overlaps with whatever the receiver does.
pub fn read(
    kafka: &KafkaArgs,
    spans: Vec<Span>,
    batch: usize,
) -> mpsc::Receiver<anyhow::Result<Vec<Record>>> {
    let (tx, rx) = mpsc::channel(4);
    let brokers = kafka.brokers.clone();
    let topic = kafka.topic.clone();
    let batch = batch.max(1);
    std::thread::spawn(move || {
        if let Err(e) = read_blocking(&brokers, &topic, &spans, batch, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

fn read_blocking(
    brokers: &str,
    topic: &str,
    spans: &[Span],
    batch: usize,
    tx: &mpsc::Sender<anyhow::Result<Vec<Record>>>,
) -> anyhow::Result<()> {
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for span in spans.iter().filter(|s| !s.is_empty()) {
        tpl.add_partition_offset(topic, span.partition, Offset::Offset(span.start))?;
        ends.insert(span.partition, span.end);
    }
    if ends.is_empty() {
        return Ok(());
    }
    let consumer = reader(brokers)?;
    consumer
        .assign(&tpl)
        .context("assign the partitions to read")?;
    let mut records = Vec::with_capacity(batch);
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(end) = ends.get(&partition).copied() else {
                    continue;
                };
                if message.offset() < end {
                    records.push(Record::from_message(&message));
                }
                if message.offset() + 1 >= end {
                    ends.remove(&partition);
                }
                if records.len() >= batch {
                    let full = std::mem::replace(&mut records, Vec::with_capacity(batch));
                    if tx.blocking_send(Ok(full)).is_err() {
                        return Ok(()); // the receiver gave up
                    }
                }
            }
            Some(Err(e)) => return Err(e).context(format!("read {topic}")),
            None => {
                if !records.is_empty() {
                    let some = std::mem::take(&mut records);
                    if tx.blocking_send(Ok(some)).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    if !records.is_empty() {
        let _ = tx.blocking_send(Ok(records));
    }
    Ok(())
}

/// Every dead letter of `kafka.topic` (from its `.dlq` topic), one per original position, in
/// log order. Blocking: call it from `spawn_blocking`.
pub fn dead_letters(kafka: &KafkaArgs) -> anyhow::Result<Vec<DeadLetter>> {
    let dlq = projector::dead_letter_topic(&kafka.topic);
    let consumer = reader(&kafka.brokers)?;
    let marks = match watermarks(&consumer, &dlq) {
        Ok(marks) => marks,
        Err(e) if e.to_string().contains("does not exist") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for (partition, (low, high)) in marks {
        if high > low {
            tpl.add_partition_offset(&dlq, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
        }
    }
    let mut found = BTreeMap::new();
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading the dead-letter topic {dlq} took over 30 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let partition = message.partition();
        let Some(end) = ends.get(&partition).copied() else {
            continue;
        };
        if let Some(letter) = DeadLetter::from_message(&message)
            && letter.topic == kafka.topic
        {
            found
                .entry((letter.partition, letter.offset))
                .or_insert(letter);
        }
        if message.offset() + 1 >= end {
            ends.remove(&partition);
        }
    }
    Ok(found.into_values().collect())
}
