//! Deliveries come from the log, never from the sending connection: each edge consumes the
//! whole topic from where it stood at start-up, finds the recipients of each event and pushes
//! the frame to the connections it holds.
//!
//! - A message appended twice (a retried send) is delivered once per connection: the edge
//!   remembers the first delivery of the last [`FIRST_DELIVERIES_REMEMBERED`] message ids, and a
//!   later event of one of them goes only to connections that joined since (a sender who
//!   reconnected to retry gets its echo), with the first event's `sentAt`. A starting edge
//!   learns them from the log's last records before its start, which it reads without
//!   delivering them ([`LogTail::run`]): a retry that reaches it after Redis lost the send's
//!   record still echoes the first `sentAt`, the one the projection keeps.
//! - Events are delivered one at a time in log order. A failed participant look-up is retried
//!   with backoff, holding the event (and those behind it) for up to [`LOOKUP_PATIENCE`]; if the
//!   database stays away, every connection held here is closed (1011), so that clients
//!   reconnect and read history instead of believing they missed nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use events::{Envelope, Event};
use foldhash::fast::RandomState;
use store::Store;
use tokio::sync::watch;
use uuid::Uuid;

use crate::frames::ServerFrame;
use crate::log_reader::{LogReader, Record};
use crate::outbox::{Ending, Outbox};
use crate::send_clock::SendClock;

/// A live delivery: its frame (with its cursor) and where its event stands in the log.
#[derive(Clone)]
pub struct Live {
    pub partition: usize,
    pub offset: i64,
    /// The positions after this event (the frame's cursor).
    pub next: Arc<[i64]>,
    pub frame: Utf8Bytes,
}

/// What stands between the log and a connection's outbox.
///
/// A new connection holds its live deliveries until it catches up or the catch-up grace ends,
/// so that replayed frames come before live ones. After a catch-up whose cursor is ahead of
/// this edge on some partition (it came from an edge that had read further), `floor` drops
/// the live frames the client already had and raises the cursors of the others to it, so a
/// cursor never goes back.
#[derive(Default)]
pub struct Gate {
    /// `Some` while live deliveries are held back.
    pub held: Option<Vec<Live>>,
    /// The cursor the client caught up from, while this edge is behind it somewhere.
    pub floor: Option<Arc<[i64]>>,
    /// Tag of this log's cursors, for restamping.
    pub tag: [u8; 6],
    /// Most live frames held back; past it the client is as good as too slow.
    pub hold_limit: usize,
}

impl Gate {
    pub fn holding(tag: [u8; 6], hold_limit: usize) -> Self {
        Self {
            held: Some(Vec::new()),
            floor: None,
            tag,
            hold_limit,
        }
    }

    /// The frame of `live` as this connection must see it, or `None` if the client had it.
    pub fn admit(&mut self, live: &Live) -> Option<Utf8Bytes> {
        let Some(floor) = &self.floor else {
            return Some(live.frame.clone());
        };
        if floor.get(live.partition).is_some_and(|&f| live.offset < f) {
            return None;
        }
        if live.next.iter().zip(floor.iter()).all(|(n, f)| n >= f) {
            // This edge has caught up with the client's cursor: nothing to correct any more.
            self.floor = None;
            return Some(live.frame.clone());
        }
        let raised: Vec<i64> = live
            .next
            .iter()
            .zip(floor.iter())
            .map(|(n, f)| *n.max(f))
            .collect();
        Some(restamp(&live.frame, &crate::cursor::encode(self.tag, &raised)).into())
    }
}

/// `frame` (whose last field is its cursor) with another cursor.
fn restamp(frame: &str, cursor: &str) -> String {
    const FIELD: &str = ",\"cursor\":\"";
    // A `"` inside a JSON string is escaped, so only the real field matches unescaped.
    let at = frame
        .rfind(FIELD)
        .expect("live frames end with their cursor");
    format!("{}{FIELD}{cursor}\"}}", &frame[..at])
}

/// Each user's connections held here, each with the join count when it joined.
type ByUser = HashMap<String, Vec<(u64, Outbox)>, RandomState>;

