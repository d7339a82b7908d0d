//! `ws-load`: how fast and how lean the socket-edge is, next to the floor the log sets.
//!
//! Against a running stack (projector + socket-edge on the same topic and database):
//!
//! 1. memory: the edge's VmRSS before and after opening `--idle` idle connections;
//! 2. load: `--connections` connections across `--conversations` group conversations, messages
//!    sent at `--rate` per second for `--seconds`; each delivery's send→deliver latency is the
//!    receive time minus the send time written in the message's content;
//! 3. floor: the same rate of events appended through the writer and read back by a plain
//!    consumer of the same broker, with no service of ours in between.
//!
//! Each load step also reports the CPU of every process of the stack, in % of one core and in
//! microseconds per delivery: CPU time varies far less than latency on a shared machine.
//! `--sweep` repeats the load step over several rates and connection counts and writes the
//! table and a chart of them (see [`sweep`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use events::{ConversationCreated, Envelope, Event, MessageSent, Timestamp};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

mod stages;
mod sweep;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

#[derive(Parser, Debug)]
#[command(about = "Load and latency of the socket-edge, with the Kafka floor")]
struct Args {
    /// The edge's WebSocket URL (base path included, no query).
    #[arg(long, default_value = "ws://127.0.0.1:8081/")]
    edge: String,
    /// The edge's Prometheus endpoint, read before and after the measured window for the
    /// medians of a send's stages inside the edge.
    #[arg(long, default_value = "http://127.0.0.1:8081/metrics")]
    edge_metrics: String,
    /// The edge's process id, to read its memory (VmRSS) and CPU; skip the memory step without it.
    #[arg(long)]
    edge_pid: Option<u32>,
    /// A process of the stack whose CPU is measured, as NAME=PID (repeatable; names: kafka,
    /// projector, redis, chat-api, or any other). Without it a name is found by its process
    /// name (`java` for Kafka), which counts every such process on the machine. Postgres is
    /// always the backends serving the database of `DATABASE_URL`.
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Idle connections opened for the memory measurement (0: no memory step).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Connections of the load step (one user each).
    #[arg(long, default_value_t = 2_000)]
    connections: usize,
    /// Group conversations the connections are spread over.
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// Messages sent per second (all connections together).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of the same load sent before measuring, so that the broker's JIT compiler and
    /// every cache are warm: a freshly started Kafka is several times slower for its first
    /// minute or so of load (measured in docs/performance.md, ws-load's load step).
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Instead of one load step: one per rate of `--sweep-rates` (at `--connections`), then one
    /// per count of `--sweep-connections` (at `--rate`), each with its own floor; writes
    /// `<--sweep-out>.md` (the table) and `<--sweep-out>.svg` (the chart).
    #[arg(long)]
    sweep: bool,
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000")]
    sweep_rates: Vec<u64>,
    #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000,18000")]
    sweep_connections: Vec<usize>,
    #[arg(long, default_value = "docs/performance-sweep")]
    sweep_out: String,
    #[arg(
        long,
        env = "CHAT_JWT_SECRET",
        default_value = auth::DEV_SECRET,
        hide_env_values = true
    )]
    jwt_secret: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = store::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    database_url: String,
    #[command(flatten)]
    kafka: writer::KafkaArgs,
}

fn parse_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text.split_once('=').ok_or("expected NAME=PID")?;
    Ok((
        name.to_owned(),
        pid.parse().map_err(|e| format!("bad pid {pid}: {e}"))?,
    ))
}

