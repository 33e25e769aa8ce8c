//! `outbox-relay check`: every prerequisite on the database, one line each, with the fix.
//!
//! Operators run this before the first start (and when the relay refuses to start). Each
//! failing line says what to change, in the words of a DBA's runbook, so that nobody has
//! to read the relay's source to find out why logical replication won't start.

use std::collections::BTreeSet;
use std::fmt;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::admin_sql::{self, AdminError};
use crate::config::Config;
use crate::ident::{quote_literal, TableName};
use crate::source::publication::PublicationFound;

/// The outcome of one prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub passed: bool,
    /// Passed, but with a risk the operator should know about (printed as `warn`).
    pub warning: bool,
    /// What was checked, e.g. `wal_level=logical`.
    pub name: String,
    /// What was found.
    pub found: String,
    /// How to fix it, when it failed.
    pub fix: Option<String>,
}

impl CheckLine {
    fn pass(name: impl Into<String>, found: impl Into<String>) -> Self {
        CheckLine {
            passed: true,
            warning: false,
            name: name.into(),
            found: found.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckLine {
            passed: true,
            warning: true,
            name: name.into(),
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckLine {
            passed: false,
            warning: false,
            name: name.into(),
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match (self.passed, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "warn",
            (true, false) => "ok  ",
        };
        write!(f, "{mark} {}: {}", self.name, self.found)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check. A connection failure is itself one failing line.
pub async fn run(config: &Config) -> Vec<CheckLine> {
    let client = match admin_sql::connect(config).await {
        Ok(client) => client,
        Err(e) => {
            return vec![CheckLine::fail(
                "connect to source.url",
                e.to_string(),
                "check host, port, database, user and ${PGPASSWORD}, and that pg_hba.conf allows this client",
            )]
        }
    };
    match checks(&client, config).await {
        Ok(lines) => lines,
        Err(e) => vec![CheckLine::fail(
            "read the catalogs",
            e.to_string(),
            "grant the relay's role access to pg_catalog (any normal role has it)",
        )],
    }
}

async fn checks(client: &Client, config: &Config) -> Result<Vec<CheckLine>, AdminError> {
    let mut lines = vec![
        wal_level(client).await?,
        replication_slots(client, config).await?,
        wal_senders(client).await?,
        role(client).await?,
    ];
    for table in &config.source.tables {
        let mapping = config.outbox.mapping_for(table);
        lines.push(table_columns(client, table, &mapping.required_columns()).await?);
    }
    lines.push(publication(client, config).await?);
    lines.push(slot(client, config).await?);
    if let Some(kafka) = &config.kafka {
        lines.push(durability(kafka).await);
    }
    Ok(lines)
}

/// Whether `acks=all` is durable on the topics the relay creates (a warning, never a
/// failure: a single-broker development cluster is legitimate).
async fn durability(kafka: &crate::config::KafkaConfig) -> CheckLine {
    use crate::kafka::durability;
    const NAME: &str = "kafka acks=all durable";
    match durability::inspect(kafka).await {
        Ok(found) => {
            let figures = format!(
                "{} broker(s), replication factor {}, min.insync.replicas {}",
                found.brokers, found.replication_factor, found.min_insync_replicas
            );
            match durability::warning(&found) {
                Some(fix) => CheckLine::warn(NAME, figures, fix),
                None => CheckLine::pass(NAME, figures),
            }
        }
        Err(e) => CheckLine::warn(
            NAME,
            format!("not checked: {e}"),
            "make kafka.bootstrap_servers reachable from here to check it",
        ),
    }
}

async fn query_one(
    client: &Client,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, AdminError> {
    client
        .query_one(sql, params)
        .await
        .map_err(AdminError::sql(format!("checking {what}")))
}

async fn wal_level(client: &Client) -> Result<CheckLine, AdminError> {
    let row = query_one(
        client,
        "wal_level",
        "SELECT current_setting('wal_level')",
        &[],
    )
    .await?;
    let level: String = row.get(0);
    Ok(if level == "logical" {
        CheckLine::pass("wal_level=logical", "logical")
    } else {
        CheckLine::fail(
            "wal_level=logical",
            format!("wal_level is {level}"),
            "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
        )
    })
}

async fn replication_slots(client: &Client, config: &Config) -> Result<CheckLine, AdminError> {
    let row = query_one(
        client,
        "replication slots",
        "SELECT current_setting('max_replication_slots')::int, \
                (SELECT count(*)::int FROM pg_replication_slots), \
                EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        &[&config.source.slot.as_str()],
    )
    .await?;
    let (max, used, ours): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
    let found = format!("{used} of max_replication_slots={max} in use");
    Ok(if ours || used < max {
        CheckLine::pass("free replication slot", found)
    } else {
        CheckLine::fail(
            "free replication slot",
            found,
            "raise max_replication_slots in postgresql.conf and restart, or drop an unused slot with pg_drop_replication_slot",
        )
    })
}

async fn wal_senders(client: &Client) -> Result<CheckLine, AdminError> {
    let row = query_one(
        client,
        "WAL senders",
        "SELECT current_setting('max_wal_senders')::int, \
                (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'walsender')",
        &[],
    )
    .await?;
    let (max, used): (i32, i32) = (row.get(0), row.get(1));
    let found = format!("{used} of max_wal_senders={max} in use");
    Ok(if used < max {
        CheckLine::pass("free WAL sender", found)
    } else {
        CheckLine::fail(
            "free WAL sender",
            found,
            "raise max_wal_senders in postgresql.conf and restart PostgreSQL",
        )
    })
}

async fn role(client: &Client) -> Result<CheckLine, AdminError> {
    let row = query_one(
        client,
        "the role",
        "SELECT current_user::text, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
        &[],
    )
    .await?;
    let (name, replication, superuser): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    Ok(if replication || superuser {
        let how = if superuser {
            "superuser"
        } else {
            "REPLICATION"
        };
        CheckLine::pass("role may replicate", format!("role {name} has {how}"))
    } else {
        CheckLine::fail(
            "role may replicate",
            format!("role {name} has neither REPLICATION nor superuser"),
            format!(
                "ALTER ROLE {} WITH REPLICATION",
                crate::ident::quote_identifier(&name)
            ),
        )
    })
}

async fn table_columns(
    client: &Client,
    table: &TableName,
    required: &[&str],
) -> Result<CheckLine, AdminError> {
    let name = format!("table {table}");
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(AdminError::sql(format!("checking {name}")))?;
    if rows.is_empty() {
        return Ok(CheckLine::fail(
            name,
            "does not exist in this database",
            "create it (see migrations/) or fix source.tables",
        ));
    }
    let present: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|c| !present.contains(*c))
        .collect();
    Ok(if missing.is_empty() {
        CheckLine::pass(name, format!("has columns {}", required.join(", ")))
    } else {
        CheckLine::fail(
            name,
            format!("lacks columns {}", missing.join(", ")),
            "add the columns, or map the outbox columns in [outbox] to the ones the table has",
        )
    })
}

/// The publication, judged as the relay judges it on every replication connection
/// ([`crate::source::publication::check`]).
async fn publication(client: &Client, config: &Config) -> Result<CheckLine, AdminError> {
    let source = &config.source;
    let name = format!("publication {}", source.publication);
    let pubname = source.publication.as_str();
    let create = admin_sql::create_publication_sql(pubname, &source.tables);
    let rows: Vec<Vec<Option<String>>> = client
        .simple_query(&admin_sql::publication_rows_sql(&quote_literal(pubname)))
        .await
        .map_err(AdminError::sql("checking the publication"))?
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let found = PublicationFound::from_rows(&rows).map_err(AdminError::Missing)?;
    if found.is_none() && source.create_publication {
        return Ok(CheckLine::pass(
            name,
            format!("missing; the relay creates it at start (source.create_publication): {create}"),
        ));
    }
    Ok(
        match crate::source::publication::check(pubname, &source.tables, found.as_ref()) {
            Ok(warnings) if warnings.is_empty() => CheckLine::pass(
                name,
                format!(
                    "covers exactly {}, inserts only, via the partition root",
                    list_tables(&source.tables)
                ),
            ),
            Ok(warnings) => CheckLine::pass(
                name,
                format!(
                    "covers exactly {}; warning: {}",
                    list_tables(&source.tables),
                    warnings
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; warning: ")
                ),
            ),
            Err(e) => CheckLine::fail(name, e.found(), e.fix()),
        },
    )
}

fn list_tables(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn slot(client: &Client, config: &Config) -> Result<CheckLine, AdminError> {
    let source = &config.source;
    let name = format!("replication slot {}", source.slot);
    let row = client
        .query_opt(
            "SELECT plugin::text, database = current_database(), coalesce(wal_status, 'unknown') \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&source.slot.as_str()],
        )
        .await
        .map_err(AdminError::sql("checking the replication slot"))?;
    let recreate = format!(
        "SELECT pg_drop_replication_slot('{0}'); SELECT pg_create_logical_replication_slot('{0}', 'pgoutput')",
        source.slot
    );
    Ok(match row {
        None if source.create_slot => CheckLine::pass(
            name,
            "missing; the relay creates it at start (source.create_slot)",
        ),
        None => CheckLine::fail(
            name,
            "does not exist",
            format!(
                "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
                source.slot
            ),
        ),
        Some(row) => {
            let (plugin, same_db, wal_status): (Option<String>, Option<bool>, String) =
                (row.get(0), row.get(1), row.get(2));
            if plugin.as_deref() != Some("pgoutput") {
                CheckLine::fail(
                    name,
                    format!("uses plugin {}", plugin.unwrap_or_default()),
                    recreate,
                )
            } else if same_db != Some(true) {
                CheckLine::fail(
                    name,
                    "belongs to another database",
                    "use a slot of the database in source.url, or choose another source.slot",
                )
            } else if wal_status == "lost" {
                CheckLine::fail(
                    name,
                    "is invalidated (wal_status = lost): required WAL was removed",
                    format!("events may have been missed; {recreate}, then reconcile the outbox"),
                )
            } else {
                CheckLine::pass(name, format!("pgoutput, wal_status {wal_status}"))
            }
        }
    })
}