/// The connections this edge holds, by user.
#[derive(Default)]
pub struct HeldConnections {
    /// Each outbox with the [`HeldConnections::joins`] count when it joined.
    /// (foldhash: SipHash was the dearest part of a delivery's look-up; user ids are verified,
    /// and the seed is the process's own.)
    by_user: RwLock<ByUser>,
    /// Connections that ever joined; read under the lock by a delivery, so that a later one
    /// can tell which connections joined after it.
    joins: AtomicU64,
    /// For each partition, the offset of the next event to deliver. Changed only under the
    /// read lock of `by_user`, with the deliveries of the event before it: whoever holds the
    /// write lock sees positions that say exactly what every held connection has been handed.
    positions: OnceLock<Box<[AtomicI64]>>,
}

impl HeldConnections {
    /// Adds a connection; returns the log positions from which it receives every delivery
    /// (`None` before the log is positioned).
    pub fn insert(&self, user: &str, outbox: Outbox) -> Option<Vec<i64>> {
        let mut by_user = self.by_user.write().expect("lock is never poisoned");
        let joined = self.joins.fetch_add(1, Ordering::Relaxed) + 1;
        by_user
            .entry(user.to_owned())
            .or_default()
            .push((joined, outbox));
        self.positions_now()
    }

    /// Sets where the log is read from, once.
    pub fn start_at(&self, next: &[i64]) {
        let _ = self
            .positions
            .set(next.iter().map(|&n| AtomicI64::new(n)).collect());
    }

    /// The partitions of the log (0 before it is positioned).
    pub fn partitions(&self) -> usize {
        self.positions.get().map_or(0, |p| p.len())
    }

