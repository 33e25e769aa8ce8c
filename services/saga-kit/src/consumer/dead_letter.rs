//! Dead letters: a record the service can never apply goes to `<topic>.DLT`, through the
//! service's own outbox, and the partition moves on.
//!
//! # Why through the outbox
//! The consumer never produces to Kafka, as no part of the services does: the dead
//! letter is an outbox row written in the same transaction as the consumer's position
//! (and the inbox row, when the record has an `id`), so the record is either still to be
//! read or dead-lettered, never lost between the two and never both. The service's relay
//! publishes it like any event.
//!
//! # The row
//! - `aggregatetype` `<x>.DLT` for a record of `outbox.event.<x>`: the relay routes it to
//!   `outbox.event.<x>.DLT`, i.e. `<topic>.DLT`. The consumer refuses at start to
//!   subscribe to a topic outside `outbox.event.` (see [`aggregate_type`]), since its
//!   dead letters would have nowhere to go.
//! - `id`: a UUID derived from (group, topic, partition, offset), inserted with
//!   `ON CONFLICT DO NOTHING`. The stored position (and the inbox, for events) already
//!   keeps a record from being dead-lettered twice; the derived id also covers a record
//!   without an `id` that two replicas both read during a rebalance. Derived from the
//!   group, not the record's own id: two services dead-lettering one record publish two
//!   records with different ids.
//! - `aggregateid` (the Kafka key): the record's key, else `<topic>-<partition>-<offset>`.
//! - `type` and `correlation_id`: the record's `eventType` and `correlationId` headers
//!   (`unknown` and empty when missing).
//! - `payload`: the record's value when it is JSON; otherwise `{"raw": "<text>"}` for
//!   UTF-8, `{"rawHex": "<hex>"}` for other bytes, `{"raw": null}` for a tombstone (the
//!   column is `jsonb NOT NULL`).
//! - `dlt_reason`, `dlt_origin` (`<topic>/<partition>/<offset>`) and `dlt_error_class`:
//!   headers `dltReason`, `dltOrigin` and `dltErrorClass` (see the messaging migration).
//! - `traceparent`: the trace of the record it came from, so the dead letter, its
//!   consumer's logs and whoever replays it stay in the producer's trace: the span the
//!   consumer applied the record in (a child of the record's `traceparent`, see
//!   `consumer`, "Trace context"), else the record's own header (NULL without either).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::Record;

/// Consumed topics are `outbox.event.<aggregatetype>`, as the relays route them.
pub const TOPIC_PREFIX: &str = "outbox.event.";
/// Appended to the consumed topic (and aggregatetype) for its dead letters.
pub const SUFFIX: &str = ".DLT";
/// The longest `dlt_reason` stored, in characters (a header, not a log).
pub const MAX_REASON_CHARS: usize = 1000;

/// Why a record was dead-lettered: header `dltErrorClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No `id` header, a bad UUID, no `eventType`, a tombstone, or a value that is not JSON.
    NotAnEvent,
    /// The payload does not match the event type's schema.
    Payload,
    /// The handler said the event can never be applied.
    Permanent,
    /// A retryable (non-database) failure that did not pass within its attempts.
    RetriesExhausted,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::NotAnEvent => "not-an-event",
            ErrorClass::Payload => "payload",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetriesExhausted => "retries-exhausted",
        }
    }
}

/// The dead letters' aggregatetype for consumed `topic`: `<x>.DLT` for
/// `outbox.event.<x>`, `None` for a topic the relays do not route to.
pub fn aggregate_type(topic: &str) -> Option<String> {
    let aggregate = topic.strip_prefix(TOPIC_PREFIX)?;
    (!aggregate.is_empty()).then(|| format!("{aggregate}{SUFFIX}"))
}

/// One dead letter, as its outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub correlation_id: String,
    pub payload: serde_json::Value,
    pub reason: String,
    pub origin: String,
    pub class: ErrorClass,
    pub traceparent: Option<String>,
}

impl DeadLetter {
    /// The row for `record`, consumed by `group`; `None` if its topic is not routable
    /// (the consumer refuses such topics at start).
    pub(super) fn of(
        group: &str,
        record: &Record,
        class: ErrorClass,
        reason: &str,
    ) -> Option<DeadLetter> {
        let header = |name: &str| record.headers.get(name).cloned();
        Some(DeadLetter {
            id: derived_id(group, &record.topic, record.partition, record.offset),
            aggregate_type: aggregate_type(&record.topic)?,
            aggregate_id: match &record.key {
                Some(key) if !key.is_empty() => String::from_utf8_lossy(key).into_owned(),
                _ => format!("{}-{}-{}", record.topic, record.partition, record.offset),
            },
            event_type: header("eventType").unwrap_or_else(|| "unknown".to_owned()),
            correlation_id: header("correlationId").unwrap_or_default(),
            payload: payload(record.payload.as_deref()),
            reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            origin: format!("{}/{}/{}", record.topic, record.partition, record.offset),
            class,
            traceparent: crate::trace::current_traceparent()
                .or_else(|| header(crate::trace::TRACEPARENT)),
        })
    }

