//! The fault injector: real WebSocket and REST clients under a steady load while the projector,
//! the edge, the API, Redis and the Kafka broker are SIGKILLed in turn and brought back; then a
//! count of what was acknowledged against what the projection holds.
//!
//! Clients behave as PageNow's do: a send whose echo does not come (an error frame, a silence,
//! a dropped connection) is sent again with the same `tempMessageId`, on a new connection if
//! need be; a group creation that fails is retried with the same `Idempotency-Key`.
//!
//! Used by the chaos test (`tests/tests/chaos.rs`, short) and the soak (`chaos-soak`, long).
//! The Kafka broker and the Redis it kills are its own ([`Infrastructure`]), so it disturbs no
//! other test; two runs cannot share the machine (fixed ports).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::ws::{self, Received, WsClient};
use crate::{Service, TestEnv, eventually};

/// What the injector kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Fault {
    Projector,
    Edge,
    Api,
    Redis,
    Kafka,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Projector,
        Fault::Edge,
        Fault::Api,
        Fault::Redis,
        Fault::Kafka,
    ];
}

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Sending users; each sends into its own direct conversation with a partner.
    pub senders: usize,
    /// Messages per second of each sender (each waits for its echo before the next).
    pub rate_per_sender: f64,
    /// Messages each sender sends in all.
    pub messages_per_sender: usize,
    /// Time between two faults.
    pub fault_every: Duration,
    /// How long a killed process stays down.
    pub down_for: Duration,
    /// The faults, in turn (repeated until the messages are sent).
    pub faults: Vec<Fault>,
    /// Groups created over REST (with idempotency keys) while it runs.
    pub groups: usize,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub acknowledged: usize,
    /// Acknowledged messages missing from the projection.
    pub lost: Vec<String>,
    /// Messages stored more than once, or acknowledged under two ids.
    pub doubled: Vec<String>,
    /// Senders whose stored messages are not in their sending order.
    pub out_of_order: Vec<String>,
    pub faults: BTreeMap<String, usize>,
    /// Per fault kind, the longest time without any acknowledgement after one of its kills.
    pub longest_pause: BTreeMap<String, Duration>,
    pub groups_acknowledged: usize,
    /// Acknowledged groups that the API does not answer for.
    pub groups_missing: Vec<String>,
    /// Retries the clients made, by reason (an error frame's code, a silence, a lost
    /// connection, a failed REST call).
    pub retries: BTreeMap<String, usize>,
    /// `chatctl verify`'s verdict on the projection afterwards (its output when it failed).
    pub verified: Result<(), String>,
    pub elapsed: Duration,
}

impl Report {
    /// True when nothing acknowledged was lost, doubled or reordered.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.out_of_order.is_empty()
            && self.groups_missing.is_empty()
            && self.verified.is_ok()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} messages acknowledged in {:.0?} (client retries: {:?}); lost {}, doubled {}, \
             senders out of order {}",
            self.acknowledged,
            self.elapsed,
            self.retries,
            self.lost.len(),
            self.doubled.len(),
            self.out_of_order.len()
        )?;
        writeln!(
            f,
            "{} groups acknowledged, {} missing",
            self.groups_acknowledged,
            self.groups_missing.len()
        )?;
        // What broke, by name: a count alone does not say which guarantee it was.
        for (what, found) in [
            ("lost", &self.lost),
            ("doubled", &self.doubled),
            ("out of order", &self.out_of_order),
            ("group missing", &self.groups_missing),
        ] {
            for item in found.iter().take(10) {
                writeln!(f, "  {what}: {item}")?;
            }
        }
        match &self.verified {
            Ok(()) => writeln!(f, "chatctl verify: clean")?,
            Err(output) => writeln!(f, "chatctl verify FAILED:\n{output}")?,
        }
        for (kind, count) in &self.faults {
            let pause = self.longest_pause.get(kind).copied().unwrap_or_default();
            writeln!(
                f,
                "fault {kind:<9} ×{count:<3} longest pause in acknowledgements {pause:.1?}"
            )?;
        }
        Ok(())
    }
}

/// The project's root (scripts, the stack's pid files).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A killed edge's registrations live on in Redis until they expire (`CHAT_WS_PRESENCE_TTL_SECS`)
/// and count against the per-user connection limit: with an edge killed every few seconds,
/// reconnects would be refused (429) for want of room, which is not what is measured here (the
/// limit is a documented known limit of docs/websocket.md).
const EDGE: &[(&str, &str)] = &[("CHAT_WS_MAX_CONNECTIONS_PER_USER", "0")];

