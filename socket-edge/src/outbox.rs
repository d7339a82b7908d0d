//! One connection's outbox: the frames waiting for its writer, the [`Gate`] in front of them
//! and the reason the connection must close, under one lock, with one [`Notify`] to wake the
//! writer.
//!
//! A delivery is one lock, one push and (when the queue was empty) one wake-up; an idle
//! connection holds no queue memory (the queue allocates with its first frame, and the writer
//! swaps it with a buffer of its own, so a busy connection allocates nothing per frame).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::delivery::{Gate, Live};

/// Why a connection is closed, as its writer closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client closed or vanished: no close frame of ours.
    ClientGone,
    /// SIGTERM: 1001.
    GoingAway,
    /// A frame over the size limit: 1009.
    TooBig,
    /// Too many pings unanswered: 4001.
    Unresponsive,
    /// The outbox overflowed (the client does not read fast enough): 4008.
    TooSlow,
    /// A delivery this connection may have been owed was lost: 1011, so that the client reads
    /// history.
    DeliveryLost,
}

/// What the writer has to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Work {
    /// Write these frames (a ping first, if asked), then flush once.
    Write { ping: bool },
    /// Close the connection.
    End(Ending),
}

/// The way to one connection's writer. Cloning shares it.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

struct Shared {
    connection: Uuid,
    /// Most frames queued (`CHAT_WS_OUTBOUND_QUEUE`): a full queue means the client cannot
    /// keep up.
    capacity: usize,
    state: Mutex<State>,
    /// Wakes the writer: frames were queued, a ping is due, or the connection must close.
    ready: Notify,
    /// Wakes a catch-up waiting for room in the queue.
    room: Notify,
}

struct State {
    gate: Gate,
    frames: VecDeque<Utf8Bytes>,
    ping: bool,
    /// The first reason given to close; later ones do not replace it.
    ending: Option<Ending>,
}

impl Outbox {
    pub fn new(connection: Uuid, capacity: usize, gate: Gate) -> Self {
        Self(Arc::new(Shared {
            connection,
            capacity: capacity.max(1),
            state: Mutex::new(State {
                gate,
                frames: VecDeque::new(),
                ping: false,
                ending: None,
            }),
            ready: Notify::new(),
            room: Notify::new(),
        }))
    }

    pub fn connection(&self) -> Uuid {
        self.0.connection
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().expect("lock is never poisoned")
    }

    /// The gate, for [`crate::delivery::HeldConnections`] (under its own lock order: the
    /// connections' lock first, then this one).
    pub(crate) fn with_gate<T>(&self, f: impl FnOnce(&mut Gate, &mut Queue<'_>) -> T) -> T {
        let mut state = self.state();
        let State {
            gate,
            frames,
            ending,
            ..
        } = &mut *state;
        let mut queue = Queue {
            shared: &self.0,
            frames,
            ending,
        };
        f(gate, &mut queue)
    }

    /// Queues a frame without waiting; on a full queue the connection is told to close (4008).
    /// Returns whether the frame was queued.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        self.with_gate(|_, queue| queue.push(frame))
    }

    /// Hands a live delivery over: held back, dropped as already had, or queued.
    pub fn deliver_live(&self, live: &Live) -> bool {
        self.with_gate(|gate, queue| {
            if let Some(held) = &mut gate.held {
                if held.len() >= gate.hold_limit {
                    queue.end(Ending::TooSlow);
                    return false;
                }
                held.push(live.clone());
                return true;
            }
            match gate.admit(live) {
                Some(frame) => queue.push(frame),
                None => false,
            }
        })
    }

    /// Free slots in the queue now.
    pub fn room(&self) -> usize {
        self.0.capacity.saturating_sub(self.state().frames.len())
    }

