//! The one error policy: every failure maps to retry, dead-letter, hold or stop, here and
//! only here, so "what happens when X fails" has one answer to read.
//!
//! - **Retry**: transient. Back off exponentially with jitter and keep order (nothing after
//!   the failure is acknowledged meanwhile). Unknown errors default to retry.
//! - **Dead-letter**: this row can never be published as configured; it goes to the DLQ
//!   topic with the reason and the stream goes on (unless the table says `on_error = "stop"`).
//! - **Hold**: the broker refuses the row's *topic*, not the row: a revoked Write, a
//!   deleted topic, a policy, a size limit of the topic. Every later row for that topic
//!   would be refused the same way, so dead-lettering would empty the topic into the DLQ
//!   until an operator noticed. Instead the relay holds the row (and everything after it)
//!   and retries with backoff, reporting the topic as blocked with the fix
//!   ([`crate::kafka::hold`]), until the operator repairs the topic.
//! - **Stop**: the relay cannot continue safely; it exits non-zero with the operator's fix.
//!
//! Whose fault is it decides between the first three: only a fault of the row itself
//! (something the relay checked locally, or derived from the row's own values) may divert
//! the row to the DLQ.
//!
//! | failure | action |
//! |---|---|
//! | row: required column NULL, payload not JSON, invalid topic name from the row's routing value, over `max_record_bytes` | dead-letter |
//! | table: a column the config names is gone from the relation (a migration renamed or dropped it) | hold the stream until the config follows and the relay restarts (`crate::pipeline::sink`) |
//! | Kafka at send: librdkafka's own size check (`message.max.bytes`), invalid topic; a topic that never existed with `kafka.create_topics = false` (after `kafka.unknown_topic_wait_ms`) | dead-letter |
//! | Kafka broker: invalid record (e.g. no key for a compacted topic), invalid topic | dead-letter |
//! | Kafka broker: topic authorization failed, unknown topic or partition (a topic that existed; also a topic confirmed since the relay started that is missing at send, see [`crate::kafka::topics`]), policy violation, message or batch too large (the local size check passed) | hold the topic, retry with backoff |
//! | Kafka: broker down, leader not available, request timed out, queue full, network | retry (librdkafka retries in place; the relay waits) |
//! | Kafka: authentication failed, cluster authorization failed, invalid configuration, other permanent codes | stop |
//! | PostgreSQL: connection lost, server restarting, silent past `wal_receiver_timeout_ms` | retry (reconnect) |
//! | PostgreSQL: slot in use by another replica | stand by, retry every second |
//! | PostgreSQL: slot or publication dropped, permission revoked, bad credentials | stop; nothing is recreated silently |
//! | PostgreSQL: slot invalidated, or of another plugin | stop (see [`crate::source::slot`]) |
//! | PostgreSQL: publication missing, `FOR ALL TABLES`, not exactly `source.tables`, or a row of another table arrives | stop, never published or dead-lettered (see [`crate::source::publication`]) |
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
    /// A fault of the topic: hold the row and everything after it, retry with backoff.
    Hold,
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
        // Never existed (creation off): the row's routing value names no topic.
        Failure::Publish(PublishError::UnknownTopic(_)) => Action::DeadLetter,
        Failure::Publish(PublishError::Credentials { .. }) => Action::Stop,
        // librdkafka refused the record before any broker saw it: its own size check
        // (`message.max.bytes`) is about this record alone.
        Failure::Publish(PublishError::Produce { source, .. })
            if source.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
        {
            Action::DeadLetter
        }
        Failure::Publish(e) => match e.code() {
            Some(code) => refused(code),
            None => Action::Retry,
        },
        Failure::Replication(e) if e.is_retryable() => Action::Retry,
        Failure::Admin(e) if e.is_retryable() => Action::Retry,
        Failure::Replication(_) | Failure::Admin(_) => Action::Stop,
    }
}

/// The action for a record Kafka refused with `code` (in a delivery report, or when the
/// topic's metadata already carries the error): hold for a fault of the topic, dead-letter
/// for a fault of the record, stop for a permanent fault of the relay's own setup, retry
/// otherwise.
pub fn refused(code: RDKafkaErrorCode) -> Action {
    if is_topic_fault(code) {
        Action::Hold
    } else if is_row_specific(code) {
        Action::DeadLetter
    } else if crate::kafka::is_permanent(code) {
        Action::Stop
    } else {
        Action::Retry
    }
}

/// Permanent broker answers about the *topic*: every record to it would get the same, so
/// none of them is the row's fault (see the module docs). The size codes are here because
/// a record reaching the broker has passed the relay's `max_record_bytes` and librdkafka's
/// `message.max.bytes`: the topic's own `max.message.bytes` is what refuses it.
pub fn is_topic_fault(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        TopicAuthorizationFailed
            | UnknownTopicOrPartition
            | UnknownTopic
            | UnknownPartition
            | PolicyViolation
            | MessageSizeTooLarge
            | MessageBatchTooLarge
    )
}

/// Answers that say the topic (or a partition of it) no longer exists: the relay forgets
/// it was there, so that it looks again (and creates it when configured to).
pub fn is_topic_gone(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        UnknownTopicOrPartition | UnknownTopic | UnknownPartition
    )
}

/// Permanent broker answers about this record alone: other rows can still be published,
/// so only this one is dead-lettered.
pub fn is_row_specific(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(code, InvalidMessageSize | InvalidTopic | InvalidRecord)
}

