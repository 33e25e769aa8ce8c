//! `outbox-relay dlq replay`: publish dead-lettered rows again once their cause is fixed
//! (the missing topic created, the routing config corrected).
//!
//! Each dead letter is rebuilt from its row JSON with the relay's current routing
//! ([`plan`]); the record goes to the topic the routing names now, with the original key and
//! the same `id` header, so consumers that dedupe by `id` see the same event. Records that
//! cannot be rebuilt faithfully are skipped with the reason, never guessed.
//!
//! Why the position lives in a consumer group and is committed only after delivery: the
//! producer is the relay's own (idempotent, `acks=all`, Java-compatible partitioner), and
//! the group's offset in each DLQ partition moves only past records whose delivery report
//! succeeded with an offset (or that were skipped). A second run therefore replays nothing
//! already replayed, and a crash costs at most a second publication of the same `id`.
//!
//! A target topic that does not exist is created only with `kafka.create_topics`, as the
//! relay would; otherwise the replay stops at its first record with the fix.
//!
//! Order per key: a batch never carries two records of the same topic and key, and the
//! replay stops at the first record a topic refuses, committing nothing past it in its
//! DLQ partition, so a later record of a key never overtakes an earlier one.

pub mod plan;
pub mod progress;
pub mod target;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::{Config, KafkaConfig};
use crate::kafka::client_config;
use plan::{DeadLetter, Planner, Replay, SkipReason};
use progress::{commit_offsets, Position, Summary};
use target::TargetError;

/// Records sent before waiting for their delivery reports (bounds memory and what a
/// refusal leaves to publish again).
const BATCH_RECORDS: usize = 500;
/// Bound on one metadata, offsets or commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to let delivery reports drain a full producer queue before sending again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(20);

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Print what would be published; publish and commit nothing.
    pub dry_run: bool,
    /// Stop after this many dead letters.
    pub max_records: Option<usize>,
    /// Stop reading after this long without a record.
    pub idle_timeout: Duration,
    /// Only these classes (every replayable class when empty).
    pub classes: Vec<String>,
    /// The consumer group holding the replay position.
    pub group: String,
}

/// The group a relay's replays share unless `--group` says otherwise.
pub fn default_group(config: &Config) -> String {
    format!("outbox-relay-dlq-replay.{}", config.source.slot.as_str())
}

/// Every dead-letter topic of `config`: `dlq.topic` and the tables' own.
pub fn dlq_topics(config: &Config) -> Vec<String> {
    let mut topics = vec![config.dlq.topic.clone()];
    topics.extend(
        config
            .outbox
            .tables
            .values()
            .filter_map(|t| t.dlq_topic.clone()),
    );
    topics.sort();
    topics.dedup();
    topics
}

/// Why a replay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Class(String),
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot read the position of consumer group {group}: {source}")]
    Position {
        group: String,
        #[source]
        source: KafkaError,
    },
    #[error("{} (id {}): target topic {} does not exist and kafka.create_topics is false; create it and run dlq replay again; nothing from this record on is committed", .at.position, .at.id, .at.topic)]
    MissingTopic { at: Box<Failed> },
    #[error("{} (id {}): cannot create target topic {}: {code}; create it by hand and run dlq replay again; nothing from this record on is committed", .at.position, .at.id, .at.topic)]
    CreateTopic {
        at: Box<Failed>,
        code: RDKafkaErrorCode,
    },
    #[error("{} (id {}): cannot produce to topic {}: {source}; nothing from this record on is committed", .at.position, .at.id, .at.topic)]
    Produce {
        at: Box<Failed>,
        #[source]
        source: KafkaError,
    },
    #[error("{} (id {}): topic {} refused the record ({code}): {fix}; then run dlq replay again; nothing from this record on is committed", .at.position, .at.id, .at.topic)]
    Refused {
        at: Box<Failed>,
        code: String,
        fix: String,
    },
    #[error("{} (id {}): librdkafka reported the record delivered to {} without an offset, which is no acknowledgement; run dlq replay again (it publishes the same id)", .at.position, .at.id, .at.topic)]
    Unconfirmed { at: Box<Failed> },
    #[error("cannot commit the position of consumer group {group}: {source}; the records were published and the next run publishes them again (same id)")]
    Commit {
        group: String,
        #[source]
        source: KafkaError,
    },
}

