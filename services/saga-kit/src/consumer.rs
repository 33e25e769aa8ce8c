//! The idempotent consumer: each Kafka record is applied at most once to the service's
//! state, however many replicas of the service consume together.
//!
//! # The contract
//! For every record, in one local PostgreSQL transaction:
//! 1. insert its `id` header into `inbox` (`ON CONFLICT DO NOTHING`);
//! 2. only if that row is new, let the [`Handler`] change state and write outbox events;
//! 3. store the partition's next offset in `consumer_offsets`, never lower than it was.
//!
//! Then commit, and only then hand the same offset to librdkafka's offset store, which
//! commits it to the Kafka group within [`KAFKA_COMMIT_INTERVAL`] (and when the partition
//! is revoked, and at close), so broker tooling shows the group and its lag. The stored
//! position never runs ahead of the state it describes: a crash before the commit
//! rereads the record, a crash after it does not; and a record read twice anyway
//! (relay at-least-once, a replay from the beginning under a new `CONSUMER_GROUP`, two
//! replicas during a rebalance) finds its inbox row and changes nothing.
//!
//! # Consumer groups and replicas
//! Every replica of a service subscribes to its topics in one Kafka consumer group
//! (`CONSUMER_GROUP`), and the group coordinator spreads the partitions over them. It is
//! the classic group protocol with the `cooperative-sticky` assignor, not KIP-848
//! (`group.protocol=consumer`), although librdkafka 2.12 and Kafka 4.1 support both:
//! - both rebalance incrementally (only the partitions that move are revoked; the others
//!   keep being consumed), so KIP-848 would gain little here;
//! - under KIP-848 the session timeout and heartbeat interval are the broker's
//!   (`group.consumer.session.timeout.ms`, 45 s by default), so a killed replica's
//!   partitions would stand still for 45 s unless every broker is reconfigured; the
//!   classic protocol takes the client's [`SESSION_TIMEOUT`];
//! - cooperative-sticky has been in librdkafka since 1.6 and rust-rdkafka's rebalance
//!   callback drives it, while KIP-848 in librdkafka became generally available only
//!   with 2.12.
//!
//! # Positions
//! The stored position decides where reading starts. When the group assigns a partition,
//! the rebalance callback (`rebalance`) starts it at the position stored in
//! `consumer_offsets`, or at the beginning when none is stored (a new group: a full
//! redelivery). The Kafka group's committed offset is never a start point: it may lag
//! the stored position by the records whose Kafka commit a crash cut off. The callback
//! hands the stored positions to the offset store as well, so the group's offsets
//! catch up even when no new record arrives.
//!
//! # Rebalances: one record at a time, two owners at worst
//! Polling and applying happen on one thread, one record at a time, and librdkafka runs
//! the rebalance callback inside `poll`: a revocation therefore happens between two
//! records, after the one in hand has committed, and the next owner's stored position
//! already includes it. A partition can still have two owners for a moment: when a
//! replica is declared dead (no heartbeat within [`SESSION_TIMEOUT`], or no poll within
//! `max.poll.interval.ms`) while it is in fact still applying a record, its partitions
//! are given away before it learns. Both may then read the same record, and
//! - the inbox's primary key serialises them: the second insert waits for the first
//!   transaction, then finds the row, so the change is applied once;
//! - the stored position moves forward only (`GREATEST`), so the late replica cannot
//!   set it back, and the next assignment cannot start before a committed record;
//! - the late replica's Kafka commit carries the old group generation and is refused.
//!
//! # Topics that do not exist yet
//! The relay creates a topic with its first event, so a service may start before its
//! topics exist. Subscribing to a missing topic is allowed (the broker does not
//! auto-create it; librdkafka reports `UnknownTopicOrPartition`, logged at debug):
//! librdkafka looks it up again at every metadata refresh, every [`TOPIC_RECHECK`], and
//! when it appears the group rebalances and assigns its partitions.

mod rebalance;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::{DbError, Pool};
use rebalance::GroupContext;

/// How often librdkafka refreshes metadata, which is how it notices a subscribed topic
/// that did not exist yet.
pub const TOPIC_RECHECK: Duration = Duration::from_secs(1);
/// How long the group waits for a silent replica before giving its partitions to the
/// others (the broker's default `group.min.session.timeout.ms`, the lowest it accepts).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// A third of [`SESSION_TIMEOUT`], as Kafka recommends.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How often librdkafka commits the offsets handed to it to the Kafka group.
pub const KAFKA_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `poll` waits, so a shutdown is noticed this quickly between records.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
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
}

