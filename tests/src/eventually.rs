//! Waiting for what happens asynchronously (a projection catching up, a registration expiring,
//! a readiness answer changing): one polling loop for every test, and a failure that names what
//! was awaited and, when the check says so, what it saw last.

use std::time::Duration;

/// How often [`eventually`] asks again.
pub const POLL: Duration = Duration::from_millis(50);

/// What a check answers: done (with a value), or not yet (with what it saw, for the failure).
pub trait Outcome {
    type Value;
    /// `Ok` when done; `Err(what was seen)` when not yet.
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn settled(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err(what the check saw)`: not yet, and the failure message shows it.
impl<T> Outcome for Result<T, String> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Asks `check` every [`POLL`] until it is done and returns its value; panics after `patience`
/// naming `what` (and what the check saw last). A check that hangs counts against the patience.
pub async fn eventually<R: Outcome>(
    what: &str,
    patience: Duration,
    check: impl AsyncFnMut() -> R,
) -> R::Value {
    eventually_every(POLL, what, patience, check).await
}

/// [`eventually`], asking every `poll` (short, to catch something in the middle of happening).
pub async fn eventually_every<R: Outcome>(
    poll: Duration,
    what: &str,
    patience: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(outcome) => match outcome.settled() {
                Ok(value) => return value,
                Err(seen) => last = seen.or(last),
            },
            Err(_) => last = Some("the check itself did not finish".to_owned()),
        }
        if tokio::time::Instant::now() >= deadline {
            match last {
                Some(seen) => panic!("not within {patience:?}: {what} (last seen: {seen})"),
                None => panic!("not within {patience:?}: {what}"),
            }
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_check_is_done() {
        let mut calls = 0;
        let value = eventually("the third call", Duration::from_secs(5), async || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "not within 100ms: a count of 2 (last seen: 1)")]
    async fn names_what_was_awaited_and_what_was_seen() {
        eventually("a count of 2", Duration::from_millis(100), async || {
            Err::<(), _>("1".to_owned())
        })
        .await;
    }
}
