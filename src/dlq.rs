//! Dead-letter records: a row that can never be published goes to the dead-letter topic,
//! whole, with the reason attached, instead of stopping the stream or vanishing.
//!
//! The record keeps the original key (so per-key tooling still works), carries the whole
//! row as a JSON object of its columns (so nothing is lost even when the payload itself
//! was the problem), and says where the row came from in headers:
//!
//! | header | value |
//! |---|---|
//! | `id` | the event id, where the row has one |
//! | `outbox.error.class` | e.g. `null_column`, `invalid_json`, `too_large` ([`crate::outbox::RowProblem::class`]) |
//! | `outbox.error.message` | the reason, for people |
//! | `outbox.source.table` | `schema.table` |
//! | `outbox.source.lsn` | the transaction's commit LSN |
//! | `outbox.source.xid` | the transaction id |
//! | `outbox.source.commit_ts` | commit time, milliseconds since the Unix epoch |
//!
//! plus the headers the record would have had. A dead-lettered row counts as delivered
//! only once the dead-letter write itself is acknowledged by Kafka.
//!
//! A row dead-lettered for being too large would be too large for the DLQ as well, so
//! when the row's JSON would pass half of `max_record_bytes`, each long value is cut to its
//! first [`TRUNCATED_VALUE_BYTES`] bytes and marked with its full length.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::outbox::{OutboundRecord, TablePolicy};
use crate::replication::pgoutput::{ColumnValue, Relation, TupleData};
use crate::replication::stream::POSTGRES_EPOCH_OFFSET_MICROS;
use crate::source::{Change, SourceEvent};

/// What is kept of each long value of an oversized row.
pub const TRUNCATED_VALUE_BYTES: usize = 1_024;

pub const HEADER_ERROR_CLASS: &str = "outbox.error.class";
pub const HEADER_ERROR_MESSAGE: &str = "outbox.error.message";
pub const HEADER_SOURCE_TABLE: &str = "outbox.source.table";
pub const HEADER_SOURCE_LSN: &str = "outbox.source.lsn";
pub const HEADER_SOURCE_XID: &str = "outbox.source.xid";
pub const HEADER_SOURCE_COMMIT_TS: &str = "outbox.source.commit_ts";

/// Why a row is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub class: &'static str,
    pub message: String,
}

/// The dead-letter record for `event` (an insert of `policy.table`).
///
/// `original` is the record the row would have become, when it got that far (its
/// headers are kept).
pub fn record(
    event: &SourceEvent,
    policy: &Arc<TablePolicy>,
    original: Option<&OutboundRecord>,
    reason: &Reason,
) -> OutboundRecord {
    let (relation, row) = match &event.change {
        Change::Insert { relation, row } => (Some(relation), Some(row)),
        _ => (None, None),
    };
    let column = |name: &str| -> Option<Bytes> {
        let (relation, row) = (relation?, row?);
        match row.columns.get(relation.column_index(name)?)? {
            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b.clone()),
            _ => None,
        }
    };
    let key = original
        .and_then(|r| r.key.clone())
        .or_else(|| column(&policy.key_column));
    let txn = &event.transaction;
    let commit_ms = (txn.commit_ts_micros + POSTGRES_EPOCH_OFFSET_MICROS) / 1_000;
    let mut headers: Vec<(Arc<str>, Bytes)> = Vec::with_capacity(8);
    if let Some(id) = column(&policy.id_column) {
        headers.push((Arc::from("id"), id));
    }
    let text = |name: &str, value: String| (Arc::from(name), Bytes::from(value));
    headers.extend([
        text(HEADER_ERROR_CLASS, reason.class.to_owned()),
        text(HEADER_ERROR_MESSAGE, reason.message.clone()),
        text(HEADER_SOURCE_TABLE, policy.table.to_string()),
        text(HEADER_SOURCE_LSN, txn.commit_lsn.to_string()),
        text(HEADER_SOURCE_XID, txn.xid.to_string()),
        text(HEADER_SOURCE_COMMIT_TS, commit_ms.to_string()),
    ]);
    if let Some(original) = original {
        headers.extend(
            original
                .headers
                .iter()
                .filter(|(n, _)| &**n != "id")
                .cloned(),
        );
    }
    let payload = match (relation, row) {
        (Some(relation), Some(row)) => row_as_json(relation, row, policy.max_record_bytes / 2),
        _ => Value::Null,
    };
    OutboundRecord {
        topic: Arc::clone(&policy.dlq_topic),
        key,
        payload: Some(Bytes::from(payload.to_string())),
        headers,
        policy: Arc::clone(policy),
    }
}

