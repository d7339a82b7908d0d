//! The writer: validated commands become events appended to the log.
//!
//! Nobody else appends to `chat.events`. The producer is idempotent with `acks=all`, and
//! [`Writer::append`] returns only once Kafka acknowledged the record, with its position: a
//! command is acknowledged to a client only after its event is durable in the log.
//!
//! While librdkafka reports every broker down, appends fail at once instead of each waiting out
//! the delivery timeout: one append at a time first asks the broker for metadata (briefly), and
//! the others are refused with [`AppendError::Unreachable`]. Nothing refused was queued, so a
//! refusal never turns into a late, unacknowledged record.

pub mod admin;
pub mod producer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use events::Envelope;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;

pub use producer::Producer;

/// The development broker of `scripts/stack`: the one default every binary, bench and test uses.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// The event log's default topic.
pub const DEFAULT_TOPIC: &str = "chat.events";

/// Where the log lives; flattened into every service's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = DEFAULT_BROKERS
    )]
    pub brokers: String,
    /// The event log topic.
    #[arg(
        long = "events-topic",
        env = "CHAT_EVENTS_TOPIC",
        default_value = DEFAULT_TOPIC
    )]
    pub topic: String,
}

/// A record's place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// Why an event could not be appended. Nothing was acknowledged: the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the event log did not acknowledge {type_name} within {timeout:?}: {source}")]
    Unacknowledged {
        type_name: &'static str,
        timeout: Duration,
        #[source]
        source: KafkaError,
    },
    #[error(
        "the event log is unreachable (every Kafka broker is down); {type_name} was not appended"
    )]
    Unreachable { type_name: &'static str },
    /// The event breaks the log's rule ([`events::admission`]); it was not appended, and a
    /// retry would be refused again. Callers check their input first, so this is a bug.
    #[error("{type_name} may not enter the log: {refusal}")]
    Refused {
        type_name: &'static str,
        refusal: events::Refusal,
    },
}

/// How long Kafka has to acknowledge a record once it is queued (librdkafka's
/// `message.timeout.ms`, retries included).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest an append waits for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest the probe of a log marked down may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The slowest possible append: the probe, the wait for room in the queue, the delivery
/// timeout, and a second for librdkafka's timeout scan. [`Writer::append`] never takes longer
/// (it gives up then, whatever Kafka does later), so whoever waits for an append in flight
/// (a retried send, say) knows when it has ended.
pub const LONGEST_APPEND: Duration = Duration::from_millis(
    PROBE_TIMEOUT.as_millis() as u64
        + QUEUE_TIMEOUT.as_millis() as u64
        + DELIVERY_TIMEOUT.as_millis() as u64
        + 1_000,
);

/// Clears its flag when dropped.
struct Clears<'a>(&'a AtomicBool);

impl Drop for Clears<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Appends events to the log.
#[derive(Clone)]
pub struct Writer {
    producer: Producer,
    /// An append is asking Kafka whether it is back (one at a time).
    probing: Arc<AtomicBool>,
    topic: String,
    /// How long a record may wait for Kafka before the append fails (and the client hears so).
    delivery_timeout: Duration,
}

