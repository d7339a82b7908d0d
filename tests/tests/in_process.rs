//! A socket-edge run in-process (`socket_edge::startup`, the wiring its `main` calls) against
//! the real stack: it binds port 0 and says where, delivers from the log, and on shutdown
//! closes its connections with 1001 and returns.

use std::time::Duration;

use chat_tests::fixtures::projected_conversation;
use chat_tests::{JWT_SECRET, TestEnv};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use socket_edge::startup::{Application, Config};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const PATIENCE: Duration = Duration::from_secs(30);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as JSON.
async fn next_frame(ws: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("a JSON frame");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_edge_delivers_from_the_log_and_drains_on_shutdown() {
    let env = TestEnv::new().await;
    let _projector = env.spawn_projector().await;
    let conversation = projected_conversation(&env, &["ann", "ben"]).await;

    let config = Config::from_flags([
        "socket-edge".to_owned(),
        "--ws-addr=127.0.0.1:0".to_owned(),
        format!("--kafka-brokers={}", env.brokers),
        format!("--events-topic={}", env.topic),
        format!("--database-url={}", env.database_url),
        format!("--redis-url={}", env.redis_url),
        format!("--redis-prefix={}", env.redis_prefix),
        format!("--jwt-secret={JWT_SECRET}"),
        "--shutdown-timeout-secs=5".to_owned(),
    ])
    .expect("the flags parse");
    let edge = Application::build(&config).await.expect("the edge starts");
    let addr = edge.addr();
    assert_ne!(addr.port(), 0, "the bound port is known");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(edge.run_until_stopped(async {
        let _ = stopped.await;
    }));

    // Ready once the log tail is positioned: sends from then on are delivered.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let connect = |user: &str| {
        let url = format!("ws://{addr}/?Authorization={}", env.token(user));
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("WebSocket connect")
                .0
        }
    };
    let mut ann = connect("ann").await;
    let mut ben = connect("ben").await;
    let send = json!({
        "action": "send-message", "conversationId": conversation,
        "content": "hello from in-process", "tempMessageId": "t1",
    });
    ann.send(Message::text(send.to_string())).await.unwrap();
    for ws in [&mut ann, &mut ben] {
        let frame = next_frame(ws).await;
        assert_eq!(frame["type"], "new-message", "{frame}");
        assert_eq!(frame["content"], "hello from in-process");
        assert_eq!(frame["tempMessageId"], "t1");
    }

    stop.send(()).unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match ben.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the connection closes in time");
    assert_eq!(closed, Some(CloseCode::Away));
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("run_until_stopped returns")
        .unwrap();
}
