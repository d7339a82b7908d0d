//! `/readyz` answers from a result at most a second old: a flood of probes costs one check of
//! the dependencies, not one per probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use telemetry::{Check, READINESS_MAX_AGE, Readiness};
use tower::ServiceExt;

/// A readiness whose check takes `pause` and counts its runs; `ok` decides its answer.
fn counted(
    pause: Duration,
    ok: Arc<std::sync::atomic::AtomicBool>,
) -> (Readiness, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let readiness = Readiness::new(move || {
        let counter = counter.clone();
        let ok = ok.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
            vec![Check {
                dependency: "postgres",
                ok: ok.load(Ordering::SeqCst),
                detail: None,
            }]
        }
    });
    (readiness, runs)
}

async fn probe(app: &Router) -> StatusCode {
    app.clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_probes_costs_one_check_per_second() {
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (readiness, runs) = counted(Duration::from_millis(50), ok.clone());
    let app: Router = telemetry::health_routes(telemetry::init_metrics(), readiness);

    // 1,000 concurrent probes while the first check is under way: they share it.
    let probes: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { probe(&app).await })
        })
        .collect();
    for p in probes {
        assert_eq!(p.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Within the second: still the cached answer, even though the dependency went down.
    ok.store(false, Ordering::SeqCst);
    assert_eq!(probe(&app).await, StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // After it: one new check, which sees the change.
    tokio::time::sleep(READINESS_MAX_AGE + Duration::from_millis(50)).await;
    for _ in 0..100 {
        assert_eq!(probe(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn operational_routes_move_to_their_own_listener() {
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (readiness, _) = counted(Duration::ZERO, ok);
    let metrics = telemetry::init_metrics();

    // Unset: everything on the main listener.
    let main: Router = telemetry::serve_health(None, metrics.clone(), readiness.clone());
    for path in ["/healthz", "/readyz", "/metrics"] {
        let status = main
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    // Set: the main listener keeps /healthz only; the others answer on the ops address.
    let ops = telemetry::listening::bind("TEST_OPS_ADDR", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let main: Router = telemetry::serve_health(Some(ops), metrics, readiness);
    for (path, expected) in [
        ("/healthz", StatusCode::OK),
        ("/readyz", StatusCode::NOT_FOUND),
        ("/metrics", StatusCode::NOT_FOUND),
    ] {
        let status = main
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected, "{path}");
    }
    let mut stream = tokio::net::TcpStream::connect(ops_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
