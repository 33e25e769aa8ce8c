//! The idempotent consumer: each Kafka record is applied at most once to the service's
//! state, however many replicas of the service consume together.
//!
//! # The contract
//! For every record, in one local PostgreSQL transaction:
//! 1. insert its `id` header into `inbox` (`ON CONFLICT DO NOTHING`);
//! 2. only if that row is new, let the [`Handler`] change state and write outbox events;
//! 3. store the partition's next offset in `consumer_offsets`, never lower than it was.
//!
//! A record that can never be applied instead gets, in one transaction, its inbox row
//! (if it has an `id`), its dead letter in the outbox and the stored offset (see
//! "Failures").
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
//!
//! # Failures: retried in place, or dead-lettered
//! A record's failure is classified in one place ([`HandleError::verdict`]) by whose
//! fault it is:
//! - **the database's** ([`HandleError::Db`], and the pool failing to connect): the
//!   transaction rolls back and the record is retried in place with backoff
//!   ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]) for as long as it takes, since the
//!   database comes back and every later record needs it too. The partition waits.
//! - **the record's**, for good: not an event at all (no `id` header, a bad UUID, no
//!   `eventType`, a tombstone, a value that is not JSON), a payload that does not match
//!   its schema ([`HandleError::Payload`]), or anything the handler knows can never pass
//!   ([`HandleError::Permanent`]). The handler's writes roll back, and in a new
//!   transaction the record is written to `<topic>.DLT` through the service's outbox,
//!   with its inbox row and the stored position ([`dead_letter`]); then the partition
//!   moves on. Counted by `saga_consumer_dead_lettered_total{topic}`.
//! - **unknown, maybe passing** ([`HandleError::Retryable`]: a rule that depends on
//!   something that may change): retried in place like a database error, but only
//!   [`RETRYABLE_ATTEMPTS`] times; then dead-lettered as `retries-exhausted`, so a failure
//!   that is in fact permanent cannot hold the partition forever.
//!
//! A poison record therefore never blocks its partition for longer than its retries;
//! only a database that is down does, which blocks everything anyway.
//!
//! # Trace context
//! Each record is applied inside one span (`event`, or `record` for one that is not an
//! event) whose parent is the span that wrote the event, named by the record's
//! `traceparent` header (the outbox column the relay maps to it); without one, or with a
//! malformed one, the span starts a new trace. The span's `trace_id` field puts the trace
//! id on every log line of the handler, and the events the handler writes store the
//! trace in their own `traceparent` ([`crate::outbox::write`]), as do dead letters: the
//! trace runs on through the saga (see [`crate::trace`]).

pub mod dead_letter;
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
use dead_letter::{DeadLetter, ErrorClass};
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
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts of a record failing with [`HandleError::Retryable`] before it is
/// dead-lettered: about 20 s of backoff.
pub const RETRYABLE_ATTEMPTS: u32 = 8;

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
    /// Header `traceparent`: the W3C trace context of the span that wrote the event
    /// (`None` for events written without one). The handler already runs in a span
    /// continuing it (see "Trace context"); this is for a handler that stores it.
    pub traceparent: Option<String>,
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

/// Why a handler could not apply an event (see "Failures" for what each one leads to).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Transient: rolled back and retried with backoff until the database answers.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Maybe transient, not the database's: retried [`RETRYABLE_ATTEMPTS`] times, then
    /// dead-lettered.
    #[error("{reason}")]
    Retryable { reason: String },
    /// Permanent: the payload does not match the event type's schema; dead-lettered.
    #[error("payload of {event_type} does not match its schema: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    /// Permanent: the event can never be applied (an event type the service must
    /// understand but does not, a rule that can never pass); dead-lettered.
    #[error("{reason}")]
    Permanent { reason: String },
}

/// What to do with a record whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Roll back, wait, try again.
    Retry,
    /// Roll back, then write it to `<topic>.DLT` and move on.
    DeadLetter(ErrorClass),
}

impl HandleError {
    /// [`HandleError::Permanent`] with `reason`.
    pub fn permanent(reason: impl Into<String>) -> HandleError {
        HandleError::Permanent {
            reason: reason.into(),
        }
    }

    /// [`HandleError::Retryable`] with `reason`.
    pub fn retryable(reason: impl Into<String>) -> HandleError {
        HandleError::Retryable {
            reason: reason.into(),
        }
    }

