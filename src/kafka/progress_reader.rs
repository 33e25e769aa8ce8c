//! Reads a slot's last committed progress record (see [`crate::progress`]) back from the
//! progress topic, as a `read_committed` consumer: records of aborted or still open
//! transactions are never seen, so what is found is what Kafka really holds.
//!
//! The topic is compacted, but between compactions it holds one record per committed
//! Kafka transaction, and other slots' records besides. The reader therefore scans each
//! partition backwards in windows from its end and stops at the first window that holds
//! the slot's key: one window read at a normal start, however long the topic.
//!
//! Call it only after `init_transactions`: that aborts any transaction the previous
//! producer of the same `transactional.id` left open, which would otherwise hold the
//! `read_committed` end (the last stable offset) below the progress it committed later.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::client_config;
use super::PublishError;
use crate::config::KafkaConfig;
use crate::progress::Progress;

/// Offsets read per window, going backwards.
const WINDOW: i64 = 2_000;
/// Bound on one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts of a request that failed (see [`until_deadline`]).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The reader's client context: the end of a partition is how it knows it has read
/// everything, not an error to log.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "progress reader: kafka client error");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// The last committed progress of `key` in `topic`, or `None` when there is none. Fails
/// (retryably) when the broker does not answer within `limit`.
pub fn read_last(
    kafka: &KafkaConfig,
    topic: &str,
    key: &str,
    limit: Duration,
) -> Result<Option<Progress>, PublishError> {
    let deadline = Instant::now() + limit;
    let consumer: BaseConsumer<QuietEof> = client_config::connection_config(kafka)
        // Never commits, never joins a group: it only assigns itself partitions.
        .set("group.id", "outbox-relay-progress-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .map_err(PublishError::Client)?;
    // The topic exists (the caller made sure): no partitions listed is a broker that is
    // not ready yet, never "no progress", which would publish everything again.
    let partitions = until_deadline("the progress topic's partitions", deadline, |timeout| {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions = super::partitions_of(&metadata, topic);
        if partitions.is_empty() {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::LeaderNotAvailable,
            ));
        }
        Ok(partitions)
    })?;
    let mut found: Option<(i64, Progress)> = None;
    for partition in partitions {
        let (low, high) = until_deadline("the progress topic's offsets", deadline, |timeout| {
            consumer.fetch_watermarks(topic, partition, timeout)
        })?;
        let mut end = high;
        while end > low {
            let start = (end - WINDOW).max(low);
            if let Some(hit) = scan(&consumer, topic, partition, start, end, key, deadline)? {
                if found.as_ref().is_none_or(|(at, _)| hit.0 > *at) {
                    found = Some(hit);
                }
                break;
            }
            end = start;
        }
    }
    Ok(found.map(|(_, progress)| progress))
}

/// Retries `request` (given the time it may take) until it succeeds or `deadline`
/// passes. Right after a broker thaws or restarts, these requests fail for a moment: the
/// partition's leader is not known yet (`Local: Unknown partition`), which says nothing
/// about the topic. Seen in CI, where that answer stopped the relay as a fault of the
/// topic. Still failing at the deadline is a timeout, which restarts the pipeline.
fn until_deadline<T>(
    what: &'static str,
    deadline: Instant,
    mut request: impl FnMut(Duration) -> KafkaResult<T>,
) -> Result<T, PublishError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match request(left.min(REQUEST_TIMEOUT)) {
            Ok(answer) => return Ok(answer),
            Err(error) => error,
        };
        if deadline.saturating_duration_since(Instant::now()) <= RETRY_PAUSE {
            tracing::warn!(%error, what, "progress reader: no answer before the deadline");
            return Err(PublishError::Client(KafkaError::MetadataFetch(
                RDKafkaErrorCode::OperationTimedOut,
            )));
        }
        tracing::debug!(%error, what, "progress reader: not answered yet; retrying");
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The last record of `key` among offsets `start..end` of one partition.
fn scan(
    consumer: &BaseConsumer<QuietEof>,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    key: &str,
    deadline: Instant,
) -> Result<Option<(i64, Progress)>, PublishError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(PublishError::Client)?;
    consumer.assign(&assignment).map_err(PublishError::Client)?;
    let mut last = None;
    loop {
        if Instant::now() >= deadline {
            return Err(PublishError::Client(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(last),
            Some(Err(e)) => return Err(PublishError::Client(e)),
            Some(Ok(message)) => {
                let offset = message.offset();
                if offset >= end {
                    return Ok(last);
                }
                if message.key() != Some(key.as_bytes()) {
                    continue;
                }
                match message.payload().map(Progress::decode) {
                    Some(Ok(progress)) => last = Some((offset, progress)),
                    // A record the relay did not write (or a tombstone): not progress.
                    Some(Err(e)) => {
                        tracing::warn!(topic, partition, offset, error = %e, "skipping a progress record that cannot be read")
                    }
                    None => last = None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_not_ready_yet_is_asked_again() {
        let mut asked = 0;
        let answer = until_deadline("offsets", Instant::now() + Duration::from_secs(5), |_| {
            asked += 1;
            if asked < 3 {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownPartition,
                ))
            } else {
                Ok(asked)
            }
        });
        assert_eq!(answer.unwrap(), 3);
    }

    #[test]
    fn no_answer_by_the_deadline_restarts_the_pipeline_instead_of_stopping_the_relay() {
        let answer: Result<(), _> = until_deadline("offsets", Instant::now(), |_| {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownPartition,
            ))
        });
        let error = answer.unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert_eq!(
            crate::policy::classify(crate::policy::Failure::Publish(&error)),
            crate::policy::Action::Retry,
            "not a fault of the topic: {error}"
        );
    }
}