    fn positions_now(&self) -> Option<Vec<i64>> {
        let positions = self.positions.get()?;
        Some(
            positions
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Records that the event at `offset` of `partition` was handed to every connection owed it.
    fn advance(&self, partition: usize, offset: i64) {
        if let Some(p) = self.positions.get().and_then(|p| p.get(partition)) {
            p.store(offset + 1, Ordering::Relaxed);
        }
    }

    /// An event that goes to no one here still moves the positions.
    pub fn pass(&self, partition: usize, offset: i64) {
        let _by_user = self.by_user.read().expect("lock is never poisoned");
        self.advance(partition, offset);
    }

    /// Releases a connection's held deliveries, with no catch-up. Returns whether it fitted
    /// the outbox (if not, the connection is told it was too slow).
    pub fn release(&self, outbox: &Outbox) -> bool {
        self.open(outbox, None, |_| None)
    }

    /// Opens the gate of `outbox`: queues what it still holds, then `last(cursor)` if any, where
    /// `cursor` says exactly what the connection has been handed; from then on live deliveries
    /// go straight through, `floor` applied. Under the write lock: no delivery is half-done.
    pub fn open(
        &self,
        outbox: &Outbox,
        floor: Option<Arc<[i64]>>,
        last: impl FnOnce(&[i64]) -> Option<String>,
    ) -> bool {
        let _by_user = self.by_user.write().expect("lock is never poisoned");
        outbox.with_gate(|gate, queue| {
            gate.floor = floor;
            let held = gate.held.take().unwrap_or_default();
            let mut fitted = true;
            for live in &held {
                if let Some(frame) = gate.admit(live) {
                    fitted &= queue.push(frame);
                }
            }
            let mut now = self.positions_now().unwrap_or_default();
            if let Some(floor) = &gate.floor {
                for (n, f) in now.iter_mut().zip(floor.iter()) {
                    *n = (*n).max(*f);
                }
            }
            if let Some(frame) = last(&now) {
                fitted &= queue.push(frame.into());
            }
            fitted
        })
    }

    /// Takes the frames held so far (what the client lacks of them, per `floor`), leaving the
    /// gate closed.
    pub fn take_held(&self, outbox: &Outbox, floor: Option<Arc<[i64]>>) -> Vec<Utf8Bytes> {
        outbox.with_gate(|gate, _| {
            gate.floor = floor;
            let held = gate.held.as_mut().map(std::mem::take).unwrap_or_default();
            held.iter().filter_map(|live| gate.admit(live)).collect()
        })
    }

    pub fn remove(&self, user: &str, connection: Uuid) {
        let mut by_user = self.by_user.write().expect("lock is never poisoned");
        if let Some(outboxes) = by_user.get_mut(user) {
            outboxes.retain(|(_, o)| o.connection() != connection);
            if outboxes.is_empty() {
                by_user.remove(user);
            }
        }
    }

    /// Pushes a frame to every connection of `user` held here; returns how many took it.
    pub fn deliver(&self, user: &str, live: &Live) -> usize {
        self.deliver_to_all([user], live, 0).0
    }

    /// Pushes a frame to every connection of these users that joined after `since` (a value
    /// this returned before, or 0 for all); returns how many took it and the value meaning
    /// "every connection held now".
    pub fn deliver_to_all<'a>(
        &self,
        users: impl IntoIterator<Item = &'a str>,
        live: &Live,
        since: u64,
    ) -> (usize, u64) {
        let by_user = self.by_user.read().expect("lock is never poisoned");
        let mut delivered = 0;
        for user in users {
            for (joined, outbox) in by_user.get(user).into_iter().flatten() {
                if *joined > since && outbox.deliver_live(live) {
                    delivered += 1;
                }
            }
        }
        self.advance(live.partition, live.offset);
        // Joins need the write lock: none happened while this one was held.
        (delivered, self.joins.load(Ordering::Relaxed))
    }

    /// Closes every connection held here (their deliveries cannot be known); returns how many.
    pub fn close_all_lost(&self) -> usize {
        let by_user = self.by_user.read().expect("lock is never poisoned");
        let mut closed = 0;
        for (_, outbox) in by_user.values().flatten() {
            outbox.close(Ending::DeliveryLost);
            closed += 1;
        }
        closed
    }

    /// Every (user, connection) held, for refreshing their registrations.
    pub fn snapshot(&self) -> Vec<(String, Uuid)> {
        let by_user = self.by_user.read().expect("lock is never poisoned");
        by_user
            .iter()
            .flat_map(|(user, outboxes)| {
                outboxes.iter().map(|(_, o)| (user.clone(), o.connection()))
            })
            .collect()
    }
}

/// Message ids whose first delivery this edge remembers. Each costs about 80 bytes (id, the
/// join count, `sentAt`, map and queue slots): 262,144 of them ≈ 21 MB, i.e. every message of
/// the last 4 minutes at 1,000 messages/s; a starting edge fills it from the [`READ_BACK`]
/// records before its start. A retry that appends a message again later than that (its Redis
/// record is kept for the dedupe window, so only after Redis lost it) may reach a connection a
/// second time, with the same `messageId`.
pub const FIRST_DELIVERIES_REMEMBERED: usize = 1 << 18;

/// How many records before its start a starting edge reads back (shared among the partitions):
/// every message of the last minute at 1,000 messages/s, and at most ~430 MB even if every one
/// is as large as a message can be (~6.5 KB), about 3 s at the 130 MB/s measured here. Fewer
/// than it can remember, so that a flood of large messages cannot hold a starting edge for long.
pub const READ_BACK: usize = 1 << 16;

/// The first delivery of each recent message id, oldest first out.
pub struct FirstDeliveries {
    by_id: HashMap<Uuid, (u64, events::Timestamp), RandomState>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl FirstDeliveries {
    /// Sized for `capacity` at once: a starting edge fills it from the log within a second, and
    /// tables outgrown on the way would be freed memory the allocator keeps.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            by_id: HashMap::with_capacity_and_hasher(capacity, RandomState::default()),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// The join count and `sentAt` of the first delivery of `message`, if remembered.
    pub fn get(&self, message: Uuid) -> Option<(u64, events::Timestamp)> {
        self.by_id.get(&message).copied()
    }

    /// Every connection that joined up to `joins` has had `message`; `sent_at` is kept from
    /// its first delivery.
    pub fn remember(&mut self, message: Uuid, joins: u64, sent_at: events::Timestamp) {
        if let Some(known) = self.by_id.get_mut(&message) {
            known.0 = joins;
            return;
        }
        self.by_id.insert(message, (joins, sent_at));
        self.order.push_back(message);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_id.remove(&oldest);
        }
    }
}

/// This edge's reader of the log.
pub struct LogTail {
    reader: LogReader,
    /// Set once every partition has a fixed start position (from then on nothing is missed)
    /// and the records before it were read back (or [`LEARNING_PATIENCE`] ran out).
    positioned: Arc<AtomicBool>,
    topic: String,
}

impl LogTail {
    /// A reader that belongs to no group: this edge reads every partition itself, so every
    /// edge sees every event.
    pub fn new(kafka: &writer::KafkaArgs) -> Self {
        Self {
            reader: LogReader::new(&kafka.brokers, &kafka.topic),
            positioned: Arc::default(),
            topic: kafka.topic.clone(),
        }
    }

