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

use crate::config::KafkaConfig;
use crate::kafka::{properties, PublishError};

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
    mut print: impl FnMut(String),
) -> Result<usize, PublishError> {
    let group = format!("outbox-relay-tail-{}", std::process::id());
    let consumer: StreamConsumer = properties::connection_config(kafka)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(PublishError::Client)?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(PublishError::Client)?;
    let mut count = 0;
    while options.max_records.is_none_or(|max| count < max) {
        match tokio::time::timeout(options.idle_timeout, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(PublishError::Client(e)),
            Ok(Ok(message)) => {
                print(describe(&message));
                count += 1;
            }
        }
    }
    Ok(count)
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