/// Where to read and under which name positions are stored.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub bootstrap_servers: String,
    pub group: String,
    pub topics: Vec<String>,
}

/// Consumes `settings.topics` in consumer group `settings.group` until `shutdown`,
/// applying each record with `handler`.
///
/// The loop runs on a blocking thread: librdkafka's rebalance callback runs inside
/// `poll` and must read the stored positions before it returns (see "Positions").
pub async fn run<H: Handler>(
    settings: ConsumerSettings,
    pool: Pool,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let context = GroupContext {
        runtime: Handle::current(),
        pool: pool.clone(),
        group: settings.group.clone(),
        shutdown: shutdown.clone(),
    };
    let consumer: BaseConsumer<GroupContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("group.id", &settings.group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", millis(SESSION_TIMEOUT))
        .set("heartbeat.interval.ms", millis(HEARTBEAT_INTERVAL))
        .set("topic.metadata.refresh.interval.ms", millis(TOPIC_RECHECK))
        // Offsets reach Kafka only through `store_offsets`, after the database commit;
        // librdkafka then commits them periodically, on revocation and at close, and
        // retries one that a rebalance refused (a commit per record would not be).
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", millis(KAFKA_COMMIT_INTERVAL))
        .set("enable.auto.offset.store", "false")
        // Only for a stored position the log no longer holds (retention, a recreated topic).
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        // Only committed records: with a relay in exactly-once mode, the rows of a Kafka
        // transaction it aborted (a crash, a fenced replica) are never applied. Set
        // explicitly: it is librdkafka's default, but not the Java client's.
        .set("isolation.level", "read_committed")
        .create_with_context(context)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(group = %settings.group, topics = ?settings.topics, "consumer subscribed");
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || {
        let worker = Loop {
            consumer,
            runtime,
            pool,
            handler,
            group: settings.group,
            shutdown,
        };
        worker.run();
        // Dropping the consumer commits the stored offsets and leaves the group (revoking
        // its partitions) here, off the async workers.
        drop(worker);
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    Ok(())
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// The consumer thread: poll, apply, commit, one record at a time.
struct Loop<H> {
    consumer: BaseConsumer<GroupContext>,
    runtime: Handle,
    pool: Pool,
    handler: H,
    group: String,
    shutdown: CancellationToken,
}

impl<H: Handler> Loop<H> {
    fn run(&self) {
        while !self.shutdown.is_cancelled() {
            let record = match self.consumer.poll(POLL_TIMEOUT) {
                None => continue,
                Some(Ok(message)) => Record::from(&message),
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))) => {
                    tracing::debug!("a subscribed topic does not exist yet; looking again");
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error; librdkafka retries");
                    continue;
                }
            };
            let (topic, partition, next) =
                (record.topic.clone(), record.partition, record.offset + 1);
            let applied = self.runtime.block_on(apply_with_retry(
                &self.pool,
                &self.handler,
                &self.group,
                record,
                &self.shutdown,
            ));
            if !applied {
                return; // Shut down before it committed: reread from the stored position.
            }
            self.commit_to_kafka(&topic, partition, next);
        }
    }

    /// Hands `next` for the partition to librdkafka's offset store, only ever after the
    /// database transaction that stored it; librdkafka commits it to the Kafka group
    /// within [`KAFKA_COMMIT_INTERVAL`], when the partition is revoked and at close. It
    /// is for monitoring, so a failure is logged and nothing more.
    fn commit_to_kafka(&self, topic: &str, partition: i32, next: i64) {
        let mut offsets = TopicPartitionList::new();
        let stored = offsets
            .add_partition_offset(topic, partition, Offset::Offset(next))
            .and_then(|()| self.consumer.store_offsets(&offsets));
        if let Err(e) = stored {
            tracing::debug!(error = %e, topic, partition,
                "kafka offset not stored; the database position stands");
        }
    }
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

/// Applies `record`, retrying transient failures with backoff until it commits (`true`)
/// or `shutdown` (`false`; it is reread at the next start, from the stored position).
async fn apply_with_retry<H: Handler>(
    pool: &Pool,
    handler: &H,
    group: &str,
    record: Record,
    shutdown: &CancellationToken,
) -> bool {
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
            Ok(()) => return true,
            Err(e) => {
                let _entered = span.enter();
                tracing::warn!(error = %e, retry_in = ?pause, "event not applied; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
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
    // Monotonic: a replica that lost the partition while applying this record (see
    // "Rebalances") cannot move the position back behind the new owner's.
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
