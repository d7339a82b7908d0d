//! The claims of `tempMessageId`s against a Redis of the test's own, which it empties and
//! restarts: a retry keeps the first attempt's `sentAt` whatever happens to Redis while it
//! waits, and a dead attempt's lease lapses while a live one's is renewed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use events::Timestamp;
use socket_edge::presence::Redis;
use socket_edge::recent_sends::{Budget, Claim, LEASE, RecentSends};
use uuid::Uuid;

/// A `redis-server` (Debian's package) on a port of its own, without persistence, like the
/// chaos test's: a restart forgets everything.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, and waits until it answers.
    fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut connection) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server does not answer on {}", self.port);
    }

    fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection).unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Sender {
    sends: RecentSends,
    user: &'static str,
    conversation: Uuid,
}

impl Sender {
    fn new(redis: &PrivateRedis) -> Self {
        let redis = Redis::new(&redis.url(), "t:").unwrap();
        Self {
            sends: RecentSends::new(redis, Duration::from_secs(60)),
            user: "alice",
            conversation: Uuid::new_v4(),
        }
    }

    fn budget(&self) -> Budget {
        Budget {
            action: "send-message",
            key: format!("t:limit:{{{}}}", self.user),
            rate: rate_limit::Rate {
                per_minute: 6_000,
                burst: 100,
            },
        }
    }

    async fn claim(&self, temp: &str, now: Timestamp, lease: Uuid) -> Claim {
        self.sends
            .claim(
                self.user,
                self.conversation,
                temp,
                now,
                lease,
                &self.budget(),
            )
            .await
            .expect("Redis answers")
    }

    fn lease_key(&self, temp: &str) -> String {
        format!("t:sending:{{{}}}:{}:{temp}", self.user, self.conversation)
    }
}

/// Two distinct instants, the first attempt's and the retry's.
async fn two_instants() -> (Timestamp, Timestamp) {
    let first = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = Timestamp::now();
    assert_ne!(first, second);
    (first, second)
}

#[tokio::test]
async fn a_waiting_retry_keeps_the_first_sent_at_when_redis_restarts_empty() {
    let mut redis = PrivateRedis::start();
    let sender = std::sync::Arc::new(Sender::new(&redis));
    let (first, later) = two_instants().await;
    // The first attempt claims, then its edge dies mid-append: its lease stays for a while.
    assert_eq!(
        sender.claim("m1", first, Uuid::new_v4()).await,
        Claim::Append(first)
    );
    let retry = tokio::spawn({
        let sender = sender.clone();
        async move { sender.claim("m1", later, Uuid::new_v4()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished(), "the retry waits for the lease");
    // Redis dies and comes back empty while the retry waits.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    assert_eq!(
        retry.await.unwrap(),
        Claim::Append(first),
        "the retry appends with the first attempt's sentAt, not its own"
    );
    let record = format!("t:sent:{{alice}}:{}:m1", sender.conversation);
    assert_eq!(
        redis.command(&["GET", &record]),
        redis::Value::BulkString(format!("p:{first}").into_bytes())
    );
}

#[tokio::test]
async fn a_waiting_retry_keeps_the_first_sent_at_when_redis_forgets_the_record() {
    let redis = PrivateRedis::start();
    let sender = std::sync::Arc::new(Sender::new(&redis));
    let (first, later) = two_instants().await;
    assert_eq!(
        sender.claim("m2", first, Uuid::new_v4()).await,
        Claim::Append(first)
    );
    let retry = tokio::spawn({
        let sender = sender.clone();
        async move { sender.claim("m2", later, Uuid::new_v4()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished(), "the retry waits for the lease");
    redis.command(&["FLUSHALL"]);
    assert_eq!(retry.await.unwrap(), Claim::Append(first));
}

#[tokio::test]
async fn a_dead_attempts_lease_lapses_and_a_live_ones_is_renewed() {
    let redis = PrivateRedis::start();
    let sender = std::sync::Arc::new(Sender::new(&redis));
    let (first, later) = two_instants().await;

    // Dead: nobody renews the lease, which lapses after LEASE, not after the slowest append.
    assert_eq!(
        sender.claim("dead", first, Uuid::new_v4()).await,
        Claim::Append(first)
    );
    let redis::Value::Int(ttl) = redis.command(&["PTTL", &sender.lease_key("dead")]) else {
        panic!("the lease has a time to live");
    };
    assert!(0 < ttl && ttl <= LEASE.as_millis() as i64, "{ttl} ms");
    assert_eq!(
        sender.claim("dead", later, Uuid::new_v4()).await,
        Claim::Append(first),
        "the retry takes over with the first sentAt"
    );

    // Live: an append that outlasts the lease keeps it, so the retry waits for its outcome.
    let lease = Uuid::new_v4();
    assert_eq!(
        sender.claim("live", first, lease).await,
        Claim::Append(first)
    );
    let retry = tokio::spawn({
        let sender = sender.clone();
        async move { sender.claim("live", later, Uuid::new_v4()).await }
    });
    let slow_append = tokio::time::sleep(LEASE + Duration::from_millis(1_500));
    sender
        .sends
        .holding("alice", sender.conversation, "live", lease, slow_append)
        .await;
    assert!(!retry.is_finished(), "the renewed lease still holds");
    sender
        .sends
        .confirm("alice", sender.conversation, "live", "the frame", lease)
        .await
        .unwrap();
    assert_eq!(retry.await.unwrap(), Claim::Sent("the frame".into()));
}
