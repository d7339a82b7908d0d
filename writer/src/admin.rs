//! Topic administration, for tests, tools and first start-up of a stack.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Replication factor of the topics on a cluster of three brokers or more: with
/// `min.insync.replicas` = [`MIN_IN_SYNC_REPLICAS`], an acknowledged append (`acks=all`) is on
/// two brokers at least, and one broker can fail without refusing appends.
pub const REPLICATION_FACTOR: i32 = 3;
/// In-sync replicas an append needs on a replicated cluster (see [`REPLICATION_FACTOR`]).
pub const MIN_IN_SYNC_REPLICAS: i32 = 2;

/// Creates `topic` with `partitions` partitions and unlimited retention (the log is the source
/// of truth), unless it exists already. On a cluster of three brokers or more it is replicated
/// ([`REPLICATION_FACTOR`], [`MIN_IN_SYNC_REPLICAS`]); on a smaller one (development) it has
/// one replica.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let broker_count = broker_count(brokers).await?;
    let replicated = broker_count >= REPLICATION_FACTOR as usize;
    let (replication, min_isr) = if replicated {
        (REPLICATION_FACTOR, MIN_IN_SYNC_REPLICAS)
    } else {
        (1, 1)
    };
    let min_isr = min_isr.to_string();
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("min.insync.replicas", &min_isr);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for outcome in admin.create_topics([&new_topic], &options).await? {
        match outcome {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = name, ?code, "could not create topic");
                });
            }
        }
    }
    Ok(())
}

/// How many brokers the cluster has, from a metadata request.
async fn broker_count(brokers: &str) -> Result<usize, KafkaError> {
    let config = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .clone();
    // rdkafka's metadata request blocks: off the async threads.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
        Ok(metadata.brokers().len())
    })
    .await
    .expect("the metadata request does not panic")
}

/// Deletes topics (test clean-up); missing topics are not an error.
pub async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    admin
        .delete_topics(topics, &AdminOptions::new())
        .await
        .map(|_| ())
}
