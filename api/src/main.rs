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
    let metrics = telemetry::init_metrics();
    let store = store::Store::new(config.database.pool()?);
    let writer = writer::Writer::new(&config.kafka)?;
    let verifier = auth::Verifier::new(&config.auth)?;
    let readiness = api::readiness(store.clone(), writer.clone());
    let state = api::AppState::new(store, writer, verifier, &config.http);
    let app = api::app(state, &config.http, metrics, readiness);

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, base_path = %config.http.base_path, "REST API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(telemetry::shutdown_signal())
        .await?;
    Ok(())
}
