//! Idempotent sends: the same `tempMessageId` from the same user in the same conversation within
//! `CHAT_WS_DEDUPE_WINDOW_SECS` produces one message (clients retry after reconnects).
//!
//! Key `P sent:{<userId>}:<conversationId>:<tempMessageId>`, claimed with `SET NX PX` before the
//! append:
//!
//! - `p:<messageId>` while the append is in flight: a concurrent retry gets `send_in_progress`;
//!   if the append fails the claim is released (compare-and-delete), so a retry sends afresh.
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
        // Twice at most: the key may expire between the SET and the GET.
        for _ in 0..2 {
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
            match existing {
                Some(value) => {
                    return Ok(match value.strip_prefix("d:") {
                        Some(frame) => Claim::Sent(frame.to_owned()),
                        None => Claim::InFlight,
                    });
                }
                None => continue,
            }
        }
        Ok(Claim::InFlight)
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
