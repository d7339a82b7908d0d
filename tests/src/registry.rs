//! What Redis records of the edge's connections (the keys of `socket-edge/src/presence.rs`,
//! under the test's prefix), read the way the edge's own look-ups read them.

use crate::TestEnv;

/// A connection to the test's Redis.
pub async fn redis(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

/// The live connections Redis records for `user`: (connection id, edge id).
pub async fn registrations(env: &TestEnv, user: &str) -> Vec<(String, String)> {
    let mut redis = redis(env).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{}user:{{{user}}}", env.redis_prefix))
        .arg(now)
        .arg("+inf")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut out = Vec::new();
    for id in ids {
        let edge: Option<String> = redis::cmd("HGET")
            .arg(format!("{}conn:{{{user}}}:{id}", env.redis_prefix))
            .arg("edgeId")
            .query_async(&mut redis)
            .await
            .unwrap();
        // A connection closing between the two reads is gone from both (one script removes
        // them together): skip it rather than report a hash-less registration.
        if let Some(edge) = edge {
            out.push((id, edge));
        }
    }
    out
}

/// Every Redis key of this test.
pub async fn redis_keys(env: &TestEnv) -> Vec<String> {
    let mut redis = redis(env).await;
    redis::cmd("KEYS")
        .arg(format!("{}*", env.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap()
}
