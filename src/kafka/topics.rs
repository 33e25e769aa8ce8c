//! Making sure a topic exists before the first record goes to it.
//!
//! Many brokers (and the test broker) do not create topics on produce. With
//! `kafka.create_topics` the relay creates each topic the first time it routes to it,
//! through the admin API; otherwise it checks the broker's metadata and reports a missing
//! topic. Known topics are remembered, so this costs one round trip per topic per run,
//! until the broker says one is gone: then it is forgotten and looked up (or created)
//! again, so a deleted topic comes back with creation on instead of holding forever.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use tracing::{debug, info, warn};

use super::client_config;
use super::rebootstrap::{Rebootstrap, RebootstrapContext};
use super::{EventProducer, PublishError};
use crate::config::KafkaConfig;

/// Topics the relay has confirmed, and the client that confirms them.
#[allow(missing_debug_implementations)]
pub struct TopicManager {
    admin: AdminClient<RebootstrapContext>,
    known: HashSet<Arc<str>>,
    /// `max.message.bytes` of each known topic, read when it is first used.
    limits: HashMap<Arc<str>, usize>,
    /// librdkafka's `batch.size`: a topic limit below it lets a batch of small records be
    /// refused as a whole, which holds the topic.
    batch_size: usize,
    /// With creation off: when each missing topic was first found missing.
    missing_since: HashMap<Arc<str>, Instant>,
    unknown_topic_wait: Duration,
    create: bool,
    partitions: i32,
    replication_factor: i32,
    /// `kafka.topic_config`, applied to every topic the relay creates.
    topic_config: Vec<(String, String)>,
}

/// librdkafka's default `batch.size`.
const LIBRDKAFKA_BATCH_SIZE: usize = 1_000_000;
/// How often a missing topic is looked up again.
const MISSING_POLL: Duration = Duration::from_millis(500);
/// Missing topics remembered at most (routed names can be anything).
const MISSING_CAPACITY: usize = 1_024;
/// Bound on one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

