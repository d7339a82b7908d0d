//! The replicated log: a three-node KRaft cluster (`STACK_KAFKA_NODES=3 scripts/stack
//! kafka-up`, on ports of its own beside the shared single node), topics at replication factor
//! 3 with `min.insync.replicas=2`. The leader of a conversation's partition is SIGKILLed under
//! a steady load of WebSocket sends: appends keep being acknowledged after the election,
//! nothing acknowledged is lost or doubled, and the projector and the edge carry on by
//! themselves.
//!
//! Starting a cluster costs about a minute and three JVMs, hence `#[ignore]`: it runs in the
//! serial pass of `scripts/test`, or alone with
//! `cargo test -p chat-tests --test replication -- --ignored --test-threads=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chat_tests::{TestEnv, WsClient, eventually, ws};
use events::{ConversationCreated, Envelope, Event};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

/// The cluster's first broker port: 19092, 19094, 19096 (controllers one above each).
const CLUSTER_PORT: u16 = 19092;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A three-node cluster started by the project's script, stopped (and its data removed) when
/// dropped.
struct Cluster {
    brokers: String,
}

impl Cluster {
    fn stack(command: &str) -> Command {
        let mut stack = Command::new("bash");
        stack
            .arg(root().join("scripts/stack"))
            .arg(command)
            .env("STACK_KAFKA_NODES", "3")
            .env("STACK_KAFKA_PORT", CLUSTER_PORT.to_string())
            .env("CHATCTL", chat_tests::binary_path("chatctl"));
        stack
    }

    fn start() -> Self {
        let status = Self::stack("kafka-up").status().expect("run scripts/stack");
        assert!(
            status.success(),
            "STACK_KAFKA_NODES=3 scripts/stack kafka-up"
        );
        let brokers = (0..3)
            .map(|i| format!("127.0.0.1:{}", CLUSTER_PORT + 2 * i))
            .collect::<Vec<_>>()
            .join(",");
        Self { brokers }
    }

    fn node_dir(node: i32) -> PathBuf {
        root().join(format!(".stack/kafka-{CLUSTER_PORT}/node{node}"))
    }

    /// SIGKILL of one node: no chance to hand over leadership or flush anything.
    fn kill(node: i32) {
        let pid = std::fs::read_to_string(Self::node_dir(node).join("kafka.pid"))
            .expect("the node's pid file");
        let killed = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL node {node}");
    }

    /// Starts the nodes that do not run (the killed one rejoins and catches up).
    fn restart_missing() {
        let status = Self::stack("kafka-up").status().expect("run scripts/stack");
        assert!(status.success(), "scripts/stack kafka-up after a kill");
    }

    /// The node leading `partition` of `topic`, from a metadata request.
    fn leader(&self, topic: &str, partition: i32) -> i32 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("a metadata client");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let topic = &metadata.topics()[0];
        let found = topic
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .expect("the partition");
        assert_eq!(found.replicas().len(), 3, "replication factor 3");
        found.leader()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::stack("kafka-down").status();
        let _ = std::fs::remove_dir_all(root().join(format!(".stack/kafka-{CLUSTER_PORT}")));
    }
}

/// One acknowledged send: its id, when its echo arrived, and how many attempts it took.
struct Ack {
    message_id: String,
    at: Instant,
    attempts: usize,
}

