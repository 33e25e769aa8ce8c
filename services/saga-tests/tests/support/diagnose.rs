//! What a saga that did not settle leaves to explain it: which published events never
//! reached Kafka (a relay's fault) and which are in Kafka but were not applied (a
//! consumer's), per topic and partition, so a flaky failure points at one side at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::kafka::Broker;

/// How long reading a topic to its high watermarks may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Per partition of a topic: (low, high) watermark.
pub type Watermarks = BTreeMap<i32, (i64, i64)>;
/// Event id → (partition, offset) of its record.
pub type Records = BTreeMap<Uuid, (i32, i64)>;

/// Where every record of `topic` is, read from the beginning to
/// the high watermarks taken first, and those watermarks; `Err` says why it could not be
/// read.
pub fn records(broker: &Broker, topic: &str) -> Result<(Records, Watermarks), String> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("diagnose-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("diagnostic consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    let mut watermarks = Watermarks::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .map_err(|e| format!("watermarks of {topic}[{p}]: {e}"))?;
        watermarks.insert(p, (low, high));
        if high > 0 {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut seen = BTreeMap::new();
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut done: BTreeSet<i32> = BTreeSet::new();
    while done.len() < ends.len() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{topic}: read only up to {done:?} of {ends:?}"));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message.map_err(|e| format!("reading {topic}: {e}"))?;
        let id = m.headers().and_then(|hs| {
            hs.iter()
                .find(|h| h.key == "id")
                .and_then(|h| std::str::from_utf8(h.value?).ok())
                .and_then(|v| Uuid::parse_str(v).ok())
        });
        if let Some(id) = id {
            seen.entry(id).or_insert((m.partition(), m.offset()));
        }
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition());
        }
    }
    Ok((seen, watermarks))
}

/// Per topic: how many published events are missing from Kafka, and where in Kafka the
/// events a service did not apply are.
pub fn report(
    broker: &Broker,
    published: &BTreeMap<String, BTreeSet<Uuid>>,
    applied: &BTreeMap<&'static str, (Vec<&'static str>, BTreeSet<Uuid>)>,
) -> String {
    let mut lines = Vec::new();
    let mut in_kafka = BTreeMap::new();
    for (aggregate, ids) in published {
        let topic = format!("outbox.event.{aggregate}");
        match records(broker, &topic) {
            Ok((records, watermarks)) => {
                let absent: Vec<&Uuid> =
                    ids.iter().filter(|id| !records.contains_key(id)).collect();
                lines.push(format!(
                    "{topic}: {} published, {} records in Kafka (watermarks {watermarks:?}), \
                     published but absent: {absent:?}",
                    ids.len(),
                    records.len()
                ));
                in_kafka.insert(aggregate.clone(), records);
            }
            Err(e) => lines.push(format!("{topic}: {e}")),
        }
    }
    for (service, (aggregates, ids)) in applied {
        for aggregate in aggregates {
            let (Some(records), Some(published)) =
                (in_kafka.get(*aggregate), published.get(*aggregate))
            else {
                continue;
            };
            let unapplied: Vec<(i32, i64)> = published
                .iter()
                .filter(|id| !ids.contains(id))
                .filter_map(|id| records.get(id).copied())
                .collect();
            if !unapplied.is_empty() {
                lines.push(format!(
                    "{service}: in Kafka but not applied from {aggregate}, (partition, offset): \
                     {unapplied:?}"
                ));
            }
        }
    }
    lines.join("\n")
}
