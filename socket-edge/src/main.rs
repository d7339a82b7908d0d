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
    /// Where the WebSocket edge (and its /healthz, /readyz, /metrics) listens.
    #[arg(long, env = "CHAT_WS_ADDR", default_value = "127.0.0.1:8081")]
    ws_addr: SocketAddr,
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
    let config = Config::parse();
    telemetry::init_logs(&config.log);
    let metrics = telemetry::init_metrics();
    let args = &config.edge;
    let edge_id = args
        .edge_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());

    let store = store::Store::new(config.database.pool()?);
    let writer = writer::Writer::new(&config.kafka)?;
    let verifier = auth::Verifier::new(&config.auth)?;
    let redis = Redis::new(args.redis_url.expose_secret(), &args.redis_prefix)?;
    let presence_ttl = Duration::from_secs(args.presence_ttl_secs.max(3));
    let presence = Presence::new(redis.clone(), edge_id.clone(), presence_ttl);
    let recent_sends =
        RecentSends::new(redis.clone(), Duration::from_secs(args.dedupe_window_secs));
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
    let edge = Arc::new(Edge {
        verifier,
        store,
        writer,
        presence,
        recent_sends,
        held,
        limits: Limits {
            max_connections_per_user: args.max_connections_per_user,
            max_frame_bytes: args.max_frame_bytes,
            outbound_queue: args.outbound_queue.max(1),
            close_grace: Duration::from_secs(2),
        },
        shutdown: shutdown.clone(),
    });
    let base_path = args.normalised_base_path();
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut listener = Listener {
        listener: tokio::net::TcpListener::bind(config.ws_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.ws_addr))?,
        limit: Arc::new(Semaphore::new(args.max_open_connections)),
        app: app(edge, &base_path, metrics, readiness),
        shutdown: shutdown.clone(),
        done,
        send_buffer_bytes: args.send_buffer_bytes,
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
        for chunk in connections.chunks(1000) {
            if let Err(e) = presence.refresh(chunk).await {
                tracing::warn!(error = %e, "cannot refresh registrations");
                break;
            }
        }
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