    /// The one place failures are classified: after `attempts` failed attempts
    /// (this one included), retry or dead-letter.
    pub fn verdict(&self, attempts: u32) -> Verdict {
        match self {
            HandleError::Db(_) => Verdict::Retry,
            HandleError::Retryable { .. } if attempts < RETRYABLE_ATTEMPTS => Verdict::Retry,
            HandleError::Retryable { .. } => Verdict::DeadLetter(ErrorClass::RetriesExhausted),
            HandleError::Payload { .. } => Verdict::DeadLetter(ErrorClass::Payload),
            HandleError::Permanent { .. } => Verdict::DeadLetter(ErrorClass::Permanent),
        }
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic outside `outbox.event.`: its dead letters could not be routed.
    #[error(
        "cannot consume topic {topic:?}: only outbox.event.<x> topics are consumed, \
         since their dead letters go to outbox.event.<x>.DLT through the outbox"
    )]
    Unroutable { topic: String },
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
    if let Some(topic) = settings
        .topics
        .iter()
        .find(|t| dead_letter::aggregate_type(t).is_none())
    {
        return Err(ConsumerError::Unroutable {
            topic: topic.clone(),
        });
    }
    crate::prometheus::install();
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
    key: Option<Vec<u8>>,
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
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

impl Record {
    /// The event, or why this record is not one (it is then dead-lettered).
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
            traceparent: header(crate::trace::TRACEPARENT),
        })
    }

    /// The span every attempt at this record runs in: `event{…, trace_id}` (or
    /// `record{…, trace_id}` for one that is not an event), continuing the trace of the
    /// record's `traceparent` header, so the handler's spans, log lines and outbox rows
    /// belong to the producer's trace (see "Trace context").
    fn span(&self) -> tracing::Span {
        let span = match self.event() {
            Ok(e) => tracing::info_span!("event", event_type = %e.event_type,
                correlation_id = %e.correlation_id, event_id = %e.id, topic = %e.topic,
                offset = e.offset, trace_id = tracing::field::Empty),
            Err(_) => tracing::info_span!("record", topic = %self.topic, offset = self.offset,
                trace_id = tracing::field::Empty),
        };
        let traceparent = self.headers.get(crate::trace::TRACEPARENT);
        crate::trace::adopt(&span, traceparent.map(String::as_str));
        span
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
    let span = record.span();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match apply(pool, handler, group, &record, attempts)
            .instrument(span.clone())
            .await
        {
            Ok(Applied::Done) => return true,
            Ok(Applied::DeadLettered) => {
                crate::prometheus::dead_lettered(&record.topic);
                return true;
            }
            Err(e) => {
                let _entered = span.enter();
                tracing::warn!(error = %e, attempts, retry_in = ?pause, "event not applied; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(pause) => pause = (pause * 2).min(RETRY_MAX),
        }
    }
}

/// What a committed attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Applied (or a duplicate, already applied).
    Done,
    /// Written to `<topic>.DLT`.
    DeadLettered,
}

/// Why one attempt failed (always retried).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Pool(#[from] DbError),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Handler(HandleError),
    /// Cannot happen: `run` refuses such topics. Held rather than lost if it does.
    #[error("no dead-letter topic for {0:?}")]
    Unroutable(String),
}

/// One attempt (number `attempts`): inbox row, handler, stored offset, commit — or the
/// dead letter, inbox row and stored offset (see "Failures") — or nothing.
async fn apply<H: Handler>(
    pool: &Pool,
    handler: &H,
    group: &str,
    record: &Record,
    attempts: u32,
) -> Result<Applied, AttemptError> {
    let mut client = pool.get().await?;
    let event = match record.event() {
        Ok(event) => event,
        Err(reason) => {
            tracing::error!(%reason, "dead-lettering a record that is not an event");
            let reason = format!("not an event: {reason}");
            return dead_letter(
                &mut client,
                group,
                record,
                None,
                ErrorClass::NotAnEvent,
                &reason,
            )
            .await;
        }
    };
    let tx = client.transaction().await?;
    let handled = if claim_inbox(&tx, &event).await? {
        handler.handle(&tx, &event).await
    } else {
        tracing::info!("duplicate event ignored (already in the inbox)");
        Ok(())
    };
    if let Err(e) = handled {
        match e.verdict(attempts) {
            Verdict::Retry => return Err(AttemptError::Handler(e)),
            Verdict::DeadLetter(class) => {
                // The handler's writes, if any, go; the dead letter's transaction follows.
                tx.rollback().await?;
                tracing::error!(error = %e, class = class.as_str(),
                    "dead-lettering an event that cannot be applied");
                let reason = e.to_string();
                return dead_letter(&mut client, group, record, Some(&event), class, &reason).await;
            }
        }
    }
    store_position(&tx, group, record).await?;
    tx.commit().await?;
    Ok(Applied::Done)
}

/// In one transaction: the inbox row (if `event`; one that is there already means a
/// replica applied it meanwhile, and nothing more is written), the dead letter, the
/// stored position.
async fn dead_letter(
    client: &mut tokio_postgres::Client,
    group: &str,
    record: &Record,
    event: Option<&Event>,
    class: ErrorClass,
    reason: &str,
) -> Result<Applied, AttemptError> {
    let letter = DeadLetter::of(group, record, class, reason)
        .ok_or_else(|| AttemptError::Unroutable(record.topic.clone()))?;
    let tx = client.transaction().await?;
    let fresh = match event {
        Some(event) => claim_inbox(&tx, event).await?,
        None => true,
    };
    let written = fresh && letter.write(&tx).await?;
    store_position(&tx, group, record).await?;
    tx.commit().await?;
    if written {
        tracing::warn!(dead_letter_id = %letter.id, aggregate_type = %letter.aggregate_type,
            "record written to its dead-letter topic");
        Ok(Applied::DeadLettered)
    } else {
        tracing::info!("record already applied or dead-lettered; nothing written");
        Ok(Applied::Done)
    }
}

