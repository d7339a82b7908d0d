//! The REST API process.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The chat's REST API (the web client's side of the contract)"
)]
struct Config {
    /// Where the REST API listens.
    #[arg(long, env = "CHAT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Where /readyz and /metrics listen instead (unset: on CHAT_HTTP_ADDR).
    #[arg(long, env = "CHAT_HTTP_OPS_ADDR")]
    ops_addr: Option<SocketAddr>,
    #[command(flatten)]
    http: api::HttpArgs,
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
    // First: settings that would let anyone mint tokens stop the process before anything runs.
    let verifier = auth::Verifier::new(&config.auth, config.http_addr)?;
    let metrics = telemetry::init_metrics();
    let store = store::Store::new(config.database.pool()?);
    let writer = writer::Writer::new(&config.kafka)?;
    let readiness = api::readiness(store.clone(), writer.clone());
    let health = telemetry::serve_health(config.ops_addr, metrics, readiness).await?;
    let state = api::AppState::new(store, writer, verifier, &config.http);
    let app = api::app(state, &config.http, health);

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, base_path = %config.http.base_path, "REST API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(telemetry::shutdown_signal())
        .await?;
    Ok(())
}
