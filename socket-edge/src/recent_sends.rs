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
//!   right now. It lapses after [`LEASE`] unless renewed, and the attempt renews it while its
//!   append runs ([`RecentSends::holding`]). A retry that finds it waits for the outcome; once it
//!   is released (the append failed) or has lapsed (the edge died: within [`LEASE`], not the
//!   slowest append), the retry takes over and appends the same message again, same id, same
//!   `sentAt`. So no retry waits longer than the slowest possible append, and no claim is ever
//!   stuck. A lease that lapses under a live attempt (an edge starved of CPU for seconds) costs a
//!   second, identical event of the message, which the derived id makes harmless.
//!
//! A retry that is waiting knows the first attempt's `sentAt`, and keeps it: if Redis restarts
//! (empty) or stops answering while it waits, it keeps trying until its patience ends and claims
//! afresh with that `sentAt`, not its own, so the message is appended again as it first was.
//!
//! The claim also spends the sender's `send-message` budget ([`rate_limit::GCRA_LUA`], the same
//! rule as every other limit) in the same script: one round trip before the append, one after.
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
    confirm: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
    abandon: std::sync::Arc<Script>,
}

/// How long a lease lasts unless its attempt renews it: how long a retry waits for an edge that
/// died mid-append.
pub const LEASE: Duration = Duration::from_secs(3);

/// How often an attempt in flight renews its lease: three times per lease, so that two lost
/// renewals still leave it held.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Longest a retry waits for an attempt in flight (which renews its lease for as long as its
/// append runs), with a margin for Redis's clock.
const IN_FLIGHT_PATIENCE: Duration =
    Duration::from_millis(writer::LONGEST_APPEND.as_millis() as u64 + 1_000);

/// After [`rate_limit::GCRA_LUA`]. KEYS: record, lease, and the budget when one is spent.
/// ARGV: proposed sentAt, window ms, lease ms, lease token, then the budget's interval and
/// tolerance. Returns {"limited", ms} | {"append", sentAt} | {"sent", frame} |
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
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then
  return {'append', string.sub(v, 3)}
end
return {'wait', string.sub(v, 3)}
";

/// KEYS: record, lease. ARGV: frame, lease token.
const CONFIRM: &str = r"
redis.call('SET', KEYS[1], 'd:' .. ARGV[1], 'XX', 'KEEPTTL')
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
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
    pub fn new(redis: Redis, window: Duration) -> Self {
        Self {
            redis,
            window,
            claim: std::sync::Arc::new(Script::new(&format!("{}{CLAIM}", rate_limit::GCRA_LUA))),
            confirm: std::sync::Arc::new(Script::new(CONFIRM)),
            renew: std::sync::Arc::new(Script::new(RENEW)),
            abandon: std::sync::Arc::new(Script::new(ABANDON)),
        }
    }

    fn keys(&self, user: &str, conversation: Uuid, temp_message_id: &str) -> [String; 2] {
        let prefix = &self.redis.prefix;
        [
            format!("{prefix}sent:{{{user}}}:{conversation}:{temp_message_id}"),
            format!("{prefix}sending:{{{user}}}:{conversation}:{temp_message_id}"),
        ]
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
        let [record, lease_key] = self.keys(user, conversation, temp_message_id);
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
            let answer: RedisResult<(String, String)> = match self.redis.connection().await {
                Ok(mut redis) => call.invoke_async(&mut redis).await,
                Err(e) => Err(e),
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
                    proposed = value;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Runs `append` (the attempt holding `lease`) while renewing the lease, so that it stays
    /// held for as long as the append runs and no longer than [`LEASE`] after its edge dies.
    pub async fn holding<T>(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        lease: Lease,
        append: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(append);
        let start = tokio::time::Instant::now() + RENEW_EVERY;
        let mut renewals = tokio::time::interval_at(start, RENEW_EVERY);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                outcome = &mut append => return outcome,
                _ = renewals.tick() => {
                    let renewal = self.renew(user, conversation, temp_message_id, lease);
                    // A renewal may not hold the append's outcome back for long.
                    match tokio::time::timeout(RENEW_EVERY, renewal).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew a send's lease"),
                        Err(_) => tracing::warn!("renewing a send's lease took too long"),
                    }
                }
            }
        }
    }

    async fn renew(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        lease: Lease,
    ) -> RedisResult<()> {
        let mut redis = self.redis.connection().await?;
        let [_, lease_key] = self.keys(user, conversation, temp_message_id);
        self.renew
            .key(lease_key)
            .arg(lease.to_string())
            .arg(LEASE.as_millis() as u64)
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }

    /// The append succeeded: remember its frame for the rest of the window.
    pub async fn confirm(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        frame: &str,
        lease: Lease,
    ) -> RedisResult<()> {
        let mut redis = self.redis.connection().await?;
        let [record, lease_key] = self.keys(user, conversation, temp_message_id);
        self.confirm
            .key(record)
            .key(lease_key)
            .arg(frame)
            .arg(lease.to_string())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
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
        let [_, lease_key] = self.keys(user, conversation, temp_message_id);
        self.abandon
            .key(lease_key)
            .arg(lease.to_string())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }
}
