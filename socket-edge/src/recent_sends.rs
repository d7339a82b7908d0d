//! Idempotent sends: the same `tempMessageId` from the same user in the same conversation is one
//! message. Its `messageId` is derived from the three ([`events::message_id`]), so a second event
//! of it can never become a second message; what Redis adds is that a retry within
//! `CHAT_WS_DEDUPE_WINDOW_SECS` appends nothing once the first attempt is in the log, and that
//! every attempt carries the first attempt's `sentAt`.
//!
//! Two keys per send, sharing the user's hash tag:
//!
//! - `P sent:{<userId>}:<conversationId>:<tempMessageId>`, kept for the window:
//!   `p:<sentAt>` until an append is acknowledged (the outcome of the attempts so far is
//!   unknown: Kafka may hold the event or not), then `d:<new-message frame>`: a retry gets the
//!   original frame on its own connection and nothing is appended.
//! - `P sending:{<userId>}:<conversationId>:<tempMessageId>`: the lease of the attempt appending
//!   right now. It lapses after [`LEASE`] unless renewed, and the attempt renews it from its
//!   claim until its append ends ([`RecentSends::holding`]), but never past the claim plus
//!   [`writer::LONGEST_APPEND`]. A retry that finds it waits for the outcome; once it is
//!   released (the participant check refused the send, or the append failed) or has lapsed (the
//!   edge died: within [`LEASE`], not the slowest append), the retry takes over and appends the
//!   same message again, same id, same `sentAt`. So no retry waits longer than the slowest possible append, and no claim is ever
//!   stuck. A lease that lapses under a live attempt (an edge starved of CPU for seconds, a
//!   participant check and an append slower than the slowest append) costs a second, identical
//!   event of the message, which the derived id makes harmless. After a success the lease is
//!   left to lapse: the `d:` record answers every claim before the lease is looked at.
//!
//! A retry that is waiting knows the first attempt's `sentAt`, and keeps it: if Redis restarts
//! (empty) or stops answering while it waits, it keeps trying for the rest of its patience and
//! claims afresh with that `sentAt`, not its own, so the message is appended again as it first
//! was. (An outage longer than the patience ends in `unavailable`, and the client's next retry
//! proposes its own `sentAt`.)
//!
//! The claim also spends the sender's `send-message` budget ([`rate_limit::GCRA_LUA`], the same
//! rule as every other limit) in the same script: one round trip before the append; after it,
//! the confirmation shares one write with the others of its [`CONFIRM_LINGER`].
//! A limited send claims nothing. The claim comes before the participant check (the check may
//! read the database, and only a spent budget bounds that), so a send refused by the check
//! releases its lease and leaves its `p:` record to expire: at most the sender's budget of such
//! records per window.
//!
//! The window bounds Redis memory: each message sent keeps about its frame's size (plus the key)
//! for the window, e.g. 1,000 messages/s × 600 s × ~400 B ≈ 240 MB at full load.

use std::time::Duration;

use events::Timestamp;
use redis::{RedisResult, Script};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::presence::Redis;

/// What a send found when it claimed its `tempMessageId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Append the message with this `sentAt` (the first attempt's, when this one is a retry),
    /// then [`RecentSends::confirm`] or [`RecentSends::abandon`].
    Append(Timestamp),
    /// Already appended: here is its `new-message` frame.
    Sent(String),
    /// Another attempt held the lease for longer than any append takes (not expected).
    InFlight,
    /// Over the sender's budget: nothing claimed; the next send fits after this long.
    Limited(Duration),
}

/// The budget a claim spends: its action (a metric label), key ([`rate_limit::Limiter::key`])
/// and rate.
pub struct Budget {
    pub action: &'static str,
    pub key: String,
    pub rate: rate_limit::Rate,
}

/// Who holds a send's lease: a fresh token per attempt.
pub type Lease = Uuid;

#[derive(Clone)]
pub struct RecentSends {
    redis: Redis,
    /// How long a `tempMessageId` is remembered.
    window: Duration,
    claim: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
    abandon: std::sync::Arc<Script>,
    /// To [`write_confirmations`].
    confirmations: mpsc::Sender<Confirmation>,
}