/// The dead letter a [`ReplayError`] is about, and where it was going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub position: Position,
    pub id: String,
    pub topic: String,
}

/// What a run did, and why it stopped early if it did.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    pub error: Option<ReplayError>,
}

/// One dead letter read, and what to do with it.
#[derive(Debug)]
struct Entry {
    position: Position,
    dead: DeadLetter,
    decision: Result<Replay, SkipReason>,
}

impl Entry {
    fn failed(&self, topic: &str) -> Box<Failed> {
        Box::new(Failed {
            position: self.position.clone(),
            id: self.dead.id().to_owned(),
            topic: topic.to_owned(),
        })
    }

    fn line(&self, verb: &str, delivered: Option<(i32, i64)>) -> String {
        match &self.decision {
            Ok(replay) => {
                let record = &replay.record;
                let at = delivered.map_or_else(String::new, |(partition, offset)| {
                    format!(" partition={partition} offset={offset}")
                });
                format!(
                    "{verb} {} -> topic={}{at} key={} id={} class={}",
                    self.position,
                    record.topic,
                    text(record.key.as_deref()),
                    self.dead.id(),
                    self.dead.class()
                )
            }
            Err(skip) => format!(
                "skip {} id={} class={}: {skip}",
                self.position,
                self.dead.id(),
                self.dead.class()
            ),
        }
    }
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(
        || "null".to_owned(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

/// Replays the dead letters of `config` past the group's position; `print` gets one line
/// per record.
pub async fn replay(
    kafka: &KafkaConfig,
    config: &Config,
    options: &ReplayOptions,
    mut print: impl FnMut(String),
) -> Outcome {
    let mut summary = Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let error = run(kafka, config, options, &mut summary, &mut print)
        .await
        .err();
    Outcome { summary, error }
}

/// The DLQ partitions: where the group stands in each and where each ends.
#[derive(Debug, Default)]
struct Partitions {
    /// The next offset to read (from the group's committed position, then as read).
    next: BTreeMap<(String, i32), i64>,
    /// The group's committed position.
    committed: BTreeMap<(String, i32), i64>,
    /// The high watermark when the run started.
    end: BTreeMap<(String, i32), i64>,
}

impl Partitions {
    fn caught_up(&self) -> bool {
        self.end
            .iter()
            .all(|(p, end)| self.next.get(p).is_some_and(|n| n >= end))
    }
}

async fn run(
    kafka: &KafkaConfig,
    config: &Config,
    options: &ReplayOptions,
    summary: &mut Summary,
    print: &mut impl FnMut(String),
) -> Result<(), ReplayError> {
    Planner::check_classes(&options.classes).map_err(ReplayError::Class)?;
    let mut planner = Planner::new(config, options.classes.clone());
    let consumer: StreamConsumer = client_config::connection_config(kafka)
        .set("group.id", &options.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(ReplayError::Client)?;
    let mut partitions = assign(&consumer, &dlq_topics(config), &options.group)?;
    let producer: Option<FutureProducer> = if options.dry_run {
        None
    } else {
        Some(
            client_config::producer_config(kafka, None)
                .create()
                .map_err(ReplayError::Client)?,
        )
    };
    let mut ready_topics = HashSet::new();
    let mut read = 0usize;
    let mut carried: Option<Entry> = None;
    let result = 'batches: loop {
        let mut batch: Vec<Entry> = carried.take().into_iter().collect();
        let mut keys: HashSet<(String, Option<Bytes>)> = HashSet::new();
        for entry in &batch {
            if let Ok(replay) = &entry.decision {
                keys.insert((replay.record.topic.to_string(), replay.record.key.clone()));
            }
        }
        while batch.len() < BATCH_RECORDS
            && options.max_records.is_none_or(|max| read < max)
            && !partitions.caught_up()
        {
            let message = match tokio::time::timeout(options.idle_timeout, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => break 'batches Err(ReplayError::Client(e)),
                Ok(Ok(message)) => message,
            };
            read += 1;
            let entry = entry_of(&message, &mut planner);
            partitions.next.insert(
                (entry.position.topic.clone(), entry.position.partition),
                entry.position.offset + 1,
            );
            if let Ok(replay) = &entry.decision {
                let key = (replay.record.topic.to_string(), replay.record.key.clone());
                if !keys.insert(key) {
                    // A later record of a key already in flight waits for the next batch.
                    carried = Some(entry);
                    break;
                }
            }
            batch.push(entry);
        }
        if batch.is_empty() {
            break Ok(());
        }
        let Some(producer) = &producer else {
            for entry in &batch {
                print(entry.line("would replay", None));
                tally(summary, entry);
            }
            continue;
        };
        let (done, failure) =
            publish(producer, &batch, kafka, &mut ready_topics, summary, print).await;
        let offsets = commit_offsets(batch.iter().map(|e| &e.position).zip(done));
        if let Err(e) = commit(&consumer, &offsets, &options.group) {
            break Err(e);
        }
        partitions.committed.extend(offsets);
        if let Some(failure) = failure {
            break Err(failure);
        }
    };
    summary.remaining = remaining(&consumer, &partitions);
    result
}

/// Commits `offsets` (the next record to read per DLQ partition) for `group`.
fn commit(
    consumer: &StreamConsumer,
    offsets: &BTreeMap<(String, i32), i64>,
    group: &str,
) -> Result<(), ReplayError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(ReplayError::Client)?;
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(|source| ReplayError::Commit {
            group: group.to_owned(),
            source,
        })
}

/// Counts a dry run's entry.
fn tally(summary: &mut Summary, entry: &Entry) {
    match &entry.decision {
        Ok(_) => summary.replayed += 1,
        Err(skip) => summary.skip(entry.dead.class(), skip.kind()),
    }
}

/// Sends `batch`'s replays and waits for every delivery report. Returns, per entry,
/// whether it is done (delivered with an offset, or skipped) and the first failure;
/// nothing from the first failing entry on is sent.
async fn publish(
    producer: &FutureProducer,
    batch: &[Entry],
    kafka: &KafkaConfig,
    ready_topics: &mut HashSet<String>,
    summary: &mut Summary,
    print: &mut impl FnMut(String),
) -> (Vec<bool>, Option<ReplayError>) {
    let principal = crate::policy::principal(&kafka.properties);
    let mut done = vec![false; batch.len()];
    let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
    // The failure of the entry read first is the one reported.
    let mut first: Option<(usize, ReplayError)> = None;
    for (index, entry) in batch.iter().enumerate() {
        let replay = match &entry.decision {
            Ok(replay) => replay,
            Err(skip) => {
                print(entry.line("", None));
                summary.skip(entry.dead.class(), skip.kind());
                done[index] = true;
                continue;
            }
        };
        let topic = replay.record.topic.to_string();
        if !ready_topics.contains(&topic) {
            if let Err(e) = target::ready(producer, kafka, &topic).await {
                let at = entry.failed(&topic);
                let error = match e {
                    TargetError::Missing => ReplayError::MissingTopic { at },
                    TargetError::Create(code) => ReplayError::CreateTopic { at, code },
                    TargetError::Client(e) => ReplayError::Client(e),
                };
                first = Some((index, error));
                break;
            }
            ready_topics.insert(topic);
        }
        match send(producer, &replay.record).await {
            Ok(future) => pending.push((index, future)),
            Err(source) => {
                first = Some((
                    index,
                    ReplayError::Produce {
                        at: entry.failed(&replay.record.topic),
                        source,
                    },
                ));
                break;
            }
        }
    }
    let mut reported = Vec::with_capacity(pending.len());
    for (index, future) in pending {
        reported.push((index, future.await));
    }
    for (index, report) in reported {
        let entry = &batch[index];
        let topic = entry
            .decision
            .as_ref()
            .map(|r| r.record.topic.to_string())
            .unwrap_or_default();
        let problem = match report {
            Ok(Ok(delivery)) if delivery.offset >= 0 => {
                print(entry.line("replayed", Some((delivery.partition, delivery.offset))));
                summary.replayed += 1;
                done[index] = true;
                continue;
            }
            Ok(Ok(_)) => ReplayError::Unconfirmed {
                at: entry.failed(&topic),
            },
            Ok(Err((e, _))) => {
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
                ReplayError::Refused {
                    at: entry.failed(&topic),
                    fix: crate::policy::topic_fix(code, &topic, &principal),
                    code: e.to_string(),
                }
            }
            Err(_) => ReplayError::Client(KafkaError::Canceled),
        };
        if first.as_ref().is_none_or(|(at, _)| index < *at) {
            first = Some((index, problem));
        }
    }
    (done, first.map(|(_, e)| e))
}

/// Hands `record` to librdkafka; while its queue is full, waits for delivery reports to
/// free it (the relay's backpressure, never an unbounded buffer).
async fn send(
    producer: &FutureProducer,
    record: &crate::outbox::OutboundRecord,
) -> Result<DeliveryFuture, KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in &record.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_ref()),
        });
    }
    loop {
        let mut message = FutureRecord::<[u8], [u8]>::to(&record.topic).headers(headers.clone());
        if let Some(key) = &record.key {
            message = message.key(key.as_ref());
        }
        if let Some(payload) = &record.payload {
            message = message.payload(payload.as_ref());
        }
        match producer.send_result(message) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The dead letter in `message` and the plan for it.
fn entry_of(message: &BorrowedMessage<'_>, planner: &mut Planner) -> Entry {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let dead = DeadLetter {
        key: message.key().map(Bytes::copy_from_slice),
        value: message.payload().map(Bytes::copy_from_slice),
        headers,
    };
    let decision = planner.plan(&dead);
    Entry {
        position: Position {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        },
        dead,
        decision,
    }
}

