//! CORS for the web client, which is served from another origin and sends `Authorization`.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header, request::Parts};
use axum::middleware::{self, Next};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Preflights are answered on every route; a configured origin is echoed back, an origin that
/// is not configured gets no CORS headers at all (tower-http's layer would still describe the
/// allowed methods and headers to it: they are taken off on the way out).
pub fn apply(router: Router, origins: &[String]) -> Router {
    let allowed = Arc::new(AllowedOrigins::new(origins));
    router
        .layer(layer(allowed.clone()))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let allowed = allowed.clone();
            async move {
                let stranger = request
                    .headers()
                    .get(header::ORIGIN)
                    .is_some_and(|o| !o.to_str().is_ok_and(|o| allowed.allows(o)));
                let mut response = next.run(request).await;
                if stranger {
                    let headers = response.headers_mut();
                    let cors: Vec<HeaderName> = headers
                        .keys()
                        .filter(|name| name.as_str().starts_with("access-control-"))
                        .cloned()
                        .collect();
                    for name in cors {
                        headers.remove(name);
                    }
                }
                response
            }
        }))
}

fn layer(allowed: Arc<AllowedOrigins>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(
            move |origin: &HeaderValue, _: &Parts| origin.to_str().is_ok_and(|o| allowed.allows(o)),
        ))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            HeaderName::from_static("content-type"),
            HeaderName::from_static("authorization"),
            HeaderName::from_static("x-amz-date"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-amz-security-token"),
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Exact origins, plus `scheme://*` entries that allow every origin of that scheme (such as
/// `chrome-extension://*` for every extension).
#[derive(Clone, Debug)]
struct AllowedOrigins {
    exact: Vec<String>,
    schemes: Vec<String>,
}

impl AllowedOrigins {
    fn new(origins: &[String]) -> Self {
        let mut exact = Vec::new();
        let mut schemes = Vec::new();
        for origin in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            match origin.strip_suffix('*') {
                Some(prefix) if prefix.ends_with("://") => schemes.push(prefix.to_owned()),
                _ => exact.push(origin.trim_end_matches('/').to_owned()),
            }
        }
        Self { exact, schemes }
    }

    fn allows(&self, origin: &str) -> bool {
        self.exact.iter().any(|o| o == origin)
            || self
                .schemes
                .iter()
                .any(|s| origin.len() > s.len() && origin.starts_with(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_scheme_wide_origins() {
        let allowed = AllowedOrigins::new(&[
            "http://localhost:4200".into(),
            "https://chat.example.com/".into(),
            "chrome-extension://*".into(),
        ]);
        assert!(allowed.allows("http://localhost:4200"));
        assert!(allowed.allows("https://chat.example.com"));
        assert!(allowed.allows("chrome-extension://abcdefghijklmnop"));
        assert!(!allowed.allows("chrome-extension://"));
        assert!(!allowed.allows("http://localhost:4201"));
        assert!(!allowed.allows("https://evil.example.com"));
    }
}
