//! librdkafka properties: the ones the relay owns, its defaults, and the user's pass-through.
//!
//! The relay's guarantees rest on a few producer settings: idempotence (no duplicates from
//! internal retries, per-partition order kept), `acks=all` (durable before acknowledged),
//! and an unlimited delivery timeout (a message is retried until the broker takes it, so a
//! long outage delays events but never drops or reorders them; the bounded queue turns the
//! wait into backpressure). Users may pass any other property through `[kafka.properties]`,
//! as Vector does; one that would weaken these guarantees is rejected with the reason.
//!
//! Where a key's events land matters as much as their order: a team moving from Debezium
//! keeps every key on the partition Debezium (the Java client) put it on, so a key's
//! history does not split at the cut-over. The relay therefore partitions as Java does
//! (`murmur2_random`) and refuses partitioners that would not.
//!
//! This module is the rules alone, on plain data, so the config's validation can call it
//! without an import circle; [`super::client_config`] builds librdkafka configs from them.

use std::collections::BTreeMap;

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
        "set kafka.delivery = \"exactly_once\" (and kafka.transactional_id to choose the id)",
    ),
    (
        "enable.gapless.guarantee",
        "the relay sets the delivery guarantees itself",
    ),
];

/// Defaults a user may override. `queue.buffering.max.*` bound the producer's memory: when
/// full, the relay waits (backpressure) instead of buffering more.
pub const DEFAULTS: &[(&str, &str)] = &[
    // Latency first: a record waits at most 1 ms for company (librdkafka's own default is
    // 5 ms, which was the largest wait between a commit and its Kafka acknowledgement at
    // a steady 2,000-5,000 events/s; see bench/README.md). Under a backlog this costs no
    // throughput: batches then fill while earlier requests are in flight, not by lingering.
    ("linger.ms", "1"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "16384"),
    ("max.in.flight.requests.per.connection", "5"),
    ("socket.keepalive.enable", "true"),
    ("client.id", "outbox-relay"),
    // Broker state, round trips and queue depth for metrics and readiness.
    ("statistics.interval.ms", "1000"),
    (REBOOTSTRAP_KEY, REBOOTSTRAP_AFTER_MS),
    // librdkafka's default, `consistent_random`, hashes keys with CRC32; Debezium and every
    // Java producer use murmur2 (`toPositive(murmur2(key)) % partitions`). `murmur2_random`
    // is librdkafka's Java-compatible partitioner: the same key lands on the same partition
    // number as from Debezium, and NULL keys are spread as Java's sticky partitioner does.
    // `murmur2` (NULL keys all on one partition) is accepted too; others are refused.
    (PARTITIONER_KEY, JAVA_PARTITIONER),
];

/// The partitioner property and the relay's default for it (see [`DEFAULTS`]).
pub const PARTITIONER_KEY: &str = "partitioner";
pub const JAVA_PARTITIONER: &str = "murmur2_random";

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

/// A `[kafka.properties]` entry the relay refuses; the message names the property, why it
/// is refused and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    #[error("{key:?} cannot be set here: {fix}")]
    Forbidden { key: String, fix: &'static str },
    #[error("{key:?} must stay {required}: {why}; remove it")]
    Owned {
        key: String,
        required: &'static str,
        why: &'static str,
    },
    #[error("{key:?} = {value:?} is refused: {why}; {fix}")]
    Refused {
        key: String,
        value: String,
        why: &'static str,
        fix: &'static str,
    },
}

/// Checks `[kafka.properties]`; the error names the property and the reason.
pub fn check_user_properties(properties: &BTreeMap<String, String>) -> Result<(), PropertyError> {
    for (key, value) in properties {
        if let Some((_, fix)) = FORBIDDEN.iter().find(|(k, _)| k == key) {
            return Err(PropertyError::Forbidden {
                key: key.clone(),
                fix,
            });
        }
        if let Some((_, required, why)) = OWNED.iter().find(|(k, _, _)| k == key) {
            let same = value == required || (*key == "acks" && value == "-1");
            if !same {
                return Err(PropertyError::Owned {
                    key: key.clone(),
                    required,
                    why,
                });
            }
        }
        if let Some((why, fix)) = refusal(key, value) {
            return Err(PropertyError::Refused {
                key: key.clone(),
                value: value.clone(),
                why,
                fix,
            });
        }
    }
    Ok(())
}

