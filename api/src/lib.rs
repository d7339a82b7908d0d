//! The REST API of the chat (the web client's side of the contract).
//!
//! Commands become events appended through the [`writer`]; reads come from the Postgres
//! projection through the [`store`]. [`app`] builds the whole HTTP surface.

mod conversations;
mod cors;
pub mod error;
mod extract;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use store::Store;
use writer::Writer;

pub use error::ApiError;

/// The REST API's own settings.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpArgs {
    /// Prefix of every REST route (PageNow used `/prod`).
    #[arg(long, env = "CHAT_BASE_PATH", default_value = "")]
    pub base_path: String,
    /// Allowed CORS origins, comma-separated; `scheme://*` allows every origin of a scheme.
    #[arg(
        long,
        env = "CHAT_CORS_ORIGINS",
        default_value = "http://localhost:4200",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// How long `POST /conversation` waits for the projection to hold a new conversation.
    #[arg(long, env = "CHAT_PROJECTION_WAIT_MS", default_value_t = 10_000)]
    pub projection_wait_ms: u64,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub writer: Writer,
    pub verifier: auth::Verifier,
    /// How long a command waits for its event to reach the projection.
    pub projection_wait: Duration,
}

impl AppState {
    pub fn new(store: Store, writer: Writer, verifier: auth::Verifier, http: &HttpArgs) -> Self {
        Self {
            store,
            writer,
            verifier,
            projection_wait: Duration::from_millis(http.projection_wait_ms),
        }
    }
}

/// The OpenAPI document of this API, served at `<base>/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every operation of the API as (method, path relative to the base path, handler). The
/// router is built from this list, and a test checks it against the OpenAPI document.
pub fn operations() -> Vec<(Method, &'static str, MethodRouter<Arc<AppState>>)> {
    use conversations::*;
    vec![
        (Method::POST, "/conversation", post(create_conversation)),
        (
            Method::GET,
            "/conversation/direct/{userId}",
            get(direct_conversation),
        ),
        (Method::GET, "/conversations", get(list_conversations)),
        (
            Method::GET,
            "/conversations/{conversationId}",
            get(get_conversation),
        ),
        (
            Method::GET,
            "/conversations/{conversationId}/messages",
            get(list_messages),
        ),
        (
            Method::GET,
            "/conversations/{conversationId}/participants",
            get(list_participants),
        ),
    ]
}

/// The whole HTTP surface: the contract's routes under `base_path`, the OpenAPI document, and
/// health and metrics at the root.
pub fn app(
    state: AppState,
    http: &HttpArgs,
    metrics: telemetry::PrometheusHandle,
    readiness: telemetry::Readiness,
) -> Router {
    let state = Arc::new(state);
    let mut api = Router::new().route("/openapi.json", get(openapi));
    for (_, path, handler) in operations() {
        api = api.route(path, handler);
    }
    let api = api
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(middleware::from_fn(record_request));
    let base = normalise_base_path(&http.base_path);
    let routed = if base.is_empty() {
        api
    } else {
        Router::new().nest(&base, api)
    };
    routed
        .merge(telemetry::health_routes(metrics, readiness))
        .layer(cors::layer(&http.cors_origins))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// `"/prod/"` → `"/prod"`, `"prod"` → `"/prod"`, `"/"` → `""`.
pub fn normalise_base_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Counts requests and their latency per route and status.
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("chat_http_request_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("chat_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// Readiness of the REST API: the projection and the log answer.
pub fn readiness(store: Store, writer: Writer) -> telemetry::Readiness {
    telemetry::Readiness::new(move || {
        let store = store.clone();
        let writer = writer.clone();
        async move {
            vec![
                telemetry::Check {
                    dependency: "postgres",
                    ok: store::ping(store.pool()).await,
                    detail: None,
                },
                telemetry::Check {
                    dependency: "kafka",
                    ok: writer.ready().await,
                    detail: None,
                },
            ]
        }
    })
}
