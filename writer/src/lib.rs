//! The writer: validated commands become events appended to the log.
//!
//! Nobody else appends to `chat.events`. The producer is idempotent with `acks=all`, and
//! [`Writer::append`] returns only once Kafka acknowledged the record, with its position: a
//! command is acknowledged to a client only after its event is durable in the log.

pub mod admin;

use std::time::{Duration, Instant};

use events::Envelope;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// Where the log lives; flattened into every service's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// The event log topic.
    #[arg(
        long = "events-topic",
        env = "CHAT_EVENTS_TOPIC",
        default_value = "chat.events"
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
}

/// Appends events to the log.
#[derive(Clone)]
pub struct Writer {
    producer: FutureProducer,
    topic: String,
    /// How long a record may wait for Kafka before the append fails (and the client hears so).
    delivery_timeout: Duration,
}

impl Writer {
    /// A writer for `args.topic`. Connecting is lazy: an unreachable broker surfaces as append
    /// errors and as not-ready, never as a crash.
    pub fn new(args: &KafkaArgs) -> Result<Self, KafkaError> {
        let delivery_timeout = Duration::from_secs(10);
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Small batches: a chat message should not wait for company.
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            )
            // The Java client's partitioner, so every Kafka tool agrees on a key's partition.
            .set("partitioner", "murmur2_random")
            .create()?;
        Ok(Self {
            producer,
            topic: args.topic.clone(),
            delivery_timeout,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Appends one event, keyed by its conversation, and waits for Kafka's acknowledgement.
    pub async fn append(&self, envelope: &Envelope) -> Result<Position, AppendError> {
        let type_name = envelope.event.type_name();
        let key = envelope.key();
        let value = envelope.encode();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
        let started = Instant::now();
        let outcome = self
            .producer
            .send(record, Timeout::After(self.delivery_timeout))
            .await;
        metrics::histogram!("chat_append_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(delivery) => {
                metrics::counter!("chat_events_appended_total", "type" => type_name).increment(1);
                Ok(Position {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((source, _)) => {
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

    /// Whether the broker answers a metadata request for the topic (readiness).
    pub async fn ready(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.name() == topic && t.error().is_none())
                })
        })
        .await
        .unwrap_or(false)
    }
}