/// The Kafka broker and the Redis this run kills: its own, on ports of their own, so that no
/// other test loses its infrastructure. (Postgres, which is not killed, is the shared one.)
pub struct Infrastructure {
    redis: Option<std::process::Child>,
}

/// The run's own single-node Kafka (`STACK_KAFKA_PORT=29092 scripts/stack kafka-up`, data in
/// `.stack/kafka-29092`) and Redis.
const KAFKA_PORT: u16 = 29092;
const REDIS_PORT: u16 = 26379;

impl Infrastructure {
    /// Starts both and waits until they answer.
    pub async fn start() -> Self {
        start_kafka().await;
        let mut infrastructure = Self { redis: None };
        infrastructure.start_redis().await;
        infrastructure
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{KAFKA_PORT}")
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{REDIS_PORT}")
    }

    /// A test environment (its own topic, database and Redis prefix) on this infrastructure.
    pub async fn env(&self) -> TestEnv {
        let mut env = TestEnv::on_brokers(&self.brokers()).await;
        env.redis_url = self.redis_url();
        env
    }

    async fn start_redis(&mut self) {
        // A Redis left on the port (by a run that was itself killed) would answer in place of
        // ours and never die with our kills.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_err(),
            "port {REDIS_PORT} is taken: stop what listens there (a Redis left by an earlier run?)"
        );
        let child = std::process::Command::new("redis-server")
            .args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        self.redis = Some(child);
        let what = format!("redis-server answers on {REDIS_PORT}");
        eventually(&what, Duration::from_secs(20), || async {
            std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_ok()
        })
        .await;
    }

    fn kill_redis(&mut self) {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Infrastructure {
    fn drop(&mut self) {
        self.kill_redis();
        let _ = kafka_stack("kafka-down").status();
        let _ = std::fs::remove_dir_all(kafka_dir());
    }
}

fn kafka_dir() -> PathBuf {
    root().join(format!(".stack/kafka-{KAFKA_PORT}"))
}

fn kafka_stack(command: &str) -> std::process::Command {
    let mut stack = std::process::Command::new("bash");
    stack
        .arg(root().join("scripts/stack"))
        .arg(command)
        .env("STACK_KAFKA_PORT", KAFKA_PORT.to_string())
        .env("STACK_KAFKA_NODES", "1")
        .env("CHATCTL", crate::binary_path("chatctl"))
        .stdout(std::process::Stdio::null());
    stack
}

async fn start_kafka() {
    let status = tokio::process::Command::from(kafka_stack("kafka-up"))
        .status()
        .await
        .expect("run scripts/stack kafka-up");
    assert!(
        status.success(),
        "STACK_KAFKA_PORT={KAFKA_PORT} scripts/stack kafka-up"
    );
}

/// Our three processes, replaced when killed; the addresses clients should use now.
struct Processes<'a> {
    infrastructure: &'a mut Infrastructure,
    projector: Service,
    edge: Service,
    api: Service,
    edge_addr: watch::Sender<String>,
    api_addr: watch::Sender<String>,
}

impl Processes<'_> {
    async fn kill(&mut self, fault: Fault) {
        match fault {
            Fault::Projector => self.projector.kill().await,
            Fault::Edge => self.edge.kill().await,
            Fault::Api => self.api.kill().await,
            Fault::Redis => self.infrastructure.kill_redis(),
            Fault::Kafka => kill_pidfile(&kafka_dir().join("kafka.pid")),
        }
    }

    async fn restart(&mut self, env: &TestEnv, fault: Fault) {
        match fault {
            Fault::Projector => self.projector = env.spawn_projector().await,
            Fault::Edge => {
                self.edge = env.spawn_edge_with(EDGE).await;
                let _ = self.edge_addr.send(self.edge.addr.to_string());
            }
            Fault::Api => {
                self.api = env.spawn_api().await;
                let _ = self.api_addr.send(self.api.url(""));
            }
            Fault::Redis => self.infrastructure.start_redis().await,
            Fault::Kafka => start_kafka().await,
        }
    }

    async fn wait_ready(&mut self) {
        for service in [&mut self.projector, &mut self.edge, &mut self.api] {
            service.wait_ready(Duration::from_secs(90)).await;
        }
    }
}

