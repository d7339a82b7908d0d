//! Deliveries come from the log, never from the sending connection: each edge consumes the
//! whole topic from where it stood at start-up, finds the recipients of each event and pushes
//! the frame to the connections it holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use events::{Envelope, Event};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use store::Store;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use crate::frames::ServerFrame;

/// The way to one connection's writer.
#[derive(Clone)]
pub struct Outbox {
    pub connection: Uuid,
    /// Bounded (`CHAT_WS_OUTBOUND_QUEUE`): a full queue means the client cannot keep up.
    pub frames: mpsc::Sender<Utf8Bytes>,
    /// Woken when the queue overflowed: the connection is closed as too slow.
    pub overflowed: Arc<Notify>,
}

impl Outbox {
    /// Queues a frame without waiting; on a full queue the connection is told to close.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The connections this edge holds, by user.
#[derive(Default)]
pub struct HeldConnections {
    by_user: RwLock<HashMap<String, Vec<Outbox>>>,
}

impl HeldConnections {
    pub fn insert(&self, user: &str, outbox: Outbox) {
        let mut by_user = self.by_user.write().expect("lock is never poisoned");
        by_user.entry(user.to_owned()).or_default().push(outbox);
    }

    pub fn remove(&self, user: &str, connection: Uuid) {
        let mut by_user = self.by_user.write().expect("lock is never poisoned");
        if let Some(outboxes) = by_user.get_mut(user) {
            outboxes.retain(|o| o.connection != connection);
            if outboxes.is_empty() {
                by_user.remove(user);
            }
        }
    }

    /// Pushes a frame to every connection of `user` held here; returns how many took it.
    pub fn deliver(&self, user: &str, frame: &Utf8Bytes) -> usize {
        let by_user = self.by_user.read().expect("lock is never poisoned");
        by_user.get(user).map_or(0, |outboxes| {
            outboxes.iter().filter(|o| o.push(frame.clone())).count()
        })
    }

    /// Every (user, connection) held, for refreshing their registrations.
    pub fn snapshot(&self) -> Vec<(String, Uuid)> {
        let by_user = self.by_user.read().expect("lock is never poisoned");
        by_user
            .iter()
            .flat_map(|(user, outboxes)| outboxes.iter().map(|o| (user.clone(), o.connection)))
            .collect()
    }
}

/// This edge's reader of the log.
pub struct LogTail {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Set once every partition has a fixed start position: from then on nothing is missed.
    positioned: Arc<AtomicBool>,
}

impl LogTail {
    /// A consumer that belongs to no shared group: this edge reads every partition itself
    /// (manual assignment, no commits), so every edge sees every event.
    pub fn new(kafka: &writer::KafkaArgs, edge_id: &str) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", format!("socket-edge-{edge_id}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            // The broker answers a fetch as soon as a record arrives; this only bounds idle polls.
            .set("fetch.wait.max.ms", "100")
            .create()?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: kafka.topic.clone(),
            positioned: Arc::default(),
        })
    }

    pub fn positioned(&self) -> Arc<AtomicBool> {
        self.positioned.clone()
    }

    /// Starts every partition at its current end; retried until Kafka answers.
    async fn position(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        loop {
            let consumer = self.consumer.clone();
            let topic = self.topic.clone();
            let attempt = tokio::task::spawn_blocking(move || assign_at_end(&consumer, &topic))
                .await
                .unwrap_or_else(|e| Err(format!("positioning task failed: {e}")));
            match attempt {
                Ok(partitions) => {
                    tracing::info!(topic = %self.topic, partitions, "consuming the log from its end");
                    self.positioned.store(true, Ordering::Release);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "cannot position on the log yet; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = crate::stopping(shutdown) => return false,
            }
        }
    }

    /// Consumes until shutdown, delivering each event to the connections held here.
    pub async fn run(
        self,
        store: Store,
        held: Arc<HeldConnections>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if !self.position(&mut shutdown).await {
            return;
        }
        loop {
            let record = tokio::select! {
                record = self.consumer.recv() => record,
                _ = crate::stopping(&mut shutdown) => return,
            };
            match record {
                Ok(record) => {
                    let Some(payload) = record.payload() else {
                        continue;
                    };
                    match Envelope::decode(payload) {
                        Ok(envelope) => deliver(&envelope, &store, &held).await,
                        Err(e) => tracing::warn!(
                            error = %e, partition = record.partition(), offset = record.offset(),
                            "skipping a record that is not an event"
                        ),
                    }
                }
                // A report of what librdkafka is going through (it reconnects by itself),
                // queued with the records: no sleeping here, or records queued behind a pile
                // of outage reports would be delivered late.
                Err(e) => tracing::debug!(error = %e, "the log reported an error"),
            }
        }
    }
}

fn assign_at_end(consumer: &StreamConsumer, topic: &str) -> Result<usize, String> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions (does it exist?)"));
    }
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        // An explicit offset, not `Offset::End`: "the end" is fixed now, before we say ready.
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| e.to_string())?;
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(high))
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    Ok(partitions.len())
}

async fn deliver(envelope: &Envelope, store: &Store, held: &HeldConnections) {
    let lag = events::Timestamp::now().as_datetime() - envelope.accepted_at.as_datetime();
    metrics::histogram!("chat_ws_delivery_lag_seconds")
        .record(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
    match &envelope.event {
        Event::MessageSent(m) => {
            let Some(participants) = participants(store, m.conversation_id).await else {
                return;
            };
            let frame: Utf8Bytes = ServerFrame::NewMessage {
                message_id: m.message_id,
                temp_message_id: &m.temp_message_id,
                conversation_id: m.conversation_id,
                sender_id: &m.sender_id,
                content: &m.content,
                sent_at: m.sent_at,
            }
            .to_json()
            .into();
            let delivered: usize = participants.iter().map(|p| held.deliver(p, &frame)).sum();
            metrics::counter!("chat_ws_deliveries_total", "type" => "new-message")
                .increment(delivered as u64);
        }
        Event::MessagesRead(r) => {
            let frame: Utf8Bytes = ServerFrame::ReadMessages {
                conversation_id: r.conversation_id,
                user_id: &r.user_id,
            }
            .to_json()
            .into();
            let delivered = held.deliver(&r.user_id, &frame);
            metrics::counter!("chat_ws_deliveries_total", "type" => "read-messages")
                .increment(delivered as u64);
        }
        Event::ConversationCreated(_) => {}
    }
}

/// The recipients of a conversation's events; a database hiccup is retried a few times before
/// the deliveries of that one event are given up (clients read history over REST).
async fn participants(store: &Store, conversation: Uuid) -> Option<Arc<[String]>> {
    for attempt in 1..=5 {
        match store.participants(conversation).await {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {
                tracing::warn!(%conversation, "an event names a conversation the projection lacks");
                return None;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, %conversation, attempt, "cannot read participants; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, %conversation, "cannot read participants; deliveries of this event dropped");
                metrics::counter!("chat_ws_dropped_events_total").increment(1);
            }
        }
    }
    None
}
