//! The relay's one TOML file: shape, defaults, `${ENV}` interpolation and validation.
//!
//! Loading goes text → TOML table → `${ENV}` expanded in every string (see [`interpolate`])
//! → typed [`Config`] → [`Config::validate`]. Every failure becomes one [`ConfigError`]
//! line that names the file, the key (`source.slot`) and the constraint, because the
//! person reading it is an operator at a terminal, not a developer with a debugger.
//!
//! Names that reach SQL are newtypes that validate while deserializing, so an invalid
//! slot or table name is reported with its exact key path.

mod delivery;
pub mod interpolate;
mod outbox;

pub use delivery::{
    default_transactional_id, Delivery, DEFAULT_PROGRESS_TOPIC, DEFAULT_TRANSACTION_MAX_EVENTS,
    DEFAULT_TRANSACTION_MAX_MS, DEFAULT_TRANSACTION_TIMEOUT_MS,
};

pub use outbox::{
    HeaderColumn, OnError, OutboxConfig, OutboxOverride, TableMapping, DEFAULT_ID_COLUMN,
    DEFAULT_KEY_COLUMN, DEFAULT_PAYLOAD_COLUMN, DEFAULT_ROUTE_BY_FIELD, DEFAULT_TOPIC_TEMPLATE,
    ROUTED_BY_VALUE,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::ident::{self, NameError, TableName};

/// Default for `source.status_interval_ms`: how often a standby status update is sent even
/// when nothing changed. Well under PostgreSQL's default `wal_sender_timeout` (60 s).
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;
/// Default for `source.max_batch_events`: events handed downstream in one channel message.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1_024;
/// Default for `source.channel_capacity_batches`: batches buffered between source and sink.
pub const DEFAULT_CHANNEL_CAPACITY_BATCHES: usize = 16;
/// Default for `source.connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default for `source.wal_receiver_timeout_ms`: PostgreSQL's own `wal_receiver_timeout`.
pub const DEFAULT_WAL_RECEIVER_TIMEOUT_MS: u64 = 60_000;
/// Default for `source.shutdown_timeout_ms`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Default for `kafka.unknown_topic_wait_ms`.
pub const DEFAULT_UNKNOWN_TOPIC_WAIT_MS: u64 = 30_000;
/// Default for `kafka.topic_partitions` of created topics: the broker's default.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = -1;
/// Default for `kafka.topic_replication_factor` of created topics: the broker's default.
pub const DEFAULT_TOPIC_REPLICATION_FACTOR: i32 = -1;
/// A whole relay configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Required by `run`; `check` does not need it.
    pub kafka: Option<KafkaConfig>,
    #[serde(default)]
    pub dlq: DlqConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`: how the relay logs. `RUST_LOG` and `OUTBOX_RELAY_LOG_FORMAT` override these.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one object per line, for containers).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,outbox_relay=debug`.
    pub level: Option<String>,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[admin]`: the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `address:port`. The default port is the relay's own, clear of postgres_exporter's
    /// 9187 and kafka_exporter's 9308, which often share its pod.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

/// Default for `admin.listen`.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9488";

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}

/// `[dlq]`: where rows that can never be published go, with the reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    #[serde(default = "default_dlq_topic")]
    pub topic: String,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig {
            topic: default_dlq_topic(),
        }
    }
}

/// Default for `dlq.topic`.
pub const DEFAULT_DLQ_TOPIC: &str = "outbox.dlq";

fn default_dlq_topic() -> String {
    DEFAULT_DLQ_TOPIC.into()
}

/// `[source]`: where the outbox rows come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq-style URL or key=value string; put the password in as `${PGPASSWORD}`.
    pub url: String,
    pub slot: SlotName,
    pub publication: Identifier,
    /// The outbox tables, `schema.table`. The publication must cover exactly these.
    pub tables: Vec<TableName>,
    /// Create the slot (pgoutput) at start-up when it does not exist.
    #[serde(default = "yes")]
    pub create_slot: bool,
    /// Create the publication for `tables` at start-up when it does not exist.
    #[serde(default = "yes")]
    pub create_publication: bool,
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    #[serde(default = "default_channel_capacity_batches")]
    pub channel_capacity_batches: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// On SIGTERM, how long to wait for in-flight deliveries before exiting.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// With nothing from the server for this long, the replication connection is presumed
    /// dead and reopened (a reply is requested at half of it). Also bounds the connection
    /// handshake, so a stalled network cannot hang the relay.
    #[serde(default = "default_wal_receiver_timeout_ms")]
    pub wal_receiver_timeout_ms: u64,
    /// What to do when `url` reaches another database system than before (another
    /// system identifier): stop with the fix, or follow it from its slot.
    #[serde(default)]
    pub on_new_system: OnNewSystem,
}

/// `source.on_new_system`: a relay must not silently follow a different database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNewSystem {
    /// Exit 1 naming both system identifiers and the fix.
    #[default]
    Stop,
    /// Log an error, count a history rewind and stream from the new system's slot.
    Follow,
}

/// `[kafka]`: where events go and how the producer behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Create missing topics through the admin API (many brokers do not auto-create).
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions of created topics; -1 takes the broker's default.
    #[serde(default = "default_topic_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of created topics; -1 takes the broker's default.
    #[serde(default = "default_topic_replication_factor")]
    pub topic_replication_factor: i32,
    /// Topic configs of created topics (e.g. `"min.insync.replicas" = "2"`), as
    /// `kafka-topics.sh --config` takes them; the broker validates them.
    #[serde(default)]
    pub topic_config: BTreeMap<String, String>,
    /// With `create_topics = false`: how long a row waits for its missing topic to appear
    /// before it is dead-lettered as `unknown_topic`.
    #[serde(default = "default_unknown_topic_wait_ms")]
    pub unknown_topic_wait_ms: u64,
    /// `at_least_once` (default) or `exactly_once` (Kafka transactions; see
    /// [`delivery`]).
    #[serde(default)]
    pub delivery: Delivery,
    /// The producer's `transactional.id` with `exactly_once`; by default one per database
    /// and slot ([`default_transactional_id`]), shared by the replicas of the slot.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// With `exactly_once`: commit at the first PostgreSQL commit after this many events.
    #[serde(default = "delivery::default_transaction_max_events")]
    pub transaction_max_events: usize,
    /// With `exactly_once`: commit at the first PostgreSQL commit after this long open.
    #[serde(default = "delivery::default_transaction_max_ms")]
    pub transaction_max_ms: u64,
    /// With `exactly_once`: the compacted topic of the relay's committed progress.
    #[serde(default = "delivery::default_progress_topic")]
    pub progress_topic: String,
    /// librdkafka producer properties, passed through; those that would weaken the
    /// relay's guarantees are rejected (see [`crate::kafka::properties`]).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Whether rows are written in Kafka transactions.
    pub fn exactly_once(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce
    }
}

fn yes() -> bool {
    true
}
fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}
fn default_max_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}
fn default_channel_capacity_batches() -> usize {
    DEFAULT_CHANNEL_CAPACITY_BATCHES
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_shutdown_timeout_ms() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_MS
}
fn default_wal_receiver_timeout_ms() -> u64 {
    DEFAULT_WAL_RECEIVER_TIMEOUT_MS
}
fn default_unknown_topic_wait_ms() -> u64 {
    DEFAULT_UNKNOWN_TOPIC_WAIT_MS
}
fn default_topic_partitions() -> i32 {
    DEFAULT_TOPIC_PARTITIONS
}
fn default_topic_replication_factor() -> i32 {
    DEFAULT_TOPIC_REPLICATION_FACTOR
}
/// A replication slot name, validated by [`ident::validate_slot_name`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SlotName(String);

/// A SQL identifier, validated by [`ident::validate_identifier`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Identifier(String);

impl SlotName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Identifier {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SlotName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        ident::validate_slot_name(&value)
            .map(|()| SlotName(value.clone()))
            .map_err(|e| format!("slot name {value:?} {e}"))
    }
}

impl TryFrom<String> for Identifier {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        ident::validate_identifier(&value)
            .map(|()| Identifier(value.clone()))
            .map_err(|e| format!("name {value:?} {e}"))
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|e: NameError| serde::de::Error::custom(format!("table {text:?} {e}")))
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A config that cannot be used, with the file, the key and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: TOML syntax error at line {line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: {key}: {source}")]
    Unset {
        file: PathBuf,
        key: String,
        #[source]
        source: interpolate::UnsetVariable,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads, interpolates, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `file`, with environment lookups through `env`.
    pub fn from_toml(
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str::<toml::Table>(text)
            .map(toml::Value::Table)
            .map_err(|e| ConfigError::Syntax {
                file: file.to_owned(),
                line: e
                    .span()
                    .map_or(0, |span| text[..span.start].lines().count().max(1)),
                message: e.message().trim().replace('\n', "; "),
            })?;
        interpolate_strings(&mut value, &mut String::new(), &env).map_err(|(key, source)| {
            ConfigError::Unset {
                file: file.to_owned(),
                key,
                source,
            }
        })?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let (key, message) =
                describe_serde_error(&e.path().to_string(), &e.inner().to_string());
            ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            }
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                key: key.to_owned(),
                message,
            })?;
        Ok(config)
    }

    /// Checks the constraints serde cannot express. Returns the key and the constraint.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let source = &self.source;
        let url_without_tls = match crate::tls::split_url(&source.url) {
            Ok((rest, tls)) => {
                if matches!(
                    tls.mode,
                    crate::tls::SslMode::VerifyCa | crate::tls::SslMode::VerifyFull
                ) && tls.root_cert.is_none()
                {
                    return Err((
                        "source.url",
                        "sslmode=verify-ca/verify-full needs sslrootcert=<CA file> in the URL"
                            .into(),
                    ));
                }
                rest
            }
            Err(e) => return Err(("source.url", e.to_string())),
        };
        if let Err(e) = tokio_postgres::Config::from_str(&url_without_tls) {
            return Err((
                "source.url",
                format!("not a valid PostgreSQL connection URL ({e}); expected postgres://user:${{PGPASSWORD}}@host:5432/dbname"),
            ));
        }
        if source.tables.is_empty() {
            return Err((
                "source.tables",
                "must list at least one outbox table, e.g. [\"public.outbox\"]".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = source.tables.iter().find(|t| !seen.insert(*t)) {
            return Err(("source.tables", format!("lists {dup} twice")));
        }
        if !(10..=60_000).contains(&source.status_interval_ms) {
            return Err((
                "source.status_interval_ms",
                "must be between 10 and 60000; keep it well under the server's wal_sender_timeout"
                    .into(),
            ));
        }
        if !(1..=65_536).contains(&source.max_batch_events) {
            return Err((
                "source.max_batch_events",
                "must be between 1 and 65536".into(),
            ));
        }
        if !(1..=1_024).contains(&source.channel_capacity_batches) {
            return Err((
                "source.channel_capacity_batches",
                "must be between 1 and 1024".into(),
            ));
        }
        if source.connect_timeout_ms == 0 {
            return Err(("source.connect_timeout_ms", "must be greater than 0".into()));
        }
        if source.wal_receiver_timeout_ms < 2 * source.status_interval_ms.max(500) {
            return Err((
                "source.wal_receiver_timeout_ms",
                "must be at least twice source.status_interval_ms and at least 1000".into(),
            ));
        }
        if self.outbox.topic.is_empty() {
            return Err(("outbox.topic", "must not be empty".into()));
        }
        for (name, table) in &self.outbox.tables {
            let known = name
                .parse::<TableName>()
                .is_ok_and(|t| source.tables.contains(&t));
            if !known {
                return Err((
                    "outbox.tables",
                    format!("overrides {name:?}, which is not listed in source.tables"),
                ));
            }
            if table.topic.as_deref() == Some("") {
                return Err((
                    "outbox.tables.topic",
                    format!("of {name} must not be empty"),
                ));
            }
        }
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "admin.listen",
                format!(
                    "{:?} is not address:port, e.g. 0.0.0.0:9488",
                    self.admin.listen
                ),
            ));
        }
        if let Some(problem) = crate::outbox::topic::topic_name_problem(&self.dlq.topic) {
            return Err(("dlq.topic", format!("{:?} {problem}", self.dlq.topic)));
        }
        for (name, table) in &self.outbox.tables {
            if let Some(problem) = table
                .dlq_topic
                .as_deref()
                .and_then(crate::outbox::topic::topic_name_problem)
            {
                return Err(("outbox.tables.dlq_topic", format!("of {name} {problem}")));
            }
        }
        if self.outbox.max_record_bytes < 1_024 {
            return Err(("outbox.max_record_bytes", "must be at least 1024".into()));
        }
        if let Some(kafka) = &self.kafka {
            if kafka.bootstrap_servers.trim().is_empty() {
                return Err((
                    "kafka.bootstrap_servers",
                    "must list at least one host:port".into(),
                ));
            }
            if kafka.topic_partitions == 0 || kafka.topic_partitions < -1 {
                return Err((
                    "kafka.topic_partitions",
                    "must be positive, or -1 for the broker's default".into(),
                ));
            }
            if kafka.topic_replication_factor == 0 || kafka.topic_replication_factor < -1 {
                return Err((
                    "kafka.topic_replication_factor",
                    "must be positive, or -1 for the broker's default".into(),
                ));
            }
            if let Err(e) = crate::kafka::properties::check_user_properties(&kafka.properties) {
                return Err(("kafka.properties", e.to_string()));
            }
            delivery::validate(kafka)?;
        }
        Ok(())
    }

    /// The TLS settings of `source.url` (sslmode, sslrootcert, sslcert, sslkey).
    pub fn tls_settings(&self) -> crate::tls::TlsSettings {
        crate::tls::split_url(&self.source.url)
            .map(|(_, tls)| tls)
            .expect("source.url is validated when the config is loaded")
    }

    /// The producer's `transactional.id` with `kafka.delivery = "exactly_once"`.
    pub fn transactional_id(&self) -> Option<String> {
        let kafka = self.kafka.as_ref().filter(|k| k.exactly_once())?;
        Some(kafka.transactional_id.clone().unwrap_or_else(|| {
            let config = self.postgres_config();
            let database = config
                .get_dbname()
                .or(config.get_user())
                .unwrap_or("postgres");
            default_transactional_id(database, self.source.slot.as_str())
        }))
    }

    /// The parsed `source.url` without its TLS part (validated by [`Config::validate`]).
    pub fn postgres_config(&self) -> tokio_postgres::Config {
        let (url, tls) = crate::tls::split_url(&self.source.url)
            .expect("source.url is validated when the config is loaded");
        let mut config = tokio_postgres::Config::from_str(&url)
            .expect("source.url is validated when the config is loaded");
        config.ssl_mode(tls.tokio_postgres_mode());
        config.connect_timeout(std::time::Duration::from_millis(
            self.source.connect_timeout_ms,
        ));
        if config.get_application_name().is_none() {
            config.application_name("outbox-relay");
        }
        config
    }
}

/// Expands `${ENV}` in every string of `value`; on failure, the dotted key and the error.
fn interpolate_strings(
    value: &mut toml::Value,
    key: &mut String,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), (String, interpolate::UnsetVariable)> {
    match value {
        toml::Value::String(text) => {
            *text = interpolate::interpolate(text, env).map_err(|e| (key.clone(), e))?;
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{index}]"));
                interpolate_strings(item, key, env)?;
                key.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                let len = key.len();
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                interpolate_strings(item, key, env)?;
                key.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Turns serde's "unknown field `x`" / "missing field `x`" at `path` into the full key.
fn describe_serde_error(path: &str, message: &str) -> (String, String) {
    // serde_path_to_error sometimes already ends the path with the field; toml appends
    // "in `table`" on a second line. Keep one line and name the key once.
    let message = message.lines().next().unwrap_or_default();
    let join = |field: &str| {
        if path == "." || path.is_empty() {
            field.to_owned()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    let field_in = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(field) = field_in("unknown field `") {
        let expected = message.split_once(", expected").map_or("", |(_, e)| e);
        return (
            join(&field),
            format!("unknown key; remove it or fix its spelling (expected{expected})"),
        );
    }
    if let Some(field) = field_in("missing field `") {
        return (join(&field), "required key is missing; add it".to_owned());
    }
    (path.to_owned(), message.to_owned())
}

#[cfg(test)]
mod tests;
