//! A socket-edge run in-process (`socket_edge::startup`, the wiring its `main` calls) against
//! the real stack: it binds port 0 and says where, delivers from the log, and on shutdown
//! closes its connections with 1001 and returns.

use std::time::Duration;

use chat_tests::fixtures::projected_conversation;
use chat_tests::{JWT_SECRET, TestEnv, WsClient, eventually, ws};
use socket_edge::startup::{Application, Config};

const PATIENCE: Duration = Duration::from_secs(30);

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
    eventually("the in-process edge is ready", PATIENCE, || async {
        http.get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let connect = |user: &str| {
        let url = ws::url(addr, &ws::root_with_token(&env.token(user)));
        async move {
            WsClient::connect_url(&url)
                .await
                .expect("WebSocket connect")
        }
    };
    let mut ann = connect("ann").await;
    let mut ben = connect("ben").await;
    ann.send_message(conversation, "hello from in-process", "t1")
        .await;
    for client in [&mut ann, &mut ben] {
        let frame = client.next().await;
        assert_eq!(frame["type"], "new-message", "{frame}");
        assert_eq!(frame["content"], "hello from in-process");
        assert_eq!(frame["tempMessageId"], "t1");
    }

    stop.send(()).unwrap();
    assert_eq!(ben.close_code(PATIENCE).await, Some(1001), "going away");
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("run_until_stopped returns")
        .unwrap();
}
