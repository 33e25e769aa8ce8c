//! librdkafka properties: the ones the relay owns, its defaults, and the user's pass-through.
//!
//! The relay's guarantees rest on a few producer settings: idempotence (no duplicates from
//! internal retries, per-partition order kept), `acks=all` (durable before acknowledged),
//! and an unlimited delivery timeout (a message is retried until the broker takes it, so a
//! long outage delays events but never drops or reorders them; the bounded queue turns the
//! wait into backpressure). Users may pass any other property through `[kafka.properties]`,
//! as Vector does; one that would weaken these guarantees is rejected with the reason.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Set by the relay; a user value is accepted only if it means the same.
pub const OWNED: &[(&str, &str, &str)] = &[
    (
        "enable.idempotence",
        "true",
        "idempotence keeps broker retries from duplicating or reordering events",
    ),
    (
        "acks",
        "all",
        "an event is acknowledged to PostgreSQL only once every in-sync replica has it",
    ),
    (
        "message.timeout.ms",
        "0",
        "events are retried until delivered (0 = no limit), so an outage never drops one",
    ),
];

/// Never settable through `[kafka.properties]`, with what to do instead.
pub const FORBIDDEN: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    (
        "metadata.broker.list",
        "set kafka.bootstrap_servers instead",
    ),
    (
        "delivery.timeout.ms",
        "the relay retries without limit (message.timeout.ms = 0)",
    ),
    ("request.required.acks", "the relay requires acks=all"),
    ("retries", "the idempotent producer must keep retrying"),
    (
        "message.send.max.retries",
        "the idempotent producer must keep retrying",
    ),
    (
        "transactional.id",
        "the relay deduplicates by event id, not Kafka transactions",
    ),
    (
        "enable.gapless.guarantee",
        "the relay sets the delivery guarantees itself",
    ),
];

/// Defaults a user may override. `queue.buffering.max.*` bound the producer's memory: when
/// full, the relay waits (backpressure) instead of buffering more.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "16384"),
    ("max.in.flight.requests.per.connection", "5"),
    ("socket.keepalive.enable", "true"),
    ("client.id", "outbox-relay"),
    // Broker state, round trips and queue depth for metrics and readiness.
    ("statistics.interval.ms", "1000"),
    (REBOOTSTRAP_KEY, REBOOTSTRAP_AFTER_MS),
];

/// librdkafka forgets every broker that a metadata response leaves out. A broker in
/// controlled shutdown (SIGTERM) leaves itself out, so after a single-node cluster (or
/// every broker the client knew) restarts, librdkafka knows no broker at all and only
/// bootstraps again after this long: 300 s by default, during which nothing is delivered
/// (the broker-restart scenario of the fault suite saw exactly that). A broker fenced by
/// its controller is left out the same way: a single-node cluster paused past
/// `broker.session.timeout.ms` fences its own broker when it resumes (the frozen-broker
/// scenario hung on it). 10 s is what the relay waits instead; the user may set another
/// value.
pub const REBOOTSTRAP_KEY: &str = "metadata.recovery.rebootstrap.trigger.ms";
pub const REBOOTSTRAP_AFTER_MS: &str = "10000";

/// Checks `[kafka.properties]`; the error names the property and the reason.
pub fn check_user_properties(properties: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in properties {
        if let Some((_, fix)) = FORBIDDEN.iter().find(|(k, _)| k == key) {
            return Err(format!("{key:?} cannot be set here: {fix}"));
        }
        if let Some((_, required, why)) = OWNED.iter().find(|(k, _, _)| k == key) {
            let same = value == required || (*key == "acks" && value == "-1");
            if !same {
                return Err(format!("{key:?} must stay {required}: {why}; remove it"));
            }
        }
        if key == "max.in.flight.requests.per.connection" || key == "max.in.flight" {
            match value.parse::<u32>() {
                Ok(1..=5) => {}
                _ => {
                    return Err(format!(
                        "{key:?} must be 1 to 5: the idempotent producer keeps order only up to 5"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// The producer's librdkafka config: defaults, then the user's, then what the relay owns.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    for (key, value) in DEFAULTS {
        if !kafka.properties.contains_key(*key) {
            config.set(*key, *value);
        }
    }
    for (key, value, _) in OWNED {
        config.set(*key, *value);
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
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn guarantees_cannot_be_weakened() {
        assert!(
            check_user_properties(&props(&[("linger.ms", "20"), ("compression.type", "lz4")]))
                .is_ok()
        );
        assert!(
            check_user_properties(&props(&[("acks", "all"), ("enable.idempotence", "true")]))
                .is_ok()
        );
        let err = check_user_properties(&props(&[("acks", "1")])).unwrap_err();
        assert!(err.starts_with("\"acks\" must stay all"), "{err}");
        let err = check_user_properties(&props(&[("enable.idempotence", "false")])).unwrap_err();
        assert!(err.contains("enable.idempotence"), "{err}");
        let err = check_user_properties(&props(&[("bootstrap.servers", "x:1")])).unwrap_err();
        assert!(err.contains("kafka.bootstrap_servers"), "{err}");
        let err = check_user_properties(&props(&[("max.in.flight.requests.per.connection", "10")]))
            .unwrap_err();
        assert!(err.contains("1 to 5"), "{err}");
    }

    #[test]
    fn owned_settings_win_and_defaults_yield_to_the_user() {
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            create_topics: true,
            topic_partitions: 1,
            topic_replication_factor: 1,
            unknown_topic_wait_ms: 1_000,
            properties: props(&[("linger.ms", "50"), ("sasl.username", "relay")]),
        };
        let config = producer_config(&kafka);
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
