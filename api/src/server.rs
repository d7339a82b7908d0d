//! Accepting connections (the socket-edge's shape, after mini-redis): a [`Listener`] accepts
//! while a semaphore has permits, serves each connection on its own task with a header-read
//! timeout, and on shutdown lets every connection finish its request.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

/// Accepts TCP connections and serves the REST API on each.
pub struct Listener {
    /// The bound socket.
    pub listener: TcpListener,
    /// Caps open connections (`CHAT_HTTP_MAX_CONNECTIONS`): accepting waits while it is full.
    pub limit: Arc<Semaphore>,
    /// The HTTP surface served on every connection.
    pub app: Router,
    /// A connection that has not sent a complete request head this long after connecting, or
    /// after its previous response, is closed (`CHAT_HTTP_HEADER_TIMEOUT_SECS`): the
    /// slow-header guard and the keep-alive idle timeout in one (hyper runs one timer for both).
    pub header_timeout: Duration,
}

impl Listener {
    /// Serves until `shutdown` resolves, then waits (at most `patience`) for open requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>, patience: Duration) {
        let (stop, stopping) = watch::channel(false);
        let (done, mut all_done) = mpsc::channel::<()>(1);
        tokio::select! {
            _ = self.accept_loop(&stopping, &done) => {}
            _ = shutdown => {}
        }
        let _ = stop.send(true);
        drop(done);
        if tokio::time::timeout(patience, all_done.recv())
            .await
            .is_err()
        {
            tracing::warn!(?patience, "requests still open at the shutdown deadline");
        }
    }

    async fn accept_loop(&self, stopping: &watch::Receiver<bool>, done: &mpsc::Sender<()>) {
        loop {
            let permit = self
                .limit
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let stream = self.accept().await;
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(self.app.clone());
            let header_timeout = self.header_timeout;
            let mut stopping = stopping.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = stopped(&mut stopping) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
                drop((permit, done));
            });
        }
    }

    /// Accepts one connection, backing off while accepting fails (e.g. out of file descriptors).
    async fn accept(&self) -> TcpStream {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => return stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Resolves once the shutdown flag is up (the flag's read guard is not held across awaits).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}