    /// Queues a frame, waiting up to `patience` for room; a client that reads nothing for that
    /// long is too slow (4008). Returns whether the frame was queued.
    pub async fn push_waiting(&self, frame: Utf8Bytes, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before looking, so that a drain between the look and the wait wakes it.
            room.as_mut().enable();
            let queued = self.with_gate(|_, queue| {
                if queue.ending.is_some() {
                    return Some(false);
                }
                let has_room = queue.frames.len() < queue.shared.capacity;
                has_room.then(|| queue.push(frame.clone()))
            });
            if let Some(queued) = queued {
                return queued;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.close(Ending::TooSlow);
                return false;
            }
        }
    }

    /// Asks the writer for a ping.
    pub fn ping(&self) {
        self.state().ping = true;
        self.0.ready.notify_one();
    }

    /// Tells the writer to close the connection (the first reason given wins).
    pub fn close(&self, ending: Ending) {
        self.with_gate(|_, queue| queue.end(ending));
    }

    /// The writer's side: waits until there is work, and moves the queued frames into `batch`
    /// (which must be empty; its buffer is given to the queue in exchange, so neither
    /// allocates again).
    pub async fn next(&self, batch: &mut VecDeque<Utf8Bytes>) -> Work {
        loop {
            let ready = self.0.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(ending) = state.ending {
                    return Work::End(ending);
                }
                let ping = std::mem::take(&mut state.ping);
                if ping || !state.frames.is_empty() {
                    std::mem::swap(&mut state.frames, batch);
                    drop(state);
                    self.0.room.notify_waiters();
                    return Work::Write { ping };
                }
            }
            ready.await;
        }
    }

    /// Resolves once the connection must close; for racing a write to a client that may never
    /// read it.
    pub async fn ended(&self) -> Ending {
        loop {
            let ready = self.0.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(ending) = self.state().ending {
                return ending;
            }
            ready.await;
        }
    }
}

/// The queue of an outbox, while its lock is held.
pub(crate) struct Queue<'a> {
    shared: &'a Shared,
    frames: &'a mut VecDeque<Utf8Bytes>,
    ending: &'a mut Option<Ending>,
}

impl Queue<'_> {
    /// See [`Outbox::push`].
    pub(crate) fn push(&mut self, frame: Utf8Bytes) -> bool {
        if self.ending.is_some() {
            return false;
        }
        if self.frames.len() >= self.shared.capacity {
            self.end(Ending::TooSlow);
            return false;
        }
        self.frames.push_back(frame);
        if self.frames.len() == 1 {
            // The writer takes every queued frame at once: only the first one needs a wake-up.
            self.shared.ready.notify_one();
        }
        true
    }

    pub(crate) fn end(&mut self, ending: Ending) {
        if self.ending.is_none() {
            if ending == Ending::TooSlow {
                metrics::counter!("chat_ws_slow_disconnects_total").increment(1);
            }
            *self.ending = Some(ending);
            self.shared.ready.notify_one();
            self.shared.room.notify_waiters();
        }
    }
}

#[cfg(test)]
impl Outbox {
    /// Every frame queued so far (tests read the queue in place of a writer).
    pub(crate) fn take_queued(&self) -> Vec<Utf8Bytes> {
        self.state().frames.drain(..).collect()
    }

    pub(crate) fn ending(&self) -> Option<Ending> {
        self.state().ending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(capacity: usize) -> Outbox {
        Outbox::new(Uuid::new_v4(), capacity, Gate::default())
    }

    #[tokio::test]
    async fn the_writer_takes_everything_queued_at_once() {
        let outbox = outbox(4);
        assert!(outbox.push("a".into()));
        assert!(outbox.push("b".into()));
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Work::Write { ping: false });
        assert_eq!(batch, ["a", "b"].map(Utf8Bytes::from));
        batch.clear();
        outbox.ping();
        assert_eq!(outbox.next(&mut batch).await, Work::Write { ping: true });
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_closes_as_too_slow_and_takes_nothing_more() {
        let outbox = outbox(2);
        assert!(outbox.push("a".into()) && outbox.push("b".into()));
        assert!(!outbox.push("c".into()));
        assert_eq!(outbox.ending(), Some(Ending::TooSlow));
        outbox.close(Ending::GoingAway);
        let mut batch = VecDeque::new();
        assert_eq!(
            outbox.next(&mut batch).await,
            Work::End(Ending::TooSlow),
            "the first reason wins"
        );
        assert_eq!(outbox.ended().await, Ending::TooSlow);
    }

    #[tokio::test]
    async fn a_waiting_push_gets_the_room_a_drain_makes() {
        let outbox = outbox(1);
        assert!(outbox.push("a".into()));
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .push_waiting("b".into(), Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        let mut batch = VecDeque::new();
        assert_eq!(outbox.next(&mut batch).await, Work::Write { ping: false });
        assert!(waiting.await.unwrap());
        assert_eq!(outbox.take_queued(), ["b"].map(Utf8Bytes::from));
    }

    #[tokio::test]
    async fn a_waiting_push_that_gets_no_room_closes_as_too_slow() {
        let outbox = outbox(1);
        assert!(outbox.push("a".into()));
        assert!(
            !outbox
                .push_waiting("b".into(), Duration::from_millis(20))
                .await
        );
        assert_eq!(outbox.ending(), Some(Ending::TooSlow));
    }
}
