//! The projector process: migrations, then the fold loop, with health and metrics on
//! `PROJECTOR_HTTP_ADDR`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use projector::{Projector, ProjectorArgs};

/// The setting naming the listener (also in its `listening` log line).
const HTTP_ADDR: &str = "PROJECTOR_HTTP_ADDR";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Folds the chat event log into the Postgres projection"
)]
struct Config {
    /// Where /healthz, /readyz and /metrics listen (port 0: any free port, reported in the
    /// `listening` log line).
    #[arg(long, env = HTTP_ADDR, default_value = "127.0.0.1:8082")]
    http_addr: SocketAddr,
    #[command(flatten)]
    projector: ProjectorArgs,
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
    let metrics = telemetry::init_metrics();
    let pool = config.database.pool()?;
    let projector = Projector::new(&config.kafka, &config.projector, pool.clone())?;

    let listener = telemetry::listening::bind(HTTP_ADDR, config.http_addr).await?;
    let routes = telemetry::health_routes(metrics, projector.readiness());
    tokio::spawn(async move { axum::serve(listener, routes).await });
    tracing::info!(topic = %config.kafka.topic, "projector started");

    // Dependencies that are down make us wait (and report not-ready), not crash-loop.
    while let Err(e) = store::migrate(&pool, Duration::from_secs(5)).await {
        tracing::error!(error = %e, "migrations failed; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let dlq = projector::dead_letter_topic(&config.kafka.topic);
    while let Err(e) = writer::admin::ensure_topic(&config.kafka.brokers, &dlq, 1).await {
        tracing::warn!(error = %e, topic = dlq, "cannot ensure the dead-letter topic; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    projector.run(telemetry::shutdown_signal()).await
}
