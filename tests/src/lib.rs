//! The integration-test harness: each test gets its own topic, its own freshly migrated
//! database and its own Redis key prefix on the shared local stack (`scripts/stack infra-up`),
//! and starts the real service binaries from the target directory.
//!
//! The stack's addresses come from the same environment variables the services read
//! (`KAFKA_BROKERS`, `DATABASE_URL`, `REDIS_URL`), with the local stack's defaults.

pub mod asyncapi;
pub mod chaos;
pub mod eventually;
pub mod fixtures;
pub mod registry;
pub mod tokens;
pub mod ws;

pub use eventually::{eventually, eventually_every};
pub use tokens::{JWT_SECRET, now_secs, token_with};
pub use ws::WsClient;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use uuid::Uuid;

/// A rate-limit budget no test reaches.
const UNLIMITED: &str = "1000000";

/// One test's private slice of the stack.
pub struct TestEnv {
    /// A short unique name, used for the topic, database, consumer groups and Redis prefix.
    pub name: String,
    pub brokers: String,
    pub topic: String,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl TestEnv {
    /// A fresh topic (4 partitions, and its dead-letter topic) and a fresh migrated database.
    pub async fn new() -> Self {
        Self::on_brokers(&env_or("KAFKA_BROKERS", writer::DEFAULT_BROKERS)).await
    }

    /// [`TestEnv::new`] on another Kafka cluster (e.g. a replicated one a test started).
    pub async fn on_brokers(brokers: &str) -> Self {
        let name = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        let brokers = brokers.to_owned();
        let admin_url = env_or("DATABASE_URL", store::DEFAULT_DATABASE_URL);
        let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
        let topic = format!("test.{name}.events");

        ops::topics::create(&brokers, &topic, 4)
            .await
            .expect("create the test topics (is the stack up? scripts/stack infra-up)");

        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .expect("connect to Postgres (is the stack up? scripts/stack infra-up)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let database_url = replace_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url)
            .await
            .expect("connect to the test database");
        store::MIGRATOR
            .run(&pool)
            .await
            .expect("migrate the test database");
        pool.close().await;

        Self {
            redis_prefix: format!("test:{name}:"),
            name,
            brokers,
            topic,
            database_url,
            redis_url,
        }
    }

    /// A valid token for `user`, signed with the secret of this test's services.
    pub fn token(&self, user: &str) -> String {
        tokens::token_for(user)
    }

    /// Where the projector sets aside the records of this test's topic it cannot apply.
    pub fn dead_letter_topic(&self) -> String {
        projector::dead_letter_topic(&self.topic)
    }

    /// A writer appending to this test's topic.
    pub fn writer(&self) -> writer::Writer {
        writer::Writer::new(&self.kafka_args()).expect("create a writer")
    }

    pub fn kafka_args(&self) -> writer::KafkaArgs {
        writer::KafkaArgs {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
        }
    }

    /// A pool on this test's database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// The environment every service of this test is started with.
    pub fn service_env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.as_str()),
            ("KAFKA_BROKERS", &self.brokers),
            ("CHAT_EVENTS_TOPIC", &self.topic),
            ("REDIS_URL", &self.redis_url),
            ("CHAT_REDIS_PREFIX", &self.redis_prefix),
            ("CHAT_JWT_SECRET", JWT_SECRET),
            ("PROJECTOR_GROUP", &format!("{}-projector", self.name)),
            ("RUST_LOG", "info"),
            // Tests of other behaviour send faster than a person; the rate-limit tests set
            // their own budgets (later entries of `extra` win).
            ("CHAT_RATE_SEND_MESSAGE_BURST", UNLIMITED),
            ("CHAT_RATE_SEND_MESSAGE_PER_MINUTE", UNLIMITED),
            ("CHAT_RATE_READ_MESSAGES_BURST", UNLIMITED),
            ("CHAT_RATE_READ_MESSAGES_PER_MINUTE", UNLIMITED),
            ("CHAT_RATE_HEARTBEAT_BURST", UNLIMITED),
            ("CHAT_RATE_HEARTBEAT_PER_MINUTE", UNLIMITED),
            ("CHAT_RATE_CREATE_CONVERSATION_BURST", UNLIMITED),
            ("CHAT_RATE_CREATE_CONVERSATION_PER_MINUTE", UNLIMITED),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Starts the projector and waits until it is ready.
    pub async fn spawn_projector(&self) -> Service {
        self.spawn("projector", "PROJECTOR_HTTP_ADDR", &[]).await
    }

    /// Starts a projector that folds `topic` (another test's log) into this test's database.
    pub async fn spawn_projector_of(&self, topic: &str) -> Service {
        self.spawn(
            "projector",
            "PROJECTOR_HTTP_ADDR",
            &[("CHAT_EVENTS_TOPIC", topic)],
        )
        .await
    }

    /// Starts the REST API and waits until it is ready.
    pub async fn spawn_api(&self) -> Service {
        self.spawn_api_with(&[]).await
    }

    /// Starts the REST API with extra environment (e.g. `CHAT_BASE_PATH`).
    pub async fn spawn_api_with(&self, extra: &[(&str, &str)]) -> Service {
        self.spawn("chat-api", "CHAT_HTTP_ADDR", extra).await
    }

    /// Starts a socket-edge and waits until it is ready.
    pub async fn spawn_edge(&self) -> Service {
        self.spawn_edge_with(&[]).await
    }

    /// Starts a socket-edge with extra environment.
    pub async fn spawn_edge_with(&self, extra: &[(&str, &str)]) -> Service {
        self.spawn("socket-edge", "CHAT_WS_ADDR", extra).await
    }

    /// Starts `binary` listening on a free port given in `addr_var`, and waits for `/readyz`.
    pub async fn spawn(&self, binary: &str, addr_var: &str, extra: &[(&str, &str)]) -> Service {
        let addr = free_addr();
        let path = binary_path(binary);
        let log_dir = target_dir().join("test-logs");
        std::fs::create_dir_all(&log_dir).expect("create target/test-logs");
        let log_path = log_dir.join(format!("{}-{binary}-{}.log", self.name, addr.port()));
        let log = std::fs::File::create(&log_path).expect("create a service log");
        let mut command = Command::new(&path);
        command
            .env_clear()
            .env("PATH", env_or("PATH", "/usr/bin:/bin"))
            .envs(self.service_env())
            .env(addr_var, addr.to_string())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (build it: cargo build --workspace --bins)",
                path.display()
            )
        });
        // With an operational listener (`CHAT_HTTP_OPS_ADDR`, `CHAT_WS_OPS_ADDR`), readiness
        // is asked there.
        let ops_addr = extra
            .iter()
            .find(|(name, _)| name.ends_with("_OPS_ADDR"))
            .and_then(|(_, value)| value.parse().ok());
        let mut service = Service {
            name: binary.to_owned(),
            addr,
            ops_addr,
            child,
            log_path,
        };
        service.wait_ready(Duration::from_secs(60)).await;
        service
    }
}

