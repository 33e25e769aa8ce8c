//! The one error policy: every failure maps to retry, dead-letter or stop, here and only
//! here, so "what happens when X fails" has one answer to read.
//!
//! - **Retry**: transient. Back off exponentially with jitter and keep order (nothing after
//!   the failure is acknowledged meanwhile). Unknown errors default to retry.
//! - **Dead-letter**: this row can never be published as configured; it goes to the DLQ
//!   topic with the reason and the stream goes on (unless the table says `on_error = "stop"`).
//! - **Stop**: the relay cannot continue safely; it exits non-zero with the operator's fix.
//!
//! | failure | action |
//! |---|---|
//! | row: required column missing or NULL, payload not JSON, invalid topic name, too large | dead-letter |
//! | Kafka: message too large, topic authorization failed, invalid topic, unknown topic (after `kafka.unknown_topic_wait_ms` with creation off) | dead-letter |
//! | Kafka: broker down, leader not available, request timed out, queue full, network | retry (librdkafka retries in place; the relay waits) |
//! | Kafka: authentication failed, invalid configuration, other permanent codes | stop |
//! | PostgreSQL: connection lost, server restarting, silent past `wal_receiver_timeout_ms` | retry (reconnect) |
//! | PostgreSQL: slot in use by another replica | stand by, retry every second |
//! | PostgreSQL: slot or publication dropped, permission revoked, bad credentials | stop; nothing is recreated silently |
//! | PostgreSQL: slot invalidated, or of another plugin | stop (see [`crate::source::slot`]) |
//! | PostgreSQL: slot ahead of this relay (another replica, or advanced by hand) | warn, resume from the slot |
//! | PostgreSQL: history went back (restore, failover) | error line, resume from the slot ([`crate::source::history`]) |
//! | PostgreSQL: another system identifier | stop, or follow with `source.on_new_system = "follow"` |
//! | any other retryable failure (the sink's, a dead task) | restart the pipeline in-process ([`crate::pipeline`]) |

use rdkafka::error::RDKafkaErrorCode;

use crate::admin_sql::AdminError;
use crate::kafka::PublishError;
use crate::outbox::RowProblem;
use crate::replication::ReplicationError;

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    DeadLetter,
    Stop,
}

/// Anything that can fail while relaying.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    Row(&'a RowProblem),
    Publish(&'a PublishError),
    Replication(&'a ReplicationError),
    Admin(&'a AdminError),
}

/// The action for `failure`.
pub fn classify(failure: Failure<'_>) -> Action {
    match failure {
        Failure::Row(_) => Action::DeadLetter,
        Failure::Publish(PublishError::UnknownTopic(_)) => Action::DeadLetter,
        Failure::Publish(e) => match e.code() {
            Some(code) if is_row_specific(code) => Action::DeadLetter,
            Some(code) if crate::kafka::is_permanent(code) => Action::Stop,
            _ => Action::Retry,
        },
        Failure::Replication(e) if e.is_retryable() => Action::Retry,
        Failure::Admin(e) if e.is_retryable() => Action::Retry,
        Failure::Replication(_) | Failure::Admin(_) => Action::Stop,
    }
}

/// Permanent broker answers that concern the record or its topic, not the relay: other
/// rows can still be published, so only this one is dead-lettered.
pub fn is_row_specific(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | TopicAuthorizationFailed
            | InvalidTopic
            | UnknownTopic
            | UnknownTopicOrPartition
            | InvalidRecord
            | PolicyViolation
    )
}

/// The `outbox.error.class` for a Kafka failure that dead-letters a row.
pub fn publish_class(error: &PublishError) -> &'static str {
    match error {
        PublishError::UnknownTopic(_) => "unknown_topic",
        other => other.code().map_or("kafka_rejected", code_class),
    }
}

/// The `outbox.error.class` for a librdkafka code that dead-letters a row.
pub fn code_class(code: RDKafkaErrorCode) -> &'static str {
    use RDKafkaErrorCode::*;
    match code {
        MessageSizeTooLarge | InvalidMessageSize => "message_too_large",
        TopicAuthorizationFailed => "topic_authorization_failed",
        InvalidTopic => "invalid_topic",
        UnknownTopic | UnknownTopicOrPartition => "unknown_topic",
        _ => "kafka_rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    fn produce(code: RDKafkaErrorCode) -> PublishError {
        PublishError::Produce {
            topic: "t".into(),
            source: KafkaError::MessageProduction(code),
        }
    }

    #[test]
    fn the_map() {
        let row = RowProblem::NullColumn {
            column: "id".into(),
        };
        assert_eq!(classify(Failure::Row(&row)), Action::DeadLetter);
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(
                classify(Failure::Publish(&produce(code))),
                Action::DeadLetter,
                "{code:?}"
            );
        }
        let unknown = PublishError::UnknownTopic("t".into());
        assert_eq!(classify(Failure::Publish(&unknown)), Action::DeadLetter);
        assert_eq!(publish_class(&unknown), "unknown_topic");
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert_eq!(
                classify(Failure::Publish(&produce(code))),
                Action::Retry,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(Failure::Publish(&produce(
                RDKafkaErrorCode::SaslAuthenticationFailed
            ))),
            Action::Stop
        );
        assert_eq!(
            classify(Failure::Replication(&ReplicationError::Closed)),
            Action::Retry
        );
        let gone = ReplicationError::Server(crate::replication::ServerError {
            severity: "ERROR".into(),
            code: "42704".into(),
            message: "replication slot \"s\" does not exist".into(),
            detail: None,
            hint: None,
        });
        assert_eq!(classify(Failure::Replication(&gone)), Action::Stop);
    }
}
