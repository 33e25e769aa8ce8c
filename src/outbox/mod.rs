//! Outbox routing: from a row change to the Kafka record it becomes, Debezium-style.
//!
//! Defaults follow Debezium's Outbox Event Router so consumers can move over untouched:
//! topic `outbox.event.${routedByValue}` (the `aggregatetype` column), key `aggregateid`,
//! value the `payload` column as written, header `id` the event id (the idempotency key
//! consumers dedupe on), plus configured columns as extra headers.
//!
//! Only inserts publish. Updates, deletes and truncates of an outbox table are ignored and
//! counted: the common pattern of inserting and deleting the outbox row in one transaction
//! still publishes the insert, because pgoutput sends both. (The publication the relay
//! creates sends inserts only, so these arrive only through one made by hand.)
//!
//! A change of any relation that is not in `source.tables` is [`Routed::Foreign`]: never
//! published, never dead-lettered (a dead-letter record carries the whole row, and a
//! business table's row must not leak there), never acknowledged. The relay stops before
//! it with the fix for the publication (see [`crate::source::publication`]).
//!
//! Values are slices of the replication buffer; nothing is copied here (a `bytea`
//! payload is the exception: its text form is hex and is decoded once).

pub mod topic;

use foldhash::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Config, OnError, OutboxConfig, TableMapping};
use crate::ident::TableName;
use crate::replication::pgoutput::{ColumnValue, Oid, Relation, TupleData};
use crate::source::Change;
use topic::TopicTemplate;

/// PostgreSQL's OIDs for `bytea`, `json` and `jsonb`.
const BYTEA_OID: Oid = 17;
const JSON_OID: Oid = 114;
const JSONB_OID: Oid = 3802;

/// A record ready for the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    pub topic: Arc<str>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    /// `id` first, then the additional headers in configured order.
    pub headers: Vec<(Arc<str>, Bytes)>,
    /// The outbox table and what to do when its rows fail.
    pub policy: Arc<TablePolicy>,
}

impl OutboundRecord {
    /// Bytes Kafka counts for the record: key, value and headers.
    /// About what the record takes in a one-record batch on the wire: [`Self::size`] plus
    /// the batch header (61 bytes) and per-record and per-header framing, rounded up.
    pub fn wire_size(&self) -> usize {
        self.size() + 128 + 8 * self.headers.len()
    }

    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// Per table: its name and where its failures go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePolicy {
    /// `schema.table`.
    pub table: Arc<str>,
    /// Where the event id and the key come from, for dead-letter records.
    pub id_column: String,
    pub key_column: String,
    pub on_error: OnError,
    pub dlq_topic: Arc<str>,
    pub max_record_bytes: usize,
}

/// Why a row cannot become a record as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("record is {bytes} bytes; outbox.max_record_bytes is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("record is about {bytes} bytes on the wire; topic {topic} takes at most {limit} (its max.message.bytes)")]
    TooLargeForTopic {
        bytes: usize,
        limit: usize,
        topic: Arc<str>,
    },
    #[error("column {column} is missing from table {table}")]
    MissingColumn { table: Arc<str>, column: String },
    #[error("column {column} is NULL")]
    NullColumn { column: String },
    #[error("column {column} holds an unchanged TOAST value, which pgoutput does not send")]
    ToastedColumn { column: String },
    #[error("{0}")]
    InvalidTopic(String),
    #[error("payload column is bytea but its value is not valid hex: {0}")]
    BadBytea(String),
}

impl RowProblem {
    /// Whether this is a fault of the table's shape rather than of the row: a column the
    /// config names is not in the relation (renamed or dropped by a migration). Every
    /// later row of the table has the same problem, so dead-lettering would empty the
    /// stream into the DLQ; the relay holds the stream instead (see
    /// `crate::pipeline::sink`). A NULL in a required column stays a fault of the row.
    pub fn is_table_fault(&self) -> bool {
        matches!(self, RowProblem::MissingColumn { .. })
    }

    /// What the operator does about a table fault, naming the table and the column.
    pub fn table_fix(&self) -> Option<String> {
        match self {
            RowProblem::MissingColumn { table, column } => Some(format!(
                "table {table} has no column {column} any more (renamed or dropped by a \
                 migration?): name its new column in the relay's config (outbox.route_by_field, \
                 id_column, key_column, payload_column, additional_headers, or the table's \
                 [outbox.tables.\"schema.table\"] entry) and restart the relay; nothing after \
                 this row is published or dead-lettered meanwhile"
            )),
            _ => None,
        }
    }

    /// The `outbox.error.class` of a dead-lettered row (also a metrics label).
    pub fn class(&self) -> &'static str {
        match self {
            RowProblem::InvalidJson(_) => "invalid_json",
            RowProblem::TooLarge { .. } | RowProblem::TooLargeForTopic { .. } => "too_large",
            RowProblem::MissingColumn { .. } => "missing_column",
            RowProblem::NullColumn { .. } => "null_column",
            RowProblem::ToastedColumn { .. } => "toasted_column",
            RowProblem::InvalidTopic(_) => "invalid_topic",
            RowProblem::BadBytea(_) => "invalid_bytea",
        }
    }
}