/// A running service process, killed when dropped.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    /// Where `/readyz` and `/metrics` listen, when not on `addr`.
    pub ops_addr: Option<SocketAddr>,
    child: Child,
    pub log_path: PathBuf,
}

impl Service {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id (for signals and memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the service is running")
    }

    /// Waits until `/readyz` answers 200; panics with the log's tail if it never does.
    pub async fn wait_ready(&mut self, patience: Duration) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            let ready = client
                .get(format!(
                    "http://{}/readyz",
                    self.ops_addr.unwrap_or(self.addr)
                ))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} was not ready within {patience:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the exit status if it exited.
    pub async fn terminate(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        tokio::time::timeout(patience, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The last lines of the service's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A loopback address with a port free at the time of the call.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
}

/// The target directory the tests run from (`target/debug`'s parent).
fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the target directory")
        .to_path_buf()
}

/// `target/debug`: where the workspace binaries are, whether this program is a test
/// (`target/debug/deps/<test>`) or a binary of its own (`target/debug/<bin>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("this program's path");
    let dir = exe.parent().expect("this program's folder");
    if dir.ends_with("deps") {
        dir.parent().expect("target/debug").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A workspace binary next to the tests (`target/debug/<name>`).
pub fn binary_path(name: &str) -> PathBuf {
    profile_dir().join(name)
}

/// The same URL with another database name.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
    match query {
        Some(q) => format!("{prefix}/{database}?{q}"),
        None => format!("{prefix}/{database}"),
    }
}

/// A REST client for one user against a running API.
#[derive(Clone)]
pub struct RestClient {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl RestClient {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    /// GET `path`; returns the status and the JSON body (`Null` when the body is empty).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.token)
            .send()
            .await
            .expect("GET");
        split(response).await
    }

    /// POST a JSON body to `path`.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.token)
            .json(body)
            .send()
            .await
            .expect("POST");
        split(response).await
    }
}

async fn split(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text}"))
    };
    (status, body)
}
