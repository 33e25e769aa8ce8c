//! The decision for one dead-letter record: the record to publish again, or why not.
//!
//! The record is rebuilt from the row JSON with the relay's *current* routing (the same
//! [`Router`] the relay uses), so a config fixed since the row was dead-lettered — a
//! renamed routing column, a new topic template — applies. What the dead letter cannot
//! tell is never guessed: a row whose JSON may be cut short, a value pgoutput never sent,
//! a payload that may have been `bytea`, an event id or key that the rebuild would change
//! are skipped with the reason. Pure: no I/O, so every rule is unit-tested.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::config::{Config, OutboxConfig};
use crate::dlq::{HEADER_ERROR_CLASS, HEADER_SOURCE_TABLE, TRUNCATED_VALUE_BYTES};
use crate::ident::TableName;
use crate::outbox::{OutboundRecord, Routed, Router, RowProblem};
use crate::replication::pgoutput::{ColumnValue, Relation, RelationColumn, TupleData};
use crate::source::Change;

/// `text`: every column of a rebuilt row is typed as text (the dead letter keeps no types).
const TEXT_OID: u32 = 25;

/// Classes that are rebuilt and published again. A rebuild that the current config still
/// rejects is skipped with the problem; a topic that still refuses it stops the replay.
pub const REPLAYABLE: &[&str] = &[
    "unknown_topic",
    "invalid_topic",
    "topic_authorization_failed",
    "kafka_rejected",
    "null_column",
    "missing_column",
    "invalid_json",
];

/// Classes whose dead letter cannot be turned back into the original record, and why.
pub const NOT_REPLAYABLE: &[(&str, &str)] = &[
    (
        "too_large",
        "its row JSON may be truncated and the record would be refused again; publish it from PostgreSQL after raising the limits",
    ),
    (
        "message_too_large",
        "its row JSON may be truncated and the record would be refused again; publish it from PostgreSQL after raising the limits",
    ),
    (
        "toasted_column",
        "pgoutput never sent the column's value, so the dead letter does not have it",
    ),
    (
        "invalid_bytea",
        "the payload was bytea and the dead letter keeps only its text form",
    ),
];

/// A dead-letter record as read from the DLQ topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
}

impl DeadLetter {
    /// The first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// `outbox.error.class`, or `-`.
    pub fn class(&self) -> &str {
        self.header(HEADER_ERROR_CLASS).unwrap_or("-")
    }

    /// The `id` header, or `-`.
    pub fn id(&self) -> &str {
        self.header("id").unwrap_or("-")
    }
}

/// A record to publish again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Topic, original key, payload, `id` and the additional headers, as the relay would
    /// publish the row now.
    pub record: OutboundRecord,
}

/// Why a dead-letter record is not published again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("class {0} is not selected by --class")]
    NotSelected(String),
    #[error("class {class} is not replayable: {why}")]
    NotReplayable { class: String, why: &'static str },
    #[error("class {0:?} is not one dlq replay knows; not replayed")]
    UnknownClass(String),
    #[error("header {0} is missing; not a record the relay dead-lettered")]
    MissingHeader(&'static str),
    #[error("the value is not the row as a JSON object of text columns: {0}")]
    NotARow(String),
    #[error("table {0} is not in source.tables of this config")]
    TableNotRelayed(String),
    #[error("column {0} was truncated in the dead letter; the full value is only in PostgreSQL")]
    Truncated(String),
    #[error("payload column {0} starts with \\x and may have been bytea, whose bytes the dead letter does not keep")]
    MaybeBytea(String),
    #[error("the current config still rejects the row: {0}")]
    StillRejected(RowProblem),
    #[error("the rebuilt event id {rebuilt:?} differs from the dead letter's {original:?} (outbox.id_column changed?); consumers would not see the same event")]
    IdChanged { original: String, rebuilt: String },
    #[error("the rebuilt key differs from the dead letter's (outbox.key_column changed?); the original key is kept or nothing is replayed")]
    KeyChanged,
}

impl SkipReason {
    /// A short label for the summary (the full reason is on the record's own line).
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::NotSelected(_) => "not selected by --class",
            SkipReason::NotReplayable { .. } => "class not replayable",
            SkipReason::UnknownClass(_) => "unknown class",
            SkipReason::MissingHeader(_) => "not a relay dead letter",
            SkipReason::NotARow(_) => "not a relay dead letter",
            SkipReason::TableNotRelayed(_) => "table not in source.tables",
            SkipReason::Truncated(_) => "row truncated in the dead letter",
            SkipReason::MaybeBytea(_) => "payload may have been bytea",
            SkipReason::StillRejected(_) => "still rejected by the current config",
            SkipReason::IdChanged { .. } => "event id would change",
            SkipReason::KeyChanged => "key would change",
        }
    }
}

/// Rebuilds dead-lettered rows with the relay's routing config.
#[derive(Debug)]
pub struct Planner {
    outbox: OutboxConfig,
    router: Router,
    tables: Vec<TableName>,
    /// `--class`: only these classes (all replayable ones when empty).
    classes: Vec<String>,
}

impl Planner {
    pub fn new(config: &Config, classes: Vec<String>) -> Self {
        Planner {
            outbox: config.outbox.clone(),
            router: Router::new(config),
            tables: config.source.tables.clone(),
            classes,
        }
    }

