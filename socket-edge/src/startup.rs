//! The edge's wiring, in the shape of zero2prod's `Application::build(…).run_until_stopped()`:
//! [`Application::build`] reads nothing but its [`Config`], binds the listeners, starts the log
//! tail and the registration refresh; [`Application::run_until_stopped`] serves until a shutdown
//! future resolves, then runs the shutdown sequence. `main` only reads the configuration and
//! calls both, so a test can run an edge in-process.
//!
//! Invariants: the verifier is built first (settings that would let anyone mint tokens stop the
//! edge before anything listens); every listener is bound through [`telemetry::listening::bind`],
//! so port 0 works and the bound address is reported; on shutdown the edge stops accepting,
//! every connection closes with 1001 and unregisters, and `run_until_stopped` returns once they
//! have all finished or `CHAT_WS_SHUTDOWN_TIMEOUT_SECS` passed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use secrecy::ExposeSecret;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::catch_up::CatchUpLimits;
use crate::delivery::{HeldConnections, LogTail};
use crate::presence::{Presence, Redis};
use crate::recent_sends::RecentSends;
use crate::server::{Listener, app};
use crate::{Edge, EdgeArgs, Limits};

/// The settings naming the listeners (also in their `listening` log lines).
const WS_ADDR: &str = "CHAT_WS_ADDR";
const OPS_ADDR: &str = "CHAT_WS_OPS_ADDR";

/// Everything the edge process reads from its command line and environment.
#[derive(Parser, Debug)]
#[command(
    name = "socket-edge",
    version,
    about = "The chat's WebSocket edge (the extension's side of the contract)"
)]
pub struct Config {
    /// Where the WebSocket edge (and its /healthz, and /readyz, /metrics unless
    /// CHAT_WS_OPS_ADDR is set) listens (port 0: any free port, reported in the `listening`
    /// log line).
    #[arg(long, env = WS_ADDR, default_value = "127.0.0.1:8081")]
    pub ws_addr: SocketAddr,
    /// Where /readyz and /metrics listen instead (unset: on CHAT_WS_ADDR).
    #[arg(long, env = OPS_ADDR)]
    pub ops_addr: Option<SocketAddr>,
    /// Threads that run the connections and the deliveries. 1 (the default) runs everything
    /// on one thread, which costs the least CPU per delivery (a delivery wakes its connection
    /// on the same thread, with no wake-up across threads); give more to an edge that needs
    /// more than one core.
    #[arg(long, env = "CHAT_WS_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    #[command(flatten)]
    pub kafka: writer::KafkaArgs,
    #[command(flatten)]
    pub database: store::DatabaseArgs,
    #[command(flatten)]
    pub log: telemetry::LogArgs,
}

impl Config {
    /// The runtime `main` runs the edge on, per [`Config::worker_threads`].
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(n.into());
                builder
            }
        };
        builder.enable_all().build()
    }

    /// The configuration given by `args` (flags, the program name first) and the defaults, with
    /// the environment ignored: an edge a test runs in-process is configured by the test alone.
    pub fn from_flags<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::command().mut_args(|arg| arg.env(None::<&'static str>));
        Self::from_arg_matches(&command.try_get_matches_from(args)?)
    }
}

