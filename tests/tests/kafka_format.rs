//! `scripts/stack` formats a KRaft node's storage with the cluster id kept beside the nodes
//! (`.stack/kafka[-<port>]/cluster.id`). One in 64 random ids starts with '-', which Kafka's
//! storage tool took for an option when the id was a separate argument; such an id, read back
//! from an older cluster, must still start a node.
//!
//! Starts a broker of its own (a JVM, ~20 s), hence `#[ignore]`: it runs in the serial pass of
//! `scripts/test`, or alone with
//! `cargo test -p chat-tests --test kafka_format -- --ignored --test-threads=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// A port of its own, beside the shared node (9092) and the replicated cluster (19092…).
const PORT: u16 = 19192;

/// 16 bytes, base64url without padding, as Kafka writes cluster ids; the first byte's six
/// high bits are 62, which base64url writes '-'.
const LEADING_DASH_ID: &str = "-CWvMmbrvziR1HHTLKm7hQ";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kafka_dir() -> PathBuf {
    root().join(format!(".stack/kafka-{PORT}"))
}

fn stack(command: &str) -> Command {
    let mut stack = Command::new("bash");
    stack
        .arg(root().join("scripts/stack"))
        .arg(command)
        .env("STACK_KAFKA_PORT", PORT.to_string())
        .env("CHATCTL", chat_tests::binary_path("chatctl"));
    stack
}

/// Stops the node and removes its data, however the test ends.
struct Node;

impl Drop for Node {
    fn drop(&mut self) {
        let _ = stack("kafka-down").status();
        let _ = std::fs::remove_dir_all(kafka_dir());
    }
}

#[test]
#[ignore = "starts a Kafka broker of its own; run alone"]
fn a_cluster_id_starting_with_a_dash_formats_and_starts_a_node() {
    let _ = std::fs::remove_dir_all(kafka_dir());
    std::fs::create_dir_all(kafka_dir()).unwrap();
    std::fs::write(
        kafka_dir().join("cluster.id"),
        format!("{LEADING_DASH_ID}\n"),
    )
    .unwrap();
    let _node = Node;
    let status = stack("kafka-up").status().expect("run scripts/stack");
    assert!(
        status.success(),
        "STACK_KAFKA_PORT={PORT} scripts/stack kafka-up with cluster id {LEADING_DASH_ID}"
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{PORT}"))
        .create()
        .expect("a metadata client");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("the node answers");
    assert_eq!(metadata.brokers().len(), 1);
    // (One node: its folder is the cluster's.)
    let meta_properties = std::fs::read_to_string(kafka_dir().join("data/meta.properties"))
        .expect("the node's meta.properties");
    assert!(
        meta_properties.contains(&format!("cluster.id={LEADING_DASH_ID}")),
        "formatted with the kept id: {meta_properties}"
    );
}
