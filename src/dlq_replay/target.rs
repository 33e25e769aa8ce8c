//! The topics replayed records go to: they must exist, and their partitions be served,
//! before the first record is sent.
//!
//! Why wait at all: librdkafka parks records for a topic whose partitions it does not
//! know yet in its unassigned queue, where later records can overtake them, and a new
//! partition's first refused batches can be reported delivered (see
//! [`crate::kafka::producer`]). A missing topic is created only with
//! `kafka.create_topics`, with the relay's partitions and replication factor, as the relay
//! would have created it.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::config::KafkaConfig;
use crate::kafka::client_config;

/// Bound on one metadata or admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a created topic may take to appear in the producer's metadata.
const TOPIC_METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a topic's partitions may take to be served by their leaders.
const PARTITIONS_SERVED_TIMEOUT: Duration = Duration::from_secs(10);
/// How often metadata or partitions are asked again while they are not there yet.
const METADATA_POLL: Duration = Duration::from_millis(50);

/// Why records cannot go to a topic.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("topic does not exist and kafka.create_topics is false")]
    Missing,
    #[error("cannot create the topic: {0}")]
    Create(RDKafkaErrorCode),
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
}

/// Returns once `topic` exists (created if `kafka.create_topics`) and each of its
/// partitions answers on its leader (best effort, bounded; a partition that keeps
/// refusing is left to the first produce request to report).
pub async fn ready(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<(), TargetError> {
    let mut partitions = known_partitions(producer, topic)?;
    if partitions.is_empty() && kafka.create_topics {
        create(kafka, topic).await?;
        let deadline = Instant::now() + TOPIC_METADATA_TIMEOUT;
        while partitions.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(METADATA_POLL).await;
            partitions = known_partitions(producer, topic)?;
        }
    }
    if partitions.is_empty() {
        return Err(TargetError::Missing);
    }
    let deadline = Instant::now() + PARTITIONS_SERVED_TIMEOUT;
    for partition in partitions {
        while producer
            .client()
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .is_err()
            && Instant::now() < deadline
        {
            tokio::time::sleep(METADATA_POLL).await;
        }
    }
    Ok(())
}

/// The partitions of `topic` in the producer's metadata; empty while it does not exist.
fn known_partitions(producer: &FutureProducer, topic: &str) -> Result<Vec<i32>, TargetError> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(TargetError::Client)?;
    Ok(crate::kafka::partitions_of(&metadata, topic))
}

/// Creates `topic` with `kafka.topic_partitions` and `kafka.topic_replication_factor`.
async fn create(kafka: &KafkaConfig, topic: &str) -> Result<(), TargetError> {
    let admin: AdminClient<DefaultClientContext> = client_config::connection_config(kafka)
        .create()
        .map_err(TargetError::Client)?;
    let new_topic = NewTopic::new(
        topic,
        kafka.topic_partitions,
        TopicReplication::Fixed(kafka.topic_replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(TargetError::Client)?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(TargetError::Create(code)),
        }
    }
    Ok(())
}
