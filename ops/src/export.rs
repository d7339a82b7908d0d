//! `chatctl events`: the log as JSON lines, for analytics consumers and debugging.
//!
//! Each line is one event at its current schema version (older versions are upcast as they
//! are read), with its place in the log:
//! `{"partition":0,"offset":12,"type":"MessageSent","version":1,"eventId":…,"acceptedAt":…,"data":{…}}`.
//! Lines are in log order within each partition; partitions are interleaved.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use events::Envelope;
use writer::KafkaArgs;

use crate::log::{self, Span};
use crate::replay;

#[derive(clap::Args, Debug, Clone)]
pub struct EventsArgs {
    /// Start at this offset in every partition (default: the beginning of the log).
    #[arg(long, conflicts_with = "from_time")]
    pub from_offset: Option<i64>,
    /// Start at the first event appended at or after this time (RFC 3339, e.g.
    /// 2021-09-26T10:00:00Z), found per partition with Kafka's time index.
    #[arg(long)]
    pub from_time: Option<DateTime<Utc>>,
    /// Only these partitions (repeatable; default: all).
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
    /// Only events of this type (repeatable): ConversationCreated, MessageSent, MessagesRead.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Only events of this conversation.
    #[arg(long)]
    pub conversation: Option<uuid::Uuid>,
    /// Stop after this many events written.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

/// What an export did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub read: u64,
    pub written: u64,
    pub undecodable: u64,
}

pub async fn run(kafka: &KafkaArgs, args: &EventsArgs) -> anyhow::Result<Exported> {
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    export(kafka, args, std::io::BufWriter::new(out)).await
}

/// Writes the selected events to `out` as JSON lines.
pub async fn export(
    kafka: &KafkaArgs,
    args: &EventsArgs,
    mut out: impl Write,
) -> anyhow::Result<Exported> {
    let spans = spans(kafka, args).await?;
    let bar = replay::progress(log::total(&spans), "events");
    let key = args.conversation.map(|c| c.to_string());
    let mut done = Exported::default();
    let mut batches = log::read(kafka, spans, 5_000);
    'read: while let Some(records) = batches.recv().await {
        for record in records? {
            done.read += 1;
            bar.inc(1);
            if let Some(key) = &key
                && record.key.as_deref() != Some(key.as_bytes())
            {
                continue;
            }
            let envelope = match record.payload.as_deref().map(Envelope::decode) {
                Some(Ok(envelope)) => envelope,
                Some(Err(e)) => {
                    done.undecodable += 1;
                    bar.suspend(|| {
                        eprintln!(
                            "partition {} offset {}: not an event ({e}); see the dead-letter topic",
                            record.partition, record.offset
                        )
                    });
                    continue;
                }
                None => {
                    done.undecodable += 1;
                    continue;
                }
            };
            if !args.types.is_empty() && !args.types.iter().any(|t| t == envelope.event.type_name())
            {
                continue;
            }
            // The position first, then the envelope as written at its current version.
            let envelope = envelope.encode();
            write!(
                out,
                "{{\"partition\":{},\"offset\":{},",
                record.partition, record.offset
            )?;
            out.write_all(&envelope[1..])?;
            out.write_all(b"\n")?;
            done.written += 1;
            if args.limit.is_some_and(|limit| done.written >= limit) {
                break 'read;
            }
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(done)
}

/// From the requested start to the end of the log as it is now, per partition.
async fn spans(kafka: &KafkaArgs, args: &EventsArgs) -> anyhow::Result<Vec<Span>> {
    let brokers = kafka.brokers.clone();
    let topic = kafka.topic.clone();
    let from_time = args.from_time.map(|t| t.timestamp_millis());
    let (marks, by_time) = tokio::task::spawn_blocking(move || {
        let consumer = log::reader(&brokers)?;
        let marks = log::watermarks(&consumer, &topic)?;
        let by_time = match from_time {
            Some(ms) => Some(log::offsets_at(&consumer, &topic, ms)?),
            None => None,
        };
        anyhow::Ok((marks, by_time))
    })
    .await??;
    let by_time: HashMap<i32, i64> = by_time.unwrap_or_default();
    let mut spans: Vec<Span> = marks
        .into_iter()
        .filter(|(p, _)| args.partitions.is_empty() || args.partitions.contains(p))
        .map(|(partition, (low, high))| {
            let start = match (args.from_offset, by_time.get(&partition)) {
                (Some(offset), _) => offset,
                (None, Some(offset)) => *offset,
                (None, None) => low,
            };
            Span {
                partition,
                start: start.clamp(low, high),
                end: high,
            }
        })
        .collect();
    spans.sort_by_key(|s| s.partition);
    Ok(spans)
}
