//! The appender's linger: when it holds records ([`Spacing`]), and a one-shot timer with
//! microsecond precision to time it ([`PreciseTimer`]).
//!
//! Tokio's timers tick in whole milliseconds and round a deadline up to the next tick, so a
//! linger of 1 ms would hold a record 1–2 ms. A timerfd fires when asked, and wakes the task
//! through the runtime's own epoll like any socket.

use std::time::Duration;

use timerfd::{ClockId, SetTimeFlags, TimerFd, TimerState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// How closely appends follow each other, smoothed over the last eight or so.
#[derive(Debug, Default)]
pub(crate) struct Spacing {
    /// `None` until two appends have been seen.
    average: Option<Duration>,
    last: Option<Instant>,
}

impl Spacing {
    /// Counts an append made at `at`. A quiet spell counts as four lingers, so that the next
    /// burst is seen within a few appends.
    pub(crate) fn arrived(&mut self, at: Instant, linger: Duration) {
        if let Some(last) = self.last.replace(at) {
            let gap = at.saturating_duration_since(last).min(linger * 4);
            self.average = Some(self.average.map_or(gap, |average| (average * 7 + gap) / 8));
        }
    }

    /// Whether a record should linger: only while appends come at least one per two lingers,
    /// so that one can expect company within its linger. Sparser appends would pay the linger
    /// on every send and save no request.
    pub(crate) fn lingers(&self, linger: Duration) -> bool {
        !linger.is_zero() && self.average.is_some_and(|average| average <= linger * 2)
    }
}

pub(crate) struct PreciseTimer {
    fd: AsyncFd<TimerFd>,
    armed: Option<Instant>,
}

impl PreciseTimer {
    /// A disarmed timer on the current runtime's reactor.
    pub(crate) fn new() -> std::io::Result<Self> {
        let timer = TimerFd::new_custom(ClockId::Monotonic, true, true)?;
        // SAFETY: the TimerFd owns its descriptor, keeps it open until dropped and always
        // returns that same one; the AsyncFd owns the TimerFd.
        let fd = unsafe { AsyncFd::register_with_interest(timer, Interest::READABLE) }?;
        Ok(Self { fd, armed: None })
    }

    /// Fires at `at` (at once if it has passed); `None` disarms. Arming at the same instant
    /// again costs nothing.
    pub(crate) fn arm(&mut self, at: Option<Instant>) {
        if self.armed == at {
            return;
        }
        self.armed = at;
        let state = match at {
            // A zero duration would disarm the timerfd: fire after a nanosecond instead.
            Some(at) => TimerState::Oneshot(
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1)),
            ),
            None => TimerState::Disarmed,
        };
        self.fd.get_mut().set_state(state, SetTimeFlags::Default);
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Resolves once the armed instant has come; never while disarmed.
    pub(crate) async fn fired(&mut self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            // Non-blocking: 0 when it has not fired (a stale readiness, or re-armed since).
            let fired = ready.get_inner().read() > 0;
            ready.clear_ready();
            if fired {
                self.armed = None;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(1);

    fn spacing_of(gaps_us: &[u64]) -> Spacing {
        let mut spacing = Spacing::default();
        let mut at = Instant::now();
        spacing.arrived(at, LINGER);
        for &gap in gaps_us {
            at += Duration::from_micros(gap);
            spacing.arrived(at, LINGER);
        }
        spacing
    }

    #[test]
    fn lingers_only_while_appends_come_close_together() {
        assert!(!spacing_of(&[]).lingers(LINGER), "one append says nothing");
        assert!(spacing_of(&[1_000; 20]).lingers(LINGER), "1,000 a second");
        assert!(
            spacing_of(&[1_900; 20]).lingers(LINGER),
            "just over 500 a second"
        );
        assert!(
            !spacing_of(&[2_100; 20]).lingers(LINGER),
            "under 500 a second"
        );
        assert!(!spacing_of(&[4_000; 20]).lingers(LINGER), "250 a second");
        assert!(
            !spacing_of(&[1_000; 20]).lingers(Duration::ZERO),
            "no linger set"
        );
    }

    #[test]
    fn a_burst_after_a_quiet_spell_lingers_within_a_few_appends() {
        let mut gaps = vec![60_000_000]; // a minute of nothing
        gaps.extend([100; 8]);
        assert!(spacing_of(&gaps).lingers(LINGER));
        // And a burst that ends: the spacing grows past two lingers within a few appends.
        let mut gaps = vec![100; 50];
        gaps.extend([10_000; 8]);
        assert!(!spacing_of(&gaps).lingers(LINGER));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fires_once_armed_and_never_while_disarmed() {
        let mut timer = PreciseTimer::new().expect("a timerfd");
        let patience = Duration::from_secs(5);

        timer.arm(Some(Instant::now() + Duration::from_micros(300)));
        tokio::time::timeout(patience, timer.fired())
            .await
            .expect("an armed timer fires");

        // An instant already past fires too (a zero duration would disarm a timerfd).
        timer.arm(Some(Instant::now()));
        tokio::time::timeout(patience, timer.fired())
            .await
            .expect("a past instant fires at once");

        // Armed far away, then brought closer: the closer instant counts.
        timer.arm(Some(Instant::now() + Duration::from_secs(3600)));
        timer.arm(Some(Instant::now() + Duration::from_micros(100)));
        tokio::time::timeout(patience, timer.fired())
            .await
            .expect("the re-armed instant fires");

        timer.arm(Some(Instant::now() + Duration::from_millis(1)));
        timer.arm(None);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), timer.fired())
                .await
                .is_err(),
            "a disarmed timer does not fire"
        );
    }
}
