//! The idempotent consumer: each Kafka record is applied at most once to the service's state.
//!
//! # The contract
//! For every record, in one local PostgreSQL transaction:
//! 1. insert its `id` header into `inbox` (`ON CONFLICT DO NOTHING`);
//! 2. only if that row is new, let the [`Handler`] change state and write outbox events;
//! 3. store the partition's next offset in `consumer_offsets`.
//!
//! Then commit. The position therefore never runs ahead of the state it describes: a crash
//! before the commit rereads the record, a crash after it does not; and a record read
//! twice anyway (relay at-least-once, a replay from the beginning under a new
//! `CONSUMER_GROUP`) finds its inbox row and changes nothing.
//!
//! # Why offsets live in the database, not in Kafka's group coordinator
//! Committing the Kafka offset after the database commit (the usual recipe) leaves a
//! window where the state is committed and the offset is not; the inbox covers it, but
//! storing the offset in the same transaction closes it outright. It also needs no group
//! coordination from the broker: the consumer assigns itself every partition of its
//! topics, which is what the development broker (tansu) and the tests rely on. The cost is
//! one consumer process per service and group (no rebalancing across replicas), which is
//! what these example services run. The offset is also committed to Kafka under the
//! service's `group.id`, after the transaction commits, so broker tooling shows the group
//! and its lag; the stored position is what a restart reads.
//!
//! # Positions
//! The stored position decides what is applied; the broker's read position only has to
//! be at or before it. A consumer would normally seek straight to the stored offset, but
//! tansu 0.6 (the development broker) returns nothing for a fetch that starts inside a
//! record batch, silently skipping the rest of that batch. So the consumer reads each
//! partition from the beginning and skips, without a transaction, the records below the
//! stored position. That costs a reread of the retained log at start-up and when a topic
//! appears, which suits these example services; against Kafka, seeking to the stored
//! offset is the cheaper choice and equally exact.
//!
//! Topics may not exist yet (the relay creates a topic with its first event), so missing
//! ones are looked up again every [`TOPIC_RECHECK`] and the assignment is rebuilt from the
//! stored positions when one appears.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::{DbError, Pool};

/// How often topics that did not exist yet are looked up again.
pub const TOPIC_RECHECK: Duration = Duration::from_secs(1);
/// First and largest pause before retrying a record whose transaction failed.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One consumed event, decoded from the record the relay produced.
#[derive(Debug, Clone)]
pub struct Event {
    /// Header `id`: the outbox row's id, the deduplication key.
    pub id: Uuid,
    /// Header `eventType`.
    pub event_type: String,
    /// Header `correlationId`: the saga's order id.
    pub correlation_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record value, as JSON.
    pub payload: serde_json::Value,
}

impl Event {
    /// The payload as `T`; a mismatch is a [`HandleError::Payload`].
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandleError> {
        serde_json::from_value(self.payload.clone()).map_err(|source| HandleError::Payload {
            event_type: self.event_type.clone(),
            source,
        })
    }
}

/// A service's reaction to events, run inside the consumer's transaction.
pub trait Handler: Send + Sync + 'static {
    /// Applies `event`: state changes and outbox writes go through `tx`. Events the
    /// service does not care about return `Ok(())`.
    fn handle(
        &self,
        tx: &Transaction<'_>,
        event: &Event,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Transient: the transaction is rolled back and the record retried.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Permanent: the record can never be applied; it is logged and skipped.
    #[error("payload of {event_type} does not match its schema: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("reading stored offsets: {0}")]
    Offsets(#[source] tokio_postgres::Error),
}

/// Where to read and under which name positions are stored.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub bootstrap_servers: String,
    pub group: String,
    pub topics: Vec<String>,
}

/// Consumes `settings.topics` until `shutdown`, applying each record with `handler`.
pub async fn run<H: Handler>(
    settings: ConsumerSettings,
    pool: Pool,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &settings.bootstrap_servers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .create()?,
    );
    let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut recheck = tokio::time::interval(TOPIC_RECHECK);
    tracing::info!(group = %settings.group, topics = ?settings.topics, "consumer starting");
    loop {
        let missing = partitions.len() < settings.topics.len();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = recheck.tick(), if missing => {
                if discover(&consumer, &settings.topics, &mut partitions).await {
                    positions = assign(&consumer, &pool, &settings.group, &partitions).await?;
                }
            }
            message = consumer.recv(), if !partitions.is_empty() => match message {
                Ok(message) => {
                    let record = Record::from(&message);
                    drop(message);
                    let key = (record.topic.clone(), record.partition);
                    if record.offset < positions.get(&key).copied().unwrap_or(0) {
                        continue; // Applied before (stored position); see "Positions".
                    }
                    let next = record.offset + 1;
                    if !apply_with_retry(&pool, &handler, &settings.group, record, &shutdown).await? {
                        return Ok(()); // Shut down before it committed: reread at the next start.
                    }
                    commit_to_kafka(&consumer, &key, next);
                    let position = positions.entry(key).or_insert(next);
                    *position = (*position).max(next);
                }
                Err(e) => tracing::warn!(error = %e, "kafka consumer error; librdkafka retries"),
            },
        }
    }
}

