//! Where the services' Redis is: one definition of the two settings (and their defaults) that
//! chat-api (rate limits) and the socket-edge (rate limits, connection records, idempotent
//! sends) both read.

use secrecy::SecretString;

/// The development Redis of `scripts/stack`: the one default every binary and test uses.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The prefix of every key a service writes, unless `CHAT_REDIS_PREFIX` says otherwise.
pub const DEFAULT_REDIS_PREFIX: &str = "chat:";

/// Redis, flattened into each service's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct RedisArgs {
    /// Redis: rate limits, and the edge's connection records and idempotent sends.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub url: SecretString,
    /// Prefix of every Redis key this service writes (processes sharing a Redis with other
    /// deployments keep apart by it).
    #[arg(long = "redis-prefix", env = "CHAT_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub prefix: String,
}