impl TopicManager {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, PublishError> {
        let context = RebootstrapContext(Rebootstrap::new(&kafka.bootstrap_servers));
        let admin: AdminClient<RebootstrapContext> = client_config::connection_config(kafka)
            // Only for the re-bootstrap watchdog (see super::rebootstrap).
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)
            .map_err(PublishError::Client)?;
        let client = admin.inner();
        client.context().0.attach(client.native_ptr());
        Ok(TopicManager {
            admin,
            known: HashSet::new(),
            limits: HashMap::new(),
            batch_size: kafka
                .properties
                .get("batch.size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(LIBRDKAFKA_BATCH_SIZE),
            missing_since: HashMap::new(),
            unknown_topic_wait: Duration::from_millis(kafka.unknown_topic_wait_ms),
            create: kafka.create_topics,
            partitions: kafka.topic_partitions,
            replication_factor: kafka.topic_replication_factor,
            topic_config: kafka
                .topic_config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// Returns once `topic` exists (creating it when configured to) and `producer` knows
    /// its partitions (see [`EventProducer::wait_for_topic`]).
    pub async fn ensure(
        &mut self,
        topic: &Arc<str>,
        producer: &EventProducer,
    ) -> Result<(), PublishError> {
        if self.known.contains(topic) {
            return Ok(());
        }
        if self.create {
            self.create_topic(topic).await?;
        } else {
            self.wait_until_exists(topic).await?;
        }
        producer.wait_for_topic(topic).await?;
        if let Some(limit) = self.read_limit(topic).await {
            if limit < self.batch_size {
                warn!(
                    topic = %topic,
                    max_message_bytes = limit,
                    batch_size = self.batch_size,
                    "the topic's max.message.bytes is below librdkafka's batch.size: a batch of \
                     small records can be refused as a whole, which holds the topic; set \
                     \"batch.size\" in [kafka.properties] to at most the smallest topic limit"
                );
            }
            self.limits.insert(Arc::clone(topic), limit);
        }
        self.known.insert(Arc::clone(topic));
        Ok(())
    }

    /// The broker's `max.message.bytes` for `topic`, when it could be read: records larger
    /// than that are refused, so the sink checks them locally (a fault of the row) instead
    /// of letting the broker refuse them (which would hold the topic).
    pub fn max_message_bytes(&self, topic: &str) -> Option<usize> {
        self.limits.get(topic).copied()
    }

    /// Reads `topic`'s `max.message.bytes` (DescribeConfigs). Best effort: a principal
    /// without DescribeConfigs, or an old broker, leaves the check to the broker.
    async fn read_limit(&self, topic: &str) -> Option<usize> {
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let described = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
            .await;
        let limit = match described.as_deref() {
            Ok([Ok(resource)]) => resource
                .get("max.message.bytes")
                .and_then(|entry| entry.value.as_deref())
                .and_then(|value| value.parse().ok()),
            _ => None,
        };
        if limit.is_none() {
            debug!(topic, outcome = ?described, "max.message.bytes not read; the broker checks sizes");
        }
        limit
    }

    /// The broker says `topic` is gone (deleted, or a partition lost): the next
    /// [`TopicManager::ensure`] looks again, and creates it when configured to.
    pub fn forget(&mut self, topic: &str) {
        self.known.remove(topic);
        self.limits.remove(topic);
    }

    /// Makes sure the exactly-once progress topic exists, creating it when missing (even
    /// with `kafka.create_topics = false`: it is the relay's own). It is compacted, so it
    /// keeps the last record per slot; one partition, since it holds one key per slot;
    /// the replication factor and `min.insync.replicas` of the outbox topics.
    pub async fn ensure_progress_topic(
        &mut self,
        topic: &Arc<str>,
        producer: &EventProducer,
    ) -> Result<(), PublishError> {
        if self.known.contains(topic) {
            return Ok(());
        }
        if !self.exists(topic)? {
            let mut configs = vec![("cleanup.policy".to_owned(), "compact".to_owned())];
            configs.extend(
                self.topic_config
                    .iter()
                    .filter(|(key, _)| key == "min.insync.replicas")
                    .cloned(),
            );
            self.create_topic_with(topic, 1, &configs).await?;
        }
        producer.wait_for_topic(topic).await?;
        self.known.insert(Arc::clone(topic));
        Ok(())
    }

    async fn create_topic(&self, topic: &str) -> Result<(), PublishError> {
        self.create_topic_with(topic, self.partitions, &self.topic_config)
            .await
    }

    async fn create_topic_with(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<(), PublishError> {
        let mut new_topic = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.replication_factor),
        );
        for (key, value) in configs {
            new_topic = new_topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(PublishError::Client)?;
        for result in results {
            match result {
                Ok(_) => info!(topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(PublishError::CreateTopic {
                        topic: topic.to_owned(),
                        code,
                    })
                }
            }
        }
        Ok(())
    }

    /// Creation is off: wait for someone to create `topic`, at most `unknown_topic_wait`
    /// from when it was first found missing (so a run of rows to one missing topic waits
    /// once, not once per row).
    async fn wait_until_exists(&mut self, topic: &Arc<str>) -> Result<(), PublishError> {
        if self.missing_since.len() >= MISSING_CAPACITY {
            self.missing_since.clear();
        }
        let since = *self
            .missing_since
            .entry(Arc::clone(topic))
            .or_insert_with(Instant::now);
        loop {
            if self.exists(topic)? {
                self.missing_since.remove(topic);
                return Ok(());
            }
            if since.elapsed() >= self.unknown_topic_wait {
                return Err(PublishError::UnknownTopic(topic.to_string()));
            }
            tokio::time::sleep(MISSING_POLL.min(self.unknown_topic_wait)).await;
        }
    }

    fn exists(&self, topic: &str) -> Result<bool, PublishError> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .map_err(PublishError::Client)?;
        Ok(!super::partitions_of(&metadata, topic).is_empty())
    }
}
