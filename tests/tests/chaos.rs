//! The chaos test: WebSocket senders and REST group creators under a steady load while the
//! projector, the edge, the API, Redis and the Kafka broker are SIGKILLed in turn and brought
//! back (see `chat_tests::chaos`). Afterwards every acknowledged message is in history exactly
//! once under its echoed id, each sender's messages are in sending order, every acknowledged
//! group is readable (and made once), and `chatctl verify` is clean.
//!
//! It kills the shared stack's Redis and Kafka, hence `#[ignore]`: it runs in the serial pass
//! of `scripts/test`, or alone with
//! `cargo test -p chat-tests --test chaos -- --ignored --nocapture --test-threads=1`.
//! The long version is the `chaos-soak` binary (docs/reliability.md).

use std::time::Duration;

use chat_tests::chaos::{self, Fault, Infrastructure, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a Kafka broker of its own and loads the machine; run alone"]
async fn every_acknowledged_message_survives_each_kind_of_kill_exactly_once() {
    let mut infrastructure = Infrastructure::start().await;
    let env = infrastructure.env().await;
    let plan = Plan {
        senders: 4,
        rate_per_sender: 10.0,
        messages_per_sender: 500,
        fault_every: Duration::from_secs(4),
        down_for: Duration::from_secs(1),
        faults: Fault::ALL.to_vec(),
        groups: 6,
    };
    let report = chaos::run(&mut infrastructure, &env, &plan).await;
    eprintln!("{report}");
    assert!(
        report.faults.len() == Fault::ALL.len(),
        "every kind of fault happened at least once: {report}"
    );
    assert!(report.is_clean(), "{report}");
}