    /// A `--class` value that no dead letter can be replayed for, with why.
    pub fn check_classes(classes: &[String]) -> Result<(), String> {
        for class in classes {
            if let Some((_, why)) = NOT_REPLAYABLE.iter().find(|(c, _)| c == class) {
                return Err(format!("--class {class}: not replayable: {why}"));
            }
            if !REPLAYABLE.contains(&class.as_str()) {
                return Err(format!(
                    "--class {class}: unknown class; replayable classes are {}",
                    REPLAYABLE.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// What to do with `dead`.
    pub fn plan(&mut self, dead: &DeadLetter) -> Result<Replay, SkipReason> {
        let class = dead
            .header(HEADER_ERROR_CLASS)
            .ok_or(SkipReason::MissingHeader(HEADER_ERROR_CLASS))?;
        if let Some((_, why)) = NOT_REPLAYABLE.iter().find(|(c, _)| *c == class) {
            return Err(SkipReason::NotReplayable {
                class: class.to_owned(),
                why,
            });
        }
        if !REPLAYABLE.contains(&class) {
            return Err(SkipReason::UnknownClass(class.to_owned()));
        }
        if !self.classes.is_empty() && !self.classes.iter().any(|c| c == class) {
            return Err(SkipReason::NotSelected(class.to_owned()));
        }
        let table_text = dead
            .header(HEADER_SOURCE_TABLE)
            .ok_or(SkipReason::MissingHeader(HEADER_SOURCE_TABLE))?;
        let table: TableName = table_text
            .parse()
            .map_err(|_| SkipReason::TableNotRelayed(table_text.to_owned()))?;
        if !self.tables.contains(&table) {
            return Err(SkipReason::TableNotRelayed(table_text.to_owned()));
        }
        let (relation, row) = row_from_json(&table, dead.value.as_deref())?;
        let payload_column = self.outbox.mapping_for(&table).payload_column;
        if let Some(index) = relation.column_index(payload_column.as_str()) {
            if let ColumnValue::Text(text) = &row.columns[index] {
                if text.starts_with(b"\\x") {
                    return Err(SkipReason::MaybeBytea(payload_column.as_str().to_owned()));
                }
            }
        }
        let record = match self.router.route(&Change::Insert { relation, row }) {
            Routed::Publish(record) => record,
            Routed::Reject { problem, .. } => return Err(SkipReason::StillRejected(problem)),
            Routed::Ignore { .. } => unreachable!("an insert is never ignored"),
            // Checked against source.tables above; never replay another table's row.
            Routed::Foreign(foreign) => {
                return Err(SkipReason::TableNotRelayed(foreign.table.to_string()))
            }
        };
        let rebuilt_id = record
            .headers
            .iter()
            .find(|(n, _)| &**n == "id")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        if let (Some(original), Some(rebuilt)) = (dead.header("id"), rebuilt_id) {
            if original != rebuilt {
                return Err(SkipReason::IdChanged {
                    original: original.to_owned(),
                    rebuilt,
                });
            }
        }
        if dead.key.is_some() && dead.key != record.key {
            return Err(SkipReason::KeyChanged);
        }
        Ok(Replay { record })
    }
}

/// The dead letter's row JSON as the insert pgoutput would have sent (every column text).
fn row_from_json(
    table: &TableName,
    value: Option<&[u8]>,
) -> Result<(Arc<Relation>, TupleData), SkipReason> {
    let value = value.ok_or_else(|| SkipReason::NotARow("no value".into()))?;
    let object = match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(object)) => object,
        Ok(other) => return Err(SkipReason::NotARow(format!("not an object: {other}"))),
        Err(e) => return Err(SkipReason::NotARow(e.to_string())),
    };
    let mut columns = Vec::with_capacity(object.len());
    let mut values = Vec::with_capacity(object.len());
    for (name, value) in object {
        let value = match value {
            Value::String(text) if is_truncated(&text) => return Err(SkipReason::Truncated(name)),
            Value::String(text) => ColumnValue::Text(Bytes::from(text)),
            Value::Null => ColumnValue::Null,
            other => {
                return Err(SkipReason::NotARow(format!(
                    "column {name} is {other}, not text or null"
                )))
            }
        };
        columns.push(RelationColumn {
            is_key: false,
            name,
            type_oid: TEXT_OID,
            type_modifier: -1,
        });
        values.push(value);
    }
    let relation = Relation {
        oid: 0,
        namespace: table.schema.clone(),
        name: table.table.clone(),
        replica_identity: b'd',
        columns,
    };
    Ok((Arc::new(relation), TupleData { columns: values }))
}

/// Whether `text` is a value [`crate::dlq`] cut short: its first bytes, then
/// `... (truncated, N bytes in all)` with N over [`TRUNCATED_VALUE_BYTES`].
fn is_truncated(text: &str) -> bool {
    let Some(rest) = text.strip_suffix(" bytes in all)") else {
        return false;
    };
    let Some((_, length)) = rest.rsplit_once("... (truncated, ") else {
        return false;
    };
    length
        .parse::<usize>()
        .is_ok_and(|n| n > TRUNCATED_VALUE_BYTES)
}

#[cfg(test)]
mod tests;