/// What the operator does about a topic held for `code`: one sentence naming the topic and,
/// for a refused Write, the relay's principal.
pub fn topic_fix(code: RDKafkaErrorCode, topic: &str, principal: &str) -> String {
    use RDKafkaErrorCode::*;
    match code {
        TopicAuthorizationFailed => format!(
            "grant Write on topic {topic} to principal {principal} \
             (kafka-acls.sh --add --allow-principal {principal} --operation Write --topic {topic})"
        ),
        UnknownTopicOrPartition | UnknownTopic | UnknownPartition => format!(
            "topic {topic} or one of its partitions no longer exists; create it again \
             (with kafka.create_topics = true the relay does so itself)"
        ),
        PolicyViolation => format!(
            "the broker's policy refuses records for topic {topic}; change the policy or the topic's config"
        ),
        MessageSizeTooLarge | MessageBatchTooLarge => format!(
            "raise max.message.bytes of topic {topic} above outbox.max_record_bytes \
             (and batch.size), or lower outbox.max_record_bytes"
        ),
        other => format!("topic {topic} refuses records ({other}); fix the topic"),
    }
}

/// The Kafka principal the relay authenticates as, for the operator's fix: `User:<name>`
/// with SASL, otherwise what the broker maps the connection to.
pub fn principal(properties: &std::collections::BTreeMap<String, String>) -> String {
    match properties.get("sasl.username") {
        Some(name) => format!("User:{name}"),
        None => "of the relay (User:ANONYMOUS without SASL or a TLS client certificate)".into(),
    }
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

    fn delivery(code: RDKafkaErrorCode) -> PublishError {
        PublishError::Delivery(crate::kafka::FailedDelivery {
            topic: "t".into(),
            code,
            seq: crate::checkpoint::TxnSeq(0),
        })
    }

    /// A refusal of the topic never dead-letters: whether the broker said it in a delivery
    /// report, or librdkafka already knew it from the topic's metadata at send time.
    #[test]
    fn topic_refusals_hold_instead_of_dead_lettering() {
        use RDKafkaErrorCode::*;
        for code in [
            TopicAuthorizationFailed,
            UnknownTopicOrPartition,
            UnknownTopic,
            UnknownPartition,
            PolicyViolation,
            MessageSizeTooLarge,
            MessageBatchTooLarge,
        ] {
            assert_eq!(refused(code), Action::Hold, "{code:?}");
            assert_eq!(
                classify(Failure::Publish(&delivery(code))),
                Action::Hold,
                "{code:?} in a delivery report"
            );
            assert!(is_topic_fault(code) && !is_row_specific(code), "{code:?}");
        }
        for code in [
            TopicAuthorizationFailed,
            UnknownTopicOrPartition,
            UnknownPartition,
            PolicyViolation,
        ] {
            assert_eq!(
                classify(Failure::Publish(&produce(code))),
                Action::Hold,
                "{code:?} at send time"
            );
        }
        let create = PublishError::CreateTopic {
            topic: "t".into(),
            code: TopicAuthorizationFailed,
        };
        assert_eq!(classify(Failure::Publish(&create)), Action::Hold);
        // Faults of the relay's own setup still stop it.
        for code in [
            SaslAuthenticationFailed,
            ClusterAuthorizationFailed,
            InvalidConfig,
        ] {
            assert_eq!(refused(code), Action::Stop, "{code:?}");
        }
        assert_eq!(refused(RequestTimedOut), Action::Retry);
        let credentials = PublishError::Credentials {
            principal: "User:relay".into(),
            reason: "SASL authentication error".into(),
        };
        assert_eq!(classify(Failure::Publish(&credentials)), Action::Stop);
        assert!(!credentials.is_retryable());
        let message = credentials.to_string();
        assert!(
            message.contains("as User:relay") && message.contains("sasl.password"),
            "{message}"
        );
    }

    #[test]
    fn the_fix_names_topic_and_principal() {
        let props = [("sasl.username".to_string(), "relay".to_string())].into();
        let relay = principal(&props);
        assert_eq!(relay, "User:relay");
        let fix = topic_fix(RDKafkaErrorCode::TopicAuthorizationFailed, "orders", &relay);
        assert!(
            fix.starts_with("grant Write on topic orders to principal User:relay"),
            "{fix}"
        );
        let fix = topic_fix(RDKafkaErrorCode::MessageSizeTooLarge, "orders", &relay);
        assert!(fix.contains("max.message.bytes of topic orders"), "{fix}");
        assert!(principal(&Default::default()).contains("User:ANONYMOUS"));
    }

    #[test]
    fn the_map() {
        let row = RowProblem::NullColumn {
            column: "id".into(),
        };
        assert_eq!(classify(Failure::Row(&row)), Action::DeadLetter);
        // librdkafka's own checks at send time concern the record alone.
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(
                classify(Failure::Publish(&produce(code))),
                Action::DeadLetter,
                "{code:?}"
            );
        }
        // The broker refusing the record for a fault of its own.
        for code in [
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(
                classify(Failure::Publish(&delivery(code))),
                Action::DeadLetter,
                "{code:?}"
            );
        }
        let unknown = PublishError::UnknownTopic("t".into());
        assert_eq!(classify(Failure::Publish(&unknown)), Action::DeadLetter);
        assert_eq!(publish_class(&unknown), "unknown_topic");
        // A topic that was there and is gone is the topic's fault, never the row's.
        let gone = PublishError::TopicGone("t".into());
        assert_eq!(classify(Failure::Publish(&gone)), Action::Hold);
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