/// Assigns every partition of `topics` at the group's committed position (the start when
/// it has none); a DLQ topic that does not exist has nothing to replay.
fn assign(
    consumer: &StreamConsumer,
    topics: &[String],
    group: &str,
) -> Result<Partitions, ReplayError> {
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(ReplayError::Client)?;
        for partition in crate::kafka::partitions_of(&metadata, topic) {
            wanted.add_partition(topic, partition);
        }
    }
    let position_error = |source| ReplayError::Position {
        group: group.to_owned(),
        source,
    };
    let committed = consumer
        .committed_offsets(wanted, REQUEST_TIMEOUT)
        .map_err(position_error)?;
    let mut partitions = Partitions::default();
    let mut assignment = TopicPartitionList::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic().to_owned(), element.partition());
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
            .map_err(ReplayError::Client)?;
        let start = match element.offset() {
            Offset::Offset(committed) => committed.max(low),
            _ => low,
        };
        assignment
            .add_partition_offset(&topic, partition, Offset::Offset(start))
            .map_err(ReplayError::Client)?;
        partitions.next.insert((topic.clone(), partition), start);
        partitions
            .committed
            .insert((topic.clone(), partition), start);
        partitions.end.insert((topic, partition), high);
    }
    consumer.assign(&assignment).map_err(ReplayError::Client)?;
    Ok(partitions)
}

/// Records past the group's committed position (as the run leaves it) on every DLQ
/// partition, by the high watermarks now; a partition that cannot be asked counts by the
/// one read at the start.
fn remaining(consumer: &StreamConsumer, partitions: &Partitions) -> i64 {
    partitions
        .end
        .iter()
        .map(|((topic, partition), end)| {
            let high = consumer
                .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
                .map_or(*end, |(_, high)| high);
            let committed = partitions
                .committed
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(0);
            (high - committed).max(0)
        })
        .sum()
}
