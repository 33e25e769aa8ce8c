//! `outbox-relay status`: the slot and publication as PostgreSQL sees them, for operators.

use serde::Serialize;

use crate::admin_sql::{self, AdminError};
use crate::config::Config;

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub exists: bool,
    /// The walsender holding the slot, if any.
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the server keeps for this slot: current WAL position minus `restart_lsn`.
    pub retained_wal_bytes: Option<i64>,
    /// `lost` means the slot was invalidated and events may have been missed.
    pub wal_status: Option<String>,
    pub publication: String,
    pub publication_tables: Vec<String>,
}

/// Reads the slot's and publication's state.
pub async fn read(config: &Config) -> Result<SlotStatus, AdminError> {
    let client = admin_sql::connect(config).await?;
    let slot = config.source.slot.as_str();
    let row = client
        .query_opt(
            "SELECT active_pid, confirmed_flush_lsn::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(AdminError::sql("reading the replication slot"))?;
    let publication = config.source.publication.as_str();
    let tables = client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1",
            &[&publication],
        )
        .await
        .map_err(AdminError::sql("reading the publication"))?;
    Ok(SlotStatus {
        slot: slot.to_owned(),
        exists: row.is_some(),
        active_pid: row.as_ref().and_then(|r| r.get(0)),
        confirmed_flush_lsn: row.as_ref().and_then(|r| r.get(1)),
        retained_wal_bytes: row.as_ref().and_then(|r| r.get(2)),
        wal_status: row.as_ref().and_then(|r| r.get(3)),
        publication: publication.to_owned(),
        publication_tables: tables.iter().map(|r| r.get(0)).collect(),
    })
}

impl std::fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
        writeln!(
            f,
            "slot: {}{}",
            self.slot,
            if self.exists { "" } else { " (does not exist)" }
        )?;
        writeln!(
            f,
            "active pid: {}",
            or_none(self.active_pid.map(|p| p.to_string()))
        )?;
        writeln!(
            f,
            "confirmed_flush_lsn: {}",
            or_none(self.confirmed_flush_lsn.clone())
        )?;
        writeln!(
            f,
            "retained WAL bytes: {}",
            or_none(self.retained_wal_bytes.map(|b| b.to_string()))
        )?;
        writeln!(f, "wal_status: {}", or_none(self.wal_status.clone()))?;
        write!(
            f,
            "publication {} tables: {}",
            self.publication,
            self.publication_tables.join(", ")
        )
    }
}