/// What to do with one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Publish(OutboundRecord),
    /// Not an insert: acknowledged without publishing, counted per table and operation.
    Ignore {
        table: Arc<str>,
        operation: &'static str,
    },
    /// The row can never be published as configured.
    Reject {
        policy: Arc<TablePolicy>,
        problem: RowProblem,
    },
    /// A change of a table that `source.tables` does not list: stop before it.
    Foreign(ForeignTable),
}

/// A change of a table outside `source.tables` reached the relay: the publication carries
/// more than the outbox. The error names the table, never a value of its row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {operation} of table {table} arrived through publication {publication}, but source.tables does not list {table}; the relay publishes and dead-letters nothing of it and stops before it (the slot stays before this change): remove the table from the publication with {fix}, then restart the relay (or, if {table} is an outbox table, add it to source.tables)")]
pub struct ForeignTable {
    pub table: TableName,
    pub operation: &'static str,
    pub publication: Arc<str>,
    pub fix: String,
}

/// Routes changes to records; keeps each table's column positions and topic names.
#[derive(Debug)]
pub struct Router {
    outbox: OutboxConfig,
    /// `source.tables`: the only relations whose changes are routed.
    tables_configured: Vec<TableName>,
    publication: Arc<str>,
    dlq_topic: Arc<str>,
    tables: HashMap<Oid, ResolvedTable>,
}

/// A relation's shape resolved against its mapping, redone when the shape changes.
#[derive(Debug)]
struct ResolvedTable {
    relation: Arc<Relation>,
    policy: Arc<TablePolicy>,
    /// Check payloads for JSON (configured, and not already a json/jsonb column).
    check_json: bool,
    max_record_bytes: usize,
    id: Result<usize, RowProblem>,
    key: Result<usize, RowProblem>,
    payload: Result<usize, RowProblem>,
    payload_is_bytea: bool,
    route: Result<usize, RowProblem>,
    headers: Vec<(Arc<str>, Result<usize, RowProblem>)>,
    topic: TopicTemplate,
}

impl Router {
    /// A router for `config`'s `[outbox]`, `source.tables` and `dlq.topic`.
    pub fn new(config: &Config) -> Self {
        Router {
            outbox: config.outbox.clone(),
            tables_configured: config.source.tables.clone(),
            publication: Arc::from(config.source.publication.as_str()),
            dlq_topic: Arc::from(config.dlq.topic.as_str()),
            tables: HashMap::default(),
        }
    }

    /// What `change` becomes.
    pub fn route(&mut self, change: &Change) -> Routed {
        if let Some(foreign) = self.foreign(change) {
            return Routed::Foreign(foreign);
        }
        let (relation, row) = match change {
            Change::Insert { relation, row } => (relation, row),
            Change::Update { relation, .. } | Change::Delete { relation, .. } => {
                return Routed::Ignore {
                    table: Arc::from(relation.qualified_name()),
                    operation: change.operation(),
                }
            }
            Change::Truncate { relations } => {
                let table = relations
                    .iter()
                    .map(|r| r.qualified_name())
                    .collect::<Vec<_>>();
                return Routed::Ignore {
                    table: Arc::from(table.join(",")),
                    operation: change.operation(),
                };
            }
        };
        let resolved = self.resolve(relation);
        match resolved.record(row) {
            Ok(record) => Routed::Publish(record),
            Err(problem) => Routed::Reject {
                policy: Arc::clone(&resolved.policy),
                problem,
            },
        }
    }

    /// The first relation of `change` outside `source.tables`, as the error to stop on.
    fn foreign(&self, change: &Change) -> Option<ForeignTable> {
        let relations = match change {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => std::slice::from_ref(relation),
            Change::Truncate { relations } => relations.as_slice(),
        };
        let relation = relations.iter().find(|r| {
            !self
                .tables_configured
                .iter()
                .any(|t| t.schema == r.namespace && t.table == r.name)
        })?;
        let table = TableName {
            schema: relation.namespace.clone(),
            table: relation.name.clone(),
        };
        Some(ForeignTable {
            fix: crate::admin_sql::drop_publication_tables_sql(
                &self.publication,
                std::slice::from_ref(&table),
            ),
            table,
            operation: change.operation(),
            publication: Arc::clone(&self.publication),
        })
    }

