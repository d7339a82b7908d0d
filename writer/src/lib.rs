//! The writer: validated commands become events appended to the log.
//!
//! Nobody else appends to `chat.events`. The producer ([`Appender`]) is idempotent with
//! `acks=all`, and [`Writer::append`] returns only once Kafka acknowledged the record, with its
//! position: a command is acknowledged to a client only after its event is durable in the log.
//!
//! While no broker answers the producer, appends fail at once instead of each waiting out the
//! delivery timeout: one append at a time first asks the broker for metadata (briefly), and
//! the others are refused with [`AppendError::Unreachable`]. Nothing refused was queued, so a
//! refusal never turns into a late, unacknowledged record.

pub mod admin;
pub mod appender;
mod linger;
pub mod producer;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use events::Envelope;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

pub use appender::{Appender, ProduceError};
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
    /// Microseconds the first record of a produce request waits for others, when its broker
    /// has no request under way and appends come at least one per two lingers (sparser ones
    /// would find no company). Fewer, fuller requests: at 1,000 appends/s, 1,000 µs takes the
    /// broker from 0.9 to 0.57 requests per append and the stack's CPU down by an eighth, for
    /// ~1.2 ms more send→deliver latency (docs/performance.md); 0 sends at once. At most 1 s.
    #[arg(
        long = "append-linger-us",
        env = "CHAT_APPEND_LINGER_US",
        default_value_t = DEFAULT_APPEND_LINGER_US,
        value_parser = clap::value_parser!(u64).range(0..=1_000_000)
    )]
    pub append_linger_us: u64,
}

/// See [`KafkaArgs::append_linger_us`].
pub const DEFAULT_APPEND_LINGER_US: u64 = 1_000;

impl KafkaArgs {
    /// The log at `brokers`, `topic`, with the default linger.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            append_linger_us: DEFAULT_APPEND_LINGER_US,
        }
    }

    /// The same log with appends sent at once (no linger).
    pub fn without_linger(self) -> Self {
        Self {
            append_linger_us: 0,
            ..self
        }
    }
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
        source: ProduceError,
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

/// How long Kafka has to acknowledge a record once it is queued, retries included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than the delivery timeout a record may wait when the timeout passes while a
/// request carrying it is under way (the request's own patience).
const IN_FLIGHT_PATIENCE: Duration = Duration::from_secs(7);

/// Longest the probe of a log marked down may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The slowest possible append: the probe, the delivery timeout, and the patience of a request
/// under way when it passes. [`Writer::append`] never takes longer (it gives up then, whatever
/// Kafka does later), so whoever waits for an append in flight (a retried send, say) knows
/// when it has ended.
pub const LONGEST_APPEND: Duration = Duration::from_millis(
    PROBE_TIMEOUT.as_millis() as u64
        + DELIVERY_TIMEOUT.as_millis() as u64
        + IN_FLIGHT_PATIENCE.as_millis() as u64,
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
    appender: Appender,
    /// An append is asking Kafka whether it is back (one at a time).
    probing: Arc<AtomicBool>,
    topic: String,
    brokers: String,
    /// How long a record may wait for Kafka before the append fails (and the client hears so).
    delivery_timeout: Duration,
}

impl Writer {
    /// A writer for `args.topic`. Connecting starts at once but is not awaited: an unreachable
    /// broker surfaces as append errors and as not-ready, never as a crash. Must be created
    /// within the Tokio runtime that serves its producer (it must outlive the writer).
    pub fn new(args: &KafkaArgs) -> Result<Self, ProduceError> {
        let delivery_timeout = DELIVERY_TIMEOUT;
        Ok(Self {
            appender: Appender::new(
                &args.brokers,
                &args.topic,
                delivery_timeout,
                Duration::from_micros(args.append_linger_us),
            )?,
            probing: Arc::default(),
            topic: args.topic.clone(),
            brokers: args.brokers.clone(),
            delivery_timeout,
        })
    }

    /// Produce requests this writer's producer has sent.
    pub fn requests_sent(&self) -> u64 {
        self.appender.requests_sent()
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
        if self.appender.brokers_down() && !self.probe().await {
            metrics::counter!("chat_append_failures_total", "type" => type_name).increment(1);
            return Err(AppendError::Unreachable { type_name });
        }
        let started = Instant::now();
        // The producer times the record out first; this bound holds whatever it does.
        let outcome = tokio::time::timeout(
            LONGEST_APPEND - PROBE_TIMEOUT,
            self.appender.send(key.into(), value.into()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ProduceError::TimedOut {
                timeout: LONGEST_APPEND - PROBE_TIMEOUT,
                trouble: "the append's own bound passed".into(),
            })
        });
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

    /// Asks for the topic's leaders; an answer also clears the "brokers down" mark.
    async fn answers_metadata(&self, timeout: Duration) -> bool {
        let topic = TopicName(StrBytes::from_string(self.topic.clone()));
        let mut cluster = wire::Cluster::new(&self.brokers);
        let answered = tokio::time::timeout(timeout, cluster.leaders(&topic, appender::CLIENT_ID))
            .await
            .is_ok_and(|leaders| leaders.is_ok());
        if answered {
            self.appender.mark_reachable();
        }
        answered
    }
}

#[cfg(test)]
mod tests {
    use events::{Event, MessagesRead};
    use uuid::Uuid;

    use super::*;

    /// A writer whose broker is marked down: its "broker" accepts connections and never
    /// answers, so the producer's first attempt to learn the leaders times out, and every probe
    /// waits out its whole timeout (as it does when a broker's host is gone from the network).
    async fn writer_with_brokers_down() -> (Writer, tokio::net::TcpListener) {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let writer = Writer::new(&KafkaArgs::new(
            silent.local_addr().unwrap().to_string(),
            "probe-test",
        ))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !writer.appender.brokers_down() {
            assert!(
                Instant::now() < deadline,
                "the brokers are never marked down"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (writer, silent)
    }

    #[test]
    fn a_linger_past_a_second_is_refused_at_start_up() {
        #[derive(clap::Parser)]
        struct Service {
            #[command(flatten)]
            kafka: KafkaArgs,
        }
        let linger = |value: &str| {
            <Service as clap::Parser>::try_parse_from(["service", "--append-linger-us", value])
                .map(|service| service.kafka.append_linger_us)
        };
        assert_eq!(linger("0").unwrap(), 0);
        assert_eq!(linger("1000000").unwrap(), 1_000_000);
        for refused in ["1000001", "-1", "18446744073709551615", "1ms"] {
            assert!(linger(refused).is_err(), "{refused} accepted");
        }
    }

    fn read() -> Envelope {
        Envelope::new(Event::MessagesRead(MessagesRead {
            conversation_id: Uuid::new_v4(),
            user_id: "u1".into(),
        }))
    }

    #[tokio::test]
    async fn an_append_cancelled_while_it_probes_leaves_the_next_to_probe_again() {
        let (writer, _silent) = writer_with_brokers_down().await;
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
