//! The relay's main loop: source → route → produce → acknowledge, with reconnects,
//! in-process restarts and a graceful stop.
//!
//! Two tasks joined by one bounded channel of event batches: the [`crate::source`] task
//! and the sink (`sink.rs`). The supervisor (`supervisor.rs`) wires them, reconnects the source after every
//! retryable failure, and restarts the whole pipeline in-process, from the checkpoint,
//! after any other retryable failure: a failure the policy calls retryable never ends the
//! process. Exit 1 is only for what an operator must fix, and the error says what.

mod exactly_once;
mod sink;
mod supervisor;
mod transaction;

use std::sync::Arc;

pub use supervisor::run;

use crate::admin_sql::AdminError;
use crate::kafka::PublishError;
use crate::policy::{self, Action, Failure};
use crate::replication::{Lsn, ReplicationError};

/// Why the relay (or one run of its pipeline) stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("row {} of table {table} (xid {xid}, commit {lsn}) cannot be published ({class}): {reason}; fix the row or the [outbox] config, or set on_error = \"dlq\"", id.as_deref().unwrap_or("(no id)"))]
    Row {
        table: Arc<str>,
        id: Option<String>,
        xid: u32,
        lsn: Lsn,
        class: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Foreign(#[from] crate::outbox::ForeignTable),
    /// Exactly-once: the Kafka transaction was aborted (or fenced); the pipeline restarts
    /// and the slot sends its rows again.
    #[error("Kafka transaction not committed: {0}; the slot sends its rows again")]
    Transaction(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RelayError {
    /// Whether restarting the pipeline (with backoff) can help: what [`crate::policy`]
    /// classifies as retry. Unknown internal failures (a panicked task) count as retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Config(_) | RelayError::Row { .. } | RelayError::Foreign(_) => false,
            RelayError::Admin(e) => policy::classify(Failure::Admin(e)) == Action::Retry,
            RelayError::Replication(e) => {
                policy::classify(Failure::Replication(e)) == Action::Retry
            }
            RelayError::Publish(e) => policy::classify(Failure::Publish(e)) == Action::Retry,
            RelayError::Internal(_) | RelayError::Transaction(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_failures_restart_and_the_rest_stop() {
        assert!(RelayError::Replication(ReplicationError::Closed).is_retryable());
        assert!(RelayError::Internal("task panicked".into()).is_retryable());
        assert!(!RelayError::Config("kafka.bootstrap_servers".into()).is_retryable());
        assert!(
            !RelayError::Replication(ReplicationError::SlotUnusable("lost".into())).is_retryable()
        );
        let delivery = RelayError::Publish(PublishError::Produce {
            topic: "t".into(),
            source: rdkafka::error::KafkaError::MessageProduction(
                rdkafka::error::RDKafkaErrorCode::BrokerTransportFailure,
            ),
        });
        assert!(delivery.is_retryable());
        let auth = RelayError::Publish(PublishError::Produce {
            topic: "t".into(),
            source: rdkafka::error::KafkaError::MessageProduction(
                rdkafka::error::RDKafkaErrorCode::SaslAuthenticationFailed,
            ),
        });
        assert!(!auth.is_retryable());
    }
}
