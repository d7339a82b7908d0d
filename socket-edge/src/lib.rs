//! The WebSocket edge: the extension's side of the contract.
//!
//! - [`server`]: the [`server::Listener`] accepts TCP connections (capped by a semaphore) and
//!   serves HTTP on each; `<base>` and `<base>/` upgrade to WebSocket, `/healthz`, `/readyz` and
//!   `/metrics` sit at the root.
//! - [`connection`]: authenticates the upgrade (401 before it), registers the connection in
//!   Redis, then runs one [`connection::Handler`] per connection: frames are handled one at a
//!   time, in order; commands become events appended through the [`writer`].
//! - [`delivery`]: deliveries come only from consuming the log; each edge reads the whole topic
//!   and pushes frames into the bounded outbox of each connection it holds.
//! - [`presence`] and [`recent_sends`]: what Redis keeps (connections, idempotent sends).
//!
//! Every limit is an environment variable of [`EdgeArgs`], documented in docs/websocket.md.

pub mod connection;
pub mod delivery;
pub mod frames;
pub mod presence;
pub mod recent_sends;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use store::Store;
use tokio::sync::watch;
use writer::Writer;

use crate::delivery::HeldConnections;
use crate::presence::Presence;
use crate::recent_sends::RecentSends;

/// Close code sent to a client whose outbound queue overflowed (it did not read fast enough).
/// Application range (4000-4999); "8" echoes 1008, policy violation.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code sent when a delivery owed to the connection could not be made (the participants
/// of its conversation could not be read): 1011, internal error. The client reconnects and
/// reads history.
pub const CLOSE_DELIVERY_LOST: u16 = 1011;
/// Close code sent on graceful shutdown: 1001, going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code sent for a frame larger than `CHAT_WS_MAX_FRAME_BYTES`: 1009, message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The edge's own settings (the Kafka, database, auth and log ones are shared with the others).
#[derive(clap::Args, Clone, Debug)]
pub struct EdgeArgs {
    /// Prefix of the WebSocket path (PageNow used `/prod`); `<base>` and `<base>/` both work.
    #[arg(long, env = "CHAT_BASE_PATH", default_value = "")]
    pub base_path: String,
    /// Redis, where every connection is recorded.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_default_value = true
    )]
    pub redis_url: SecretString,
    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat:")]
    pub redis_prefix: String,
    /// This instance's id in Redis registrations (default: a fresh random id per process).
    #[arg(long, env = "CHAT_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Open TCP connections (WebSocket or HTTP) this process accepts at once.
    #[arg(long, env = "CHAT_WS_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_open_connections: usize,
    /// Live connections one user may have across all edges (0: unlimited); more get HTTP 429.
    #[arg(long, env = "CHAT_WS_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,
    /// Largest client frame (message) in bytes; a larger one closes the connection with 1009.
    #[arg(long, env = "CHAT_WS_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub max_frame_bytes: usize,
    /// Frames queued for one connection; a client that lets it fill is closed with 4008.
    #[arg(long, env = "CHAT_WS_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,
    /// Kernel send buffer of each socket (SO_SNDBUF), in bytes; 0 keeps the kernel's
    /// autotuning (up to `net.ipv4.tcp_wmem`'s max, 4 MiB by default, per slow client).
    #[arg(long, env = "CHAT_WS_SEND_BUFFER_BYTES", default_value_t = 128 * 1024)]
    pub send_buffer_bytes: usize,
    /// How long a connection's Redis registration lives without a refresh (the edge refreshes
    /// the connections it holds every third of it; a client heartbeat refreshes its own).
    #[arg(long, env = "CHAT_WS_PRESENCE_TTL_SECS", default_value_t = 120)]
    pub presence_ttl_secs: u64,
    /// How long a `tempMessageId` is remembered to make retried sends idempotent.
    #[arg(long, env = "CHAT_WS_DEDUPE_WINDOW_SECS", default_value_t = 600)]
    pub dedupe_window_secs: u64,
    /// On SIGTERM, how long connections get to close before the process exits anyway.
    #[arg(long, env = "CHAT_WS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

impl EdgeArgs {
    /// The WebSocket path without its trailing slash: `""` or `/prod`.
    pub fn normalised_base_path(&self) -> String {
        let trimmed = self.base_path.trim().trim_matches('/');
        if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        }
    }
}

/// Limits applied to each connection.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections_per_user: usize,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    /// How long a closing connection may wait to flush its close frame.
    pub close_grace: Duration,
}

/// What every connection of this edge shares.
pub struct Edge {
    /// Checks the token of each connect.
    pub verifier: auth::Verifier,
    /// Participants, to validate senders.
    pub store: Store,
    /// The only way into the log.
    pub writer: Writer,
    /// Registrations of the connections held here.
    pub presence: Presence,
    /// Remembered `tempMessageId`s.
    pub recent_sends: RecentSends,
    /// Where deliveries from the log are pushed.
    pub held: Arc<HeldConnections>,
    pub limits: Limits,
    /// Becomes `true` once, on shutdown; every connection watches it.
    pub shutdown: watch::Receiver<bool>,
}

/// Resolves once the shutdown flag is up (the flag's read guard is not held across awaits).
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
