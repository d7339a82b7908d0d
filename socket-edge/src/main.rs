//! The socket-edge process: WebSocket connections in, events to the log, deliveries from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use secrecy::ExposeSecret;
use socket_edge::delivery::{HeldConnections, LogTail};
use socket_edge::presence::{Presence, Redis};
use socket_edge::recent_sends::RecentSends;
use socket_edge::server::{Listener, app};
use socket_edge::{Edge, EdgeArgs, Limits};
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The chat's WebSocket edge (the extension's side of the contract)"
)]
struct Config {
    /// Where the WebSocket edge (and its /healthz, and /readyz, /metrics unless
    /// CHAT_WS_OPS_ADDR is set) listens.
    #[arg(long, env = "CHAT_WS_ADDR", default_value = "127.0.0.1:8081")]
    ws_addr: SocketAddr,
    /// Where /readyz and /metrics listen instead (unset: on CHAT_WS_ADDR).
    #[arg(long, env = "CHAT_WS_OPS_ADDR")]
    ops_addr: Option<SocketAddr>,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    auth: auth::AuthArgs,
    #[command(flatten)]
    kafka: writer::KafkaArgs,
    #[command(flatten)]
    database: store::DatabaseArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = telemetry::parse_config();
    telemetry::init_logs(&config.log);
    // First: settings that would let anyone mint tokens stop the process before anything runs.
    let verifier = auth::Verifier::new(&config.auth, config.ws_addr)?;
    let metrics = telemetry::init_metrics();
    let args = &config.edge;
    let edge_id = args
        .edge_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());

    let store = store::Store::new(config.database.pool()?);
    let writer = writer::Writer::new(&config.kafka)?;
    let redis = Redis::new(args.redis_url.expose_secret(), &args.redis_prefix)?;
    let presence_ttl = Duration::from_secs(args.presence_ttl_secs);
    let presence = Presence::new(redis.clone(), edge_id.clone(), presence_ttl);
    let recent_sends =
        RecentSends::new(redis.clone(), Duration::from_secs(args.dedupe_window_secs));
    let limiter = rate_limit::Limiter::new(args.redis_url.expose_secret(), &args.redis_prefix)?;
    let held = Arc::new(HeldConnections::default());
    let (stop, shutdown) = watch::channel(false);

    let log_tail = LogTail::new(&config.kafka, &edge_id)?;
    let positioned = log_tail.positioned();
    let consuming = tokio::spawn(log_tail.run(store.clone(), held.clone(), shutdown.clone()));
    tokio::spawn(refresh_registrations(
        presence.clone(),
        held.clone(),
        presence_ttl / 3,
        shutdown.clone(),
    ));

    let readiness = {
        let (store, writer, redis) = (store.clone(), writer.clone(), redis.clone());
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
                vec![
                    telemetry::Check {
                        dependency: "postgres",
                        ok: database,
                        detail: None,
                    },
                    telemetry::Check {
                        dependency: "kafka",
                        ok: kafka,
                        detail: None,
                    },
                    telemetry::Check {
                        dependency: "redis",
                        ok: redis,
                        detail: None,
                    },
                    telemetry::Check {
                        dependency: "log_position",
                        ok: positioned.load(Ordering::Acquire),
                        detail: None,
                    },
                ]
            }
        })
    };
    let health = telemetry::serve_health(config.ops_addr, metrics, readiness).await?;
    let edge = Arc::new(Edge {
        verifier,
        store,
        writer,
        presence,
        recent_sends,
        limiter,
        held,
        limits: Limits {
            max_connections_per_user: args.max_connections_per_user,
            max_frame_bytes: args.max_frame_bytes,
            outbound_queue: args.outbound_queue,
            close_grace: Duration::from_secs(2),
            upgrade_timeout: Duration::from_secs(args.upgrade_timeout_secs),
            ping_interval: Duration::from_secs(args.ping_interval_secs),
            max_missed_pongs: args.max_missed_pongs,
            rates: args.rates.rates(),
            catch_up: socket_edge::catch_up::CatchUpLimits {
                max_events: args.catch_up_max_events,
                max_age: Duration::from_secs(args.catch_up_max_age_secs),
                patience: Duration::from_secs(10),
            },
            catch_up_grace: Duration::from_millis(args.catch_up_grace_ms),
        },
        kafka: config.kafka.clone(),
        shutdown: shutdown.clone(),
    });
    let base_path = args.base_path.to_string();
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut listener = Listener {
        listener: tokio::net::TcpListener::bind(config.ws_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.ws_addr))?,
        limit: Arc::new(Semaphore::new(args.max_open_connections)),
        app: app(edge, &base_path, health),
        shutdown: shutdown.clone(),
        done,
        send_buffer_bytes: args.send_buffer_bytes,
        header_timeout: Duration::from_secs(args.header_timeout_secs),
    };
    tracing::info!(
        addr = %config.ws_addr, base_path = %base_path, edge_id = %edge_id,
        topic = %config.kafka.topic, "socket-edge listening"
    );

    tokio::select! {
        _ = listener.run() => {}
        _ = telemetry::shutdown_signal() => {}
    }
    // Stop accepting, tell every connection (each closes with 1001 and unregisters), wait.
    let _ = stop.send(true);
    drop(listener);
    let patience = Duration::from_secs(args.shutdown_timeout_secs);
    if tokio::time::timeout(patience, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            ?patience,
            "connections still open at the shutdown deadline; exiting anyway"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), consuming).await;
    tracing::info!("socket-edge stopped");
    Ok(())
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
            _ = socket_edge::stopping(&mut shutdown) => return,
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
}
