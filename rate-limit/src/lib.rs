//! Per-user rate limits that hold across every edge and API process: the state of each
//! (user, action) budget lives in Redis, and one Lua script checks and spends it in one round
//! trip.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp): a budget of [`Rate::burst`] actions at once, refilled at [`Rate::per_minute`].
//! Redis's own clock decides, so the processes' clocks need not agree.
//!
//! Key: `P rate:{<userId>}:<action>` (`P` is `CHAT_REDIS_PREFIX`; the `{user}` hash tag keeps a
//! user's keys in one cluster slot), a number that expires once the budget is full again.
//!
//! When Redis does not answer, the limiter lets the action through (fail open): a rate limit
//! protects the service, and refusing every user because the limiter's store is down would be
//! a worse outage. Each such pass is logged and counted in
//! `chat_rate_limit_unavailable_total{action}`.

mod redis_args;

pub use redis_args::{DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_URL, RedisArgs};

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use tokio::sync::OnceCell;

/// How many actions of one kind a user may take: `burst` at once, refilled at `per_minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// The answer for one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the budget: the next action of this kind is allowed after this long.
    Limited {
        retry_after: Duration,
    },
}

/// GCRA as a Lua function, `gcra(key, interval, tolerance)` (milliseconds per action, and
/// interval × burst; [`Rate::script_args`]): 0 when allowed (the action is spent), otherwise the
/// milliseconds until the next action fits. The one text of the rule: [`Limiter`] runs it on
/// its own, and scripts that spend a budget along with their own work (the edge's send claim,
/// one round trip instead of two) include it.
pub const GCRA_LUA: &str = r"
local function gcra(key, interval, tolerance)
  interval = tonumber(interval)
  tolerance = tonumber(tolerance)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local wait = next_tat - tolerance - now
  if wait > 0 then return math.ceil(wait) end
  redis.call('SET', key, string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now))
  return 0
end
";

impl Rate {
    /// The arguments of [`GCRA_LUA`]'s `gcra` for this rate: interval and tolerance, in ms.
    pub fn script_args(&self) -> [String; 2] {
        let interval = 60_000.0 / f64::from(self.per_minute.max(1));
        let tolerance = interval * f64::from(self.burst.max(1));
        [format!("{interval:.3}"), format!("{tolerance:.3}")]
    }
}

/// A `gcra` refusal of `action` (`wait_ms` > 0): counted in `chat_rate_limited_total{action}`;
/// returns how long to wait.
pub fn refused(action: &'static str, wait_ms: u64) -> Duration {
    metrics::counter!("chat_rate_limited_total", "action" => action).increment(1);
    Duration::from_millis(wait_ms)
}

/// Checks and spends per-user budgets in Redis.
#[derive(Clone)]
pub struct Limiter {
    client: redis::Client,
    /// Made on first use (and retried on each use until it succeeds), so a Redis that is down
    /// at start-up only lets actions through instead of stopping the process.
    connection: Arc<OnceCell<ConnectionManager>>,
    /// Prepended to every key (`CHAT_REDIS_PREFIX`).
    prefix: String,
    script: Arc<Script>,
}

impl Limiter {
    pub fn new(redis_url: &str, prefix: &str) -> RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            connection: Default::default(),
            prefix: prefix.to_owned(),
            script: Arc::new(Script::new(&format!(
                "{GCRA_LUA}return gcra(KEYS[1], ARGV[1], ARGV[2])"
            ))),
        })
    }

    /// The Redis key of one user's budget for one action.
    pub fn key(&self, action: &str, user: &str) -> String {
        format!("{}rate:{{{user}}}:{action}", self.prefix)
    }

    /// Spends one action of `user`'s budget for `action` (a fixed name: it is a metric label),
    /// or says how long to wait. Lets the action through when Redis does not answer.
    pub async fn check(&self, action: &'static str, user: &str, rate: Rate) -> Verdict {
        match self.try_check(action, user, rate).await {
            Ok(0) => Verdict::Allowed,
            Ok(wait_ms) => Verdict::Limited {
                retry_after: refused(action, wait_ms),
            },
            Err(e) => {
                metrics::counter!("chat_rate_limit_unavailable_total", "action" => action)
                    .increment(1);
                tracing::warn!(error = %e, action, "rate limit not checked (Redis); allowed");
                Verdict::Allowed
            }
        }
    }

    async fn try_check(&self, action: &str, user: &str, rate: Rate) -> RedisResult<u64> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500))
            .set_number_of_retries(1);
        let mut redis = self
            .connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await?
            .clone();
        let [interval, tolerance] = rate.script_args();
        self.script
            .key(self.key(action, user))
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut redis)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> Limiter {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into());
        let prefix = format!("test:rate:{}:", uuid::Uuid::new_v4().simple());
        Limiter::new(&url, &prefix).unwrap()
    }

    #[tokio::test]
    async fn a_burst_passes_then_the_rate_refills_it() {
        let limiter = limiter();
        // 20 at once, then one every 50 ms.
        let rate = Rate {
            per_minute: 1200,
            burst: 20,
        };
        for i in 0..20 {
            assert_eq!(
                limiter.check("test", "ann", rate).await,
                Verdict::Allowed,
                "action {i} of the burst"
            );
        }
        let Verdict::Limited { retry_after } = limiter.check("test", "ann", rate).await else {
            panic!("the 21st action at once passed");
        };
        assert!(retry_after <= Duration::from_millis(50), "{retry_after:?}");
        // Another user's budget is untouched.
        assert_eq!(limiter.check("test", "bob", rate).await, Verdict::Allowed);
        tokio::time::sleep(retry_after).await;
        assert_eq!(limiter.check("test", "ann", rate).await, Verdict::Allowed);
    }

    #[tokio::test]
    async fn redis_down_lets_actions_through() {
        let limiter = Limiter::new("redis://127.0.0.1:1", "test:").unwrap();
        let rate = Rate {
            per_minute: 1,
            burst: 1,
        };
        for _ in 0..3 {
            assert_eq!(limiter.check("test", "ann", rate).await, Verdict::Allowed);
        }
    }
}
