//! The REST API of the chat (the web client's side of the contract).
//!
//! Commands become events appended through the [`writer`]; reads come from the Postgres
//! projection through the [`store`]. [`app`] builds the whole HTTP surface.

mod conversations;
mod cors;
pub mod error;
mod extract;
pub mod server;

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
    pub base_path: telemetry::BasePath,
    /// Allowed CORS origins, comma-separated; `scheme://*` allows every origin of a scheme.
    #[arg(
        long,
        env = "CHAT_CORS_ORIGINS",
        default_value = "http://localhost:4200",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// How long `POST /conversation` waits for the projection to hold a new conversation.
    #[arg(long, env = "CHAT_PROJECTION_WAIT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub projection_wait_ms: u64,
}

/// What the REST listener lets a client hold.
#[derive(clap::Args, Clone, Debug)]
pub struct ListenArgs {
    /// Open TCP connections this process serves at once; accepting waits while it is full.
    #[arg(long, env = "CHAT_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub http_max_connections: usize,
    /// How long a new connection, or a keep-alive one after its previous response, has to
    /// send a complete request head before it is closed.
    #[arg(long, env = "CHAT_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_secs: u64,
    /// Longest a request may take once its head arrived, body included (a body sent one byte
    /// at a time is cut off): 408. Keep it above `CHAT_PROJECTION_WAIT_MS`.
    #[arg(long, env = "CHAT_HTTP_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_request_timeout_secs: u64,
}

/// Per-user rate limit of `POST /conversation`, shared by every API process through Redis.
#[derive(clap::Args, Clone, Debug)]
pub struct RateArgs {
    #[command(flatten)]
    pub redis: rate_limit::RedisArgs,
    /// `POST /conversation` requests per user per minute, across all API processes.
    #[arg(long, env = "CHAT_RATE_CREATE_CONVERSATION_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_conversation_per_minute: u32,
    /// `POST /conversation` requests a user may make at once.
    #[arg(long, env = "CHAT_RATE_CREATE_CONVERSATION_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_conversation_burst: u32,
}

impl RateArgs {
    pub fn rate_limits(&self) -> Result<RateLimits, redis::RedisError> {
        use secrecy::ExposeSecret;
        Ok(RateLimits {
            limiter: rate_limit::Limiter::new(self.redis.url.expose_secret(), &self.redis.prefix)?,
            create_conversation: rate_limit::Rate {
                per_minute: self.create_conversation_per_minute,
                burst: self.create_conversation_burst,
            },
        })
    }
}

/// The limiter and the budgets of the limited routes.
#[derive(Clone)]
pub struct RateLimits {
    pub limiter: rate_limit::Limiter,
    pub create_conversation: rate_limit::Rate,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub writer: Writer,
    pub verifier: auth::Verifier,
    /// How long a command waits for its event to reach the projection.
    pub projection_wait: Duration,
    /// Per-user rate limits (none: unlimited, e.g. in-process benchmarks).
    pub rate_limits: Option<RateLimits>,
    /// Longest a request may take, body included (`CHAT_HTTP_REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
}

impl AppState {
    pub fn new(store: Store, writer: Writer, verifier: auth::Verifier, http: &HttpArgs) -> Self {
        Self {
            store,
            writer,
            verifier,
            projection_wait: Duration::from_millis(http.projection_wait_ms),
            rate_limits: None,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Spends one `POST /conversation` of `user`'s budget, or refuses with 429.
    pub(crate) async fn limit_create_conversation(&self, user: &str) -> Result<(), ApiError> {
        let Some(limits) = &self.rate_limits else {
            return Ok(());
        };
        match limits
            .limiter
            .check("create-conversation", user, limits.create_conversation)
            .await
        {
            rate_limit::Verdict::Allowed => Ok(()),
            rate_limit::Verdict::Limited { retry_after } => {
                Err(ApiError::RateLimited { retry_after })
            }
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
/// `health` (the operational routes this listener carries, see [`telemetry::serve_health`]) at
/// the root.
pub fn app(state: AppState, http: &HttpArgs, health: Router) -> Router {
    let request_timeout = state.request_timeout;
    let state = Arc::new(state);
    let mut api = Router::new().route("/openapi.json", get(openapi));
    for (_, path, handler) in operations() {
        api = api.route(path, handler);
    }
    let api = api
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    let routed = if http.base_path.is_empty() {
        api
    } else {
        Router::new().nest(http.base_path.as_str(), api)
    };
    let routed = routed
        .merge(health)
        // Outside the base path too, an error is JSON.
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(
            move |request: Request, next: Next| async move {
                tokio::time::timeout(request_timeout, next.run(request))
                    .await
                    .unwrap_or_else(|_| ApiError::RequestTimeout.into_response())
            },
        ))
        .layer(middleware::from_fn(record_request));
    cors::apply(routed, &http.cors_origins).layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Counts requests and their latency per route and status. Every label comes from a fixed
/// set, so no client can make new series: the route is a template of the router (or
/// `unmatched`), the method one of [`method_label`]'s, the status a number.
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("chat_http_request_seconds", "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("chat_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The standard methods by name; any other method (clients may invent them) is `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
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
