//! `chatctl`: the operator's tool for the chat event log and its projection.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ops::{export, import, rebuild, topics, verify};

#[derive(Parser, Debug)]
#[command(
    name = "chatctl",
    version,
    about = "Operate the chat event log and its Postgres projection",
    long_about = "Operate the chat event log (Kafka) and its Postgres projection: rebuild the \
                  projection from the log, verify it against the log, export events for analytics, \
                  create the log's topics."
)]
struct Cli {
    #[command(flatten)]
    kafka: writer::KafkaArgs,
    #[command(flatten)]
    database: store::DatabaseArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fold the whole log into fresh tables while the live projection keeps serving, then
    /// switch to them atomically. An interrupted rebuild resumes where it stopped (or is
    /// dropped with --discard); the live tables are untouched until the switch.
    Rebuild(rebuild::RebuildArgs),
    /// Check that the live projection equals a fresh fold of the log, and report the first
    /// differences and the dead-lettered events. Exits with 1 when they differ.
    Verify(verify::VerifyArgs),
    /// Print or export events as JSON lines, from an offset or a time, filtered by type or
    /// conversation.
    Events(export::EventsArgs),
    /// Import the old PageNow database: append its conversations, messages and read state as
    /// events (direct duplicates merged, ids kept). Run again, it appends only what the log
    /// does not hold yet.
    ImportPagenow(import::ImportArgs),
    /// Print the JSON Schema of the log's events (the published copy is
    /// events/schema/chat-events.schema.json).
    Schema,
    /// Create the event topic and its dead-letter topic unless they exist (unlimited retention;
    /// replicated on three brokers or more), and report both. Existing topics are left as they
    /// are; what differs from what would be created is reported as a warning.
    Topics(topics::TopicsArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, so that `chatctl events` output stays clean JSON lines.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => code,
        // `chatctl events | head`: the reader has what it wanted.
        Err(e)
            if e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Rebuild(args) => {
            rebuild::run(&cli.kafka, &cli.database, &args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let report = verify::run(&cli.kafka, &cli.database, &args).await?;
            print!("{}", report.render());
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Events(args) => {
            let done = export::run(&cli.kafka, &args).await?;
            eprintln!(
                "{} event(s) written of {} read{}",
                done.written,
                done.read,
                if done.undecodable > 0 {
                    format!(
                        "; {} undecodable (see the dead-letter topic)",
                        done.undecodable
                    )
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportPagenow(args) => {
            let outcome = import::run(&cli.kafka, &args).await?;
            let report = outcome.render(args.dry_run);
            if args.dry_run {
                // stdout holds the events; the report goes beside them.
                eprint!("{report}");
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", events::schema::schema_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics(args) => {
            for topic in topics::run(&cli.kafka, &args).await? {
                println!("{topic}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
