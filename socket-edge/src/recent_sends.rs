//! Idempotent sends: the same `tempMessageId` from the same user in the same conversation within
//! `CHAT_WS_DEDUPE_WINDOW_SECS` produces one message (clients retry after reconnects).
//!
//! Key `P sent:{<userId>}:<conversationId>:<tempMessageId>`, claimed with `SET NX PX` before the
//! append:
//!
//! - `p:<messageId>` while the append is in flight: a concurrent retry waits for the outcome
//!   (`send_in_progress` only if none comes within the append timeout); if the append fails the
//!   claim is released (compare-and-delete), so a retry sends afresh.
//! - `d:<new-message frame>` once Kafka acknowledged: a retry gets the original `new-message`
//!   frame on its own connection, and no second event is appended.
//!
//! The window bounds Redis memory: each message sent keeps about its frame's size (plus the key)
//! for the window, e.g. 1,000 messages/s × 600 s × ~400 B ≈ 240 MB at full load.

use std::time::Duration;

use redis::{RedisResult, Script};
use uuid::Uuid;

use crate::presence::Redis;

/// What a send found when it claimed its `tempMessageId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: append, then [`RecentSends::confirm`] or [`RecentSends::release`].
    New,
    /// Already appended: here is its `new-message` frame.
    Sent(String),
    /// Another attempt is appending it right now.
    InFlight,
}

#[derive(Clone)]
pub struct RecentSends {
    redis: Redis,
    /// How long a `tempMessageId` is remembered.
    window: Duration,
    release: std::sync::Arc<Script>,
}

/// Longest a retry waits for an in-flight first attempt: the writer's delivery timeout (10 s)
/// and a margin.
const IN_FLIGHT_PATIENCE: Duration = Duration::from_secs(11);

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RecentSends {
    pub fn new(redis: Redis, window: Duration) -> Self {
        Self {
            redis,
            window,
            release: std::sync::Arc::new(Script::new(RELEASE)),
        }
    }

    fn key(&self, user: &str, conversation: Uuid, temp_message_id: &str) -> String {
        format!(
            "{}sent:{{{user}}}:{conversation}:{temp_message_id}",
            self.redis.prefix
        )
    }

    pub async fn claim(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        message_id: Uuid,
    ) -> RedisResult<Claim> {
        let mut redis = self.redis.connection().await?;
        let key = self.key(user, conversation, temp_message_id);
        // A retry that finds the first attempt in flight waits for its outcome (its echo from the
        // log can reach the client before the confirmation reaches Redis), at most as long as
        // an append can take.
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_PATIENCE;
        let mut pause = Duration::from_millis(5);
        loop {
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(format!("p:{message_id}"))
                .arg("NX")
                .arg("PX")
                .arg(self.window.as_millis() as u64)
                .query_async(&mut redis)
                .await?;
            if claimed.is_some() {
                return Ok(Claim::New);
            }
            let existing: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            match existing.as_deref().map(|v| v.strip_prefix("d:")) {
                Some(Some(frame)) => return Ok(Claim::Sent(frame.to_owned())),
                Some(None) if tokio::time::Instant::now() >= deadline => {
                    return Ok(Claim::InFlight);
                }
                Some(None) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                // Expired or released between the SET and the GET: claim again.
                None => {}
            }
        }
    }

    /// The append succeeded: remember its frame for the rest of the window.
    pub async fn confirm(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        frame: &str,
    ) -> RedisResult<()> {
        let mut redis = self.redis.connection().await?;
        redis::cmd("SET")
            .arg(self.key(user, conversation, temp_message_id))
            .arg(format!("d:{frame}"))
            .arg("XX")
            .arg("KEEPTTL")
            .query_async::<Option<String>>(&mut redis)
            .await
            .map(drop)
    }

    /// The append failed: let a retry send afresh (only if the claim is still ours).
    pub async fn release(
        &self,
        user: &str,
        conversation: Uuid,
        temp_message_id: &str,
        message_id: Uuid,
    ) -> RedisResult<()> {
        let mut redis = self.redis.connection().await?;
        self.release
            .key(self.key(user, conversation, temp_message_id))
            .arg(format!("p:{message_id}"))
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }
}
