//! Topic administration, for tests, tools and first start-up of a stack.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Creates `topic` with `partitions` partitions and unlimited retention (the log is the source
/// of truth), unless it exists already.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
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
