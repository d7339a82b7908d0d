//! Redis records every open connection, so any instance can tell who is online and where.
//!
//! Keys (`P` is `CHAT_REDIS_PREFIX`; the `{user}` hash tag keeps a user's keys in one cluster
//! slot):
//!
//! - `P user:{<userId>}`: sorted set of the user's connection ids, each scored with the time
//!   (Unix ms) its registration expires. Expired members are pruned on every registration; the
//!   key itself expires with its latest member.
//! - `P conn:{<userId>}:<connectionId>`: hash `userId`, `edgeId`, `connectedAt`, expiring with
//!   the registration.
//!
//! A registration lives `CHAT_WS_PRESENCE_TTL_SECS`; the edge refreshes every connection it holds
//! a few times per TTL, and a client heartbeat refreshes its own at once. A crashed edge stops
//! refreshing, so its entries vanish within one TTL. Unregistering removes exactly one
//! connection id: closing one connection never unregisters another.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::delivery::HeldConnections;

/// A Redis connection that is made on first use (and retried on each use until it succeeds),
/// so a Redis that is down at start-up makes the edge not-ready instead of crashing it.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: std::sync::Arc<OnceCell<ConnectionManager>>,
    /// Prepended to every key (`CHAT_REDIS_PREFIX`), so several deployments or tests share Redis.
    pub prefix: String,
}

