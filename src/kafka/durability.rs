//! Whether `acks=all` makes an acknowledged event durable on the topics the relay creates.
//!
//! The relay acknowledges an event to PostgreSQL (and lets the WAL go) once Kafka answered
//! `acks=all`. That answer means "every in-sync replica has it", and it is only as strong
//! as the replica count: with a replication factor of 1, or `min.insync.replicas = 1` on a
//! cluster of several brokers, one lost disk or one unclean leader change loses events
//! the slot has already released. `outbox-relay check` says so before the first start.
//! The verdict ([`warning`]) is pure; [`inspect`] only gathers the figures.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use super::{client_config, PublishError};
use crate::config::KafkaConfig;

/// Bound on each admin request of [`inspect`].
const TIMEOUT: Duration = Duration::from_secs(10);

/// What decides the durability of the relay's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Brokers in the cluster.
    pub brokers: usize,
    /// Of the topics the relay creates: `kafka.topic_replication_factor`, or the broker's
    /// `default.replication.factor`.
    pub replication_factor: i32,
    /// `min.insync.replicas` from `kafka.topic_config`, or the broker's.
    pub min_insync_replicas: i32,
}

/// Why `acks=all` is weak on this cluster, with the fix; `None` when it is durable.
pub fn warning(d: &Durability) -> Option<String> {
    if d.replication_factor <= 1 {
        return Some(format!(
            "topics the relay creates get replication factor {}: acks=all then means one \
             broker's disk; set kafka.topic_replication_factor = 3 (and \
             kafka.topic_config.\"min.insync.replicas\" = \"2\") on a cluster of 3 or more \
             brokers",
            d.replication_factor
        ));
    }
    if d.brokers > 1 && d.min_insync_replicas <= 1 {
        return Some(format!(
            "min.insync.replicas is {} on a cluster of {} brokers: acks=all is then \
             satisfied by the leader alone; set kafka.topic_config.\"min.insync.replicas\" \
             = \"{}\"",
            d.min_insync_replicas,
            d.brokers,
            (d.replication_factor - 1).max(2)
        ));
    }
    None
}

/// Reads the broker count and the broker defaults that apply to the relay's topics.
pub async fn inspect(kafka: &KafkaConfig) -> Result<Durability, PublishError> {
    let admin: AdminClient<DefaultClientContext> = client_config::connection_config(kafka)
        .create()
        .map_err(PublishError::Client)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, TIMEOUT)
        .map_err(PublishError::Client)?;
    let brokers = metadata.brokers().len();
    let broker_id = metadata.brokers().first().map_or(0, |b| b.id());
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described = admin
        .describe_configs([&ResourceSpecifier::Broker(broker_id)], &options)
        .await
        .map_err(PublishError::Client)?;
    let broker_value = |name: &str| -> Option<i32> {
        described.iter().flatten().find_map(|resource| {
            resource
                .get(name)
                .and_then(|entry| entry.value.as_deref())
                .and_then(|v| v.parse().ok())
        })
    };
    let replication_factor = if kafka.topic_replication_factor > 0 {
        kafka.topic_replication_factor
    } else {
        broker_value("default.replication.factor").unwrap_or(1)
    };
    let min_insync_replicas = kafka
        .topic_config
        .get("min.insync.replicas")
        .and_then(|v| v.parse().ok())
        .or_else(|| broker_value("min.insync.replicas"))
        .unwrap_or(1);
    Ok(Durability {
        brokers,
        replication_factor,
        min_insync_replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(brokers: usize, replication_factor: i32, min_insync_replicas: i32) -> Durability {
        Durability {
            brokers,
            replication_factor,
            min_insync_replicas,
        }
    }

    #[test]
    fn one_replica_is_never_durable() {
        let w = warning(&cluster(1, 1, 1)).expect("warns");
        assert!(w.contains("replication factor 1"), "{w}");
        assert!(warning(&cluster(3, 1, 2)).is_some());
    }

    #[test]
    fn min_insync_one_on_several_brokers_warns() {
        let w = warning(&cluster(3, 3, 1)).expect("warns");
        assert!(w.contains("\"min.insync.replicas\" = \"2\""), "{w}");
        assert_eq!(warning(&cluster(3, 3, 2)), None);
        assert_eq!(warning(&cluster(5, 5, 3)), None);
    }
}
