//! Making sure a topic exists before the first record goes to it.
//!
//! Many brokers (and the test broker) do not create topics on produce. With
//! `kafka.create_topics` the relay creates each topic the first time it routes to it,
//! through the admin API; otherwise it checks the broker's metadata and reports a missing
//! topic. Known topics are remembered, so this costs one round trip per topic per run,
//! until the broker says one is gone: then it is forgotten and looked up (or created)
//! again, so a deleted topic comes back with creation on instead of holding forever.
//!
//! # A topic that existed is never the row's fault
//!
//! With creation off, a topic that never existed means the row's routing value names no
//! topic: after `kafka.unknown_topic_wait_ms` the row is dead-lettered. A topic that was
//! there and is gone (deleted mid-stream) is a fault of the topic: every row to it would
//! go the same way, so its rows are held ([`super::hold`]). The two look alike on the
//! broker; what tells them apart is [`SeenTopics`], every topic confirmed since the relay
//! started. It outlives the pipeline: an in-process restart while a topic is gone (the
//! replication connection lost while its rows are held, or any exactly-once abort) must
//! not turn the held rows into dead letters. A restart of the process forgets it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashSet as FastSet};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, info, warn};

use super::client_config;
use super::rebootstrap::Rebootstrap;
use super::{EventProducer, PublishError};
use crate::config::KafkaConfig;

/// Every topic confirmed to exist since the relay started, shared by the pipeline runs of
/// one process (see the module docs). Bounded: past [`SEEN_CAPACITY`] topics, new ones are
/// not remembered (a topic of those deleted later counts as never seen).
#[derive(Debug, Clone, Default)]
pub struct SeenTopics(Arc<Mutex<HashSet<Arc<str>>>>);

/// Topics [`SeenTopics`] remembers at most.
const SEEN_CAPACITY: usize = 100_000;

impl SeenTopics {
    fn insert(&self, topic: &Arc<str>) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() < SEEN_CAPACITY {
            seen.insert(Arc::clone(topic));
        }
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }
}

/// Topics the relay has confirmed, and the client that confirms them.
#[allow(missing_debug_implementations)]
pub struct TopicManager {
    /// Shared so that blocking metadata requests run off the async threads.
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Gives the admin client its brokers back after a request found none. Its
    /// statistics are never served (rust-rdkafka polls only the admin results queue),
    /// so the statistics watchdog of [`super::rebootstrap`] cannot do it here.
    rebootstrap: Rebootstrap,
    /// Confirmed in this pipeline run and not reported gone since.
    known: FastSet<Arc<str>>,
    /// Confirmed at any time since the relay started.
    seen: SeenTopics,
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
    pub fn new(kafka: &KafkaConfig, seen: SeenTopics) -> Result<Self, PublishError> {
        let admin: AdminClient<DefaultClientContext> = client_config::connection_config(kafka)
            .create()
            .map_err(PublishError::Client)?;
        let rebootstrap = Rebootstrap::new(&kafka.bootstrap_servers);
        rebootstrap.attach(admin.inner().native_ptr());
        Ok(TopicManager {
            admin: Arc::new(admin),
            rebootstrap,
            known: FastSet::default(),
            seen,
            limits: HashMap::default(),
            batch_size: kafka
                .properties
                .get("batch.size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(LIBRDKAFKA_BATCH_SIZE),
            missing_since: HashMap::default(),
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

    /// Whether `topic` was confirmed on this pipeline: [`TopicManager::ensure`] would
    /// return at once. Checked first on every record, without an `await`.
    pub fn is_known(&self, topic: &str) -> bool {
        self.known.contains(topic)
    }

    /// Returns once `topic` exists (creating it when configured to) and `producer` knows
    /// its partitions (see [`EventProducer::wait_for_topic`]). A topic missing that was
    /// seen before, or that the producer does not find after the admin client did, is
    /// [`PublishError::TopicGone`] (held); only one never seen, with creation off, is
    /// [`PublishError::UnknownTopic`] (dead-lettered).
    pub async fn ensure(
        &mut self,
        topic: &Arc<str>,
        producer: &EventProducer,
    ) -> Result<(), PublishError> {
        if self.known.contains(topic) {
            return Ok(());
        }
        if self.create {
            // Metadata first: a topic that exists needs no CreateTopics. That request goes
            // on to the controller, which a broker just fenced and thawed may not reach for
            // minutes (every attempt timed out while metadata and produce worked), whereas
            // the broker answers metadata itself.
            if !self.exists(topic).await? {
                self.create_topic(topic).await?;
            }
        } else if self.seen.contains(topic) {
            if !self.exists(topic).await? {
                return Err(PublishError::TopicGone(topic.to_string()));
            }
        } else {
            self.wait_until_exists(topic).await?;
        }
        producer.wait_for_topic(topic).await.map_err(|e| match e {
            PublishError::UnknownTopic(topic) => PublishError::TopicGone(topic),
            other => other,
        })?;
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
        self.seen.insert(topic);
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
        if !self.exists(topic).await? {
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
            .map_err(|e| {
                self.rebootstrap.after_failed_request();
                PublishError::Client(e)
            })?;
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
            if self.exists(topic).await? {
                self.missing_since.remove(topic);
                return Ok(());
            }
            if since.elapsed() >= self.unknown_topic_wait {
                return Err(PublishError::UnknownTopic(topic.to_string()));
            }
            tokio::time::sleep(MISSING_POLL.min(self.unknown_topic_wait)).await;
        }
    }

    /// Whether the broker's metadata lists `topic`'s partitions. The request blocks for up
    /// to [`ADMIN_TIMEOUT`], so it runs on the blocking pool: on an async thread it would
    /// stall the replication stream's keepalives (the server drops the connection) and
    /// every `select!` waiting beside it, such as the sink's stop on bad credentials.
    async fn exists(&self, topic: &str) -> Result<bool, PublishError> {
        let admin = Arc::clone(&self.admin);
        let topic = topic.to_owned();
        let fetched = tokio::task::spawn_blocking(move || {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
                .map_err(PublishError::Client)?;
            Ok(!super::partitions_of(&metadata, &topic).is_empty())
        })
        .await
        .map_err(|_| PublishError::Client(KafkaError::Canceled))?;
        if fetched.is_err() {
            self.rebootstrap.after_failed_request();
        }
        fetched
    }
}
