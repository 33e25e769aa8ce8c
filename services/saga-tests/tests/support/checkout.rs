//! Helpers of the checkout saga's tests (`checkout_saga.rs`, `checkout_trace.rs`): the
//! saga's topics, reading a topic to its end with keys and headers, and W3C
//! `traceparent` values. Declared by those test files with `#[path]`, beside `support`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::kafka::Broker;

/// How long reading a topic to its high watermarks may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Every aggregate type of the checkout saga (topic `outbox.event.<type>`), in saga order.
pub const AGGREGATES: [&str; 9] = [
    "order.processing",
    "order.processing.stock.success",
    "order.processing.coupon.success",
    "order.processing.fail",
    "order.processing.success",
    "order.payment",
    "order.payment.success",
    "order.payment.fail",
    "order.processed",
];

/// The topic of aggregate type `aggregate`.
pub fn topic(aggregate: &str) -> String {
    format!("outbox.event.{aggregate}")
}

/// One record of a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Option<serde_json::Value>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Every record of `topic`, read from the beginning to the high watermarks taken first
/// (so a record published before the call is in it); empty when the topic does not exist.
/// `Err` says why it could not be read. Blocking: call it from `block_in_place`.
pub fn read_to_end(broker: &Broker, topic: &str) -> Result<Vec<Record>, String> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set(
            "group.id",
            format!("checkout-read-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| format!("reader of {topic}: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .map_err(|e| format!("watermarks of {topic}[{p}]: {e}"))?;
        if high > low {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    while done.len() < ends.len() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{topic}: read only up to {done:?} of {ends:?}"));
        }
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let m = message.map_err(|e| format!("reading {topic}: {e}"))?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(text).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(text),
                headers,
                payload: m.payload().and_then(|p| serde_json::from_slice(p).ok()),
            });
        }
        // The position, not the last record, tells when a partition is read to its end:
        // with a transactional producer the last offsets can be control records, never
        // delivered.
        let position = consumer.position().map_err(|e| e.to_string())?;
        for (&p, &end) in &ends {
            if let Some(Offset::Offset(at)) = position.find_partition(topic, p).map(|e| e.offset())
            {
                if at >= end {
                    done.insert(p);
                }
            }
        }
    }
    Ok(records)
}

/// The trace id (32 lower-case hex digits) and parent span id (16) of a W3C
/// `traceparent` `00-<trace id>-<span id>-<flags>`, or `None` if it is not one.
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [version, trace, span, flags]
            if hex(version, 2)
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some((trace.to_string(), span.to_string()))
        }
        _ => None,
    }
}

/// A small seeded xorshift64* generator, so a run's random inputs can be reproduced
/// from the seed it prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// `CHECKOUT_SEED` if set, else one from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("CHECKOUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                (nanos as u64) ^ 0x9E37_79B9_7F4A_7C15
            })
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}