/// How long a lease lasts unless its attempt renews it: how long a retry waits for an edge that
/// died mid-append.
pub const LEASE: Duration = Duration::from_secs(3);

/// How often an attempt in flight renews its lease: three times per lease, so that a lost
/// renewal still leaves it held.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Longest a retry waits for an attempt in flight (which renews its lease for as long as its
/// append runs), with a margin for Redis's clock.
const IN_FLIGHT_PATIENCE: Duration =
    Duration::from_millis(writer::LONGEST_APPEND.as_millis() as u64 + 1_000);

/// How a wait whose patience ran out while Redis did not answer ends.
const NO_ANSWER_IN_PATIENCE: (redis::ErrorKind, &str) = (
    redis::ErrorKind::IoError,
    "Redis did not answer within the patience of a waiting retry",
);

/// After [`rate_limit::GCRA_LUA`]. KEYS: record, lease, and the budget when one is spent.
/// ARGV: proposed sentAt, window ms, lease ms, lease token, then the budget's interval and
/// tolerance. A lease found held by the same token is this attempt's own (an answer lost on the
/// way back, and the call repeated). Returns {"limited", ms} | {"append", sentAt} | {"sent", frame} |
/// {"wait", the first attempt's sentAt}.
const CLAIM: &str = r"
if KEYS[3] then
  local wait = gcra(KEYS[3], ARGV[5], ARGV[6])
  if wait > 0 then return {'limited', tostring(wait)} end
end
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  return {'append', ARGV[1]}
end
if string.sub(v, 1, 2) == 'd:' then return {'sent', string.sub(v, 3)} end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3])
    or redis.call('GET', KEYS[2]) == ARGV[4] then
  return {'append', string.sub(v, 3)}
end
return {'wait', string.sub(v, 3)}
";

