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
//! - [`cursor`] and [`catch_up`]: every frame from the log carries the log positions after its
//!   event; a reconnecting client's `catch-up` replays the log from them, and the connection's
//!   [`delivery::Gate`] holds live frames back meanwhile (docs/websocket.md, "Catch-up").
//! - [`presence`] and [`recent_sends`]: what Redis keeps (connections, idempotent sends).
//! - [`startup`]: the wiring of one edge process ([`startup::Application`]), which `main` and
//!   the tests that run an edge in-process share.
//!
//! Every limit is an environment variable of [`EdgeArgs`], documented in docs/websocket.md.

pub mod asyncapi;
pub mod catch_up;
pub mod connection;
pub mod cursor;
pub mod delivery;
pub mod frames;
pub mod log_reader;
pub mod outbox;
pub mod presence;
pub mod recent_sends;
pub mod send_clock;
pub mod server;
pub mod startup;

use std::sync::Arc;
use std::time::Duration;

use rate_limit::{Limiter, Rate};
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
/// Close code sent to a client that left `CHAT_WS_MAX_MISSED_PONGS` pings in a row unanswered
/// (it is most likely gone: a sleeping laptop, a dropped NAT mapping).
pub const CLOSE_UNRESPONSIVE: u16 = 4001;

/// The edge's own settings (the Kafka, database, auth and log ones are shared with the others).
#[derive(clap::Args, Clone, Debug)]
pub struct EdgeArgs {
    /// Prefix of the WebSocket path (PageNow used `/prod`); `<base>` and `<base>/` both work.
    #[arg(long, env = "CHAT_BASE_PATH", default_value = "")]
    pub base_path: telemetry::BasePath,
    #[command(flatten)]
    pub redis: rate_limit::RedisArgs,
    /// This instance's id in Redis registrations (default: a fresh random id per process).
    #[arg(long, env = "CHAT_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Open TCP connections (WebSocket or HTTP) this process accepts at once.
    #[arg(long, env = "CHAT_WS_MAX_CONNECTIONS", default_value_t = 50_000, value_parser = at_least(1))]
    pub max_open_connections: usize,
    /// Live connections one user may have across all edges (0: unlimited); more get HTTP 429.
    #[arg(long, env = "CHAT_WS_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,
    /// Largest client frame (message) in bytes; a larger one closes the connection with 1009.
    #[arg(long, env = "CHAT_WS_MAX_FRAME_BYTES", default_value_t = 16 * 1024, value_parser = at_least(1024))]
    pub max_frame_bytes: usize,
    /// Frames queued for one connection; a client that lets it fill is closed with 4008.
    #[arg(long, env = "CHAT_WS_OUTBOUND_QUEUE", default_value_t = 256, value_parser = at_least(1))]
    pub outbound_queue: usize,
    /// Kernel send buffer of each socket (SO_SNDBUF), in bytes; 0 keeps the kernel's
    /// autotuning (up to `net.ipv4.tcp_wmem`'s max, 4 MiB by default, per slow client).
    #[arg(long, env = "CHAT_WS_SEND_BUFFER_BYTES", default_value_t = 128 * 1024)]
    pub send_buffer_bytes: usize,
    /// How long a connection's Redis registration lives without a refresh (the edge refreshes
    /// the connections it holds every third of it; a client heartbeat refreshes its own).
    #[arg(long, env = "CHAT_WS_PRESENCE_TTL_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(3..))]
    pub presence_ttl_secs: u64,
    /// How long a `tempMessageId` is remembered to make retried sends idempotent.
    #[arg(long, env = "CHAT_WS_DEDUPE_WINDOW_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub dedupe_window_secs: u64,
    /// On SIGTERM, how long connections get to close before the process exits anyway.
    #[arg(long, env = "CHAT_WS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub shutdown_timeout_secs: u64,
    /// How long a new connection (or a keep-alive one after its last response) has to send a
    /// complete request head before it is closed: the slow-header guard.
    #[arg(long, env = "CHAT_WS_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// How long authenticating and registering an upgrade may take before a 503.
    #[arg(long, env = "CHAT_WS_UPGRADE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub upgrade_timeout_secs: u64,
    /// The edge pings every connection this often (browsers answer by themselves).
    #[arg(long, env = "CHAT_WS_PING_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_secs: u64,
    /// Pings in a row a connection may leave unanswered; at the next ping time it is closed
    /// (4001) and unregistered. Any frame from the client counts as an answer.
    #[arg(long, env = "CHAT_WS_MAX_MISSED_PONGS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_missed_pongs: u32,
    /// Most log events one `catch-up` reads back (so also most frames it replays); a larger
    /// gap is answered with `catch-up-gap` and the client reads history over REST.
    #[arg(long, env = "CHAT_WS_CATCH_UP_MAX_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub catch_up_max_events: u64,
    /// Oldest event a `catch-up` replays, in seconds; an older gap is a `catch-up-gap`.
    #[arg(long, env = "CHAT_WS_CATCH_UP_MAX_AGE_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub catch_up_max_age_secs: u64,
    /// How long a new connection holds its live deliveries back waiting for a `catch-up` as its
    /// first frame (any other frame, or the end of this grace, releases them at once).
    #[arg(long, env = "CHAT_WS_CATCH_UP_GRACE_MS", default_value_t = 2_000)]
    pub catch_up_grace_ms: u64,
    #[command(flatten)]
    pub rates: RateArgs,
}

