//! `kafka.delivery` and the settings of exactly-once delivery.
//!
//! At-least-once is the default: every row reaches Kafka, and a crash can repeat the rows
//! that were in flight. Exactly-once writes rows in Kafka transactions, each holding whole
//! PostgreSQL transactions, with a progress record in the same transaction (see
//! [`crate::pipeline`]'s exactly-once sink). It costs a commit round trip per Kafka
//! transaction and needs consumers that read with `isolation.level = read_committed`.

use serde::Deserialize;

/// Default for `kafka.transaction_max_events`: a Kafka transaction is committed at the
/// first PostgreSQL commit after this many events.
pub const DEFAULT_TRANSACTION_MAX_EVENTS: usize = 10_000;
/// Default for `kafka.transaction_max_ms`: a Kafka transaction is committed at the first
/// PostgreSQL commit after it has been open this long.
pub const DEFAULT_TRANSACTION_MAX_MS: u64 = 100;
/// Default for `kafka.progress_topic`.
pub const DEFAULT_PROGRESS_TOPIC: &str = "outbox-relay.progress";
/// The relay's default `transaction.timeout.ms`: how long the broker lets a transaction stay
/// open before it aborts it. One Kafka transaction holds at least one whole PostgreSQL
/// transaction, so this must cover publishing the largest one (a million rows take some
/// seconds, far longer while Kafka pushes back). Kafka's broker caps it at
/// `transaction.max.timeout.ms` (15 minutes by default).
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 300_000;

/// `kafka.delivery`: what a consumer may see after a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Every row at least once; a crash repeats what was in flight.
    #[default]
    AtLeastOnce,
    /// Every row exactly once to `read_committed` consumers, through crashes and takeovers.
    ExactlyOnce,
}

pub(super) fn default_transaction_max_events() -> usize {
    DEFAULT_TRANSACTION_MAX_EVENTS
}
pub(super) fn default_transaction_max_ms() -> u64 {
    DEFAULT_TRANSACTION_MAX_MS
}
pub(super) fn default_progress_topic() -> String {
    DEFAULT_PROGRESS_TOPIC.to_owned()
}

/// The `transactional.id` replicas of one slot share when `kafka.transactional_id` is not
/// set: one per database and slot, so that a replica taking the slot over fences the one
/// it replaces, and two relays of different slots never fence each other.
pub fn default_transactional_id(database: &str, slot: &str) -> String {
    format!("outbox-relay.{database}.{slot}")
}

/// Checks the exactly-once settings; the error names the key and the fix.
pub(super) fn validate(kafka: &super::KafkaConfig) -> Result<(), (&'static str, String)> {
    if kafka.transaction_max_events == 0 {
        return Err(("kafka.transaction_max_events", "must be at least 1".into()));
    }
    if kafka.transaction_max_ms == 0 {
        return Err(("kafka.transaction_max_ms", "must be at least 1".into()));
    }
    if let Some(problem) = crate::outbox::topic::topic_name_problem(&kafka.progress_topic) {
        return Err(("kafka.progress_topic", problem));
    }
    if let Some(id) = &kafka.transactional_id {
        if id.trim().is_empty() {
            return Err((
                "kafka.transactional_id",
                "must not be empty; remove it to use the default (per database and slot)".into(),
            ));
        }
    }
    if kafka.delivery != Delivery::ExactlyOnce {
        return Ok(());
    }
    let timeout = match kafka.properties.get("transaction.timeout.ms") {
        None => DEFAULT_TRANSACTION_TIMEOUT_MS,
        Some(value) => value.parse().map_err(|_| {
            (
                "kafka.properties",
                format!("\"transaction.timeout.ms\" = {value:?} is not a number of milliseconds"),
            )
        })?,
    };
    if timeout <= kafka.transaction_max_ms.saturating_mul(10) {
        return Err((
            "kafka.transaction_max_ms",
            format!(
                "must be well under \"transaction.timeout.ms\" ({timeout} ms), or the broker aborts transactions before the relay commits them; lower it or raise the timeout"
            ),
        ));
    }
    // With exactly-once the transaction timeout bounds every record's wait, and the
    // transactional id is the relay's.
    for (key, fix) in [
        (
            "message.timeout.ms",
            "with delivery = \"exactly_once\" a record waits at most transaction.timeout.ms (an aborted transaction is published again from the slot); remove it",
        ),
        (
            "socket.timeout.ms",
            "with delivery = \"exactly_once\" librdkafka derives it from transaction.timeout.ms; remove it",
        ),
    ] {
        if kafka.properties.contains_key(key) {
            return Err(("kafka.properties", format!("{key:?} cannot be set here: {fix}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_names_database_and_slot() {
        assert_eq!(
            default_transactional_id("orders", "orders_slot"),
            "outbox-relay.orders.orders_slot"
        );
    }
}