/// Looks up topics not yet in `partitions`; true if any appeared.
async fn discover(
    consumer: &Arc<StreamConsumer>,
    topics: &[String],
    partitions: &mut BTreeMap<String, Vec<i32>>,
) -> bool {
    let missing: Vec<&String> = topics
        .iter()
        .filter(|t| !partitions.contains_key(*t))
        .collect();
    let mut found = false;
    for topic in missing {
        let (consumer, name) = (Arc::clone(consumer), topic.clone());
        // fetch_metadata blocks the calling thread.
        let ids = tokio::task::spawn_blocking(move || {
            let meta = consumer
                .fetch_metadata(Some(&name), Duration::from_secs(2))
                .ok()?;
            let topic = meta.topics().first()?;
            let ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
            (topic.error().is_none() && !ids.is_empty()).then_some(ids)
        })
        .await
        .unwrap_or(None);
        match ids {
            Some(ids) => {
                tracing::info!(topic = %topic, partitions = ids.len(), "topic found; consuming it");
                partitions.insert(topic.clone(), ids);
                found = true;
            }
            None => tracing::debug!(topic = %topic, "topic does not exist yet"),
        }
    }
    found
}

/// Assigns every known partition from the beginning and returns the stored positions
/// (next offset per partition) below which records are skipped; see "Positions".
async fn assign(
    consumer: &StreamConsumer,
    pool: &Pool,
    group: &str,
    partitions: &BTreeMap<String, Vec<i32>>,
) -> Result<BTreeMap<(String, i32), i64>, ConsumerError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            &[&group],
        )
        .await
        .map_err(ConsumerError::Offsets)?;
    let stored = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let mut list = TopicPartitionList::new();
    for (topic, ids) in partitions {
        for &id in ids {
            list.add_partition_offset(topic, id, Offset::Beginning)?;
        }
    }
    consumer.assign(&list)?;
    Ok(stored)
}

/// A record copied out of the consumer's buffer, so no borrow is held across awaits.
#[derive(Debug)]
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    headers: BTreeMap<String, String>,
    payload: Option<Vec<u8>>,
}

impl From<&BorrowedMessage<'_>> for Record {
    fn from(m: &BorrowedMessage<'_>) -> Record {
        let headers = m.headers().map_or_else(BTreeMap::new, |hs| {
            hs.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        });
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

impl Record {
    /// The event, or why this record is not one (it is then skipped).
    fn event(&self) -> Result<Event, String> {
        let header = |name: &str| self.headers.get(name).cloned();
        let id = header("id").ok_or("no `id` header")?;
        let id = Uuid::parse_str(&id).map_err(|e| format!("`id` header {id:?}: {e}"))?;
        let payload = self.payload.as_deref().ok_or("no payload (tombstone)")?;
        Ok(Event {
            id,
            event_type: header("eventType").ok_or("no `eventType` header")?,
            correlation_id: header("correlationId").unwrap_or_default(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            payload: serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?,
        })
    }
}

/// Commits `next` for the partition to the Kafka group, only ever after the database
/// transaction that stored it: for monitoring, so failures are logged and nothing more.
fn commit_to_kafka(consumer: &StreamConsumer, (topic, partition): &(String, i32), next: i64) {
    let mut offsets = TopicPartitionList::new();
    let committed = offsets
        .add_partition_offset(topic, *partition, Offset::Offset(next))
        .and_then(|()| consumer.commit(&offsets, CommitMode::Async));
    if let Err(e) = committed {
        tracing::debug!(error = %e, topic, partition, "kafka offset commit failed; the stored position stands");
    }
}

/// Applies `record`, retrying transient failures with backoff until it commits (`true`)
/// or `shutdown` (`false`; it is reread at the next start, from the stored position).
async fn apply_with_retry<H: Handler>(
    pool: &Pool,
    handler: &H,
    group: &str,
    record: Record,
    shutdown: &CancellationToken,
) -> Result<bool, ConsumerError> {
    let mut pause = RETRY_FIRST;
    let span = match record.event() {
        Ok(e) => tracing::info_span!("event", event_type = %e.event_type,
            correlation_id = %e.correlation_id, event_id = %e.id, topic = %e.topic, offset = e.offset),
        Err(_) => tracing::info_span!("record", topic = %record.topic, offset = record.offset),
    };
    loop {
        match apply(pool, handler, group, &record)
            .instrument(span.clone())
            .await
        {
            Ok(()) => return Ok(true),
            Err(e) => {
                let _entered = span.enter();
                tracing::warn!(error = %e, retry_in = ?pause, "event not applied; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(pause) => pause = (pause * 2).min(RETRY_MAX),
        }
    }
}

/// Why one attempt failed (always retried).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Pool(#[from] DbError),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// One attempt: inbox row, handler, stored offset, commit — or nothing.
async fn apply<H: Handler>(
    pool: &Pool,
    handler: &H,
    group: &str,
    record: &Record,
) -> Result<(), AttemptError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    match record.event() {
        Err(reason) => tracing::error!(%reason, "skipping a record that is not an event"),
        Ok(event) => {
            let fresh = tx
                .execute(
                    "INSERT INTO inbox (event_id, event_type, correlation_id, topic) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
                    &[
                        &event.id,
                        &event.event_type,
                        &event.correlation_id,
                        &event.topic,
                    ],
                )
                .await?
                == 1;
            if !fresh {
                tracing::info!("duplicate event ignored (already in the inbox)");
            } else {
                match handler.handle(&tx, &event).await {
                    Ok(()) => {}
                    Err(HandleError::Db(e)) => return Err(e.into()),
                    Err(e @ HandleError::Payload { .. }) => {
                        // Permanent: record it as seen so it is not retried forever.
                        tracing::error!(error = %e, "skipping an event that cannot be applied");
                    }
                }
            }
        }
    }
    // Monotonic: a stale record from before a reassignment cannot move the position back.
    tx.execute(
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (group_id, topic, partition) \
         DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
        &[
            &group,
            &record.topic,
            &record.partition,
            &(record.offset + 1),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