    /// Inserts the row in `tx`; `false` if a row with its id exists already.
    pub(super) async fn write(&self, tx: &Transaction<'_>) -> Result<bool, tokio_postgres::Error> {
        let inserted = tx
            .execute(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, correlation_id, \
                 payload, dlt_reason, dlt_origin, dlt_error_class, traceparent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                &[
                    &self.id,
                    &self.aggregate_type,
                    &self.aggregate_id,
                    &self.event_type,
                    &self.correlation_id,
                    &self.payload,
                    &self.reason,
                    &self.origin,
                    &self.class.as_str(),
                    &self.traceparent,
                ],
            )
            .await?;
        Ok(inserted == 1)
    }
}

/// A UUID (version 8, from SHA-256) that only this group's read of this record yields.
fn derived_id(group: &str, topic: &str, partition: i32, offset: i64) -> Uuid {
    let mut hash = Sha256::new();
    for part in [group, topic, &partition.to_string(), &offset.to_string()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The record's value as the row's `jsonb` payload (see "The row").
fn payload(value: Option<&[u8]>) -> serde_json::Value {
    let Some(value) = value else {
        return serde_json::json!({ "raw": null });
    };
    if let Ok(json) = serde_json::from_slice(value) {
        return json;
    }
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::json!({ "raw": text }),
        Err(_) => {
            let mut hex = String::with_capacity(value.len() * 2);
            for byte in value {
                write!(hex, "{byte:02x}").expect("writing to a String");
            }
            serde_json::json!({ "rawHex": hex })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn record(key: Option<&[u8]>, payload: Option<&[u8]>) -> Record {
        Record {
            topic: "outbox.event.product".to_owned(),
            partition: 2,
            offset: 41,
            key: key.map(<[u8]>::to_vec),
            headers: BTreeMap::from([
                ("eventType".to_owned(), "ProductDecreased".to_owned()),
                ("correlationId".to_owned(), "o-1".to_owned()),
            ]),
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn dead_letters_of_outbox_topics_route_to_their_dlt() {
        assert_eq!(
            aggregate_type("outbox.event.product").as_deref(),
            Some("product.DLT")
        );
        assert_eq!(
            aggregate_type("outbox.event.product-command").as_deref(),
            Some("product-command.DLT")
        );
        assert_eq!(aggregate_type("outbox.event."), None);
        assert_eq!(aggregate_type("orders"), None);
        assert_eq!(aggregate_type("outbox.dlq.order"), None);
    }

    #[test]
    fn the_row_keeps_what_can_be_kept_and_says_where_it_came_from() {
        let row = DeadLetter::of(
            "order-service",
            &record(Some(b"o-1"), Some(br#"{"orderId": 1}"#)),
            ErrorClass::Payload,
            "bad",
        )
        .unwrap();
        assert_eq!(row.aggregate_type, "product.DLT");
        assert_eq!(row.aggregate_id, "o-1");
        assert_eq!(row.event_type, "ProductDecreased");
        assert_eq!(row.correlation_id, "o-1");
        assert_eq!(row.payload, serde_json::json!({ "orderId": 1 }));
        assert_eq!(row.origin, "outbox.event.product/2/41");
        assert_eq!(row.class.as_str(), "payload");
        assert_eq!(row.reason, "bad");
        assert_eq!(row.traceparent, None, "no span, no header: no trace");
    }

    #[test]
    fn outside_a_traced_span_the_dead_letter_keeps_the_records_traceparent() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut traced = record(None, None);
        traced
            .headers
            .insert("traceparent".to_owned(), traceparent.to_owned());
        let row = DeadLetter::of("g", &traced, ErrorClass::Permanent, "r").unwrap();
        assert_eq!(row.traceparent.as_deref(), Some(traceparent));
    }

    #[test]
    fn values_that_are_not_json_are_wrapped_and_keys_fall_back_to_the_position() {
        let of = |key: Option<&[u8]>, payload: Option<&[u8]>| {
            DeadLetter::of("g", &record(key, payload), ErrorClass::NotAnEvent, "r").unwrap()
        };
        let text = of(None, Some(b"not json"));
        assert_eq!(text.payload, serde_json::json!({ "raw": "not json" }));
        assert_eq!(text.aggregate_id, "outbox.event.product-2-41");
        assert_eq!(
            of(Some(b""), Some(&[0xff, 0x00, 0x10])).payload,
            serde_json::json!({ "rawHex": "ff0010" })
        );
        assert_eq!(of(None, None).payload, serde_json::json!({ "raw": null }));
    }

    #[test]
    fn ids_are_stable_per_group_and_position_and_reasons_bounded() {
        let long = "x".repeat(MAX_REASON_CHARS * 2);
        let row = |group: &str| {
            DeadLetter::of(group, &record(None, None), ErrorClass::Permanent, &long).unwrap()
        };
        assert_eq!(row("a").id, row("a").id);
        assert_ne!(row("a").id, row("b").id);
        assert_eq!(row("a").id.get_version_num(), 8);
        assert_eq!(row("a").reason.chars().count(), MAX_REASON_CHARS);
        let mut other = record(None, None);
        other.offset += 1;
        let moved = DeadLetter::of("a", &other, ErrorClass::Permanent, "r").unwrap();
        assert_ne!(moved.id, row("a").id);
    }
}
