//! A WebSocket client of the edge, as the tests use it: connect with a token, send frames, read
//! the next text frame within a patience, assert silence, read the close code.
//!
//! Every frame sent with [`WsClient::send`] or [`WsClient::feed`] must be a client message of
//! the AsyncAPI document (`socket-edge/asyncapi.json`), and by default every text frame received
//! a server message of it ([`documented`]); [`WsClient::send_text`] sends anything, for the
//! tests of refusals. Control frames are skipped (tungstenite answers pings while a client is
//! read).

use std::fmt::Display;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::{Service, TestEnv, asyncapi};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`WsClient::next`] waits for a frame unless told otherwise.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// `ws://<addr><path_and_query>`.
pub fn url(addr: impl Display, path_and_query: &str) -> String {
    format!("ws://{addr}{path_and_query}")
}

/// The edge's root path with `token` where the extension puts it.
pub fn root_with_token(token: &str) -> String {
    format!("/?Authorization={token}")
}

/// A received frame, unchanged once the AsyncAPI document was found to describe it.
pub fn documented(frame: Value) -> Value {
    if let Err(e) = asyncapi::check_server_frame(&frame) {
        panic!("the AsyncAPI document does not describe the received frame {frame}:\n{e}");
    }
    frame
}

/// A received frame, unchecked (clients that count what reaches them under faults).
pub fn as_sent(frame: Value) -> Value {
    frame
}

/// What a read found.
#[derive(Debug)]
pub enum Received {
    /// A text frame, as JSON (through the client's reader).
    Frame(Value),
    /// Nothing within the patience.
    Silence,
    /// The server's close frame.
    Closed(Option<CloseFrame>),
    /// The connection failed or ended without a close frame.
    Lost(String),
}

/// One connection of one user to an edge.
pub struct WsClient {
    /// The socket itself, for what the methods do not cover (binary frames, a bare close).
    pub ws: Ws,
    /// Applied to every received text frame: checks it, and may reshape it for comparisons.
    reader: fn(Value) -> Value,
    patience: Duration,
}

impl WsClient {
    /// `user`, with a token signed by the test's secret, on the edge's root path.
    pub async fn connect(env: &TestEnv, edge: &Service, user: &str) -> Self {
        Self::connect_at(edge, &root_with_token(&env.token(user))).await
    }

    /// `path_and_query` on `edge` (another base path, a token of the test's own making).
    pub async fn connect_at(edge: &Service, path_and_query: &str) -> Self {
        Self::connect_url(&url(edge.addr, path_and_query))
            .await
            .expect("WebSocket connect")
    }

    /// Connects to `url`; the handshake's error when it fails or is refused.
    pub async fn connect_url(url: &str) -> Result<Self, tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self::over(ws))
    }

    /// A client over a handshake the test made itself (e.g. on a socket with a tiny buffer).
    pub fn over(ws: Ws) -> Self {
        Self {
            ws,
            reader: documented,
            patience: PATIENCE,
        }
    }

    /// Reads every received frame through `reader` instead of [`documented`].
    pub fn reading(mut self, reader: fn(Value) -> Value) -> Self {
        self.reader = reader;
        self
    }

    /// Waits `patience` in [`WsClient::next`] instead of [`PATIENCE`].
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Sends a frame the AsyncAPI document describes; panics on any failure.
    pub async fn send(&mut self, frame: Value) {
        self.try_send(&frame).await.expect("send a frame");
    }

    /// [`WsClient::send`] that hands back the failure (clients that reconnect and retry).
    pub async fn try_send(&mut self, frame: &Value) -> Result<(), tungstenite::Error> {
        check_client_frame(frame);
        self.ws.send(Message::text(frame.to_string())).await
    }

    /// Queues a frame without flushing (a burst sent at once with [`WsClient::flush`]).
    pub async fn feed(&mut self, frame: Value) {
        check_client_frame(&frame);
        self.ws
            .feed(Message::text(frame.to_string()))
            .await
            .expect("queue a frame");
    }

    pub async fn flush(&mut self) {
        self.ws.flush().await.expect("flush the frames");
    }

    /// Sends any text, described or not (refusal tests).
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a frame");
    }

    /// A `send-message` frame.
    pub async fn send_message(&mut self, conversation: Uuid, content: &str, temp: &str) {
        self.send(send_message(conversation, content, temp)).await;
    }

    /// The next text frame, or what happened instead within `patience`.
    pub async fn receive(&mut self, patience: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Received::Silence;
            };
            return match next {
                Some(Ok(Message::Text(text))) => {
                    let frame = serde_json::from_str(&text).expect("frames are JSON");
                    Received::Frame((self.reader)(frame))
                }
                Some(Ok(Message::Close(frame))) => Received::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Received::Lost(e.to_string()),
                None => Received::Lost("the connection ended".to_owned()),
            };
        }
    }

    /// The next text frame; panics after the client's patience, or when the connection ends.
    pub async fn next(&mut self) -> Value {
        let patience = self.patience;
        self.next_within(patience)
            .await
            .unwrap_or_else(|| panic!("no frame within {patience:?}"))
    }

    /// The next text frame within `patience`, or None; panics when the connection ends.
    pub async fn next_within(&mut self, patience: Duration) -> Option<Value> {
        match self.receive(patience).await {
            Received::Frame(frame) => Some(frame),
            Received::Silence => None,
            Received::Closed(frame) => panic!("closed by the server: {frame:?}"),
            Received::Lost(why) => panic!("connection failed: {why}"),
        }
    }

    /// The next frame for which `wanted` holds, skipping the others (each within the patience).
    pub async fn next_where(&mut self, mut wanted: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let frame = self.next().await;
            if wanted(&frame) {
                return frame;
            }
        }
    }

    /// The frames up to and including the next one of type `last`.
    pub async fn until(&mut self, last: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let done = frame["type"] == last;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Asserts that no text frame arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(frame) = self.next_within(quiet).await {
            panic!("expected no frame, got {frame}");
        }
    }

    /// Reads (and checks) frames until the server's close frame; returns its code (None when the
    /// connection just ended). Panics when nothing closes it within `patience`.
    pub async fn close_code(&mut self, patience: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.receive(left).await {
                Received::Frame(_) => continue,
                Received::Silence => panic!("no close within {patience:?}"),
                Received::Closed(frame) => return frame.map(|f| u16::from(f.code)),
                Received::Lost(_) => return None,
            }
        }
    }

    /// Closes the connection from the client's side.
    pub async fn close(&mut self) {
        self.ws.close(None).await.expect("close the connection");
    }
}

/// The `send-message` frame of the contract.
pub fn send_message(conversation: Uuid, content: &str, temp: &str) -> Value {
    json!({
        "action": "send-message", "conversationId": conversation,
        "content": content, "tempMessageId": temp,
    })
}

/// The HTTP status with which the edge refused the upgrade at `url`; panics when it upgraded.
pub async fn refusal(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{url}: expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("{url}: expected an HTTP refusal, the edge upgraded"),
    }
}

fn check_client_frame(frame: &Value) {
    if let Err(e) = asyncapi::check_client_frame(frame) {
        panic!("the AsyncAPI document does not describe the frame {frame}:\n{e}");
    }
}