/// Inserts `event`'s inbox row; `false` if it was there (the event was applied).
async fn claim_inbox(tx: &Transaction<'_>, event: &Event) -> Result<bool, tokio_postgres::Error> {
    let inserted = tx
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
        .await?;
    Ok(inserted == 1)
}

/// Stores the partition's next offset after `record`.
async fn store_position(
    tx: &Transaction<'_>,
    group: &str,
    record: &Record,
) -> Result<(), tokio_postgres::Error> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_error() -> serde_json::Error {
        serde_json::from_str::<u8>("x").unwrap_err()
    }

    #[test]
    fn database_errors_retry_forever_others_are_bounded_or_dead_lettered() {
        let retryable = HandleError::retryable("stock service says later");
        assert_eq!(retryable.verdict(1), Verdict::Retry);
        assert_eq!(retryable.verdict(RETRYABLE_ATTEMPTS - 1), Verdict::Retry);
        assert_eq!(
            retryable.verdict(RETRYABLE_ATTEMPTS),
            Verdict::DeadLetter(ErrorClass::RetriesExhausted)
        );
        let payload = HandleError::Payload {
            event_type: "X".into(),
            source: json_error(),
        };
        assert_eq!(payload.verdict(1), Verdict::DeadLetter(ErrorClass::Payload));
        assert_eq!(
            HandleError::permanent("never").verdict(1),
            Verdict::DeadLetter(ErrorClass::Permanent)
        );
    }

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn event_record(headers: &[(&str, &str)]) -> Record {
        let mut record = Record {
            topic: "outbox.event.order".into(),
            partition: 0,
            offset: 7,
            key: None,
            headers: BTreeMap::new(),
            payload: Some(b"{}".to_vec()),
        };
        let id = Uuid::new_v4().to_string();
        for (name, value) in [("id", id.as_str()), ("eventType", "E")]
            .iter()
            .chain(headers)
        {
            record.headers.insert((*name).into(), (*value).into());
        }
        record
    }

    #[test]
    fn events_carry_their_traceparent_header() {
        let traced = event_record(&[("traceparent", TRACEPARENT)]);
        assert_eq!(
            traced.event().unwrap().traceparent.as_deref(),
            Some(TRACEPARENT)
        );
        assert_eq!(event_record(&[]).event().unwrap().traceparent, None);
    }

    #[test]
    fn a_record_is_applied_in_a_span_continuing_its_traceparent() {
        let subscriber = crate::telemetry::subscriber(
            crate::telemetry::LogFormat::Text,
            tracing_subscriber::EnvFilter::new("off"),
            std::io::sink,
        );
        tracing::subscriber::with_default(subscriber, || {
            let continued = event_record(&[("traceparent", TRACEPARENT)]).span();
            assert_eq!(
                crate::trace::trace_id_of(&continued).as_deref(),
                Some("0af7651916cd43dd8448eb211c80319c")
            );
            let mut not_an_event = event_record(&[("traceparent", TRACEPARENT)]);
            not_an_event.payload = None;
            let record_span = not_an_event.span();
            assert_eq!(
                crate::trace::trace_id_of(&record_span),
                crate::trace::trace_id_in(TRACEPARENT),
                "a dead letter's span continues the record's trace too"
            );
            let fresh = event_record(&[]).span();
            let fresh_trace = crate::trace::trace_id_of(&fresh).expect("a new trace");
            assert_ne!(Some(fresh_trace), crate::trace::trace_id_in(TRACEPARENT));
        });
    }

    #[test]
    fn records_that_are_not_events_say_why() {
        let mut record = Record {
            topic: "outbox.event.product".into(),
            partition: 0,
            offset: 0,
            key: None,
            headers: BTreeMap::new(),
            payload: Some(b"{}".to_vec()),
        };
        assert_eq!(record.event().unwrap_err(), "no `id` header");
        record.headers.insert("id".into(), "nope".into());
        assert!(record.event().unwrap_err().starts_with("`id` header"));
        record
            .headers
            .insert("id".into(), Uuid::new_v4().to_string());
        record.headers.insert("eventType".into(), "E".into());
        record.payload = Some(b"not json".to_vec());
        assert!(record.event().unwrap_err().starts_with("payload:"));
        record.payload = None;
        assert_eq!(record.event().unwrap_err(), "no payload (tombstone)");
        record.payload = Some(b"{}".to_vec());
        assert!(record.event().is_ok());
    }
}