    pub fn positioned(&self) -> Arc<AtomicBool> {
        self.positioned.clone()
    }

    /// Positions every partition: what was before its current end is read back (up to a share
    /// of [`READ_BACK`]) and learnt from, not delivered; deliveries start at
    /// the end. Retried until Kafka answers. Returns each partition's end, and whether it has
    /// records before it to read back.
    async fn position(
        &mut self,
        held: &HeldConnections,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<(Vec<i64>, Vec<bool>)> {
        loop {
            let attempt = tokio::select! {
                bounds = self.reader.bounds() => bounds,
                _ = crate::stopping(shutdown) => return None,
            };
            match attempt {
                Ok(bounds) => {
                    // Each partition's share of what is remembered, read back from before the
                    // end. An explicit end, not "the end": it is fixed now, before we say ready.
                    // (The log is kept forever, so the first offset does not move meanwhile.)
                    let learnt = (READ_BACK / bounds.len()) as i64;
                    let starts = bounds.iter().map(|&(low, high)| (high - learnt).max(low));
                    let learning = starts
                        .clone()
                        .zip(&bounds)
                        .map(|(start, &(_, high))| start < high)
                        .collect();
                    self.reader.start_at(starts.collect());
                    let next: Vec<i64> = bounds.iter().map(|&(_, high)| high).collect();
                    tracing::info!(topic = %self.topic, partitions = next.len(), "reading the log from its end");
                    held.start_at(&next);
                    return Some((next, learning));
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "cannot position on the log yet; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = crate::stopping(shutdown) => return None,
            }
        }
    }

    /// Consumes until shutdown, delivering each event to the connections held here.
    pub async fn run(
        mut self,
        store: Store,
        held: Arc<HeldConnections>,
        clock: Arc<SendClock>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some((mut next, mut learning)) = self.position(&held, &mut shutdown).await else {
            return;
        };
        // Records before these were in the log before this edge: learnt from, not delivered.
        let start_ends = next.clone();
        self.ready_once_read_back(&learning);
        let learning_patience = tokio::time::sleep(LEARNING_PATIENCE);
        tokio::pin!(learning_patience);
        let tag = crate::cursor::topic_tag(&self.topic);
        let mut first = FirstDeliveries::new(FIRST_DELIVERIES_REMEMBERED);
        let mut records: Vec<Record> = Vec::new();
        loop {
            tokio::select! {
                () = self.reader.read(&mut records) => {}
                _ = crate::stopping(&mut shutdown) => return,
                () = &mut learning_patience, if !self.positioned.load(Ordering::Relaxed) => {
                    tracing::warn!(?learning, "the log before this edge's start was not read back in time; ready anyway");
                    self.positioned.store(true, Ordering::Release);
                    continue;
                }
            }
            for record in records.drain(..) {
                let (partition, offset) = (record.partition, record.offset);
                let Some(position) = next.get_mut(partition) else {
                    continue;
                };
                // Read back once its last record before the start (or a later one) came.
                if learning[partition] && offset + 1 >= start_ends[partition] {
                    learning[partition] = false;
                    self.ready_once_read_back(&learning);
                }
                if offset < start_ends[partition] {
                    learn(&record, &mut first);
                    continue;
                }
                *position = offset + 1;
                let at = At {
                    partition,
                    offset,
                    next: &next,
                    tag,
                };
                match record.payload.as_deref().map(Envelope::decode) {
                    Some(Ok(envelope)) => {
                        let delivering = deliver(&envelope, at, &store, &held, &mut first, &clock);
                        tokio::select! {
                            () = delivering => {}
                            _ = crate::stopping(&mut shutdown) => return,
                        }
                    }
                    Some(Err(e)) => {
                        held.pass(partition, offset);
                        tracing::warn!(error = %e, partition, offset, "skipping a record that is not an event");
                    }
                    None => held.pass(partition, offset),
                }
            }
            // Read back also when the reader went past the start on something it does not
            // hand out (a transaction marker, a batch passed over).
            let mut moved_past = false;
            for (partition, learning) in learning.iter_mut().enumerate() {
                if *learning
                    && self
                        .reader
                        .position(partition)
                        .is_some_and(|at| at >= start_ends[partition])
                {
                    *learning = false;
                    moved_past = true;
                }
            }
            if moved_past {
                self.ready_once_read_back(&learning);
            }
        }
    }
}

/// Longest a starting edge reads back the log before its start before it says it is ready
/// anyway (a partition whose last record before the end never comes, say).
const LEARNING_PATIENCE: Duration = Duration::from_secs(30);

impl LogTail {
    /// Once no partition is still being read back, the edge is ready.
    fn ready_once_read_back(&self, learning: &[bool]) {
        if learning.iter().all(|l| !l) && !self.positioned.swap(true, Ordering::AcqRel) {
            tracing::info!("read back the log before this edge's start");
        }
    }
}

/// A record from before the edge's start: the first `sentAt` of a message, to repeat it with.
/// No connection of this edge has had it (no joins yet).
fn learn(record: &Record, first: &mut FirstDeliveries) {
    if let Some(Ok(Envelope {
        event: Event::MessageSent(m),
        ..
    })) = record.payload.as_deref().map(Envelope::decode)
    {
        first.remember(m.message_id, 0, m.sent_at);
    }
}

/// Where an event stands in the log.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub partition: usize,
    pub offset: i64,
    /// The positions after it.
    pub next: &'a [i64],
    /// The log's cursor tag.
    pub tag: [u8; 6],
}

impl At<'_> {
    /// A live delivery of `frame` (given the cursor text) at this place in the log.
    fn live(&self, frame: impl FnOnce(&str) -> String) -> Live {
        Live {
            partition: self.partition,
            offset: self.offset,
            next: self.next.into(),
            frame: frame(&crate::cursor::encode(self.tag, self.next)).into(),
        }
    }
}

/// The `new-message` frame of a message.
pub fn new_message_frame(
    m: &events::MessageSent,
    sent_at: events::Timestamp,
    cursor: &str,
) -> String {
    ServerFrame::NewMessage {
        message_id: m.message_id,
        temp_message_id: &m.temp_message_id,
        conversation_id: m.conversation_id,
        sender_id: &m.sender_id,
        content: &m.content,
        sent_at,
        cursor: Some(cursor),
    }
    .to_json()
}

/// The `read-messages` frame of a read.
pub fn read_messages_frame(r: &events::MessagesRead, cursor: &str) -> String {
    ServerFrame::ReadMessages {
        conversation_id: r.conversation_id,
        user_id: &r.user_id,
        cursor: Some(cursor),
    }
    .to_json()
}

async fn deliver(
    envelope: &Envelope,
    at: At<'_>,
    store: &Store,
    held: &HeldConnections,
    first: &mut FirstDeliveries,
    clock: &SendClock,
) {
    let lag = events::Timestamp::now().as_datetime() - envelope.accepted_at.as_datetime();
    metrics::histogram!("chat_ws_delivery_lag_seconds")
        .record(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
    match &envelope.event {
        Event::MessageSent(m) => {
            let Some(participants) = participants(store, m.conversation_id, held).await else {
                held.pass(at.partition, at.offset);
                return;
            };
            // The same message again (a retried send): only to connections that joined since
            // its first delivery, as it was first delivered.
            let seen = first.get(m.message_id);
            let (since, sent_at) = seen.unwrap_or((0, m.sent_at));
            let live = at.live(|cursor| new_message_frame(m, sent_at, cursor));
            let (delivered, joins) =
                held.deliver_to_all(participants.iter().map(String::as_str), &live, since);
            // Every connection held now has had the message.
            first.remember(m.message_id, joins, sent_at);
            clock.fanned_out(m.message_id);
            if seen.is_some() {
                metrics::counter!("chat_ws_repeated_messages_total").increment(1);
            }
            metrics::counter!("chat_ws_deliveries_total", "type" => "new-message")
                .increment(delivered as u64);
        }
        Event::MessagesRead(r) => {
            let live = at.live(|cursor| read_messages_frame(r, cursor));
            let delivered = held.deliver(&r.user_id, &live);
            metrics::counter!("chat_ws_deliveries_total", "type" => "read-messages")
                .increment(delivered as u64);
        }
        Event::ConversationCreated(_) => held.pass(at.partition, at.offset),
    }
}

/// Longest the deliveries wait for the database to answer a participant look-up before the
/// event is given up (and every connection held here closed).
pub const LOOKUP_PATIENCE: Duration = Duration::from_secs(15);

/// The recipients of a conversation's events. A failed look-up is retried with backoff (the
/// event, and the log behind it, wait: per-conversation order is kept); after
/// [`LOOKUP_PATIENCE`] the event's deliveries are impossible, and every connection held here is
/// closed, since any of them may have been a recipient.
async fn participants(
    store: &Store,
    conversation: Uuid,
    held: &HeldConnections,
) -> Option<Arc<[String]>> {
    let deadline = tokio::time::Instant::now() + LOOKUP_PATIENCE;
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match store.participants(conversation).await {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {
                tracing::warn!(%conversation, "an event names a conversation the projection lacks");
                return None;
            }
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, %conversation, attempt, "cannot read participants; retrying");
                metrics::counter!("chat_ws_lookup_retries_total").increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                let closed = held.close_all_lost();
                tracing::error!(error = %e, %conversation, attempt, closed,
                    "cannot read participants; the event's deliveries are lost, closing every connection held so clients read history");
                metrics::counter!("chat_ws_dropped_events_total").increment(1);
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_deliveries_are_bounded_and_keep_the_first_sent_at() {
        let mut first = FirstDeliveries::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t1: events::Timestamp = serde_json::from_str("\"2021-09-26T10:33:11.123Z\"").unwrap();
        let t2: events::Timestamp = serde_json::from_str("\"2021-09-26T10:33:12.123Z\"").unwrap();
        first.remember(a, 1, t1);
        first.remember(a, 5, t2);
        assert_eq!(first.get(a), Some((5, t1)), "joins move on, sentAt stays");
        first.remember(b, 2, t1);
        first.remember(c, 3, t1);
        assert_eq!(first.get(a), None, "the oldest is forgotten");
        assert!(first.get(b).is_some() && first.get(c).is_some());
    }

    #[test]
    fn a_repeat_reaches_only_connections_that_joined_since() {
        let held = HeldConnections::default();
        let outbox = || {
            let outbox = Outbox::new(Uuid::new_v4(), 8, Gate::default());
            (outbox.clone(), Received::from(outbox))
        };
        let (early, mut early_queue) = outbox();
        held.insert("alice", early);
        let frame = live(0, 0, &[1]);
        let (delivered, joins) = held.deliver_to_all(["alice", "bob"], &frame, 0);
        assert_eq!(delivered, 1);
        let (late, mut late_queue) = outbox();
        held.insert("alice", late);
        assert_eq!(held.deliver_to_all(["alice"], &frame, joins).0, 1);
        assert!(early_queue.try_recv().is_ok());
        assert!(
            early_queue.try_recv().is_err(),
            "the early connection had it once"
        );
        assert!(late_queue.try_recv().is_ok());
    }

    /// What an outbox's writer would receive, frame by frame.
    struct Received {
        outbox: Outbox,
        frames: VecDeque<Utf8Bytes>,
    }

    impl From<Outbox> for Received {
        fn from(outbox: Outbox) -> Self {
            Self {
                outbox,
                frames: VecDeque::new(),
            }
        }
    }

    impl Received {
        fn try_recv(&mut self) -> Result<Utf8Bytes, ()> {
            self.frames.extend(self.outbox.take_queued());
            self.frames.pop_front().ok_or(())
        }
    }

    fn live(partition: usize, offset: i64, next: &[i64]) -> Live {
        let tag = crate::cursor::topic_tag("t");
        let cursor = crate::cursor::encode(tag, next);
        Live {
            partition,
            offset,
            next: next.into(),
            frame: format!(
                r#"{{"type":"read-messages","p":{partition},"o":{offset},"cursor":"{cursor}"}}"#
            )
            .into(),
        }
    }

    fn cursor_of(frame: &str) -> Vec<i64> {
        let value: serde_json::Value = serde_json::from_str(frame).unwrap();
        let text = value["cursor"].as_str().unwrap();
        crate::cursor::Cursor::decode(text, crate::cursor::topic_tag("t"), 2)
            .unwrap()
            .next
    }

    #[test]
    fn the_seam_holds_then_replays_then_goes_live_with_cursors_that_never_go_back() {
        let held = HeldConnections::default();
        held.start_at(&[10, 20]);
        let outbox = Outbox::new(
            Uuid::new_v4(),
            16,
            Gate::holding(crate::cursor::topic_tag("t"), 16),
        );
        let mut queue = Received::from(outbox.clone());
        let join = held.insert("alice", outbox.clone()).unwrap();
        assert_eq!(join, vec![10, 20]);
        // Live deliveries while the connection waits for its catch-up are held back.
        held.deliver("alice", &live(0, 10, &[11, 20]));
        held.deliver("alice", &live(1, 20, &[11, 21]));
        held.deliver("alice", &live(1, 21, &[11, 22]));
        assert!(queue.try_recv().is_err(), "nothing before the catch-up");
        // The client's cursor is ahead of this edge on partition 1: it had offset 20 there.
        let floor: Arc<[i64]> = vec![5, 21].into();
        let taken = held.take_held(&outbox, Some(floor.clone()));
        assert_eq!(taken.len(), 2, "the frame the client had is dropped");
        assert_eq!(
            cursor_of(&taken[0]),
            vec![11, 21],
            "raised to the client's cursor"
        );
        assert_eq!(cursor_of(&taken[1]), vec![11, 22]);
        held.deliver("alice", &live(0, 11, &[12, 22]));
        held.open(&outbox, Some(floor), |now| {
            assert_eq!(
                now,
                &[12, 22],
                "exactly what the connection has been handed"
            );
            Some("caught-up".into())
        });
        assert!(queue.try_recv().unwrap().as_str().contains(r#""o":11"#));
        assert_eq!(queue.try_recv().unwrap().as_str(), "caught-up");
        // Live now: straight through, in order.
        held.deliver("alice", &live(1, 22, &[12, 23]));
        assert_eq!(cursor_of(&queue.try_recv().unwrap()), vec![12, 23]);
    }

    /// (partition, offset, cursor) of a frame made by [`live`].
    fn read_frame(frame: &str) -> Option<(usize, i64, Vec<i64>)> {
        let value: serde_json::Value = serde_json::from_str(frame).unwrap();
        let p = value.get("p")?.as_u64()? as usize;
        Some((p, value["o"].as_i64().unwrap(), cursor_of(frame)))
    }

    proptest::proptest! {
        /// Whatever the interleaving of the log, the join, the catch-up and the client's cursor
        /// (behind or ahead of this edge), the connection gets every event at or after its
        /// cursor exactly once, in log order per partition, and no cursor it is given claims an
        /// event it neither had before nor got.
        #[test]
        fn the_seam_is_exact_under_any_interleaving(
            partitions_of in proptest::collection::vec(0usize..2, 1..40),
            join_at in 0usize..40,
            catch_up_len in 0usize..40,
            cursor_share in (0u32..=100, 0u32..=100),
        ) {
            let n = partitions_of.len();
            let (join_at, catch_up_at) = (join_at.min(n), (join_at + catch_up_len).min(n));
            // The log: (partition, offset), in the order this edge reads it.
            let mut counts = [0i64; 2];
            let log: Vec<(usize, i64)> = partitions_of.iter().map(|&p| { counts[p] += 1; (p, counts[p] - 1) }).collect();
            // The client's cursor: anywhere in each partition, even ahead of this edge.
            let from: Vec<i64> = vec![
                counts[0] * i64::from(cursor_share.0) / 100,
                counts[1] * i64::from(cursor_share.1) / 100,
            ];
            let held = HeldConnections::default();
            held.start_at(&[0, 0]);
            let outbox = Outbox::new(Uuid::new_v4(), 1024, Gate::holding(crate::cursor::topic_tag("t"), 1024));
            let mut queue = Received::from(outbox.clone());
            let mut next = vec![0i64, 0];
            let mut deliver = |held: &HeldConnections, (p, o): (usize, i64)| {
                next[p] = o + 1;
                held.deliver("u", &live(p, o, &next));
            };
            for &event in &log[..join_at] { deliver(&held, event); }
            let join = held.insert("u", outbox.clone()).unwrap();
            for &event in &log[join_at..catch_up_at] { deliver(&held, event); }
            // The catch-up: what catch_up::replay makes of the log between the cursor and the join.
            let floor: Option<Arc<[i64]>> = from.iter().zip(&join).any(|(f, j)| f > j).then(|| from.clone().into());
            let mut v = from.clone();
            for &(p, o) in &log {
                if o >= from[p] && o < join[p] {
                    v[p] = o + 1;
                    outbox.push(live(p, o, &v).frame);
                }
            }
            for frame in held.take_held(&outbox, floor.clone()) { outbox.push(frame); }
            // Live events keep coming while the catch-up finishes.
            let half = catch_up_at + (n - catch_up_at) / 2;
            for &event in &log[catch_up_at..half] { deliver(&held, event); }
            held.open(&outbox, floor, |now| Some(format!(r#"{{"cursor":"{}"}}"#, crate::cursor::encode(crate::cursor::topic_tag("t"), now))));
            for &event in &log[half..] { deliver(&held, event); }

            let mut got: Vec<(usize, i64)> = Vec::new();
            let mut last_cursor = from.clone();
            while let Ok(frame) = queue.try_recv() {
                let cursor = cursor_of(&frame);
                proptest::prop_assert!(cursor.iter().zip(&last_cursor).all(|(c, l)| c >= l), "a cursor went back: {:?} after {:?}", cursor, last_cursor);
                if let Some((p, o, _)) = read_frame(&frame) {
                    got.push((p, o));
                }
                // Everything the cursor claims was had before the cursor or received.
                for (p, &claimed) in cursor.iter().enumerate() {
                    for o in from[p]..claimed {
                        proptest::prop_assert!(got.contains(&(p, o)), "cursor {:?} claims ({}, {}) never sent", cursor, p, o);
                    }
                }
                last_cursor = cursor;
            }
            let expected: Vec<(usize, i64)> = log.iter().copied().filter(|&(p, o)| o >= from[p]).collect();
            for p in 0..2 {
                let mine: Vec<i64> = got.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
                let want: Vec<i64> = expected.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
                proptest::prop_assert_eq!(mine, want, "partition {}", p);
            }
            proptest::prop_assert_eq!(last_cursor, vec![counts[0].max(from[0]), counts[1].max(from[1])]);
        }
    }

    #[test]
    fn restamping_touches_only_the_cursor_field() {
        let frame = r#"{"content":"a,\"cursor\":\"x","cursor":"c1.old"}"#;
        assert_eq!(
            restamp(frame, "c1.new"),
            r#"{"content":"a,\"cursor\":\"x","cursor":"c1.new"}"#
        );
    }
}
