//! The log's topics: the event topic and its dead-letter topic
//! ([`projector::dead_letter_topic`]), created the one way the stack, `chatctl topics` and the
//! test harness all use: [`writer::admin::ensure_topic`] (unlimited retention; replication
//! factor 3 with `min.insync.replicas` 2 on a cluster of three brokers or more, else 1).
//!
//! An existing topic is never changed: a different partition count would move conversations
//! between partitions, so it is reported, not fixed.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use writer::KafkaArgs;

/// Partitions of the event topic when the stack creates it.
pub const DEFAULT_PARTITIONS: i32 = 8;
/// The dead-letter topic's partitions: dead letters are rare and read in one piece.
pub const DEAD_LETTER_PARTITIONS: i32 = 1;

#[derive(clap::Args, Debug)]
pub struct TopicsArgs {
    /// Partitions of the event topic, when it is created (an existing one keeps its own).
    #[arg(
        long,
        env = "CHAT_EVENTS_PARTITIONS",
        default_value_t = DEFAULT_PARTITIONS,
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    pub partitions: i32,
    /// Brokers to wait for before creating anything: a topic created while a node of a
    /// three-node cluster is still starting would get a single replica.
    #[arg(long, default_value_t = 1)]
    pub brokers: usize,
    /// How long to wait for them.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

/// Creates the event topic `topic` (`partitions` partitions) and its dead-letter topic, unless
/// they exist.
pub async fn create(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    writer::admin::ensure_topic(brokers, topic, partitions).await?;
    writer::admin::ensure_topic(
        brokers,
        &projector::dead_letter_topic(topic),
        DEAD_LETTER_PARTITIONS,
    )
    .await
}

/// One topic as `chatctl topics` left it.
#[derive(Debug)]
pub struct TopicReport {
    pub name: String,
    /// Created by this run (else it existed).
    pub created: bool,
    pub partitions: usize,
    pub replicas: usize,
    pub min_insync_replicas: Option<String>,
    /// What differs from what the stack would create.
    pub warnings: Vec<String>,
}

impl fmt::Display for TopicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic {}: {}, {} partition(s), replication {}, min.insync.replicas {}",
            self.name,
            if self.created { "created" } else { "exists" },
            self.partitions,
            self.replicas,
            self.min_insync_replicas.as_deref().unwrap_or("?"),
        )?;
        for warning in &self.warnings {
            write!(f, "\n  warning: {warning}")?;
        }
        Ok(())
    }
}

/// Waits for the cluster, creates what is missing, and reports both topics.
pub async fn run(kafka: &KafkaArgs, args: &TopicsArgs) -> anyhow::Result<Vec<TopicReport>> {
    await_brokers(
        &kafka.brokers,
        args.brokers,
        Duration::from_secs(args.wait_secs),
    )
    .await?;
    let wanted = [
        (kafka.topic.clone(), args.partitions),
        (
            projector::dead_letter_topic(&kafka.topic),
            DEAD_LETTER_PARTITIONS,
        ),
    ];
    let mut existed = Vec::new();
    for (name, _) in &wanted {
        existed.push(partition_count(&kafka.brokers, name).await?.is_some());
    }
    create(&kafka.brokers, &kafka.topic, args.partitions)
        .await
        .with_context(|| format!("create the topics of {} on {}", kafka.topic, kafka.brokers))?;
    let mut reports = Vec::new();
    for ((name, partitions), existed) in wanted.into_iter().zip(existed) {
        reports.push(describe(&kafka.brokers, &name, partitions, !existed).await?);
    }
    Ok(reports)
}

/// Waits until a metadata request lists `count` brokers.
async fn await_brokers(brokers: &str, count: usize, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let seen = metadata(brokers, None, |m| m.brokers().len()).await;
        match seen {
            Ok(seen) if seen >= count => return Ok(()),
            _ if Instant::now() >= deadline => {
                bail!(
                    "{brokers}: {count} broker(s) did not answer within {patience:?} (last: {seen:?})"
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The topic's partition count, or None when it does not exist.
async fn partition_count(brokers: &str, topic: &str) -> anyhow::Result<Option<usize>> {
    let topic_name = topic.to_owned();
    let count = metadata(brokers, Some(topic), move |m| {
        m.topics()
            .iter()
            .find(|t| t.name() == topic_name && t.error().is_none())
            .map(|t| t.partitions().len())
    })
    .await?;
    Ok(count)
}

async fn describe(
    brokers: &str,
    topic: &str,
    partitions: i32,
    created: bool,
) -> anyhow::Result<TopicReport> {
    let topic_name = topic.to_owned();
    let (count, replicas) = metadata(brokers, Some(topic), move |m| {
        m.topics()
            .iter()
            .find(|t| t.name() == topic_name)
            .map(|t| {
                let replicas = t.partitions().first().map_or(0, |p| p.replicas().len());
                (t.partitions().len(), replicas)
            })
            .unwrap_or_default()
    })
    .await?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await?
        .pop()
        .context("no answer to describe_configs")?
        .map_err(|code| anyhow::anyhow!("describe the configuration of {topic}: {code:?}"))?;
    let value = |name: &str| described.get(name).and_then(|e| e.value.clone());
    let mut warnings = Vec::new();
    if count != partitions as usize {
        warnings.push(format!(
            "{count} partitions, not {partitions}; left as it is (changing it would move \
             conversations between partitions)"
        ));
    }
    for setting in ["retention.ms", "retention.bytes"] {
        if value(setting).as_deref() != Some("-1") {
            warnings.push(format!(
                "{setting} is {:?}, not -1: the log is the source of truth and must be kept whole",
                value(setting)
            ));
        }
    }
    Ok(TopicReport {
        name: topic.to_owned(),
        created,
        partitions: count,
        replicas,
        min_insync_replicas: value("min.insync.replicas"),
        warnings,
    })
}

/// Runs a metadata request (blocking in rdkafka: off the async threads) and reads it with `read`.
async fn metadata<T: Send + 'static>(
    brokers: &str,
    topic: Option<&str>,
    read: impl FnOnce(&rdkafka::metadata::Metadata) -> T + Send + 'static,
) -> Result<T, KafkaError> {
    let config = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .clone();
    let topic = topic.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(topic.as_deref(), Duration::from_secs(10))?;
        Ok(read(&metadata))
    })
    .await
    .expect("the metadata request does not panic")
}
