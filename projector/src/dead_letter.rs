//! The dead-letter topic (`<topic>.dlq`): records of the log that cannot be decoded or applied,
//! each with why and where it was, so that the projector moves on and nothing is skipped
//! silently. Delivery there is at-least-once: a reader deduplicates on the original position.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use writer::KafkaArgs;

use crate::Record;

/// Header names of a dead letter.
pub const REASON: &str = "chat-dlq-reason";
pub const TOPIC: &str = "chat-dlq-topic";
pub const PARTITION: &str = "chat-dlq-partition";
pub const OFFSET: &str = "chat-dlq-offset";

/// The dead-letter topic of an event topic.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// A record of the log that was set aside, as read back from the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    /// Reads a dead-letter record; `None` if it lacks our headers.
    pub fn from_message(message: &impl Message) -> Option<Self> {
        let headers = message.headers()?;
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        Some(Self {
            topic: get(TOPIC)?,
            partition: get(PARTITION)?.parse().ok()?,
            offset: get(OFFSET)?.parse().ok()?,
            reason: get(REASON).unwrap_or_default(),
            payload: message.payload().map(<[u8]>::to_vec),
        })
    }
}

/// Sends records to the dead-letter topic of an event topic.
pub struct DeadLetters {
    producer: writer::Producer,
    source_topic: String,
    topic: String,
}

impl DeadLetters {
    /// Must be called within the Tokio runtime that serves the producer's acknowledgements.
    pub fn new(kafka: &KafkaArgs) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = writer::Producer::new(
            ClientConfig::new()
                .set("bootstrap.servers", &kafka.brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all"),
        )?;
        Ok(Self {
            producer,
            source_topic: kafka.topic.clone(),
            topic: dead_letter_topic(&kafka.topic),
        })
    }

    /// Sends `record` with why it was set aside and where it was; returns once Kafka has it.
    pub async fn send(&self, record: &Record, reason: &str) -> anyhow::Result<()> {
        tracing::error!(
            partition = record.partition,
            offset = record.offset,
            reason,
            "dead-lettering a record"
        );
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: TOPIC,
                value: Some(&self.source_topic),
            })
            .insert(Header {
                key: PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: OFFSET,
                value: Some(&offset),
            });
        let mut out = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key);
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload);
        }
        self.producer
            .send(out, Duration::from_secs(10))
            .await
            .map_err(|e| {
                anyhow::anyhow!("dead-letter topic {} refused a record: {e}", self.topic)
            })?;
        metrics::counter!("chat_events_dead_lettered_total").increment(1);
        Ok(())
    }
}