    fn resolve(&mut self, relation: &Arc<Relation>) -> &mut ResolvedTable {
        let stale = self
            .tables
            .get(&relation.oid)
            .is_none_or(|r| !Arc::ptr_eq(&r.relation, relation));
        if stale {
            let name = TableName {
                schema: relation.namespace.clone(),
                table: relation.name.clone(),
            };
            let mapping = self.outbox.mapping_for(&name);
            let policy = Arc::new(TablePolicy {
                table: Arc::from(name.to_string()),
                id_column: mapping.id_column.to_string(),
                key_column: mapping.key_column.to_string(),
                on_error: mapping.on_error,
                max_record_bytes: mapping.max_record_bytes,
                dlq_topic: mapping
                    .dlq_topic
                    .as_deref()
                    .map_or_else(|| Arc::clone(&self.dlq_topic), Arc::from),
            });
            self.tables.insert(
                relation.oid,
                ResolvedTable::new(Arc::clone(relation), &mapping, policy),
            );
        }
        self.tables.get_mut(&relation.oid).expect("inserted above")
    }
}

impl ResolvedTable {
    fn new(relation: Arc<Relation>, mapping: &TableMapping, policy: Arc<TablePolicy>) -> Self {
        let table = Arc::clone(&policy.table);
        let find = |column: &str| {
            relation
                .column_index(column)
                .ok_or_else(|| RowProblem::MissingColumn {
                    table: Arc::clone(&table),
                    column: column.to_owned(),
                })
        };
        let payload = find(mapping.payload_column.as_str());
        let payload_type = payload.as_ref().ok().map(|&i| relation.columns[i].type_oid);
        let payload_is_bytea = payload_type == Some(BYTEA_OID);
        let check_json =
            mapping.payload_json && !matches!(payload_type, Some(JSON_OID | JSONB_OID));
        let mut headers = vec![(Arc::from("id"), find(mapping.id_column.as_str()))];
        for extra in &mapping.additional_headers {
            headers.push((Arc::from(extra.header_name()), find(extra.column.as_str())));
        }
        ResolvedTable {
            id: find(mapping.id_column.as_str()),
            key: find(mapping.key_column.as_str()),
            payload,
            payload_is_bytea,
            route: find(mapping.route_by_field.as_str()),
            headers,
            topic: TopicTemplate::new(&mapping.topic),
            check_json,
            max_record_bytes: mapping.max_record_bytes,
            policy,
            relation,
        }
    }

    fn record(&mut self, row: &TupleData) -> Result<OutboundRecord, RowProblem> {
        let columns = &self.relation.columns;
        let value = |index: &Result<usize, RowProblem>| -> Result<Option<&Bytes>, RowProblem> {
            let i = *index.as_ref().map_err(Clone::clone)?;
            match row.columns.get(i) {
                Some(ColumnValue::Text(b) | ColumnValue::Binary(b)) => Ok(Some(b)),
                Some(ColumnValue::Null) | None => Ok(None),
                Some(ColumnValue::UnchangedToast) => Err(RowProblem::ToastedColumn {
                    column: columns[i].name.clone(),
                }),
            }
        };
        let required = |index: &Result<usize, RowProblem>| -> Result<Bytes, RowProblem> {
            value(index)?
                .cloned()
                .ok_or_else(|| RowProblem::NullColumn {
                    column: columns[*index.as_ref().expect("value() checked it")]
                        .name
                        .clone(),
                })
        };
        required(&self.id)?;
        let topic = if self.topic.is_routed() {
            let routed = required(&self.route)?;
            self.topic
                .topic(&routed)
                .map_err(RowProblem::InvalidTopic)?
        } else {
            self.topic
                .topic(&Bytes::new())
                .map_err(RowProblem::InvalidTopic)?
        };
        let key = value(&self.key)?.cloned();
        let payload = match value(&self.payload)? {
            Some(text) if self.payload_is_bytea => Some(decode_bytea_hex(text)?),
            other => other.cloned(),
        };
        if let (true, Some(payload)) = (self.check_json, &payload) {
            serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                .map_err(|e| RowProblem::InvalidJson(e.to_string()))?;
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, index) in &self.headers {
            if let Some(bytes) = value(index)? {
                headers.push((Arc::clone(name), bytes.clone()));
            }
        }
        let record = OutboundRecord {
            topic,
            key,
            payload,
            headers,
            policy: Arc::clone(&self.policy),
        };
        match record.size() {
            bytes if bytes > self.max_record_bytes => Err(RowProblem::TooLarge {
                bytes,
                limit: self.max_record_bytes,
            }),
            _ => Ok(record),
        }
    }
}

/// `bytea` text output (`\x` followed by hex) to the raw bytes.
fn decode_bytea_hex(text: &Bytes) -> Result<Bytes, RowProblem> {
    let hex = text.strip_prefix(b"\\x").ok_or_else(|| {
        RowProblem::BadBytea("missing \\x prefix (bytea_output must be hex)".into())
    })?;
    if hex.len() % 2 != 0 {
        return Err(RowProblem::BadBytea("odd number of hex digits".into()));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(RowProblem::BadBytea(format!(
            "{:?} is not a hex digit",
            char::from(c)
        ))),
    };
    hex.chunks_exact(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect::<Result<Vec<u8>, _>>()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests;
