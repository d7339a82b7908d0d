//! The integration-test harness: each test gets its own topic, its own freshly migrated
//! database and its own Redis key prefix on the shared local stack (`scripts/stack infra-up`),
//! and starts the real service binaries from the target directory.
//!
//! The stack's addresses come from the same environment variables the services read
//! (`KAFKA_BROKERS`, `DATABASE_URL`, `REDIS_URL`), with the local stack's defaults.
//!
//! Invariants of [`TestEnv::spawn`]: a service binary is never older than the workspace sources
//! it was built from ([`binary_path`] builds it first), and a service listens on port 0 and
//! reports what it bound ([`telemetry::listening`]), so no two tests race for a port.

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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
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
        let redis_url = env_or("REDIS_URL", rate_limit::DEFAULT_REDIS_URL);
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
        writer::KafkaArgs::new(self.brokers.clone(), self.topic.clone())
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
    /// Runs `chatctl` against this test's stack; returns its exit code, stdout and stderr.
    pub async fn chatctl(&self, args: &[&str]) -> (i32, String, String) {
        let output = tokio::process::Command::new(binary_path("chatctl"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.service_env())
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run chatctl");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

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

    /// Starts `binary` with `addr_var` (its listener's setting) at port 0, reads the address
    /// it bound from its `listening` log line (and its operational listener's, when `extra`
    /// sets a `*_OPS_ADDR`), and waits for `/readyz`. No port is chosen before the process
    /// binds it, so none can be taken in between.
    pub async fn spawn(&self, binary: &str, addr_var: &str, extra: &[(&str, &str)]) -> Service {
        let path = binary_path(binary);
        let log_dir = target_dir().join("test-logs");
        std::fs::create_dir_all(&log_dir).expect("create target/test-logs");
        // Named after the port once it is known.
        let starting = &Uuid::new_v4().simple().to_string()[..8];
        let mut log_path = log_dir.join(format!("{}-{binary}-{starting}.log", self.name));
        let log = std::fs::File::create(&log_path).expect("create a service log");
        let (output, output_writer) = std::io::pipe().expect("create a pipe for the output");
        let mut command = Command::new(&path);
        command
            .env_clear()
            .env("PATH", env_or("PATH", "/usr/bin:/bin"))
            .envs(self.service_env())
            .env(addr_var, "127.0.0.1:0")
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(output_writer.try_clone().expect("clone the pipe"))
            .stderr(output_writer)
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (build it: cargo build --workspace --bins)",
                path.display()
            )
        });
        // The command holds the pipe's writing ends: without this the copy below never ends.
        drop(command);
        let mut listening = copy_output(output, log);
        let ops_var = extra
            .iter()
            .map(|(name, _)| *name)
            .find(|name| name.ends_with("_OPS_ADDR"));
        let mut addr = None;
        let mut ops_addr = None;
        let reported = tokio::time::timeout(Duration::from_secs(60), async {
            while addr.is_none() || ops_var.is_some() && ops_addr.is_none() {
                let Some((setting, bound)) = listening.recv().await else {
                    return false;
                };
                if setting == addr_var {
                    addr = Some(bound);
                } else if Some(setting.as_str()) == ops_var {
                    ops_addr = Some(bound);
                }
            }
            true
        })
        .await;
        if let Some(addr) = addr {
            let named = log_dir.join(format!("{}-{binary}-{}.log", self.name, addr.port()));
            if std::fs::rename(&log_path, &named).is_ok() {
                log_path = named;
            }
        }
        let mut service = Service {
            name: binary.to_owned(),
            addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            ops_addr,
            child,
            log_path,
        };
        if reported != Ok(true) {
            let _ = service.child.start_kill();
            let status = service.child.wait().await;
            panic!(
                "{binary} reported no bound address for {addr_var} within 60 s (exit: {status:?}):\n{}",
                service.log_tail()
            );
        }
        service.wait_ready(Duration::from_secs(60)).await;
        service
    }
}

/// Copies a service's output (stdout and stderr, in order) to its log file on a thread of its
/// own (the service must never block on a full pipe, whatever the test's runtime is doing), and
/// passes on every address the service reports binding ([`telemetry::listening`]). The copy
/// ends when the process and its pipe close.
fn copy_output(
    output: std::io::PipeReader,
    mut log: std::fs::File,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, SocketAddr)> {
    use std::io::{BufRead, Write};
    let (report, listening) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut output = std::io::BufReader::new(output);
        let mut line = Vec::new();
        while output.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = log.write_all(&line);
            if let Some(bound) = telemetry::listening::parse(&String::from_utf8_lossy(&line)) {
                let _ = report.send(bound);
            }
            line.clear();
        }
    });
    listening
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

    /// The text of its `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("the service answers")
            .text()
            .await
            .expect("a text body")
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

/// A workspace binary next to the tests (`target/debug/<name>`), never older than its sources:
/// when a workspace file it was built from (its dep-info, `<name>.d`, lists them) is newer, or
/// it was never built, the workspace's binaries are built first (once per test process).
pub fn binary_path(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    if stale(&path).is_some() {
        build_binaries();
        if let Some(why) = stale(&path) {
            panic!("{} is stale after building: {why}", path.display());
        }
    }
    path
}

/// Why `binary` must be rebuilt, if it must: it is missing, or a workspace source listed in
/// its dep-info is newer than it.
fn stale(binary: &Path) -> Option<String> {
    let built = match std::fs::metadata(binary).and_then(|m| m.modified()) {
        Ok(built) => built,
        Err(e) => return Some(format!("{}: {e}", binary.display())),
    };
    let mut dep_info = binary.as_os_str().to_owned();
    dep_info.push(".d");
    let Ok(dep_info) = std::fs::read_to_string(&dep_info) else {
        return Some(format!("{} has no dep-info", binary.display()));
    };
    let root = workspace_root();
    let target = target_dir();
    // The same files cargo's own freshness check looks at (paths with spaces are not expected).
    let mut sources = dep_info
        .lines()
        .filter_map(|line| line.split_once(": ").map(|(_, deps)| deps))
        .flat_map(|deps| deps.split(' '))
        .map(Path::new)
        .filter(|p| p.starts_with(&root) && !p.starts_with(&target));
    // A source that is gone (renamed, deleted) calls for a build too.
    sources
        .find(|source| {
            !std::fs::metadata(source)
                .and_then(|m| m.modified())
                .is_ok_and(|changed| changed <= built)
        })
        .map(|source| format!("{} changed after it was built", source.display()))
}

/// `cargo build --workspace --bins`, once per test process, with the profile and target
/// directory of this test. `--examples` (there are none) makes cargo unify features as `cargo
/// test --workspace` and `cargo build --workspace --all-targets` do, so after those it finds
/// nothing to do; `cargo test` does not hold the build directory's lock while tests run.
fn build_binaries() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let profile = match profile_dir().file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => return Err("no profile directory".to_owned()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(&cargo)
            .args(["build", "--quiet", "--workspace", "--bins", "--examples"])
            .args(["--profile", &profile])
            .arg("--target-dir")
            .arg(target_dir())
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("run {}: {e}", Path::new(&cargo).display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build --workspace --bins failed: {status}"))
        }
    });
    if let Err(e) = built {
        panic!("the service binaries cannot be built: {e}");
    }
}

/// The workspace this crate belongs to.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
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
