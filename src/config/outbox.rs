//! `[outbox]`: how an outbox row becomes a Kafka record, and each table's resolved mapping.
//!
//! The defaults are Debezium's Outbox Event Router's, so consumers can move over untouched.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Identifier;
use crate::ident::TableName;

/// Debezium's default outbox columns and topic template.
pub const DEFAULT_ID_COLUMN: &str = "id";
pub const DEFAULT_KEY_COLUMN: &str = "aggregateid";
pub const DEFAULT_PAYLOAD_COLUMN: &str = "payload";
pub const DEFAULT_ROUTE_BY_FIELD: &str = "aggregatetype";
pub const DEFAULT_TOPIC_TEMPLATE: &str = "outbox.event.${routedByValue}";

/// `[outbox]`: how an outbox row maps to a Kafka record (Debezium-compatible defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    #[serde(default = "default_id_column")]
    pub id_column: Identifier,
    #[serde(default = "default_key_column")]
    pub key_column: Identifier,
    #[serde(default = "default_payload_column")]
    pub payload_column: Identifier,
    /// The column whose value replaces `${routedByValue}` in `topic`.
    #[serde(default = "default_route_by_field")]
    pub route_by_field: Identifier,
    #[serde(default = "default_topic_template")]
    pub topic: String,
    /// More columns sent as Kafka headers, e.g. `type` as header `eventType`.
    #[serde(default)]
    pub additional_headers: Vec<HeaderColumn>,
    /// What to do with a row that can never be published as configured.
    #[serde(default)]
    pub on_error: OnError,
    /// Check that a payload is valid JSON (for `text` payload columns; `json`/`jsonb`
    /// columns are checked by PostgreSQL already).
    #[serde(default)]
    pub payload_json: bool,
    /// Largest record (key + value + headers) to hand to Kafka; larger rows are dead-lettered.
    /// Keep it at or under the broker's `message.max.bytes`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Per-table overrides of the keys above, by `schema.table`.
    #[serde(default)]
    pub tables: BTreeMap<String, OutboxOverride>,
}

/// A column placed in a Kafka header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderColumn {
    pub column: Identifier,
    /// The header's name; the column's name when absent.
    pub header: Option<String>,
}

impl HeaderColumn {
    pub fn header_name(&self) -> &str {
        self.header.as_deref().unwrap_or(self.column.as_str())
    }
}

/// `[outbox.tables."schema.table"]`: what differs for one outbox table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxOverride {
    pub id_column: Option<Identifier>,
    pub key_column: Option<Identifier>,
    pub payload_column: Option<Identifier>,
    pub route_by_field: Option<Identifier>,
    pub topic: Option<String>,
    pub additional_headers: Option<Vec<HeaderColumn>>,
    pub on_error: Option<OnError>,
    pub payload_json: Option<bool>,
    pub max_record_bytes: Option<usize>,
    /// This table's dead-letter topic instead of `dlq.topic`.
    pub dlq_topic: Option<String>,
}

/// `on_error`: what happens to a row that can never be published as configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Publish it to the dead-letter topic with the reason, and go on.
    #[default]
    Dlq,
    /// Stop the relay without acknowledging it; the operator fixes the row or the config.
    Stop,
}

/// Default for `outbox.max_record_bytes`: Kafka's default `message.max.bytes` (1 MiB).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_048_576;

fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            id_column: default_id_column(),
            key_column: default_key_column(),
            payload_column: default_payload_column(),
            route_by_field: default_route_by_field(),
            topic: default_topic_template(),
            additional_headers: Vec::new(),
            on_error: OnError::default(),
            payload_json: false,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            tables: BTreeMap::new(),
        }
    }
}

/// The outbox mapping of one table: the defaults with that table's overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    pub id_column: Identifier,
    pub key_column: Identifier,
    pub payload_column: Identifier,
    pub route_by_field: Identifier,
    pub topic: String,
    pub additional_headers: Vec<HeaderColumn>,
    pub on_error: OnError,
    pub payload_json: bool,
    pub max_record_bytes: usize,
    /// The table's own dead-letter topic; `None` means `dlq.topic`.
    pub dlq_topic: Option<String>,
}

/// The placeholder in topic templates (defined with the templates, a leaf module).
pub use crate::outbox::topic::ROUTED_BY_VALUE;

impl TableMapping {
    /// Columns the table must have for its rows to be routed.
    pub fn required_columns(&self) -> Vec<&str> {
        let mut columns = vec![
            self.id_column.as_str(),
            self.key_column.as_str(),
            self.payload_column.as_str(),
        ];
        if self.topic.contains(ROUTED_BY_VALUE) {
            columns.push(self.route_by_field.as_str());
        }
        columns.extend(self.additional_headers.iter().map(|h| h.column.as_str()));
        columns
    }
}

impl OutboxConfig {
    /// The mapping for `table`: defaults, then `[outbox.tables."schema.table"]`.
    pub fn mapping_for(&self, table: &TableName) -> TableMapping {
        let o = self
            .tables
            .get(&table.to_string())
            .cloned()
            .unwrap_or_default();
        TableMapping {
            id_column: o.id_column.unwrap_or_else(|| self.id_column.clone()),
            key_column: o.key_column.unwrap_or_else(|| self.key_column.clone()),
            payload_column: o
                .payload_column
                .unwrap_or_else(|| self.payload_column.clone()),
            route_by_field: o
                .route_by_field
                .unwrap_or_else(|| self.route_by_field.clone()),
            topic: o.topic.unwrap_or_else(|| self.topic.clone()),
            additional_headers: o
                .additional_headers
                .unwrap_or_else(|| self.additional_headers.clone()),
            on_error: o.on_error.unwrap_or(self.on_error),
            payload_json: o.payload_json.unwrap_or(self.payload_json),
            max_record_bytes: o.max_record_bytes.unwrap_or(self.max_record_bytes),
            dlq_topic: o.dlq_topic,
        }
    }
}

fn default_id_column() -> Identifier {
    Identifier(DEFAULT_ID_COLUMN.into())
}
fn default_key_column() -> Identifier {
    Identifier(DEFAULT_KEY_COLUMN.into())
}
fn default_payload_column() -> Identifier {
    Identifier(DEFAULT_PAYLOAD_COLUMN.into())
}
fn default_route_by_field() -> Identifier {
    Identifier(DEFAULT_ROUTE_BY_FIELD.into())
}
fn default_topic_template() -> String {
    DEFAULT_TOPIC_TEMPLATE.into()
}
