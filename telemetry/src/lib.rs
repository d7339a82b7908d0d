//! Observability shared by every service: `tracing` logs (human-readable, or JSON lines when
//! `CHAT_LOG_FORMAT=json`), a Prometheus recorder, and the `/healthz`, `/readyz` and `/metrics`
//! routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

/// Log settings, flattened into every service's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// `text` for people, `json` for log pipelines.
    #[arg(long = "log-format", env = "CHAT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Installs the global `tracing` subscriber. The filter comes from `RUST_LOG` (default `info`).
pub fn init_logs(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second initialisation (tests starting several services in one process) is harmless.
    let _ = if args.log_format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global Prometheus recorder, or returns the one already installed.
pub fn init_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// One dependency's answer to a readiness check.
pub struct Check {
    pub dependency: &'static str,
    pub ok: bool,
}

type CheckFuture = Pin<Box<dyn Future<Output = Vec<Check>> + Send>>;

/// Why a dependency is not ready, in words an operator can act on.
type Reasons = Arc<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>;

/// Asks every dependency of a service whether it answers.
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> CheckFuture + Send + Sync>, Option<Reasons>);

impl Readiness {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Check>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(check())), None)
    }

    /// Adds why checks fail: `/readyz` lists them under `reasons`, by dependency.
    pub fn with_reasons(
        mut self,
        reasons: impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static,
    ) -> Self {
        self.1 = Some(Arc::new(reasons));
        self
    }
}

#[derive(Clone)]
struct HealthState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// `/healthz` (the process runs), `/readyz` (its dependencies answer: 200 or 503, with each
/// dependency named) and `/metrics` (Prometheus text format).
pub fn health_routes<S>(metrics: PrometheusHandle, readiness: Readiness) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { metrics, readiness })
}

async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    let checks = (state.readiness.0)().await;
    let all_ok = checks.iter().all(|c| c.ok);
    let body: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|c| (c.dependency.to_owned(), c.ok.into()))
        .collect();
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({ "ready": all_ok, "dependencies": body });
    let reasons = state.readiness.1.as_ref().map(|r| r()).unwrap_or_default();
    if !reasons.is_empty() {
        let mut by_dependency = serde_json::Map::new();
        for (dependency, reason) in reasons {
            by_dependency.insert(dependency.to_owned(), reason.into());
        }
        body["reasons"] = by_dependency.into();
    }
    (status, axum::Json(body))
}

async fn render_metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