/// SIGKILL of a process by its pid file; returns once it is gone.
fn kill_pidfile(pidfile: &Path) {
    let pid =
        std::fs::read_to_string(pidfile).unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
    let _ = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status();
    let proc_dir = format!("/proc/{}", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&proc_dir).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One acknowledged message, as its sender saw it.
#[derive(Clone, Debug)]
struct Ack {
    conversation: Uuid,
    temp: String,
    message_id: String,
    /// The `sentAt` of its echo: history must show the same.
    sent_at: String,
    at: Instant,
}

/// What the clients share with the run.
#[derive(Default)]
struct Ledger {
    acks: Vec<Ack>,
    /// A tempMessageId echoed under a second messageId.
    doubled: Vec<String>,
    retries: BTreeMap<String, usize>,
    groups: Vec<Uuid>,
}

impl Ledger {
    fn retry(&mut self, reason: &str) {
        *self.retries.entry(reason.to_owned()).or_default() += 1;
    }
}

/// Runs the plan against `env` (made by [`Infrastructure::env`]); returns what it found. Every
/// service is running at the end.
pub async fn run(infrastructure: &mut Infrastructure, env: &TestEnv, plan: &Plan) -> Report {
    let started = Instant::now();
    let projector = env.spawn_projector().await;
    let edge = env.spawn_edge_with(EDGE).await;
    let api = env.spawn_api().await;
    let (edge_addr, edge_rx) = watch::channel(edge.addr.to_string());
    let (api_addr, api_rx) = watch::channel(api.url(""));
    let mut processes = Processes {
        infrastructure,
        projector,
        edge,
        api,
        edge_addr,
        api_addr,
    };
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Conversations over REST, before any fault.
    let mut conversations = Vec::new();
    for i in 0..plan.senders {
        let sender = format!("chaos-s{i}");
        let partner = format!("chaos-p{i}");
        let rest = crate::RestClient::new(api_rx.borrow().clone(), env.token(&sender));
        let (status, body) = rest
            .post(
                "/conversation",
                &json!({"recipientIdArr": [partner], "isGroup": false}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id: Uuid = body["conversationId"].as_str().unwrap().parse().unwrap();
        conversations.push((sender, id));
    }

    let mut clients = tokio::task::JoinSet::new();
    for (sender, conversation) in conversations.clone() {
        let (env_token, edge_rx, ledger, plan) = (
            env.token(&sender),
            edge_rx.clone(),
            ledger.clone(),
            plan.clone(),
        );
        clients.spawn(async move {
            send_all(&sender, conversation, &env_token, edge_rx, &ledger, &plan).await
        });
    }
    if plan.groups > 0 {
        let (token, api_rx, ledger, plan) = (
            env.token("chaos-creator"),
            api_rx.clone(),
            ledger.clone(),
            plan.clone(),
        );
        clients.spawn(async move { create_groups(&token, api_rx, &ledger, &plan).await });
    }

    // Faults in turn until every client is done.
    let mut kills: Vec<(Fault, Instant)> = Vec::new();
    let mut next = 0;
    loop {
        let pause = tokio::time::sleep(plan.fault_every);
        tokio::select! {
            done = clients.join_next() => match done {
                None => break,
                Some(outcome) => { outcome.expect("a client task"); continue; }
            },
            () = pause => {}
        }
        if plan.faults.is_empty() {
            continue;
        }
        let fault = plan.faults[next % plan.faults.len()];
        next += 1;
        processes.kill(fault).await;
        kills.push((fault, Instant::now()));
        tokio::time::sleep(plan.down_for).await;
        processes.restart(env, fault).await;
    }
    processes.wait_ready().await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut report = Report {
        acknowledged: ledger.acks.len(),
        lost: Vec::new(),
        doubled: ledger.doubled.clone(),
        out_of_order: Vec::new(),
        faults: BTreeMap::new(),
        longest_pause: BTreeMap::new(),
        groups_acknowledged: ledger.groups.len(),
        groups_missing: Vec::new(),
        retries: ledger.retries.clone(),
        verified: Ok(()),
        elapsed: Duration::ZERO,
    };
    pauses(&ledger.acks, &kills, &mut report);
    settle(env, &conversations, &ledger.acks, &mut report).await;
    let pool = env.pool().await;
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations WHERE created_by = 'chaos-creator'")
            .fetch_one(&pool)
            .await
            .expect("count the groups");
    if created as usize > ledger.groups.len() {
        report.doubled.push(format!(
            "{created} groups created for {} acknowledged",
            ledger.groups.len()
        ));
    }
    report.verified = verify(env).await;
    let rest = crate::RestClient::new(api_rx.borrow().clone(), env.token("chaos-creator"));
    for group in &ledger.groups {
        let (status, _) = rest.get(&format!("/conversations/{group}")).await;
        if status != 200 {
            report.groups_missing.push(group.to_string());
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// `chatctl verify` on this test's log and database.
async fn verify(env: &TestEnv) -> Result<(), String> {
    let output = tokio::process::Command::new(crate::binary_path("chatctl"))
        .arg("verify")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.service_env())
        .output()
        .await
        .map_err(|e| format!("run chatctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Per fault kind, the longest gap between two acknowledgements (of any client) that begins
/// after one of its kills and before the next fault.
fn pauses(acks: &[Ack], kills: &[(Fault, Instant)], report: &mut Report) {
    let mut times: Vec<Instant> = acks.iter().map(|a| a.at).collect();
    times.sort();
    for (i, (fault, at)) in kills.iter().enumerate() {
        let until = kills.get(i + 1).map(|(_, t)| *t);
        let mut previous = *at;
        let mut longest = Duration::ZERO;
        for t in times.iter().filter(|t| **t >= *at) {
            longest = longest.max(*t - previous);
            previous = *t;
            if until.is_some_and(|u| *t >= u) {
                break;
            }
        }
        let kind = format!("{fault:?}").to_lowercase();
        *report.faults.entry(kind.clone()).or_default() += 1;
        let entry = report.longest_pause.entry(kind).or_default();
        *entry = (*entry).max(longest);
    }
}

/// Waits (bounded) for the projection to hold every acknowledged message, then compares.
async fn settle(
    env: &TestEnv,
    conversations: &[(String, Uuid)],
    acks: &[Ack],
    report: &mut Report,
) {
    let pool = env.pool().await;
    let ids: Vec<Uuid> = conversations.iter().map(|(_, id)| *id).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let rows = loop {
        let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
            "SELECT conversation_id, message_id, content, \
                    to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
               FROM messages WHERE conversation_id = ANY($1) ORDER BY conversation_id, seq",
        )
        .bind(&ids)
        .fetch_all(&pool)
        .await
        .expect("read the projection");
        if rows.len() >= acks.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut stored: HashMap<String, usize> = HashMap::new();
    let mut stored_sent_at: HashMap<String, &str> = HashMap::new();
    // One send is one message: a second row for a tempMessageId (its content names it) is a
    // message made twice, whatever its id.
    let mut per_send: HashMap<&str, usize> = HashMap::new();
    let mut order: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (conversation, message, content, sent_at) in &rows {
        *stored.entry(message.to_string()).or_default() += 1;
        stored_sent_at.insert(message.to_string(), sent_at);
        *per_send.entry(content.as_str()).or_default() += 1;
        order
            .entry(*conversation)
            .or_default()
            .push(message.to_string());
    }
    for (content, count) in &per_send {
        if *count > 1 {
            report
                .doubled
                .push(format!("{count} messages for {content:?}"));
        }
    }
    let acked: HashMap<&str, &Ack> = acks.iter().map(|a| (a.message_id.as_str(), a)).collect();
    for ack in acks {
        match stored_sent_at.get(&ack.message_id) {
            None => report
                .lost
                .push(format!("{} ({})", ack.message_id, ack.temp)),
            Some(at) if *at != ack.sent_at => report.doubled.push(format!(
                "{} ({}) echoed with sentAt {} but stored with {at}",
                ack.message_id, ack.temp, ack.sent_at
            )),
            Some(_) => {}
        }
    }
    if acked.len() < acks.len() {
        report
            .doubled
            .push("one messageId acknowledged for two sends".into());
    }
    for (sender, conversation) in conversations {
        let sending_order: Vec<&str> = acks
            .iter()
            .filter(|a| a.conversation == *conversation)
            .map(|a| a.message_id.as_str())
            .collect();
        let stored_order: Vec<&str> = order
            .get(conversation)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let stored_acked: Vec<&str> = stored_order
            .into_iter()
            .filter(|m| acked.contains_key(m))
            .collect();
        let mut deduped = stored_acked.clone();
        deduped.dedup();
        if deduped != sending_order && !sending_order.is_empty() {
            report.out_of_order.push(sender.clone());
        }
    }
}

/// One sender: `messages_per_sender` messages at its rate, each until acknowledged.
async fn send_all(
    sender: &str,
    conversation: Uuid,
    token: &str,
    mut edge: watch::Receiver<String>,
    ledger: &Mutex<Ledger>,
    plan: &Plan,
) {
    let interval = Duration::from_secs_f64(1.0 / plan.rate_per_sender.max(0.1));
    let mut ws: Option<WsClient> = None;
    for k in 0..plan.messages_per_sender {
        let tick = Instant::now();
        let temp = format!("{sender}-{k}");
        let frame = ws::send_message(conversation, &format!("chaos {temp}"), &temp);
        let acknowledged = 'attempts: loop {
            let socket = match ws.as_mut() {
                Some(socket) => socket,
                None => {
                    ws = connect(&mut edge, token).await;
                    continue 'attempts;
                }
            };
            if socket.try_send(&frame).await.is_err() {
                ws = None;
                ledger.lock().unwrap().retry("connection lost");
                continue;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match socket.receive(left).await {
                    Received::Frame(f) => {
                        if f["type"] == "new-message" && f["tempMessageId"] == temp.as_str() {
                            let id = f["messageId"].as_str().unwrap().to_owned();
                            let sent_at = f["sentAt"].as_str().unwrap().to_owned();
                            break 'attempts (id, sent_at);
                        }
                        if f["type"] == "new-message" {
                            // An earlier message's echo, delivered again: must name the id it
                            // was acknowledged under.
                            if let Some(earlier) = f["tempMessageId"].as_str() {
                                let id = f["messageId"].as_str().unwrap_or_default();
                                let ledger = &mut *ledger.lock().unwrap();
                                if let Some(ack) = ledger.acks.iter().find(|a| a.temp == earlier)
                                    && ack.message_id != id
                                {
                                    ledger.doubled.push(format!("{earlier}: {id}"));
                                }
                            }
                            continue;
                        }
                        if f["type"] == "error" && f["tempMessageId"] == temp.as_str() {
                            let code = f["code"].as_str().unwrap_or("error").to_owned();
                            ledger.lock().unwrap().retry(&code);
                            break;
                        }
                    }
                    // A silence, or the connection went away: send again.
                    Received::Closed(_) | Received::Lost(_) => {
                        ws = None;
                        ledger.lock().unwrap().retry("connection lost");
                        break;
                    }
                    Received::Silence => {
                        ledger.lock().unwrap().retry("silence");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (message_id, sent_at) = acknowledged;
        ledger.lock().unwrap().acks.push(Ack {
            conversation,
            temp: temp.clone(),
            message_id,
            sent_at,
            at: Instant::now(),
        });
        if let Some(wait) = interval.checked_sub(tick.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A connection to the current edge, or None after a failed attempt (the caller retries).
async fn connect(edge: &mut watch::Receiver<String>, token: &str) -> Option<WsClient> {
    let addr = edge.borrow_and_update().clone();
    let url = ws::url(addr, &ws::root_with_token(token));
    match tokio::time::timeout(Duration::from_secs(5), WsClient::connect_url(&url)).await {
        // Unchecked frames: what is counted here is what arrives, whatever it is.
        Ok(Ok(client)) => Some(client.reading(ws::as_sent)),
        _ => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// Creates `plan.groups` groups, each retried with its idempotency key until a 200.
async fn create_groups(
    token: &str,
    api: watch::Receiver<String>,
    ledger: &Mutex<Ledger>,
    plan: &Plan,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let spacing = plan.fault_every / 2;
    for g in 0..plan.groups {
        let key = Uuid::new_v4().to_string();
        let body = json!({
            "recipientIdArr": ["chaos-g1", "chaos-g2"], "isGroup": true, "title": format!("group {g}"),
        });
        let id = loop {
            let base = api.borrow().clone();
            let answer = http
                .post(format!("{base}/conversation"))
                .header("Authorization", token)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            if let Ok(response) = answer
                && response.status() == 200
                && let Ok(v) = response.json::<Value>().await
                && let Some(id) = v["conversationId"].as_str()
            {
                break id.parse::<Uuid>().unwrap();
            }
            ledger.lock().unwrap().retry("group creation failed");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        ledger.lock().unwrap().groups.push(id);
        tokio::time::sleep(spacing).await;
    }
}