/// KEYS: lease. ARGV: lease token, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// KEYS: lease. ARGV: lease token.
const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RecentSends {
    /// Starts the writer of confirmations on the current Tokio runtime.
    pub fn new(redis: Redis, window: Duration) -> Self {
        let (confirmations, queue) = mpsc::channel(CONFIRMS_QUEUED);
        tokio::spawn(write_confirmations(redis.clone(), queue));
        Self {
            confirmations,
            redis,
            window,
            claim: std::sync::Arc::new(Script::new(&format!("{}{CLAIM}", rate_limit::GCRA_LUA))),
            renew: std::sync::Arc::new(Script::new(RENEW)),
            abandon: std::sync::Arc::new(Script::new(ABANDON)),
        }
    }

    /// The key of a send's record (`kind` "sent") or lease ("sending").
    fn key(&self, kind: &str, user: &str, conversation: Uuid, temp_message_id: &str) -> String {
        let prefix = &self.redis.prefix;
        format!("{prefix}{kind}:{{{user}}}:{conversation}:{temp_message_id}")
    }

    /// Claims the send of a `tempMessageId` for the attempt holding `lease`, having spent one
    /// action of `budget` first; `now` is its `sentAt` if it is the first attempt.
    pub async fn claim(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        now: Timestamp,
        lease: Lease,
        budget: &Budget,
    ) -> RedisResult<Claim> {
        let record = self.key("sent", user, conversation, temp_message_id);
        let lease_key = self.key("sending", user, conversation, temp_message_id);
        // A retry that finds an attempt in flight waits for its outcome (its echo from the log
        // can reach the client before the confirmation reaches Redis), at most as long as an
        // append can take: then the lease has lapsed and this attempt takes over.
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_PATIENCE;
        let mut pause = Duration::from_millis(5);
        let [interval, tolerance] = budget.rate.script_args();
        // The `sentAt` this attempt proposes: its own, until it learns the first attempt's.
        let mut proposed = now.to_string();
        // The budget is spent by the first call only, not by each wait for an attempt in flight.
        let mut spend = true;
        loop {
            let mut call = self.claim.key(&record);
            call.key(&lease_key)
                .arg(&proposed)
                .arg(self.window.as_millis() as u64)
                .arg(LEASE.as_millis() as u64)
                .arg(lease.to_string());
            let spending = std::mem::take(&mut spend);
            if spending {
                call.key(&budget.key).arg(&interval).arg(&tolerance);
            }
            let answer = async {
                let mut redis = self.redis.connection().await?;
                call.invoke_async::<(String, String)>(&mut redis).await
            };
            // The first call spends the budget, whatever it takes; the waits end with the
            // patience, however Redis answers.
            let answer = if spending {
                answer.await
            } else {
                tokio::time::timeout_at(deadline, answer)
                    .await
                    .unwrap_or_else(|_| Err(NO_ANSWER_IN_PATIENCE.into()))
            };
            let (verdict, value) = match answer {
                Ok(answer) => answer,
                // Redis stopped answering while this retry waited: it knows the first sentAt,
                // so it keeps trying for the rest of its patience rather than give up and be
                // retried with a sentAt of its own.
                Err(e) if !spending && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "Redis lost while waiting for an attempt in flight");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match verdict.as_str() {
                "limited" => {
                    let wait_ms = value.parse().unwrap_or(1);
                    return Ok(Claim::Limited(rate_limit::refused(budget.action, wait_ms)));
                }
                "append" => {
                    // A stored `sentAt` that does not parse (never written by us) is replaced.
                    let sent_at =
                        serde_json::from_value(serde_json::Value::String(value)).unwrap_or(now);
                    return Ok(Claim::Append(sent_at));
                }
                "sent" => return Ok(Claim::Sent(value)),
                _ if tokio::time::Instant::now() >= deadline => return Ok(Claim::InFlight),
                _ => {
                    // The first `sentAt` learnt (on the first call's wait) is the first
                    // attempt's; keep it.
                    if spending {
                        proposed = value;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Runs `work` (the participant check and the append of the attempt holding `lease`, from
    /// right after its claim) while renewing the lease, so that it stays held for as long as
    /// the work runs, never past the claim plus [`writer::LONGEST_APPEND`] (the patience of a
    /// waiting retry), and no longer than [`LEASE`] after its edge dies.
    pub async fn holding<T>(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        lease: Lease,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let until = tokio::time::Instant::now() + writer::LONGEST_APPEND;
        tokio::pin!(work);
        let first = tokio::time::Instant::now() + RENEW_EVERY;
        let mut renewals = tokio::time::interval_at(first, RENEW_EVERY);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A renewal runs beside the work, never holding its outcome back.
        let mut renewal: Option<futures_util::future::BoxFuture<'_, ()>> = None;
        loop {
            tokio::select! {
                biased;
                outcome = &mut work => return outcome,
                () = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                    renewal = None;
                }
                _ = renewals.tick(), if renewal.is_none() => {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    if !left.is_zero() {
                        let renew = self.renew(user, conversation, temp_message_id, lease, left);
                        renewal = Some(Box::pin(renew));
                    }
                }
            }
        }
    }

    /// Extends the lease to [`LEASE`] from now, or `left` if shorter; a failure is logged (the
    /// lease may then lapse under this attempt, at the cost of an identical second event).
    async fn renew(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        lease: Lease,
        left: Duration,
    ) {
        let lease_key = self.key("sending", user, conversation, temp_message_id);
        let renewal = async {
            let mut redis = self.redis.connection().await?;
            self.renew
                .key(lease_key)
                .arg(lease.to_string())
                .arg(LEASE.min(left).as_millis() as u64)
                .invoke_async::<i64>(&mut redis)
                .await
        };
        match tokio::time::timeout(RENEW_EVERY, renewal).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => {
                tracing::warn!("a send's lease lapsed while its append ran");
                metrics::counter!("chat_ws_send_leases_lost_total").increment(1);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew a send's lease"),
            Err(_) => tracing::warn!("renewing a send's lease took too long"),
        }
    }

    /// The append succeeded: remember its frame for the rest of the window. Queued, not
    /// written here: confirmations are written together, [`CONFIRM_LINGER`] apart (see
    /// [`write_confirmations`]). The receiver says when it was written, if anyone asks.
    pub fn confirm(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        frame: &str,
    ) -> oneshot::Receiver<RedisResult<()>> {
        let (written, receiver) = oneshot::channel();
        let confirmation = Confirmation {
            record: self.key("sent", user, conversation, temp_message_id),
            value: format!("d:{frame}"),
            written,
        };
        if let Err(refused) = self.confirmations.try_send(confirmation) {
            // Redis has not taken the last CONFIRMS_QUEUED: a retry of this message will wait
            // for the lease to lapse, then append it again (same id, same sentAt).
            tracing::warn!("too many confirmations waiting for Redis; one is dropped");
            let refused = match refused {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            let _ =
                refused.written.send(Err(
                    (redis::ErrorKind::IoError, "confirmation not queued").into()
                ));
        }
        receiver
    }

    /// The append failed (Kafka may still hold the event): release the lease so that a retry
    /// appends the same message again at once. The `sentAt` stays.
    pub async fn abandon(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        lease: Lease,
    ) -> RedisResult<()> {
        let mut redis = self.redis.connection().await?;
        let lease_key = self.key("sending", user, conversation, temp_message_id);
        self.abandon
            .key(lease_key)
            .arg(lease.to_string())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }
}

/// How long a confirmation waits for others to share its Redis write. A write is a system call
/// and a wake-up of Redis, the dearest part of a send's confirmation at 1,000 sends a second;
/// meanwhile a retry that claims finds the lease held and waits for the record
/// ([`RecentSends::claim`] looks again after 5 ms, then less and less often).
pub const CONFIRM_LINGER: Duration = Duration::from_millis(10);

/// Most confirmations in one write.
const CONFIRM_BATCH: usize = 1024;

/// Most confirmations waiting for Redis; past it they are dropped (each costs a retry of its
/// message a wait for the lease, and a second, identical event).
const CONFIRMS_QUEUED: usize = 1 << 16;

/// A send's record to turn into its frame (`d:…`), and who waits for the outcome.
struct Confirmation {
    record: String,
    value: String,
    written: oneshot::Sender<RedisResult<()>>,
}

/// Writes queued confirmations, as one pipeline of `SET … XX KEEPTTL` per [`CONFIRM_LINGER`]
/// (a plain `SET`, not a script: Lua was half of Redis's CPU per send; the lease is left to
/// lapse, since a claim that finds the frame answers with it whoever holds the lease). Ends
/// once every [`RecentSends`] is dropped, after writing what was queued.
async fn write_confirmations(redis: Redis, mut queue: mpsc::Receiver<Confirmation>) {
    let mut batch = Vec::with_capacity(CONFIRM_BATCH);
    while queue.recv_many(&mut batch, CONFIRM_BATCH).await > 0 {
        let linger = tokio::time::sleep(CONFIRM_LINGER);
        tokio::pin!(linger);
        while batch.len() < CONFIRM_BATCH {
            let room = CONFIRM_BATCH - batch.len();
            tokio::select! {
                taken = queue.recv_many(&mut batch, room) => if taken == 0 { break },
                () = &mut linger => break,
            }
        }
        let mut pipe = redis::pipe();
        for c in &batch {
            pipe.cmd("SET")
                .arg(&c.record)
                .arg(&c.value)
                .arg("XX")
                .arg("KEEPTTL");
        }
        let written = async {
            let mut connection = redis.connection().await?;
            pipe.query_async::<Vec<Option<String>>>(&mut connection)
                .await
        }
        .await;
        match written {
            Ok(sets) => {
                for (c, set) in batch.drain(..).zip(sets) {
                    if set.is_none() {
                        // Redis lost the record (restarted) during the append: a retry will
                        // claim afresh.
                        tracing::warn!(
                            "the record of a send was gone when its append was confirmed"
                        );
                        metrics::counter!("chat_ws_send_records_lost_total").increment(1);
                    }
                    let _ = c.written.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, sends = batch.len(), "cannot record sent tempMessageIds");
                let kind = e.kind();
                for c in batch.drain(..) {
                    let _ = c
                        .written
                        .send(Err((kind, "the confirmations' write failed").into()));
                }
            }
        }
    }
}