/// Why `key = value` would break per-key order, placement or acknowledgement, and the fix;
/// `None` when the value is fine (or the property is not one of these).
fn refusal(key: &str, value: &str) -> Option<(&'static str, &'static str)> {
    match key {
        "max.in.flight.requests.per.connection" | "max.in.flight" => {
            (!matches!(value.parse::<u32>(), Ok(1..=5))).then_some((
                "the idempotent producer keeps order only with 1 to 5 requests in flight",
                "set 1 to 5 or remove it",
            ))
        }
        // librdkafka compares partitioner names case-sensitively.
        PARTITIONER_KEY => match value {
            "murmur2_random" | "murmur2" => None,
            "random" => Some((
                "a random partitioner spreads one key's events over partitions, so their order is lost",
                "remove it (the relay uses murmur2_random, as Debezium and the Java client do)",
            )),
            _ => Some((
                "keys would not land on the partitions where Debezium and Java clients put them (they hash with murmur2), so a key's history would split across partitions",
                "remove it (the relay uses murmur2_random) or set murmur2",
            )),
        },
        // Enum values are case-insensitive in librdkafka.
        "queuing.strategy" => (!value.eq_ignore_ascii_case("fifo")).then_some((
            "only fifo sends a key's events in the order they were committed",
            "remove it",
        )),
        // librdkafka reads "true", "t" and "1" (any case) as true.
        "delivery.report.only.error" => (!is_false(value)).then_some((
            "the relay acknowledges an event to PostgreSQL only from its successful delivery report",
            "remove it",
        )),
        _ => None,
    }
}

/// Whether librdkafka reads `value` as boolean false.
fn is_false(value: &str) -> bool {
    ["false", "f"].iter().any(|f| value.eq_ignore_ascii_case(f)) || value == "0"
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A property map from `pairs` (also for `super::client_config`'s tests).
    pub(in crate::kafka) fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
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
        assert!(
            err.to_string().starts_with("\"acks\" must stay all"),
            "{err}"
        );
        let err = check_user_properties(&props(&[("enable.idempotence", "false")])).unwrap_err();
        assert!(err.to_string().contains("enable.idempotence"), "{err}");
        let err = check_user_properties(&props(&[("bootstrap.servers", "x:1")])).unwrap_err();
        assert!(err.to_string().contains("kafka.bootstrap_servers"), "{err}");
        let err = check_user_properties(&props(&[("max.in.flight.requests.per.connection", "10")]))
            .unwrap_err();
        assert!(err.to_string().contains("1 to 5"), "{err}");
    }

    /// The message of the refusal of `key = value`.
    fn refused(key: &str, value: &str) -> String {
        match check_user_properties(&props(&[(key, value)])) {
            Err(e @ PropertyError::Refused { .. }) => e.to_string(),
            other => panic!("{key} = {value}: {other:?}"),
        }
    }

    #[test]
    fn only_java_compatible_partitioners_are_accepted() {
        for ok in ["murmur2_random", "murmur2"] {
            assert_eq!(
                check_user_properties(&props(&[("partitioner", ok)])),
                Ok(())
            );
        }
        for hash in [
            "consistent",
            "consistent_random",
            "fnv1a",
            "fnv1a_random",
            "Murmur2",
        ] {
            let err = refused("partitioner", hash);
            assert!(
                err.starts_with(&format!(
                    "\"partitioner\" = \"{hash}\" is refused: keys would not land"
                )),
                "{err}"
            );
            assert!(err.contains("Debezium and Java clients"), "{err}");
            assert!(
                err.ends_with("remove it (the relay uses murmur2_random) or set murmur2"),
                "{err}"
            );
        }
        let err = refused("partitioner", "random");
        assert!(err.contains("their order is lost"), "{err}");
        assert!(err.contains("remove it"), "{err}");
    }

    #[test]
    fn lifo_queuing_is_refused() {
        assert_eq!(
            check_user_properties(&props(&[("queuing.strategy", "FIFO")])),
            Ok(())
        );
        for lifo in ["lifo", "LIFO"] {
            let err = refused("queuing.strategy", lifo);
            assert!(
                err.contains("only fifo sends a key's events in the order"),
                "{err}"
            );
            assert!(err.ends_with("remove it"), "{err}");
        }
    }

    #[test]
    fn error_only_delivery_reports_are_refused() {
        for off in ["false", "False", "f", "0"] {
            let set = props(&[("delivery.report.only.error", off)]);
            assert_eq!(check_user_properties(&set), Ok(()), "{off}");
        }
        for on in ["true", "TRUE", "t", "1"] {
            let err = refused("delivery.report.only.error", on);
            assert!(
                err.contains("only from its successful delivery report"),
                "{err}"
            );
        }
    }
}