/// What every connection shares, built from `config` without touching the network (every
/// client connects lazily): the [`Edge`], and Redis for the readiness check.
fn wire(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<(Arc<Edge>, Redis)> {
    // First: settings that would let anyone mint tokens stop the process before anything runs.
    let verifier = auth::Verifier::new(&config.auth, config.ws_addr)?;
    let args = &config.edge;
    let edge_id = args
        .edge_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let redis = Redis::new(args.redis.url.expose_secret(), &args.redis.prefix)?;
    let presence_ttl = Duration::from_secs(args.presence_ttl_secs);
    let edge = Edge {
        verifier,
        store: store::Store::new(config.database.pool()?),
        writer: writer::Writer::new(&config.kafka)?,
        presence: Presence::new(redis.clone(), edge_id, presence_ttl),
        recent_sends: RecentSends::new(redis.clone(), Duration::from_secs(args.dedupe_window_secs)),
        limiter: rate_limit::Limiter::new(args.redis.url.expose_secret(), &args.redis.prefix)?,
        held: Arc::new(HeldConnections::default()),
        send_clock: Arc::default(),
        limits: limits(args),
        kafka: config.kafka.clone(),
        shutdown,
    };
    Ok((Arc::new(edge), redis))
}

/// The [`Edge`] `config` describes, connected lazily (nothing is reached before it is used):
/// what [`server::app`](crate::server::app) serves, for tests of the HTTP surface.
pub fn edge(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Arc<Edge>> {
    Ok(wire(config, shutdown)?.0)
}

/// The per-connection limits of `args`.
fn limits(args: &EdgeArgs) -> Limits {
    Limits {
        max_connections_per_user: args.max_connections_per_user,
        max_frame_bytes: args.max_frame_bytes,
        outbound_queue: args.outbound_queue,
        close_grace: Duration::from_secs(2),
        upgrade_timeout: Duration::from_secs(args.upgrade_timeout_secs),
        ping_interval: Duration::from_secs(args.ping_interval_secs),
        max_missed_pongs: args.max_missed_pongs,
        rates: args.rates.rates(),
        catch_up: CatchUpLimits {
            max_events: args.catch_up_max_events,
            max_age: Duration::from_secs(args.catch_up_max_age_secs),
            patience: Duration::from_secs(10),
        },
        catch_up_grace: Duration::from_millis(args.catch_up_grace_ms),
    }
}

/// An edge whose listeners are bound and whose background tasks run; it accepts connections
/// once [`Application::run_until_stopped`] is called.
pub struct Application {
    /// Accepts and serves connections.
    listener: Listener,
    /// The address the WebSocket listener got (the configured one, or the kernel's pick for
    /// port 0).
    addr: SocketAddr,
    /// The address of the operational listener, when there is one.
    ops_addr: Option<SocketAddr>,
    /// Raised once, on shutdown: every connection and task of the edge watches it.
    stop: watch::Sender<bool>,
    /// Closes when every connection has finished (each holds a sender).
    all_done: mpsc::Receiver<()>,
    /// The log tail, given a moment to finish the delivery under way on shutdown.
    consuming: JoinHandle<()>,
    /// How long connections get to close on shutdown.
    shutdown_timeout: Duration,
}

impl Application {
    /// Builds the edge `config` describes, binds its listeners and starts its background tasks.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let (stop, shutdown) = watch::channel(false);
        let (edge, redis) = wire(config, shutdown.clone())?;
        let metrics = telemetry::init_metrics();
        let args = &config.edge;

        let log_tail = LogTail::new(&config.kafka);
        let positioned = log_tail.positioned();
        let consuming = tokio::spawn(log_tail.run(
            edge.store.clone(),
            edge.held.clone(),
            edge.send_clock.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(refresh_registrations(
            edge.presence.clone(),
            edge.held.clone(),
            Duration::from_secs(args.presence_ttl_secs) / 3,
            shutdown.clone(),
        ));

        let readiness = {
            let (store, writer) = (edge.store.clone(), edge.writer.clone());
            telemetry::Readiness::new(move || {
                let (store, writer, redis, positioned) = (
                    store.clone(),
                    writer.clone(),
                    redis.clone(),
                    positioned.clone(),
                );
                async move {
                    let (database, kafka, redis) =
                        tokio::join!(store::ping(store.pool()), writer.ready(), redis.ping());
                    let check = |dependency, ok| telemetry::Check {
                        dependency,
                        ok,
                        detail: None,
                    };
                    vec![
                        check("postgres", database),
                        check("kafka", kafka),
                        check("redis", redis),
                        check("log_position", positioned.load(Ordering::Acquire)),
                    ]
                }
            })
        };
        let ops = match config.ops_addr {
            Some(addr) => Some(telemetry::listening::bind(OPS_ADDR, addr).await?),
            None => None,
        };
        let ops_addr = ops.as_ref().map(|l| l.local_addr()).transpose()?;
        let health = telemetry::serve_health(ops, metrics, readiness);
        let base_path = args.base_path.to_string();
        let edge_id = edge.presence.edge_id().to_owned();
        let (done, all_done) = mpsc::channel::<()>(1);
        let listener = Listener {
            listener: telemetry::listening::bind(WS_ADDR, config.ws_addr).await?,
            limit: Arc::new(Semaphore::new(args.max_open_connections)),
            app: app(edge, &base_path, health),
            shutdown,
            done,
            send_buffer_bytes: args.send_buffer_bytes,
            header_timeout: Duration::from_secs(args.header_timeout_secs),
        };
        let addr = listener.listener.local_addr()?;
        tracing::info!(
            base_path = %base_path, edge_id = %edge_id, topic = %config.kafka.topic,
            "socket-edge serving"
        );
        Ok(Self {
            listener,
            addr,
            ops_addr,
            stop,
            all_done,
            consuming,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        })
    }

    /// Where the WebSocket listener is bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/readyz` and `/metrics` are served, when not on [`Application::addr`].
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Serves until `shutdown` resolves; then stops accepting, tells every connection (each
    /// closes with 1001 and unregisters) and waits for them, at most the shutdown timeout.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let Self {
            mut listener,
            stop,
            mut all_done,
            consuming,
            shutdown_timeout,
            ..
        } = self;
        tokio::select! {
            _ = listener.run() => {}
            _ = shutdown => {}
        }
        let _ = stop.send(true);
        drop(listener);
        if tokio::time::timeout(shutdown_timeout, all_done.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                patience = ?shutdown_timeout,
                "connections still open at the shutdown deadline; exiting anyway"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), consuming).await;
        tracing::info!("socket-edge stopped");
    }
}

/// Keeps the Redis registrations of the connections held here alive; if this process dies they
/// expire within one TTL.
async fn refresh_registrations(
    presence: Presence,
    held: Arc<HeldConnections>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = crate::stopping(&mut shutdown) => return,
        }
        let connections = held.snapshot();
        presence.refresh_held(&held, &connections).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn configuration_is_consistent() {
        super::Config::command().debug_assert();
    }

    #[test]
    fn flags_alone_configure_an_edge() {
        let config = super::Config::from_flags(["socket-edge", "--ws-addr", "127.0.0.1:0"])
            .expect("flags parse");
        assert_eq!(config.ws_addr.port(), 0);
        assert!(config.edge.base_path.is_empty());
    }

    #[test]
    fn one_runtime_thread_unless_asked() {
        let config = |flags: &[&str]| {
            super::Config::from_flags(["socket-edge"].iter().chain(flags).copied())
        };
        let one = config(&[]).expect("defaults parse");
        assert_eq!(one.worker_threads, 1);
        assert_eq!(
            one.runtime().unwrap().handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let two = config(&["--worker-threads", "2"]).expect("flags parse");
        assert_eq!(
            two.runtime().unwrap().handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert!(
            config(&["--worker-threads", "0"]).is_err(),
            "no thread is refused at start-up"
        );
    }
}