/// Sends `temp` until its echo arrives, retrying the same `tempMessageId` after an error frame
/// or a silence, as the extension does.
async fn send_until_acknowledged(ws: &mut WsClient, conversation: Uuid, temp: &str) -> Ack {
    let frame = ws::send_message(conversation, &format!("message {temp}"), temp);
    for attempt in 1..=20 {
        ws.send(frame.clone()).await;
        loop {
            match ws.next_within(Duration::from_secs(15)).await {
                Some(f) if f["type"] == "new-message" && f["tempMessageId"] == temp => {
                    return Ack {
                        message_id: f["messageId"].as_str().unwrap().to_owned(),
                        at: Instant::now(),
                        attempts: attempt,
                    };
                }
                // The echo of an earlier attempt of an earlier message: already counted.
                Some(f) if f["type"] == "new-message" => continue,
                Some(f) => {
                    assert_eq!(f["type"], "error", "{f}");
                    assert_eq!(f["tempMessageId"], temp, "{f}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                None => break,
            }
        }
    }
    panic!("{temp} was never acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a three-node Kafka cluster; run alone"]
async fn killing_a_partition_leader_under_load_loses_and_doubles_nothing() {
    let cluster = Cluster::start();
    let env = TestEnv::on_brokers(&cluster.brokers).await;
    let mut projector = env.spawn_projector().await;
    let mut edge = env.spawn_edge().await;

    let conversation = Uuid::new_v4();
    let created = env
        .writer()
        .append(&Envelope::new(Event::ConversationCreated(
            ConversationCreated {
                conversation_id: conversation,
                created_by: "alice".into(),
                participants: vec!["alice".into(), "bob".into()],
                is_group: false,
                title: String::new(),
                idempotency_key: None,
            },
        )))
        .await
        .expect("append ConversationCreated");
    let pool = env.pool().await;
    let known = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM participants WHERE conversation_id = $1")
            .bind(conversation)
            .fetch_one(&pool)
            .await
            .unwrap()
            > 0
    };
    eventually(
        "the conversation is projected",
        Duration::from_secs(30),
        known,
    )
    .await;

    // Unchecked frames: what is counted here is what arrives, whatever it is.
    let mut alice = WsClient::connect(&env, &edge, "alice")
        .await
        .reading(ws::as_sent);
    let mut acks = Vec::new();
    // About 50 sends a second, each waiting for its acknowledgement.
    let send = async |alice: &mut WsClient, acks: &mut Vec<Ack>| {
        let temp = format!("t{}", acks.len());
        acks.push(send_until_acknowledged(alice, conversation, &temp).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A steady load first, then the leader of the conversation's partition dies.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(3) {
        send(&mut alice, &mut acks).await;
    }
    let leader = cluster.leader(&env.topic, created.partition);
    let killed_at = Instant::now();
    let before_kill = acks.len();
    Cluster::kill(leader);
    while killed_at.elapsed() < Duration::from_secs(12) {
        send(&mut alice, &mut acks).await;
    }
    let new_leader = cluster.leader(&env.topic, created.partition);
    assert_ne!(new_leader, leader, "another replica leads the partition");
    // The longest pause in acknowledgements around the kill: the election, as a sender sees it.
    let pause = acks[before_kill.saturating_sub(1)..]
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap();
    eprintln!(
        "leader {leader} killed: longest pause in acknowledgements {pause:?}; \
         {} messages acknowledged after the kill, {} sends retried",
        acks.len() - before_kill,
        acks.iter().filter(|a| a.attempts > 1).count()
    );

    // The killed node rejoins; sends go on.
    Cluster::restart_missing();
    for _ in 0..20 {
        send(&mut alice, &mut acks).await;
    }
    projector.wait_ready(Duration::from_secs(30)).await;
    edge.wait_ready(Duration::from_secs(30)).await;

    // Every acknowledged message is in history exactly once, in sending order.
    let acknowledged: Vec<String> = acks.iter().map(|a| a.message_id.clone()).collect();
    let what = "every acknowledged message in history once, in sending order";
    eventually(what, Duration::from_secs(60), || async {
        let stored: Vec<Uuid> = sqlx::query_scalar(
            "SELECT message_id FROM messages WHERE conversation_id = $1 ORDER BY seq",
        )
        .bind(conversation)
        .fetch_all(&pool)
        .await
        .unwrap();
        let stored: Vec<String> = stored.iter().map(Uuid::to_string).collect();
        if stored == acknowledged {
            return Ok(());
        }
        Err(format!(
            "{} acknowledged, {} stored; first difference at {:?}",
            acknowledged.len(),
            stored.len(),
            acknowledged.iter().zip(&stored).position(|(a, s)| a != s)
        ))
    })
    .await;
}
