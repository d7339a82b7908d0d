//! How long a send spends in this edge, from its frame to its fan-out (every connection held
//! here handed its `new-message`): the stretch of send→deliver that no single call spans. The
//! claim (`chat_ws_send_claim_seconds`) and the append (`chat_append_seconds`) are timed where
//! they are made; this one starts at the send's frame and ends when the log reader delivers the
//! message, as `chat_ws_send_to_fanout_seconds`. What send→deliver adds to it is the sockets':
//! the outbox's write and the client's read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use uuid::Uuid;

/// Most sends timed at once; past it, new sends go untimed until some are delivered.
const MOST_TIMED: usize = 4096;

/// A send whose message has not come back from the log by then is let go (its append failed,
/// or its record was never read here).
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// When each send in flight on this edge began, by message id.
#[derive(Default)]
pub struct SendClock {
    started: Mutex<Started>,
}

#[derive(Default)]
struct Started {
    by_message: HashMap<Uuid, Instant, RandomState>,
    /// When the sends timed were last looked over for stale ones: at most once per
    /// [`FORGET_AFTER`], so that a full clock (a broker outage with thousands of sends in
    /// flight) costs a send nothing but the look-up.
    swept: Option<Instant>,
}

impl SendClock {
    /// The send of `message_id` began `at` (its frame arrived).
    pub fn start(&self, message_id: Uuid, at: Instant) {
        let mut started = self.started.lock().expect("lock is never poisoned");
        let started = &mut *started;
        if started.by_message.len() >= MOST_TIMED
            && started
                .swept
                .is_none_or(|swept| swept.elapsed() >= FORGET_AFTER)
        {
            started.swept = Some(Instant::now());
            started
                .by_message
                .retain(|_, began| began.elapsed() < FORGET_AFTER);
        }
        if started.by_message.len() < MOST_TIMED {
            started.by_message.insert(message_id, at);
        }
    }

    /// The send of `message_id` ended with no append (refused, or not acknowledged).
    pub fn stop(&self, message_id: Uuid) {
        self.take(message_id);
    }

    /// `message_id` came back from the log and was handed to every connection held here.
    pub fn fanned_out(&self, message_id: Uuid) {
        if let Some(began) = self.take(message_id) {
            metrics::histogram!("chat_ws_send_to_fanout_seconds")
                .record(began.elapsed().as_secs_f64());
        }
    }

    fn take(&self, message_id: Uuid) -> Option<Instant> {
        let mut started = self.started.lock().expect("lock is never poisoned");
        if started.by_message.is_empty() {
            return None;
        }
        started.by_message.remove(&message_id)
    }

    #[cfg(test)]
    fn timed(&self) -> usize {
        self.started
            .lock()
            .expect("lock is never poisoned")
            .by_message
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_is_timed_once_and_then_forgotten() {
        let clock = SendClock::default();
        let (delivered, refused) = (Uuid::new_v4(), Uuid::new_v4());
        clock.start(delivered, Instant::now());
        clock.start(refused, Instant::now());
        clock.fanned_out(delivered);
        clock.fanned_out(delivered);
        clock.stop(refused);
        assert_eq!(clock.timed(), 0);
    }

    #[test]
    fn sends_never_delivered_do_not_stop_the_timing_of_others() {
        let clock = SendClock::default();
        let long_ago = Instant::now() - FORGET_AFTER;
        for _ in 0..MOST_TIMED {
            clock.start(Uuid::new_v4(), long_ago);
        }
        let next = Uuid::new_v4();
        clock.start(next, Instant::now());
        assert_eq!(clock.timed(), 1, "the stale sends were let go");
        clock.fanned_out(next);
        assert_eq!(clock.timed(), 0);
    }

    #[test]
    fn a_clock_full_of_sends_in_flight_is_looked_over_once_per_forget_after() {
        let clock = SendClock::default();
        for _ in 0..MOST_TIMED {
            clock.start(Uuid::new_v4(), Instant::now());
        }
        clock.start(Uuid::new_v4(), Instant::now());
        let swept = clock.started.lock().unwrap().swept;
        assert!(swept.is_some(), "the full clock was looked over");
        clock.start(Uuid::new_v4(), Instant::now());
        assert_eq!(
            clock.started.lock().unwrap().swept,
            swept,
            "not again so soon"
        );
        assert_eq!(clock.timed(), MOST_TIMED, "no send in flight let go");
    }
}
