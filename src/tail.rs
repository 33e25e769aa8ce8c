//! `outbox-relay tail`: print what is on a topic, for operators and the demo.
//!
//! A throwaway consumer group (nothing committed) reads the topic and prints one line per
//! record: topic, partition, offset, key, headers and value, so a person can see exactly
//! what the relay published without another Kafka tool (Debian's kcat is too old for some
//! brokers).

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::{client_config, PublishError};

/// How often to look again for a topic that does not exist yet.
const METADATA_POLL: Duration = Duration::from_millis(200);

/// What to read.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub topics: Vec<String>,
    /// Stop after this many records.
    pub max_records: Option<usize>,
    /// Stop after this long without a record.
    pub idle_timeout: Duration,
}

/// Reads and prints records until `max_records` or `idle_timeout`; returns how many.
pub async fn tail(
    kafka: &KafkaConfig,
    options: &TailOptions,
    render: fn(&BorrowedMessage<'_>) -> String,
    mut print: impl FnMut(String),
) -> Result<usize, PublishError> {
    let group = format!("outbox-relay-tail-{}", std::process::id());
    let consumer: StreamConsumer = client_config::connection_config(kafka)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(PublishError::Client)?;
    // Assign every partition explicitly rather than subscribe: no group rebalance to wait
    // for, and it works with brokers whose group coordination is minimal.
    let mut assignment = TopicPartitionList::new();
    for topic in &options.topics {
        for partition in partitions_when_present(&consumer, topic, options.idle_timeout).await? {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(PublishError::Client)?;
        }
    }
    consumer.assign(&assignment).map_err(PublishError::Client)?;
    let mut count = 0;
    while options.max_records.is_none_or(|max| count < max) {
        match tokio::time::timeout(options.idle_timeout, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(PublishError::Client(e)),
            Ok(Ok(message)) => {
                print(render(&message));
                count += 1;
            }
        }
    }
    Ok(count)
}

/// The partitions of `topic`, waiting up to `timeout` for it to be created.
async fn partitions_when_present(
    consumer: &StreamConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, PublishError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(PublishError::Client)?;
        let partitions = crate::kafka::partitions_of(&metadata, topic);
        if !partitions.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(partitions);
        }
        tokio::time::sleep(METADATA_POLL).await;
    }
}

/// One dead-letter record: `table=... id=... class=... lsn=... reason=...`.
pub fn describe_dead_letter(message: &BorrowedMessage<'_>) -> String {
    let header = |name: &str| {
        message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map_or_else(
                || "-".to_owned(),
                |v| String::from_utf8_lossy(v).into_owned(),
            )
    };
    format!(
        "table={} id={} class={} lsn={} xid={} reason={}",
        header(crate::dlq::HEADER_SOURCE_TABLE),
        header("id"),
        header(crate::dlq::HEADER_ERROR_CLASS),
        header(crate::dlq::HEADER_SOURCE_LSN),
        header(crate::dlq::HEADER_SOURCE_XID),
        header(crate::dlq::HEADER_ERROR_MESSAGE),
    )
}

/// One line: `topic[partition]@offset key=... headers={...} value=...`.
pub fn describe(message: &BorrowedMessage<'_>) -> String {
    let text = |bytes: Option<&[u8]>| match bytes {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "null".to_owned(),
    };
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| format!("{}={}", h.key, text(h.value)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "{}[{}]@{} key={} headers={{{}}} value={}",
        message.topic(),
        message.partition(),
        message.offset(),
        text(message.key()),
        headers,
        text(message.payload())
    )
}
