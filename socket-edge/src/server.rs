//! Accepting connections, in the shape of mini-redis: a [`Listener`] that accepts while a
//! semaphore has permits, one task per connection, a shutdown signal every connection watches,
//! and an mpsc channel whose closing says every connection has finished.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::Edge;
use crate::connection;

/// The whole HTTP surface: the WebSocket path under the base path (with and without its
/// trailing slash), the AsyncAPI document at `<base>/asyncapi.json`, and `health` (the operational routes this listener carries, see
/// [`telemetry::serve_health`]) at the root.
pub fn app(edge: Arc<Edge>, base_path: &str, health: Router) -> Router {
    let ws = Router::new().route(
        if base_path.is_empty() { "/" } else { base_path },
        get(connection::upgrade),
    );
    let ws = if base_path.is_empty() {
        ws
    } else {
        ws.route(&format!("{base_path}/"), get(connection::upgrade))
    };
    ws.route(&format!("{base_path}/asyncapi.json"), get(asyncapi))
        .with_state(edge)
        .merge(health)
        .fallback(|| async { not_found() })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
}

/// The published AsyncAPI document (socket-edge/asyncapi.json), as built in.
async fn asyncapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::asyncapi::PUBLISHED,
    )
}

/// Errors outside the WebSocket path are JSON like every other error of the service.
fn not_found() -> axum::response::Response {
    error(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    )
}

fn method_not_allowed() -> axum::response::Response {
    error(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    )
}

fn error(status: axum::http::StatusCode, code: &str, message: &str) -> axum::response::Response {
    telemetry::error_response(status, code, message)
}

/// Accepts TCP connections and serves each on its own task.
pub struct Listener {
    /// The bound socket.
    pub listener: TcpListener,
    /// Caps open connections (`CHAT_WS_MAX_CONNECTIONS`); a permit lives as long as its socket,
    /// through the WebSocket upgrade.
    pub limit: Arc<Semaphore>,
    /// The HTTP surface served on every connection.
    pub app: Router,
    /// Flips to `true` on shutdown: stop accepting, let connections close.
    pub shutdown: watch::Receiver<bool>,
    /// Cloned into every socket; the receiver sees the channel close when all are gone.
    pub done: mpsc::Sender<()>,
    /// SO_SNDBUF of each socket (0: the kernel's autotuning): bounds the kernel memory a client
    /// that stops reading can pin, and how soon its outbound queue overflows.
    pub send_buffer_bytes: usize,
    /// A connection that has not sent a complete request head this long after connecting (or
    /// after its previous response) is closed (`CHAT_WS_HEADER_TIMEOUT_SECS`).
    pub header_timeout: Duration,
}

impl Listener {
    /// Accepts until shutdown.
    pub async fn run(&mut self) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let permit = tokio::select! {
                permit = self.limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = crate::stopping(&mut shutdown) => return,
            };
            let stream = tokio::select! {
                accepted = self.accept() => accepted,
                _ = crate::stopping(&mut shutdown) => return,
            };
            // Small frames must leave at once, not wait for Nagle.
            let _ = stream.set_nodelay(true);
            if self.send_buffer_bytes > 0 {
                let _ =
                    socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer_bytes);
            }
            let socket = Socket {
                stream,
                _permit: permit,
                _done: self.done.clone(),
            };
            let service = TowerToHyperService::new(self.app.clone());
            let mut shutdown = self.shutdown.clone();
            let header_timeout = self.header_timeout;
            tokio::spawn(async move {
                // hyper starts the header timer when it waits for a request head: on a fresh
                // connection and on an idle keep-alive one alike.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(socket), service)
                    .with_upgrades();
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = crate::stopping(&mut shutdown) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    }

    /// Accepts one connection, backing off while accepting fails (e.g. out of file descriptors).
    async fn accept(&mut self) -> TcpStream {
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

/// A TCP stream that holds its connection permit and a clone of the "done" sender for as long
/// as it lives, also after it became a WebSocket.
struct Socket {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _done: mpsc::Sender<()>,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
