//! The claims of `tempMessageId`s against a Redis of the test's own, which it empties and
//! restarts: a retry keeps the first attempt's `sentAt` whatever happens to Redis while it
//! waits, a dead attempt's lease lapses, a live one's is renewed by its holder only, and an
//! attempt that repeats its own claim is not kept waiting on itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use events::Timestamp;
use socket_edge::presence::Redis;
use socket_edge::recent_sends::{Budget, Claim, LEASE, RecentSends};
use uuid::Uuid;

/// A `redis-server` (Debian's package) on a Unix socket of its own (no port another test could
/// take), without persistence, like the chaos test's: a restart forgets everything.
struct PrivateRedis {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("claims-redis-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { dir, child: None };
        redis.restart();
        redis
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
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
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        self.child = Some(child);
        for _ in 0..400 {
            if self.try_command(&["PING"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server does not answer on {}",
            self.socket().display()
        );
    }

    fn try_command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut connection = redis::Client::open(self.url())?.get_connection()?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    fn command(&self, args: &[&str]) -> redis::Value {
        self.try_command(args).expect("the test's Redis answers")
    }

    /// How many scripts it has been asked to run: a retry that called once has seen `wait`.
    fn scripts_run(&self) -> u64 {
        let redis::Value::BulkString(info) = self.command(&["INFO", "commandstats"]) else {
            panic!("INFO answers with text");
        };
        let info = String::from_utf8(info).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }

    /// Waits until Redis has run `scripts` scripts in all (a call that found the script not
    /// loaded yet counts too).
    async fn until_scripts_run(&self, scripts: u64) {
        for _ in 0..1_000 {
            if self.scripts_run() >= scripts {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("Redis ran {} scripts, not {scripts}", self.scripts_run());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Sender {
    sends: RecentSends,
    conversation: Uuid,
}

const USER: &str = "alice";

impl Sender {
    fn new(redis: &PrivateRedis) -> Arc<Self> {
        let redis = Redis::new(&redis.url(), "t:").unwrap();
        Arc::new(Self {
            sends: RecentSends::new(redis, Duration::from_secs(60)),
            conversation: Uuid::new_v4(),
        })
    }

    async fn claim(&self, temp: &str, now: Timestamp, lease: Uuid) -> Claim {
        let budget = Budget {
            action: "send-message",
            key: format!("t:limit:{{{USER}}}"),
            rate: rate_limit::Rate {
                per_minute: 6_000,
                burst: 100,
            },
        };
        self.sends
            .claim(USER, self.conversation, temp, now, lease, &budget)
            .await
            .expect("Redis answers")
    }

    /// A retry, claiming in the background with a `sentAt` of its own.
    fn retry(
        self: &Arc<Self>,
        temp: &'static str,
        now: Timestamp,
    ) -> tokio::task::JoinHandle<Claim> {
        let sender = self.clone();
        tokio::spawn(async move { sender.claim(temp, now, Uuid::new_v4()).await })
    }

    fn record_key(&self, temp: &str) -> String {
        format!("t:sent:{{{USER}}}:{}:{temp}", self.conversation)
    }

    fn lease_key(&self, temp: &str) -> String {
        format!("t:sending:{{{USER}}}:{}:{temp}", self.conversation)
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

/// The first attempt of `temp` claims, then its edge dies mid-append; its lease is made to
/// outlast anything a test does. Returns its `sentAt` and a retry that has called once, so is
/// waiting.
async fn a_retry_waiting_on_a_dead_attempt(
    redis: &PrivateRedis,
    sender: &Arc<Sender>,
    temp: &'static str,
) -> (Timestamp, tokio::task::JoinHandle<Claim>) {
    let (first, later) = two_instants().await;
    assert_eq!(
        sender.claim(temp, first, Uuid::new_v4()).await,
        Claim::Append(first)
    );
    redis.command(&["PEXPIRE", &sender.lease_key(temp), "600000"]);
    let before = redis.scripts_run();
    let retry = sender.retry(temp, later);
    redis.until_scripts_run(before + 1).await;
    (first, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_keeps_the_first_sent_at_when_redis_restarts_empty() {
    let mut redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
    let (first, retry) = a_retry_waiting_on_a_dead_attempt(&redis, &sender, "m1").await;
    // Redis dies and comes back empty while the retry waits.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    assert_eq!(
        retry.await.unwrap(),
        Claim::Append(first),
        "the retry appends with the first attempt's sentAt, not its own"
    );
    assert_eq!(
        redis.command(&["GET", &sender.record_key("m1")]),
        redis::Value::BulkString(format!("p:{first}").into_bytes())
    );
}

#[tokio::test]
async fn a_waiting_retry_keeps_the_first_sent_at_when_redis_forgets_the_record() {
    let redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
    let (first, retry) = a_retry_waiting_on_a_dead_attempt(&redis, &sender, "m2").await;
    redis.command(&["FLUSHALL"]);
    assert_eq!(retry.await.unwrap(), Claim::Append(first));
}

#[tokio::test]
async fn an_attempt_repeating_its_own_claim_is_not_kept_waiting() {
    let redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
    let (first, later) = two_instants().await;
    let lease = Uuid::new_v4();
    assert_eq!(sender.claim("m3", first, lease).await, Claim::Append(first));
    // (Held for longer than a retry's patience: waiting on it could only end in InFlight.)
    redis.command(&["PEXPIRE", &sender.lease_key("m3"), "600000"]);
    // Its answer lost on the way back, the attempt calls again, with its own lease.
    assert_eq!(sender.claim("m3", later, lease).await, Claim::Append(first));
}

#[tokio::test]
async fn a_dead_attempts_lease_lapses_and_only_its_holder_renews_a_lease() {
    let redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
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

    // Renewed by someone else's token: the lease lapses all the same, and a retry takes over
    // while that "append" still runs.
    assert_eq!(
        sender.claim("stranger", first, Uuid::new_v4()).await,
        Claim::Append(first)
    );
    let retry = sender.retry("stranger", later);
    let outlasting = tokio::time::sleep(LEASE + Duration::from_millis(1_500));
    let stranger = Uuid::new_v4();
    let renewing =
        sender
            .sends
            .holding(USER, sender.conversation, "stranger", stranger, outlasting);
    tokio::select! {
        () = renewing => panic!("a lease renewed by another token did not lapse"),
        claim = retry => assert_eq!(claim.unwrap(), Claim::Append(first)),
    }
}

#[tokio::test]
async fn a_live_attempts_lease_is_renewed_and_its_record_answers_retries() {
    let redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
    let (first, later) = two_instants().await;
    // An append that outlasts the lease keeps it, so the retry waits for its outcome.
    let lease = Uuid::new_v4();
    assert_eq!(
        sender.claim("live", first, lease).await,
        Claim::Append(first)
    );
    let retry = sender.retry("live", later);
    let slow_append = tokio::time::sleep(LEASE + Duration::from_millis(1_500));
    sender
        .sends
        .holding(USER, sender.conversation, "live", lease, slow_append)
        .await;
    assert!(!retry.is_finished(), "the renewed lease still holds");
    sender
        .sends
        .confirm(USER, sender.conversation, "live", "the frame")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry.await.unwrap(), Claim::Sent("the frame".into()));
    // The lease is left to lapse; the record answers every retry meanwhile and after.
    assert_eq!(
        sender.claim("live", later, Uuid::new_v4()).await,
        Claim::Sent("the frame".into())
    );
}

/// How many times Redis has read from its clients (`INFO stats`).
fn reads_processed(redis: &PrivateRedis) -> u64 {
    let redis::Value::BulkString(info) = redis.command(&["INFO", "stats"]) else {
        panic!("INFO answers with text");
    };
    String::from_utf8(info)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .expect("INFO stats has total_reads_processed")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn confirmations_made_together_share_a_write_and_each_answers_its_retries() {
    let redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
    let now = Timestamp::now();
    // (Two claims each, within the sender's burst of 100.)
    let temps: Vec<String> = (0..40).map(|i| format!("batch-{i}")).collect();
    for temp in &temps {
        assert_eq!(
            sender.claim(temp, now, Uuid::new_v4()).await,
            Claim::Append(now)
        );
    }
    let before = reads_processed(&redis);
    let written: Vec<_> = temps
        .iter()
        .map(|temp| {
            sender
                .sends
                .confirm(USER, sender.conversation, temp, &format!("frame of {temp}"))
        })
        .collect();
    for confirmation in written {
        confirmation.await.unwrap().unwrap();
    }
    let reads = reads_processed(&redis) - before;
    // One pipeline (and the test's own INFO calls), not 40 commands.
    assert!(reads < 10, "Redis read {reads} times for 40 confirmations");
    for temp in &temps {
        assert_eq!(
            sender.claim(temp, now, Uuid::new_v4()).await,
            Claim::Sent(format!("frame of {temp}"))
        );
    }
}

#[tokio::test]
async fn a_confirmation_redis_cannot_take_fails_without_holding_up_the_next() {
    let mut redis = PrivateRedis::start();
    let sender = Sender::new(&redis);
    let now = Timestamp::now();
    assert_eq!(
        sender.claim("lost", now, Uuid::new_v4()).await,
        Claim::Append(now)
    );
    redis.stop();
    let lost = sender
        .sends
        .confirm(USER, sender.conversation, "lost", "its frame");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), lost)
            .await
            .expect("the outcome comes within Redis's timeouts")
            .unwrap()
            .is_err()
    );
    redis.restart();
    assert_eq!(
        sender.claim("next", now, Uuid::new_v4()).await,
        Claim::Append(now)
    );
    sender
        .sends
        .confirm(USER, sender.conversation, "next", "next frame")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sender.claim("next", now, Uuid::new_v4()).await,
        Claim::Sent("next frame".into())
    );
}
