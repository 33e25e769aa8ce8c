//! The admin connection (tokio-postgres): creating the publication and slot, and the
//! catalog queries behind `check`.
//!
//! Everything here runs over an ordinary SQL connection. Catalog lookups take names as
//! bind parameters; DDL, which cannot, gets names that the config validated and
//! [`crate::ident`] quoted.

use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use crate::config::Config;
use crate::ident::{quote_identifier, TableName};

/// Failures of admin SQL.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot connect to PostgreSQL for setup: {}", describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("{action} failed: {}", describe(.source))]
    Sql {
        action: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Missing(String),
    #[error("TLS to PostgreSQL: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl AdminError {
    /// Connection problems pass; a missing object or a refused statement needs an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::Connect(e) => e.as_db_error().is_none(),
            AdminError::Sql { source, .. } => source.as_db_error().is_none(),
            AdminError::Missing(_) | AdminError::Tls(_) => false,
        }
    }

    /// Wraps a failed statement with what it was doing.
    pub fn sql(action: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> AdminError {
        let action = action.into();
        move |source| AdminError::Sql { action, source }
    }
}

/// tokio-postgres prints a server error as just "db error": add the server's message and
/// SQLSTATE, or the underlying cause, so the operator sees what went wrong.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Opens an admin connection; its driver runs on a spawned task.
pub async fn connect(config: &Config) -> Result<Client, AdminError> {
    let tls = config.tls_settings();
    let pg = config.postgres_config();
    let client = if tls.mode == crate::tls::SslMode::Disable {
        let (client, connection) = pg.connect(NoTls).await.map_err(AdminError::Connect)?;
        tokio::spawn(drive(connection));
        client
    } else {
        let connector =
            tokio_postgres_rustls::MakeRustlsConnect::new((*tls.client_config()?).clone());
        let (client, connection) = pg.connect(connector).await.map_err(AdminError::Connect)?;
        tokio::spawn(drive(connection));
        client
    };
    Ok(client)
}

/// Runs a connection's I/O until it ends.
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        warn!(error = %describe(&e), "admin connection ended");
    }
}

/// Creates the publication (when allowed and missing), then the slot (likewise).
///
/// The publication must exist before the slot: pgoutput reads publications through the
/// slot's historic snapshot, so a slot older than its publication fails to decode.
pub async fn prepare(client: &Client, config: &Config) -> Result<(), AdminError> {
    let source = &config.source;
    if !publication_exists(client, source.publication.as_str()).await? {
        if !source.create_publication {
            return Err(AdminError::Missing(format!(
                "publication {} does not exist and source.create_publication is false; run: {}",
                source.publication,
                create_publication_sql(source.publication.as_str(), &source.tables)
            )));
        }
        let sql = create_publication_sql(source.publication.as_str(), &source.tables);
        match client.batch_execute(&sql).await {
            Ok(()) => info!(publication = %source.publication, "created publication"),
            // Another replica of this relay, starting at the same moment, created it first.
            Err(e) if created_concurrently(&e) => {}
            Err(e) => return Err(AdminError::sql("creating the publication")(e)),
        }
    }
    if !slot_exists(client, source.slot.as_str()).await? {
        if !source.create_slot {
            return Err(AdminError::Missing(format!(
                "replication slot {} does not exist and source.create_slot is false; run: SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
                source.slot, source.slot
            )));
        }
        let created = client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&source.slot.as_str()],
            )
            .await;
        match created {
            Ok(_) => info!(slot = %source.slot, "created replication slot"),
            Err(e) if created_concurrently(&e) => {}
            Err(e) => return Err(AdminError::sql("creating the replication slot")(e)),
        }
    }
    Ok(())
}

/// Whether a `CREATE` failed only because someone created the object in between.
fn created_concurrently(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        error.code(),
        Some(&SqlState::DUPLICATE_OBJECT) | Some(&SqlState::UNIQUE_VIOLATION)
    )
}

/// The publication's options: inserts only (the outbox pattern's deletes and the nightly
/// cleanup never reach the relay), and a partitioned outbox published under its parent's
/// name (so its `[outbox.tables]` overrides apply). See [`crate::source::publication`].
pub const PUBLICATION_OPTIONS: &str = "publish = 'insert', publish_via_partition_root = true";

/// `CREATE PUBLICATION "p" FOR TABLE "s"."t", ... WITH (publish = 'insert', ...)`
pub fn create_publication_sql(publication: &str, tables: &[TableName]) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH ({PUBLICATION_OPTIONS})",
        quote_identifier(publication),
        quoted_tables(tables)
    )
}

/// `ALTER PUBLICATION "p" SET (publish = 'insert', publish_via_partition_root = true)`
pub fn set_publication_options_sql(publication: &str) -> String {
    format!(
        "ALTER PUBLICATION {} SET ({PUBLICATION_OPTIONS})",
        quote_identifier(publication)
    )
}

/// `ALTER PUBLICATION "p" DROP TABLE ...`
pub fn drop_publication_tables_sql(publication: &str, tables: &[TableName]) -> String {
    format!(
        "ALTER PUBLICATION {} DROP TABLE {}",
        quote_identifier(publication),
        quoted_tables(tables)
    )
}

/// `ALTER PUBLICATION "p" ADD TABLE ...`
pub fn add_publication_tables_sql(publication: &str, tables: &[TableName]) -> String {
    format!(
        "ALTER PUBLICATION {} ADD TABLE {}",
        quote_identifier(publication),
        quoted_tables(tables)
    )
}

/// `DROP PUBLICATION "p"`
pub fn drop_publication_sql(publication: &str) -> String {
    format!("DROP PUBLICATION {}", quote_identifier(publication))
}

/// The publication's options and the tables it publishes, one row per table (one row
/// with NULL table columns when it publishes none, no row when it does not exist):
/// `puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot, schemaname,
/// tablename`. `quoted_publication` is a [`crate::ident::quote_literal`]ed name: the
/// query also runs as a simple query on the replication connection, which takes no
/// parameters. Parsed by [`crate::source::publication::PublicationFound::from_rows`].
pub fn publication_rows_sql(quoted_publication: &str) -> String {
    format!(
        "SELECT p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot, \
                t.schemaname::text, t.tablename::text \
         FROM pg_publication p LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname \
         WHERE p.pubname = {quoted_publication}"
    )
}

/// `ALTER PUBLICATION "p" SET TABLE ...`: makes an existing publication match the config.
pub fn alter_publication_sql(publication: &str, tables: &[TableName]) -> String {
    format!(
        "ALTER PUBLICATION {} SET TABLE {}",
        quote_identifier(publication),
        quoted_tables(tables)
    )
}

fn quoted_tables(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn publication_exists(client: &Client, name: &str) -> Result<bool, AdminError> {
    let row = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(AdminError::sql("looking up the publication"))?;
    Ok(row.is_some())
}

pub async fn slot_exists(client: &Client, name: &str) -> Result<bool, AdminError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(AdminError::sql("looking up the replication slot"))?;
    Ok(row.is_some())
}
