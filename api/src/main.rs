//! The REST API process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::Semaphore;

/// The settings naming the listeners (also in their `listening` log lines).
const HTTP_ADDR: &str = "CHAT_HTTP_ADDR";
const OPS_ADDR: &str = "CHAT_HTTP_OPS_ADDR";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The chat's REST API (the web client's side of the contract)"
)]
struct Config {
    /// Where the REST API listens (port 0: any free port, reported in the `listening` log line).
    #[arg(long, env = HTTP_ADDR, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Where /readyz and /metrics listen instead (unset: on CHAT_HTTP_ADDR).
    #[arg(long, env = OPS_ADDR)]
    ops_addr: Option<SocketAddr>,
    #[command(flatten)]
    http: api::HttpArgs,
    #[command(flatten)]
    listen: api::ListenArgs,
    #[command(flatten)]
    rates: api::RateArgs,
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
    let verifier = auth::Verifier::new(&config.auth, config.http_addr)?;
    let metrics = telemetry::init_metrics();
    let store = store::Store::new(config.database.pool()?);
    let writer = writer::Writer::new(&config.kafka)?;
    let readiness = api::readiness(store.clone(), writer.clone());
    let ops = match config.ops_addr {
        Some(addr) => Some(telemetry::listening::bind(OPS_ADDR, addr).await?),
        None => None,
    };
    let health = telemetry::serve_health(ops, metrics, readiness);
    let mut state = api::AppState::new(store, writer, verifier, &config.http);
    state.rate_limits = Some(config.rates.rate_limits()?);
    state.request_timeout = Duration::from_secs(config.listen.http_request_timeout_secs);
    let app = api::app(state, &config.http, health);

    let listener = api::server::Listener {
        listener: telemetry::listening::bind(HTTP_ADDR, config.http_addr).await?,
        limit: Arc::new(Semaphore::new(config.listen.http_max_connections)),
        app,
        header_timeout: Duration::from_secs(config.listen.http_header_timeout_secs),
    };
    tracing::info!(base_path = %config.http.base_path, "REST API serving");
    // Open requests get as long as POST /conversation may wait for the projection, and a bit.
    let patience = Duration::from_millis(config.http.projection_wait_ms) + Duration::from_secs(1);
    listener.run(telemetry::shutdown_signal(), patience).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn configuration_is_consistent() {
        super::Config::command().debug_assert();
    }
}
