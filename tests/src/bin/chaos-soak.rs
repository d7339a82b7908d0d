//! The chaos soak: the chaos test's clients and faults (`chat_tests::chaos`) for as long as it
//! takes to send `--messages` messages, then its figures: messages, faults, lost, doubled, and
//! the longest pause in acknowledgements per fault kind. Needs the local stack's Postgres
//! (`scripts/stack infra-up`) and the debug binaries (`cargo build --workspace --bins`); the
//! Kafka broker and the Redis it kills are its own (`chat_tests::chaos::Infrastructure`).
//!
//!   cargo run -p chat-tests --bin chaos-soak -- --messages 100000

use std::process::ExitCode;
use std::time::Duration;

use chat_tests::chaos::{self, Fault, Infrastructure, Plan};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Steady WebSocket load with SIGKILLs of every process on a schedule")]
struct Args {
    /// Messages to send in all (spread over the senders).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Sending users (each in its own conversation).
    #[arg(long, default_value_t = 20)]
    senders: usize,
    /// Messages per second of each sender.
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 20)]
    fault_every: u64,
    /// Seconds a killed process stays down.
    #[arg(long, default_value_t = 2)]
    down_for: u64,
    /// Groups created over REST with idempotency keys during the run.
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// The faults, in turn (comma-separated; all five by default).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Fault::ALL)]
    faults: Vec<Fault>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut infrastructure = Infrastructure::start().await;
    let env = infrastructure.env().await;
    let plan = Plan {
        senders: args.senders,
        rate_per_sender: args.rate,
        messages_per_sender: args.messages.div_ceil(args.senders.max(1)),
        fault_every: Duration::from_secs(args.fault_every),
        down_for: Duration::from_secs(args.down_for),
        faults: args.faults,
        groups: args.groups,
    };
    eprintln!("chaos soak: {plan:?} (test environment {})", env.name);
    let report = chaos::run(&mut infrastructure, &env, &plan).await;
    println!("{report}");
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
