//! Observability shared by every service: `tracing` logs (human-readable, or JSON lines when
//! `CHAT_LOG_FORMAT=json`), a Prometheus recorder, and the `/healthz`, `/readyz` and `/metrics`
//! routes, on the service's own listener or on a separate one ([`serve_health`]); and the two
//! HTTP conventions every service's clients see: the route prefix ([`BasePath`],
//! `CHAT_BASE_PATH`) and the error body ([`error_response`]). Every listener is bound through
//! [`listening::bind`], which logs the address it got.

mod base_path;
mod error_body;

pub use base_path::BasePath;
pub use error_body::{ErrorBody, error_response};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

pub mod listening;

/// Log settings, flattened into every service's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// `text` for people, `json` for log pipelines.
    #[arg(long = "log-format", env = "CHAT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Reads a service's configuration (flags and environment). A value that makes no sense (0
/// connections, a 0 s timeout, …) stops the process here, at start-up, with a message naming
/// the environment variable it came from: clap's own message names only the flag.
pub fn parse_config<C: clap::Parser>() -> C {
    use clap::error::{ContextKind, ContextValue};
    C::try_parse().unwrap_or_else(|error| {
        let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
            error.exit()
        };
        let variable = C::command()
            .get_arguments()
            .find(|a| {
                a.get_long().is_some_and(|long| {
                    let flag = format!("--{long}");
                    arg == &flag || arg.starts_with(&format!("{flag} "))
                })
            })
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned());
        match variable {
            Some(variable) => {
                // "invalid value '0' for CHAT_WS_OUTBOUND_QUEUE (--outbound-queue <…>): …"
                let message = error.to_string();
                let message =
                    message
                        .trim_end()
                        .replacen(arg.as_str(), &format!("{variable} ({arg})"), 1);
                eprintln!("{message}");
                std::process::exit(2);
            }
            None => error.exit(),
        }
    })
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

/// The buckets of every `…_seconds` histogram: fine below 2.5 ms, where a send's stages (the
/// claim, the append, the fan-out) are told apart.
/// (Every bound of earlier releases is kept, so dashboards and alerts keep working.)
pub const SECONDS_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder folds the samples recorded since into its histograms.
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the global Prometheus recorder, or returns the one already installed.
///
/// The recorder keeps every histogram sample until it is folded into the buckets, which a
/// scrape of `/metrics` does, or its upkeep: a thread of its own does it every
/// [`METRICS_UPKEEP_EVERY`], so an instance nobody scrapes does not grow by every sample
/// (16 bytes per append and per delivered event, for ever).
pub fn init_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &SECONDS_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            let upkept = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_EVERY);
                        upkept.run_upkeep();
                    }
                })
                .expect("a thread can be started at start-up");
            handle
        })
        .clone()
}

/// One dependency's answer to a readiness check.
#[derive(Clone, Debug)]
pub struct Check {
    pub dependency: &'static str,
    pub ok: bool,
    /// What an operator needs to know about it, shown under `details` (e.g. how many dead
    /// letters wait, and where).
    pub detail: Option<String>,
}

type CheckFuture = Pin<Box<dyn Future<Output = Vec<Check>> + Send>>;

/// How old a readiness answer may be: probes within it share one check of the dependencies.
pub const READINESS_MAX_AGE: Duration = Duration::from_secs(1);

/// A readiness answer and when it was made.
type Answer = (Instant, Arc<[Check]>);

/// Asks every dependency of a service whether it answers, at most once per
/// [`READINESS_MAX_AGE`]: a flood of probes costs one check (one database connection, one
/// blocking metadata request), never one per probe.
#[derive(Clone)]
pub struct Readiness {
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
    /// The last answer and when it was made. Locked for the whole of a check, so concurrent
    /// probes wait for the one check under way and then read its answer.
    last: Arc<tokio::sync::Mutex<Option<Answer>>>,
    max_age: Duration,
}

impl Readiness {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Check>> + Send + 'static,
    {
        Self {
            check: Arc::new(move || Box::pin(check())),
            last: Arc::new(tokio::sync::Mutex::new(None)),
            max_age: READINESS_MAX_AGE,
        }
    }

    /// The dependencies' answers, at most [`READINESS_MAX_AGE`] old.
    pub async fn checks(&self) -> Arc<[Check]> {
        let mut last = self.last.lock().await;
        if let Some((at, checks)) = &*last
            && at.elapsed() < self.max_age
        {
            return checks.clone();
        }
        let checks: Arc<[Check]> = (self.check)().await.into();
        *last = Some((Instant::now(), checks.clone()));
        checks
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

/// Serves the operational endpoints, and returns the routes the service's main listener carries
/// at its root. With no `ops` listener, that is all three ([`health_routes`]); with one (bound
/// with [`listening::bind`] to an address private to the deployment's network), `/readyz` and
/// `/metrics` are served there, and the main listener keeps only `/healthz`.
pub fn serve_health<S: Clone + Send + Sync + 'static>(
    ops: Option<tokio::net::TcpListener>,
    metrics: PrometheusHandle,
    readiness: Readiness,
) -> Router<S> {
    let Some(listener) = ops else {
        return health_routes(metrics, readiness);
    };
    let routes: Router = health_routes(metrics, readiness);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, routes).await {
            tracing::error!(error = %e, "the operational endpoints' listener failed");
        }
    });
    Router::new().route("/healthz", get(|| async { "ok" }))
}

async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    let checks = state.readiness.checks().await;
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
    let details: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .filter_map(|c| Some((c.dependency.to_owned(), c.detail.clone()?.into())))
        .collect();
    let mut body = serde_json::json!({ "ready": all_ok, "dependencies": body });
    if !details.is_empty() {
        body["details"] = details.into();
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