/// `{"column": "text value", ...}`; NULL and unchanged-TOAST columns are JSON null.
/// Long values are truncated when the row's values add up to more than `budget` bytes.
fn row_as_json(relation: &Relation, row: &TupleData, budget: usize) -> Value {
    let total: usize = row
        .columns
        .iter()
        .filter_map(ColumnValue::bytes)
        .map(Bytes::len)
        .sum();
    let truncate = total > budget;
    let mut object = Map::with_capacity(relation.columns.len());
    for (column, value) in relation.columns.iter().zip(&row.columns) {
        let json = match value {
            ColumnValue::Text(b) | ColumnValue::Binary(b)
                if truncate && b.len() > TRUNCATED_VALUE_BYTES =>
            {
                let kept = String::from_utf8_lossy(&b[..TRUNCATED_VALUE_BYTES]);
                Value::String(format!("{kept}... (truncated, {} bytes in all)", b.len()))
            }
            ColumnValue::Text(b) | ColumnValue::Binary(b) => {
                Value::String(String::from_utf8_lossy(b).into_owned())
            }
            ColumnValue::Null | ColumnValue::UnchangedToast => Value::Null,
        };
        object.insert(column.name.clone(), json);
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TxnSeq;
    use crate::config::OnError;
    use crate::replication::pgoutput::RelationColumn;
    use crate::replication::Lsn;
    use crate::source::TransactionInfo;

    #[test]
    fn record_carries_row_reason_and_origin() {
        let relation = Arc::new(Relation {
            oid: 1,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: ["id", "aggregateid", "payload"]
                .iter()
                .map(|n| RelationColumn {
                    is_key: false,
                    name: (*n).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        });
        let row = TupleData {
            columns: vec![
                ColumnValue::Text(Bytes::from("e-1")),
                ColumnValue::Text(Bytes::from("k-1")),
                ColumnValue::Text(Bytes::from("{not json")),
            ],
        };
        let event = SourceEvent {
            seq: TxnSeq(0),
            transaction: Arc::new(TransactionInfo {
                xid: 77,
                commit_lsn: Lsn(0x16_0000_0010),
                commit_ts_micros: 1_000_000,
            }),
            change: Change::Insert { relation, row },
        };
        let policy = Arc::new(TablePolicy {
            table: Arc::from("public.outbox"),
            id_column: "id".into(),
            key_column: "aggregateid".into(),
            on_error: OnError::Dlq,
            dlq_topic: Arc::from("outbox.dlq"),
            max_record_bytes: 1 << 20,
        });
        let reason = Reason {
            class: "invalid_json",
            message: "payload is not valid JSON".into(),
        };
        let dead = record(&event, &policy, None, &reason);
        assert_eq!(&*dead.topic, "outbox.dlq");
        assert_eq!(dead.key.as_deref(), Some(&b"k-1"[..]));
        let value: Value = serde_json::from_slice(dead.payload.as_deref().unwrap()).unwrap();
        assert_eq!(value["payload"], "{not json");
        assert_eq!(value["id"], "e-1");
        let header = |name: &str| {
            dead.headers
                .iter()
                .find(|(n, _)| &**n == name)
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(header("id").as_deref(), Some("e-1"));
        assert_eq!(header(HEADER_ERROR_CLASS).as_deref(), Some("invalid_json"));
        assert_eq!(
            header(HEADER_SOURCE_TABLE).as_deref(),
            Some("public.outbox")
        );
        assert_eq!(header(HEADER_SOURCE_LSN).as_deref(), Some("16/10"));
        assert_eq!(header(HEADER_SOURCE_XID).as_deref(), Some("77"));
        assert_eq!(
            header(HEADER_SOURCE_COMMIT_TS).as_deref(),
            Some("946684801000")
        );
    }
}