/// The shape of one load step.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub connections: usize,
    pub conversations: usize,
    pub rate: u64,
    pub warmup: u64,
    pub seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut table: Vec<(String, String)> = Vec::new();
    // The stack's topic normally exists already; a fresh bench topic gets the stack's 8 partitions.
    writer::admin::ensure_topic(&args.kafka.brokers, &args.kafka.topic, 8).await?;
    wait_ready(&args.edge).await?;
    let watched = cpu::watched(&args);
    let shape = Shape {
        connections: args.connections,
        conversations: args.conversations,
        rate: args.rate,
        warmup: args.warmup,
        seconds: args.seconds,
    };
    if args.sweep {
        return sweep::run(&args, &watched, shape, &run).await;
    }

    if let Some(pid) = args.edge_pid.filter(|_| args.idle > 0) {
        let before = rss_kib(pid)?;
        let idle = open_many(&args, &format!("idle-{run}"), args.idle).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid)?;
        let per = (after.saturating_sub(before) as f64 * 1024.0) / args.idle as f64;
        table.push(("idle connections".into(), args.idle.to_string()));
        table.push((
            "edge VmRSS before → after".into(),
            format!(
                "{:.1} MiB → {:.1} MiB",
                before as f64 / 1024.0,
                after as f64 / 1024.0
            ),
        ));
        // The allocator keeps what it grew: an edge that already held many connections has
        // room for these without growing, and the difference says nothing.
        let fresh = before < 64 * 1024;
        table.push((
            "edge memory per idle connection".into(),
            if fresh {
                format!("{:.1} KiB", per / 1024.0)
            } else {
                format!(
                    "{:.1} KiB (not meaningful: the edge already used {:.0} MiB; measure on a freshly started edge)",
                    per / 1024.0,
                    before as f64 / 1024.0
                )
            },
        ));
        drop(idle);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let load = load(&args, shape, &watched, &run).await?;
    let floor = floor(&args, shape, &run).await?;
    table.push((
        "connections / conversations".into(),
        format!("{} / {}", args.connections, args.conversations),
    ));
    table.push((
        "target rate".into(),
        format!("{} msg/s for {} s", args.rate, args.seconds),
    ));
    table.push(("sent".into(), format!("{} msg/s", load.sent_per_sec as u64)));
    table.push((
        "deliveries".into(),
        format!(
            "{:.0} /s ({} expected, {} received, {} errors)",
            load.deliveries_per_sec, load.expected, load.received, load.errors
        ),
    ));
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        let edge = load.latency.value_at_quantile(q) as f64 / 1000.0;
        let base = floor.value_at_quantile(q) as f64 / 1000.0;
        table.push((
            format!("send→deliver {name} (floor, ratio)"),
            format!(
                "{edge:.2} ms ({base:.2} ms, ×{:.1})",
                edge / base.max(0.001)
            ),
        ));
    }
    for (stage, median) in &load.edge_stages {
        table.push((
            format!("edge: {stage} p50"),
            median.map_or("no samples".into(), |(seconds, samples)| {
                format!("{:.3} ms ({samples} samples)", seconds * 1000.0)
            }),
        ));
    }
    table.push((
        "send→deliver max".into(),
        format!("{:.2} ms", load.latency.max() as f64 / 1000.0),
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all = load.cpu.iter().map(|p| p.share).sum::<f64>();
    table.push((
        "CPU while measuring (% of one core)".into(),
        format!(
            "{} (stack {:.0}%, with ws-load {all:.0}% of {cores} cores)",
            load.cpu
                .iter()
                .map(|p| format!("{} {:.0}%", p.name, p.share))
                .collect::<Vec<_>>()
                .join(", "),
            load.stack_share(),
        ),
    ));
    table.push((
        format!("CPU per delivery (µs, {} deliveries)", load.cpu_deliveries),
        format!(
            "{} (stack {:.1})",
            load.cpu
                .iter()
                .map(|p| format!("{} {:.1}", p.name, p.micros_per_delivery))
                .collect::<Vec<_>>()
                .join(", "),
            load.stack_micros_per_delivery(),
        ),
    ));

    if !load.edge_threads.is_empty() {
        table.push((
            "edge CPU per delivery by thread (µs)".into(),
            load.edge_threads
                .iter()
                .map(|(name, micros)| format!("{name} {micros:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }

    let width = table
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "\n| {:width$} | value |\n|{}|-------|",
        "measure",
        "-".repeat(width + 2)
    );
    for (k, v) in table {
        println!("| {k:width$} | {v} |");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

fn token(secret: &str, user: &str) -> String {
    let exp = auth::mint::now() + 24 * 3600;
    auth::mint::hs256(secret, &serde_json::json!({ "sub": user, "exp": exp }))
}

async fn connect(
    args: &Args,
    user: String,
) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let url = format!(
        "{}?Authorization={}",
        args.edge,
        token(&args.jwt_secret, &user)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(ws)
}

/// Opens `count` connections of users `<prefix>-<i>`, 100 at a time.
async fn open_many(
    args: &Args,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<WebSocketStream<MaybeTlsStream<TcpStream>>>> {
    let mut out = Vec::with_capacity(count);
    let ids: Vec<usize> = (0..count).collect();
    for chunk in ids.chunks(100) {
        let opened = futures_util::future::join_all(
            chunk.iter().map(|i| connect(args, format!("{prefix}-{i}"))),
        )
        .await;
        for ws in opened {
            out.push(ws?);
        }
    }
    Ok(out)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The fields of a server frame the load step reads (borrowed: no allocation per frame).
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "tempMessageId", default)]
    temp_message_id: Option<&'a str>,
    #[serde(default)]
    content: Option<&'a str>,
}

pub struct LoadResult {
    pub latency: Histogram<u64>,
    pub sent_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub expected: u64,
    pub received: u64,
    pub errors: u64,
    /// CPU used by each process of the stack while measuring, busiest first.
    pub cpu: Vec<cpu::Use>,
    /// Deliveries (warm-up ones included) received between the two CPU samples.
    pub cpu_deliveries: u64,
    /// The edge's CPU per delivery by thread name (`--edge-pid`), busiest first: its runtime
    /// against librdkafka's threads.
    pub edge_threads: Vec<(String, f64)>,
    /// The median of each of a send's stages inside the edge ([`stages::STAGES`]) over the
    /// measured window, and its samples; empty when the edge's metrics could not be read.
    pub edge_stages: Vec<(&'static str, Option<(f64, u64)>)>,
}

impl LoadResult {
    /// The stack's processes, the load tool left out.
    fn stack(&self) -> impl Iterator<Item = &cpu::Use> {
        self.cpu.iter().filter(|p| p.name != cpu::LOAD_TOOL)
    }

    /// Share of one core used by the stack, in %.
    pub fn stack_share(&self) -> f64 {
        self.stack().map(|p| p.share).sum()
    }

    pub fn stack_micros_per_delivery(&self) -> f64 {
        self.stack().map(|p| p.micros_per_delivery).sum()
    }

    /// One process's CPU per delivery (0 if not measured).
    pub fn micros_per_delivery(&self, name: &str) -> f64 {
        self.cpu
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| p.micros_per_delivery)
    }
}

async fn load(
    args: &Args,
    shape: Shape,
    watched: &[cpu::Watched],
    run: &str,
) -> anyhow::Result<LoadResult> {
    let per_conversation = (shape.connections / shape.conversations).max(2);
    let users: Vec<String> = (0..shape.conversations * per_conversation)
        .map(|i| format!("load-{run}-{i}"))
        .collect();

    // Conversations through the writer; wait until the projection holds them all.
    let writer = writer::Writer::new(&args.kafka)?;
    let mut conversations = Vec::new();
    for c in 0..shape.conversations {
        let id = Uuid::new_v4();
        let mut members: Vec<String> =
            users[c * per_conversation..(c + 1) * per_conversation].to_vec();
        members.sort();
        writer
            .append(&Envelope::new(Event::ConversationCreated(
                ConversationCreated {
                    conversation_id: id,
                    created_by: members[0].clone(),
                    participants: members,
                    is_group: true,
                    title: format!("load {c}"),
                    idempotency_key: None,
                },
            )))
            .await?;
        conversations.push(id);
    }
    let pool = sqlx::PgPool::connect(&args.database_url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let known: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM conversations WHERE conversation_id = ANY($1)",
        )
        .bind(&conversations)
        .fetch_one(&pool)
        .await?;
        if known as usize == conversations.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the projector did not project the conversations"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let recording = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Every `new-message` received, warm-up or not: the deliveries the CPU was spent on.
    let delivered = Arc::new(AtomicU64::new(0));
    let mut sinks: Vec<Arc<tokio::sync::Mutex<Sink>>> = Vec::new();
    // Each connection keeps its own samples (no lock shared by 2,000 readers); they are merged
    // into one histogram once the connections close.
    let mut readers = Vec::new();
    let sockets = open_many(args, &format!("load-{run}"), users.len()).await?;
    for ws in sockets {
        let (sink, mut stream) = ws.split();
        sinks.push(Arc::new(tokio::sync::Mutex::new(sink)));
        let (recording, received, errors, delivered) = (
            recording.clone(),
            received.clone(),
            errors.clone(),
            delivered.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut latency: Vec<u64> = Vec::new();
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(text) = frame else { continue };
                let at = now_micros();
                let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                    continue;
                };
                if frame.kind == "error" {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(sent) = frame.content.and_then(|c| c.parse::<u64>().ok()) else {
                    continue;
                };
                delivered.fetch_add(1, Ordering::Relaxed);
                if recording.load(Ordering::Relaxed)
                    && frame.temp_message_id.is_some_and(|t| t.starts_with('m'))
                {
                    received.fetch_add(1, Ordering::Relaxed);
                    latency.push(at.saturating_sub(sent).max(1));
                }
            }
            latency
        }));
    }

    // Warm up, then measure. A message's deliveries are counted when it was sent while
    // measuring (temp ids "m…"); warm-up messages use "w…".
    let send = |seconds: u64, tag: char| {
        let sinks = sinks.clone();
        let conversations = conversations.clone();
        let rate = shape.rate;
        async move {
            let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = rate * seconds;
            let started = Instant::now();
            for n in 0..total {
                ticks.tick().await;
                let c = (n as usize) % conversations.len();
                let sender =
                    c * per_conversation + (n as usize / conversations.len()) % per_conversation;
                let frame = serde_json::json!({
                    "action": "send-message", "conversationId": conversations[c],
                    "content": now_micros().to_string(), "tempMessageId": format!("{tag}{n}"),
                })
                .to_string();
                let sink = sinks[sender].clone();
                tokio::spawn(async move {
                    let _ = sink.lock().await.send(Message::text(frame)).await;
                });
            }
            (total, started.elapsed())
        }
    };
    send(shape.warmup, 'w').await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    recording.store(true, Ordering::Relaxed);
    let metrics_before = stages::scrape(&args.edge_metrics).await;
    let measured_from = Instant::now();
    let cpu_before = cpu::sample(watched);
    let threads_before = args.edge_pid.map(cpu::threads).unwrap_or_default();
    let delivered_before = delivered.load(Ordering::Relaxed);
    let (sent, sending) = send(shape.seconds, 'm').await;
    let cpu_deliveries = delivered.load(Ordering::Relaxed) - delivered_before;
    let cpu = cpu::usage(
        watched,
        &cpu_before,
        &cpu::sample(watched),
        measured_from.elapsed(),
        cpu_deliveries,
    );
    let edge_threads = cpu::per_delivery(
        &threads_before,
        &args.edge_pid.map(cpu::threads).unwrap_or_default(),
        cpu_deliveries,
    );
    // Let the last deliveries arrive.
    let expected = sent * per_conversation as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let edge_stages = match (metrics_before, stages::scrape(&args.edge_metrics).await) {
        (Ok(before), Ok(after)) => stages::STAGES
            .iter()
            .map(|&(stage, name)| (stage, stages::median_between(&before, &after, name)))
            .collect(),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("the edge's stages are not measured: {e:#}");
            Vec::new()
        }
    };
    let window = measured_from
        .elapsed()
        .as_secs_f64()
        .min(sending.as_secs_f64() + 0.5);
    let received = received.load(Ordering::Relaxed);
    for sink in &sinks {
        let _ = sink.lock().await.close().await;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    // One deadline for them all: the edge closes each socket after the client's close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for reader in readers {
        if let Ok(Ok(own)) = tokio::time::timeout_at(deadline, reader).await {
            for sample in own {
                latency.record(sample)?;
            }
        }
    }
    Ok(LoadResult {
        latency,
        sent_per_sec: sent as f64 / sending.as_secs_f64(),
        deliveries_per_sec: received as f64 / window,
        expected,
        received,
        errors: errors.load(Ordering::Relaxed),
        cpu,
        cpu_deliveries,
        edge_threads,
        edge_stages,
    })
}

/// Events appended through the writer to a topic of their own and read back by a plain
/// consumer: the least any delivery through the log can take.
async fn floor(args: &Args, shape: Shape, run: &str) -> anyhow::Result<Histogram<u64>> {
    let topic = format!("{}.floor-{run}", args.kafka.topic);
    writer::admin::ensure_topic(&args.kafka.brokers, &topic, 1).await?;
    // A raw round trip: appends sent at once, whatever linger the stack's writers use.
    let kafka = writer::KafkaArgs::new(args.kafka.brokers.clone(), topic.clone()).without_linger();
    let writer = writer::Writer::new(&kafka)?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("ws-load-floor-{run}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let (_, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Offset(high))?;
    consumer.assign(&assignment)?;

    let total = shape.rate * shape.seconds;
    let sender = tokio::spawn({
        let rate = shape.rate;
        async move {
            let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let conversation = Uuid::new_v4();
            for n in 0..total {
                ticks.tick().await;
                let envelope = Envelope::new(Event::MessageSent(MessageSent {
                    conversation_id: conversation,
                    message_id: Uuid::new_v4(),
                    sender_id: "floor".into(),
                    content: now_micros().to_string(),
                    temp_message_id: n.to_string(),
                    sent_at: Timestamp::now(),
                }));
                let writer = writer.clone();
                tokio::spawn(async move { writer.append(&envelope).await });
            }
        }
    });
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline = Instant::now() + Duration::from_secs(shape.seconds + 15);
    while latency.len() < total && Instant::now() < deadline {
        let Ok(Ok(record)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let at = now_micros();
        if let Some(Ok(envelope)) = record.payload().map(Envelope::decode)
            && let Event::MessageSent(m) = envelope.event
            && let Ok(sent) = m.content.parse::<u64>()
        {
            latency.record(at.saturating_sub(sent).max(1))?;
        }
    }
    sender.await?;
    let _ = writer::admin::delete_topics(&args.kafka.brokers, &[&topic]).await;
    Ok(latency)
}

/// Waits until the edge's /readyz answers 200 (its log position is fixed).
async fn wait_ready(edge: &str) -> anyhow::Result<()> {
    let authority = edge
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&authority, "/readyz").await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the edge at {authority} is not ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The body of `GET <path>` from `authority` (`host:port`), over plain HTTP/1.0; an error
/// unless it answers 200.
async fn http_get(authority: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP body from {authority}{path}"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "{authority}{path}: {status}");
    Ok(body.to_owned())
}

/// CPU time of the stack's processes, from `/proc` (Linux).
pub mod cpu {
    use std::time::Duration;

    /// The name under which the load tool's own CPU is reported (not part of the stack).
    pub const LOAD_TOOL: &str = "ws-load";

    /// Which processes make up one name.
    enum Who {
        Pid(u32),
        /// Every process of this `comm` (at most 15 bytes) on the machine.
        Comm(&'static str),
        /// Postgres backends serving one database (their title names it).
        Backends(String),
    }

    /// A process (or group of processes) of the stack whose CPU is measured.
    pub struct Watched {
        pub name: String,
        who: Who,
    }

    /// What to watch: the edge (`--edge-pid`), each `--pid NAME=PID`, the defaults by process
    /// name for the rest, the Postgres backends of the bench's database, and ws-load itself.
    pub(crate) fn watched(args: &super::Args) -> Vec<Watched> {
        let mut watched: Vec<Watched> = args
            .pids
            .iter()
            .map(|(name, pid)| Watched {
                name: name.clone(),
                who: Who::Pid(*pid),
            })
            .collect();
        if let Some(pid) = args.edge_pid {
            watched.push(Watched {
                name: "socket-edge".into(),
                who: Who::Pid(pid),
            });
        }
        for (name, comm) in [
            ("socket-edge", "socket-edge"),
            ("kafka", "java"),
            ("projector", "projector"),
            ("redis", "redis-server"),
        ] {
            if !watched.iter().any(|w| w.name == name) {
                watched.push(Watched {
                    name: name.into(),
                    who: Who::Comm(comm),
                });
            }
        }
        let database = args
            .database_url
            .rsplit('/')
            .next()
            .and_then(|tail| tail.split('?').next())
            .unwrap_or("chat")
            .to_owned();
        watched.push(Watched {
            name: "postgres".into(),
            who: Who::Backends(database),
        });
        watched.push(Watched {
            name: LOAD_TOOL.into(),
            who: Who::Pid(std::process::id()),
        });
        watched
    }

    /// Clock ticks of user + system time of each watched name, in the order of `watched`.
    pub fn sample(watched: &[Watched]) -> Vec<u64> {
        let mut ticks = vec![0; watched.len()];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ticks;
        };
        for entry in entries.flatten() {
            // Processes only: not /proc/self, which would count this process twice.
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, used)) = comm_and_ticks(&stat) else {
                continue;
            };
            for (i, w) in watched.iter().enumerate() {
                let mine = match &w.who {
                    Who::Pid(p) => *p == pid,
                    Who::Comm(c) => comm == *c,
                    Who::Backends(database) => {
                        comm == "postgres"
                            && std::fs::read_to_string(entry.path().join("cmdline"))
                                .is_ok_and(|title| title.contains(&format!(" {database} ")))
                    }
                };
                if mine {
                    ticks[i] += used;
                }
            }
        }
        ticks
    }

    /// Clock ticks of user + system time of each thread of `pid`, summed by thread name
    /// (librdkafka names its threads `rdk:main`, `rdk:broker<N>`, ...; the runtime's threads
    /// carry the process's name).
    pub fn threads(pid: u32) -> std::collections::BTreeMap<String, u64> {
        let mut ticks = std::collections::BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return ticks;
        };
        for entry in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((comm, used)) = comm_and_ticks(&stat) {
                *ticks.entry(comm.to_owned()).or_default() += used;
            }
        }
        ticks
    }

    /// Each thread name's CPU microseconds per delivery between two [`threads`] samples,
    /// busiest first.
    pub fn per_delivery(
        before: &std::collections::BTreeMap<String, u64>,
        after: &std::collections::BTreeMap<String, u64>,
        deliveries: u64,
    ) -> Vec<(String, f64)> {
        let mut used: Vec<(String, f64)> = after
            .iter()
            .map(|(name, a)| {
                let ticks = a.saturating_sub(before.get(name).copied().unwrap_or(0));
                (
                    name.clone(),
                    ticks as f64 / 100.0 * 1e6 / deliveries.max(1) as f64,
                )
            })
            .filter(|(_, micros)| *micros > 0.0)
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        used
    }

    /// The `comm` and user + system clock ticks of a `/proc/.../stat` line.
    fn comm_and_ticks(stat: &str) -> Option<(&str, u64)> {
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
        // After comm: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
        let used = [11, 12]
            .iter()
            .filter_map(|&f| fields.get(f).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        Some((&stat[open + 1..close], used))
    }

    /// One name's CPU over a measured window.
    pub struct Use {
        pub name: String,
        /// Share of one core, in %.
        pub share: f64,
        /// CPU microseconds per delivery received in the window.
        pub micros_per_delivery: f64,
    }

    /// Each name's CPU between two samples, busiest first. Processes that exited in between
    /// (Postgres backends) are left out of the second sample, so this is a lower bound for them.
    pub fn usage(
        watched: &[Watched],
        before: &[u64],
        after: &[u64],
        elapsed: Duration,
        deliveries: u64,
    ) -> Vec<Use> {
        // Linux reports in USER_HZ, which is 100 on every platform Rust targets.
        let seconds = elapsed.as_secs_f64().max(0.001);
        let mut usage: Vec<Use> = watched
            .iter()
            .zip(before.iter().zip(after))
            .map(|(w, (b, a))| {
                let used = a.saturating_sub(*b) as f64 / 100.0;
                Use {
                    name: w.name.clone(),
                    share: used / seconds * 100.0,
                    micros_per_delivery: used * 1e6 / deliveries.max(1) as f64,
                }
            })
            .collect();
        usage.sort_by(|a, b| b.share.total_cmp(&a.share));
        usage
    }
}