impl Redis {
    pub fn new(url: &str, prefix: &str) -> RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: Default::default(),
            prefix: prefix.to_owned(),
        })
    }

    pub async fn connection(&self) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }

    /// Whether Redis answers (readiness).
    pub async fn ping(&self) -> bool {
        match self.connection().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// The registrations of the connections this edge holds.
#[derive(Clone)]
pub struct Presence {
    redis: Redis,
    /// This process's id, stored with each of its connections.
    edge_id: String,
    /// How long a registration lives without a refresh.
    ttl: Duration,
    register: std::sync::Arc<Script>,
    unregister: std::sync::Arc<Script>,
}

/// Prunes expired members, refuses when the user is at the limit (0: no limit), then adds.
const REGISTER: &str = r"
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if limit > 0 and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], top[2])
redis.call('HSET', KEYS[2], 'userId', ARGV[5], 'edgeId', ARGV[6], 'connectedAt', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
";

/// Removes one connection; the user's set disappears with its last member.
const UNREGISTER: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then redis.call('PEXPIREAT', KEYS[1], top[2]) end
return 1
";

impl Presence {
    pub fn new(redis: Redis, edge_id: String, ttl: Duration) -> Self {
        Self {
            redis,
            edge_id,
            ttl,
            register: std::sync::Arc::new(Script::new(REGISTER)),
            unregister: std::sync::Arc::new(Script::new(UNREGISTER)),
        }
    }

    pub fn edge_id(&self) -> &str {
        &self.edge_id
    }

    pub fn user_key(&self, user: &str) -> String {
        format!("{}user:{{{user}}}", self.redis.prefix)
    }

    pub fn connection_key(&self, user: &str, connection: Uuid) -> String {
        format!("{}conn:{{{user}}}:{connection}", self.redis.prefix)
    }

    /// Records a new connection; `Ok(false)` when the user already has `limit` live connections
    /// (across every edge). `limit` 0 means no limit.
    pub async fn register(&self, user: &str, connection: Uuid, limit: usize) -> RedisResult<bool> {
        let mut redis = self.redis.connection().await?;
        let now = unix_ms();
        let added: i64 = self
            .register
            .key(self.user_key(user))
            .key(self.connection_key(user, connection))
            .arg(connection.to_string())
            .arg(now)
            .arg(self.ttl.as_millis() as u64)
            .arg(limit)
            .arg(user)
            .arg(&self.edge_id)
            .arg(events::Timestamp::now().to_string())
            .invoke_async(&mut redis)
            .await?;
        Ok(added == 1)
    }

    /// Pushes the expiry of these connections (user, id) one TTL ahead, in one round trip.
    pub async fn refresh(&self, connections: &[(String, Uuid)]) -> RedisResult<()> {
        if connections.is_empty() {
            return Ok(());
        }
        let mut redis = self.redis.connection().await?;
        let ttl = self.ttl.as_millis() as u64;
        let expires = unix_ms() + ttl;
        let mut pipe = redis::pipe();
        for (user, connection) in connections {
            let user_key = self.user_key(user);
            let connection_key = self.connection_key(user, *connection);
            pipe.zadd(&user_key, connection.to_string(), expires)
                .ignore()
                // Every edge runs with the same TTL, so now + TTL outlives every member.
                .pexpire(&user_key, ttl as i64)
                .ignore()
                .hset(&connection_key, "userId", user)
                .ignore()
                .hset(&connection_key, "edgeId", &self.edge_id)
                .ignore()
                .pexpire(&connection_key, ttl as i64)
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await
    }

    /// Refreshes the registrations of `snapshot`, the connections held here a moment ago.
    ///
    /// A connection that closed after the snapshot was taken may have unregistered before the
    /// refresh re-added it: every one of them that is no longer held is unregistered again.
    /// (One that closes after that check unregisters after the refresh landed.) So the refresh
    /// never revives a closed connection.
    pub async fn refresh_held(&self, held: &HeldConnections, snapshot: &[(String, Uuid)]) {
        for chunk in snapshot.chunks(1000) {
            if let Err(e) = self.refresh(chunk).await {
                tracing::warn!(error = %e, "cannot refresh registrations");
                break;
            }
        }
        let still_held: HashSet<Uuid> = held.snapshot().into_iter().map(|(_, c)| c).collect();
        let closed = snapshot.iter().filter(|(_, c)| !still_held.contains(c));
        for (user, connection) in closed {
            if let Err(e) = self.unregister(user, *connection).await {
                tracing::warn!(error = %e, %connection, "cannot unregister a closed connection; it will expire");
            }
        }
    }

    /// Forgets one connection, and only that one.
    pub async fn unregister(&self, user: &str, connection: Uuid) -> RedisResult<()> {
        let mut redis = self.redis.connection().await?;
        self.unregister
            .key(self.user_key(user))
            .key(self.connection_key(user, connection))
            .arg(connection.to_string())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;

    /// Against the local Redis (`REDIS_URL`), under a prefix of its own.
    fn presence() -> Presence {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| rate_limit::DEFAULT_REDIS_URL.into());
        let prefix = format!("test:presence:{}:", Uuid::new_v4().simple());
        Presence::new(
            Redis::new(&url, &prefix).unwrap(),
            "edge".into(),
            Duration::from_secs(60),
        )
    }

    fn outbox(connection: Uuid) -> Outbox {
        Outbox::new(connection, 1, Default::default())
    }

    async fn registered(presence: &Presence, user: &str) -> Vec<String> {
        let mut redis = presence.redis.connection().await.unwrap();
        redis::cmd("ZRANGE")
            .arg(presence.user_key(user))
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_refresh_never_revives_a_connection_that_closed_after_its_snapshot() {
        let presence = presence();
        let held = HeldConnections::default();
        let (open, closing) = (Uuid::new_v4(), Uuid::new_v4());
        for connection in [open, closing] {
            assert!(presence.register("ann", connection, 0).await.unwrap());
            held.insert("ann", outbox(connection));
        }
        let snapshot = held.snapshot();
        // The connection closes between the snapshot and the refresh, as a Handler does it.
        held.remove("ann", closing);
        presence.unregister("ann", closing).await.unwrap();

        presence.refresh_held(&held, &snapshot).await;

        assert_eq!(registered(&presence, "ann").await, vec![open.to_string()]);
        let mut redis = presence.redis.connection().await.unwrap();
        let hash_left: bool = redis::cmd("EXISTS")
            .arg(presence.connection_key("ann", closing))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!hash_left);
        presence.unregister("ann", open).await.unwrap();
    }
}