/// Per-user rate limits of the frames that cost a write (shared by all edges through Redis).
#[derive(clap::Args, Clone, Debug)]
pub struct RateArgs {
    /// `send-message` frames per user per minute, across all connections and edges.
    #[arg(long, env = "CHAT_RATE_SEND_MESSAGE_PER_MINUTE", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_message_per_minute: u32,
    /// `send-message` frames a user may send at once before the per-minute rate applies.
    #[arg(long, env = "CHAT_RATE_SEND_MESSAGE_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_message_burst: u32,
    /// `read-messages` frames per user per minute.
    #[arg(long, env = "CHAT_RATE_READ_MESSAGES_PER_MINUTE", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_messages_per_minute: u32,
    /// `read-messages` frames a user may send at once.
    #[arg(long, env = "CHAT_RATE_READ_MESSAGES_BURST", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_messages_burst: u32,
    /// `heartbeat` frames per user per minute (the extension sends one per connection every
    /// 5 minutes).
    #[arg(long, env = "CHAT_RATE_HEARTBEAT_PER_MINUTE", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..))]
    pub heartbeat_per_minute: u32,
    /// `heartbeat` frames a user may send at once.
    #[arg(long, env = "CHAT_RATE_HEARTBEAT_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub heartbeat_burst: u32,
    /// `catch-up` frames per user per minute (each reads the log back).
    #[arg(long, env = "CHAT_RATE_CATCH_UP_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub catch_up_per_minute: u32,
    /// `catch-up` frames a user may send at once (one per browser reconnecting together).
    #[arg(long, env = "CHAT_RATE_CATCH_UP_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub catch_up_burst: u32,
}

impl RateArgs {
    pub fn rates(&self) -> Rates {
        Rates {
            send_message: Rate {
                per_minute: self.send_message_per_minute,
                burst: self.send_message_burst,
            },
            read_messages: Rate {
                per_minute: self.read_messages_per_minute,
                burst: self.read_messages_burst,
            },
            heartbeat: Rate {
                per_minute: self.heartbeat_per_minute,
                burst: self.heartbeat_burst,
            },
            catch_up: Rate {
                per_minute: self.catch_up_per_minute,
                burst: self.catch_up_burst,
            },
        }
    }
}

/// The budget of each limited frame.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub send_message: Rate,
    pub read_messages: Rate,
    pub heartbeat: Rate,
    pub catch_up: Rate,
}

/// A `usize` setting with a lower bound (0 connections or a 0-frame queue make no sense).
fn at_least(min: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min..)
}

/// Limits applied to each connection.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections_per_user: usize,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    /// How long a closing connection may wait to flush its close frame.
    pub close_grace: Duration,
    /// Deadline for authenticating and registering an upgrade.
    pub upgrade_timeout: Duration,
    /// How often each connection is pinged.
    pub ping_interval: Duration,
    /// Unanswered pings in a row before the connection is closed as unresponsive.
    pub max_missed_pongs: u32,
    /// Per-user budgets of the limited frames.
    pub rates: Rates,
    /// Bounds of one catch-up.
    pub catch_up: catch_up::CatchUpLimits,
    /// How long a new connection holds live deliveries back for a `catch-up`.
    pub catch_up_grace: Duration,
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
    /// Per-user rate limits, in Redis.
    pub limiter: Limiter,
    /// Where deliveries from the log are pushed.
    pub held: Arc<HeldConnections>,
    /// When each send in flight here began, until the log reader fans it out.
    pub send_clock: Arc<send_clock::SendClock>,
    /// The log, read back by catch-ups.
    pub kafka: writer::KafkaArgs,
    pub limits: Limits,
    /// Becomes `true` once, on shutdown; every connection watches it.
    pub shutdown: watch::Receiver<bool>,
}

/// Resolves once the shutdown flag is up (the flag's read guard is not held across awaits).
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
