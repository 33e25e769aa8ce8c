//! The Kafka half of the relay: producer settings, topic creation, delivery reports, and
//! holding a topic the broker refuses.

pub mod ack_batch;
pub mod client_config;
pub mod durability;
pub mod hold;
pub mod poller;
pub mod producer;
pub mod progress_reader;
pub mod properties;
pub mod rebootstrap;
pub mod topics;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use hold::Hold;
pub use producer::{EventProducer, FailedDelivery};
pub use topics::TopicManager;

/// Failures of the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot produce to topic {topic}: {source}")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("delivery to topic {} failed: {} ({:?})", .0.topic, .0.code, .0.code)]
    Delivery(FailedDelivery),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} does not exist and kafka.create_topics is false; create it or enable kafka.create_topics")]
    UnknownTopic(String),
    /// A topic seen to exist (in this process, or confirmed by the broker's metadata a
    /// moment ago) is missing now: a fault of the topic, which holds its rows, never a
    /// fault of the row that routes to it.
    #[error("topic {0} existed and is missing now (deleted, or its partitions lost); its rows are held until it is there again: create it again, or enable kafka.create_topics")]
    TopicGone(String),
    /// The broker refused the relay's SASL credentials (librdkafka would retry forever).
    #[error("Kafka refused the relay's credentials as {principal} ({reason}); fix sasl.username, sasl.password and sasl.mechanism in [kafka.properties] (a secret written as \"${{KAFKA_PASSWORD}}\" comes from the environment); the relay stops on bad credentials")]
    Credentials { principal: String, reason: String },
}

impl PublishError {
    /// librdkafka's code for the failure, where there is one.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            PublishError::Client(e) | PublishError::Produce { source: e, .. } => {
                e.rdkafka_error_code()
            }
            PublishError::Delivery(failed) => Some(failed.code),
            PublishError::CreateTopic { code, .. } => Some(*code),
            PublishError::TopicGone(_) => Some(RDKafkaErrorCode::UnknownTopicOrPartition),
            PublishError::UnknownTopic(_) | PublishError::Credentials { .. } => None,
        }
    }

    /// Whether retrying can help. librdkafka already retries transient broker errors
    /// forever (no message timeout), so what reaches here is mostly permanent; the codes
    /// below are the ones an operator must fix. Unknown errors count as retryable.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            PublishError::UnknownTopic(_) | PublishError::Credentials { .. }
        ) && !self.code().is_some_and(is_permanent)
    }
}

/// The partition ids `metadata` lists for `topic`; empty when the broker reports the topic
/// missing or in error. "The topic exists" means this is not empty.
pub fn partitions_of(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// librdkafka codes no retry fixes (as Vector lists them for its Kafka sink).
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | TransactionalIdAuthorizationFailed
            | InvalidTopic
            | UnknownTopic
            | UnknownTopicOrPartition
            | InvalidRecord
            | PolicyViolation
            | InvalidReplicationFactor
            | InvalidPartitions
            | InvalidConfig
            | UnsupportedVersion
            | InvalidRequiredAcks
            | SaslAuthenticationFailed
            | Authentication
            | InvalidArgument
            | Fatal
    )
}
