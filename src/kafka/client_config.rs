//! librdkafka client configs built from `[kafka]`: the producer's (the relay's defaults,
//! then the user's properties, then what the relay owns; see [`super::properties`]) and
//! the connection-only one for admin clients and consumers.

use rdkafka::ClientConfig;

use super::properties::{DEFAULTS, OWNED, REBOOTSTRAP_AFTER_MS, REBOOTSTRAP_KEY};
use crate::config::KafkaConfig;

/// The exactly-once default of the producer queue (see [`producer_config`]).
pub const EXACTLY_ONCE_QUEUE: (&str, &str) = ("queue.buffering.max.messages", "20000");

/// The producer's librdkafka config: defaults, then the user's, then what the relay owns.
///
/// With a `transactional_id` (exactly-once delivery) the producer is transactional, and a
/// record waits at most `transaction.timeout.ms` instead of forever: a transaction that
/// cannot finish is aborted, and its rows are published again from the slot.
pub fn producer_config(kafka: &KafkaConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut config = client_config(kafka);
    for (key, value) in DEFAULTS {
        if !kafka.properties.contains_key(*key) {
            config.set(*key, *value);
        }
    }
    for (key, value, _) in OWNED {
        if transactional_id.is_some() && *key == "message.timeout.ms" {
            continue;
        }
        config.set(*key, *value);
    }
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
        // After each commit, a new transaction's records wait in the queue until the
        // coordinator has finished the last one, so the queue fills to its bound at every
        // commit: each queued record also holds its decoded row, and 100,000 of them
        // doubled the relay's peak RSS in the benchmark. 20,000 drains as fast.
        if !kafka.properties.contains_key(EXACTLY_ONCE_QUEUE.0) {
            config.set(EXACTLY_ONCE_QUEUE.0, EXACTLY_ONCE_QUEUE.1);
        }
        if !kafka.properties.contains_key("transaction.timeout.ms") {
            config.set(
                "transaction.timeout.ms",
                crate::config::DEFAULT_TRANSACTION_TIMEOUT_MS.to_string(),
            );
        }
    }
    config
}

/// Connection settings shared by the producer, the admin client and consumers: the
/// bootstrap servers and every user property (security settings among them).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Only the connection and security properties, for clients that are not producers
/// (admin, consumers), which reject producer-only settings.
pub fn connection_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        let shared = key.starts_with("security.")
            || key.starts_with("ssl.")
            || key.starts_with("sasl.")
            || key.starts_with("socket.")
            || key == "client.id"
            || key == "broker.address.family";
        if shared {
            config.set(key, value);
        }
    }
    let rebootstrap = kafka.properties.get(REBOOTSTRAP_KEY);
    config.set(
        REBOOTSTRAP_KEY,
        rebootstrap.map_or(REBOOTSTRAP_AFTER_MS, String::as_str),
    );
    config
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::properties::tests::props;
    use super::*;
    use crate::config::Delivery;

    /// A `[kafka]` section on loopback with `delivery` and `properties`.
    fn kafka_config(delivery: Delivery, properties: BTreeMap<String, String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            create_topics: true,
            topic_partitions: 1,
            topic_replication_factor: 1,
            topic_config: Default::default(),
            unknown_topic_wait_ms: 1_000,
            delivery,
            transactional_id: None,
            transaction_max_events: 1,
            transaction_max_ms: 1,
            progress_topic: "p".into(),
            properties,
        }
    }

    #[test]
    fn the_default_partitioner_is_javas_and_yields_to_murmur2() {
        let kafka = |properties| kafka_config(Delivery::AtLeastOnce, properties);
        let config = producer_config(&kafka(BTreeMap::new()), None);
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        let config = producer_config(&kafka(props(&[("partitioner", "murmur2")])), None);
        assert_eq!(config.get("partitioner"), Some("murmur2"));
        // Not for the admin client and consumers, which would reject it.
        assert_eq!(
            connection_config(&kafka(BTreeMap::new())).get("partitioner"),
            None
        );
    }

    #[test]
    fn a_transactional_producer_gets_its_id_timeout_and_queue() {
        let kafka = kafka_config(Delivery::ExactlyOnce, BTreeMap::new());
        let config = producer_config(&kafka, Some("outbox-relay.db.slot"));
        assert_eq!(config.get("transactional.id"), Some("outbox-relay.db.slot"));
        assert_eq!(config.get("transaction.timeout.ms"), Some("300000"));
        assert_eq!(config.get("queue.buffering.max.messages"), Some("20000"));
        // A record waits at most the transaction timeout (librdkafka derives it).
        assert_eq!(config.get("message.timeout.ms"), None);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn owned_settings_win_and_defaults_yield_to_the_user() {
        let kafka = kafka_config(
            Delivery::AtLeastOnce,
            props(&[("linger.ms", "50"), ("sasl.username", "relay")]),
        );
        let config = producer_config(&kafka, None);
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("message.timeout.ms"), Some("0"));
        assert_eq!(config.get("queue.buffering.max.kbytes"), Some("16384"));
        let connection = connection_config(&kafka);
        assert_eq!(connection.get("sasl.username"), Some("relay"));
        assert_eq!(connection.get("linger.ms"), None);
        assert_eq!(config.get(REBOOTSTRAP_KEY), Some(REBOOTSTRAP_AFTER_MS));
        assert_eq!(connection.get(REBOOTSTRAP_KEY), Some(REBOOTSTRAP_AFTER_MS));
    }
}