impl Writer {
    /// A writer for `args.topic`. Connecting is lazy: an unreachable broker surfaces as append
    /// errors and as not-ready, never as a crash. Must be created within the Tokio runtime
    /// that serves its acknowledgements (it must outlive the writer).
    pub fn new(args: &KafkaArgs) -> Result<Self, KafkaError> {
        let delivery_timeout = DELIVERY_TIMEOUT;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Small batches: a chat message should not wait for company (nor for Nagle's
            // algorithm holding a small request back until the previous one is acknowledged).
            .set("linger.ms", "1")
            .set("socket.nagle.disable", "true")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            )
            // The Java client's partitioner, so every Kafka tool agrees on a key's partition.
            .set("partitioner", "murmur2_random")
            // Reconnect within a second of a broker's return (librdkafka's default backs off to
            // 10 s), so an outage ends for our clients when it ends for Kafka.
            .set("reconnect.backoff.max.ms", "1000");
        Ok(Self {
            producer: Producer::new(&config)?,
            probing: Arc::default(),
            topic: args.topic.clone(),
            delivery_timeout,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Appends one event, keyed by its conversation, and waits for Kafka's acknowledgement.
    /// An event that breaks the log's rule ([`events::Event::admit`]) is refused first.
    pub async fn append(&self, envelope: &Envelope) -> Result<Position, AppendError> {
        let type_name = envelope.event.type_name();
        if let Err(refusal) = envelope.event.admit() {
            metrics::counter!("chat_append_refusals_total", "type" => type_name).increment(1);
            tracing::error!(event = type_name, %refusal, "an event that breaks the log's rule was not appended");
            return Err(AppendError::Refused { type_name, refusal });
        }
        let key = envelope.key();
        let value = envelope.encode();
        if self.producer.brokers_down() && !self.probe().await {
            metrics::counter!("chat_append_failures_total", "type" => type_name).increment(1);
            return Err(AppendError::Unreachable { type_name });
        }
        let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
        let started = Instant::now();
        // librdkafka times the record out first; this bound holds whatever it does.
        let outcome = tokio::time::timeout(
            LONGEST_APPEND - PROBE_TIMEOUT,
            self.producer.send(record, QUEUE_TIMEOUT),
        )
        .await
        .unwrap_or(Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        )));
        metrics::histogram!("chat_append_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(position) => {
                metrics::counter!("chat_events_appended_total", "type" => type_name).increment(1);
                Ok(position)
            }
            Err(source) => {
                metrics::counter!("chat_append_failures_total", "type" => type_name).increment(1);
                tracing::warn!(error = %source, event = type_name, "append failed");
                Err(AppendError::Unacknowledged {
                    type_name,
                    timeout: self.delivery_timeout,
                    source,
                })
            }
        }
    }

    /// While Kafka is marked down: whether it answers now (then the mark is cleared). Only one
    /// append asks at a time; the others are refused meanwhile.
    async fn probe(&self) -> bool {
        if self.probing.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Cleared on every way out, a cancelled append's too (a client gone, a caller's
        // timeout): a flag left set would refuse every append without asking Kafka again.
        let _probing = Clears(&self.probing);
        self.answers_metadata(PROBE_TIMEOUT).await
    }

    /// Whether the broker answers a metadata request for the topic (readiness).
    pub async fn ready(&self) -> bool {
        self.answers_metadata(Duration::from_secs(2)).await
    }

    /// Asks for the topic's metadata; an answer also clears the "all brokers down" mark.
    async fn answers_metadata(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let answered = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.name() == topic && t.error().is_none())
                })
        })
        .await
        .unwrap_or(false);
        if answered {
            self.producer.mark_reachable();
        }
        answered
    }
}

#[cfg(test)]
mod tests {
    use events::{Event, MessagesRead};
    use uuid::Uuid;

    use super::*;

    /// A writer whose broker is marked down: nothing listens on port 1 of this host, so
    /// librdkafka gives every broker up at once.
    async fn writer_with_brokers_down() -> Writer {
        let writer = Writer::new(&KafkaArgs {
            brokers: "127.0.0.1:1".into(),
            topic: "probe-test".into(),
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !writer.producer.brokers_down() {
            assert!(
                Instant::now() < deadline,
                "the brokers are never marked down"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer
    }

    fn read() -> Envelope {
        Envelope::new(Event::MessagesRead(MessagesRead {
            conversation_id: Uuid::new_v4(),
            user_id: "u1".into(),
        }))
    }

    #[tokio::test]
    async fn an_append_cancelled_while_it_probes_leaves_the_next_to_probe_again() {
        let writer = writer_with_brokers_down().await;
        // Its caller gives up (a client gone, a timeout) while it asks Kafka.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), writer.append(&read()))
                .await
                .is_err()
        );
        // The next append asks Kafka again, which takes the probe's wait with no broker
        // there; a probe left marked as running would refuse it at once, and every append
        // after it, for good.
        for _ in 0..2 {
            let started = Instant::now();
            let outcome = writer.append(&read()).await;
            assert!(matches!(outcome, Err(AppendError::Unreachable { .. })));
            assert!(
                started.elapsed() >= PROBE_TIMEOUT / 2,
                "refused after {:?} without asking Kafka",
                started.elapsed()
            );
        }
    }
}
