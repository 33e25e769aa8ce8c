//! Slot safety: what the slot must look like before the relay streams from it.
//!
//! Streaming from the wrong slot, or from one whose history was cut, would skip events
//! without any error, and the outbox would look healthy. So every connection first reads
//! the slot's row from `pg_replication_slots` and stops the relay, naming the fix, when:
//!
//! - the slot is gone (dropped): recreating it silently would start at the current WAL
//!   position and skip everything written since the old slot's position;
//! - it was made by another output plugin, or in another database;
//! - PostgreSQL invalidated it (`wal_status = 'lost'`, PostgreSQL 13+): the WAL it needed
//!   was removed (`max_slot_wal_keep_size`).
//!
//! Each of these stops protects data: streaming on would skip events nobody published.
//!
//! A slot found *ahead* of the last position this relay acknowledged is not a stop. In the
//! documented standby setup another replica takes the slot whenever this one loses its
//! connection, publishes, and advances it; this relay cannot tell that apart from
//! `pg_replication_slot_advance` or a drop and recreate, and stopping would halt
//! publishing for good in the common case while recovering nothing in the rare one (the
//! rows before the slot's position are beyond reach either way). The relay resumes from the
//! slot, logs a warning naming both positions and counts
//! `outbox_relay_slot_advanced_elsewhere_total`, for an alert where only one relay runs.

use tracing::warn;

use crate::replication::{Lsn, ReplicationError};

/// The columns of the slot's `pg_replication_slots` row the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRow {
    pub plugin: Option<String>,
    pub in_this_database: bool,
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`; `None` before PostgreSQL 13.
    pub wal_status: Option<String>,
}

/// The query for [`SlotRow`]; `to_jsonb` reads `wal_status` without failing on servers
/// older than PostgreSQL 13, which lack the column.
pub fn slot_row_sql(quoted_slot: &str) -> String {
    format!(
        "SELECT plugin, database = current_database(), confirmed_flush_lsn, to_jsonb(s)->>'wal_status' \
         FROM pg_replication_slots s WHERE slot_name = {quoted_slot}"
    )
}

/// Where a usable slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPosition {
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed: Lsn,
    /// The last position this relay acknowledged, when the slot moved past it since.
    pub advanced_from: Option<Lsn>,
}

/// The slot's position, or why the slot must not be used.
///
/// `believed` is the last position this relay acknowledged on an earlier connection, when
/// it knows one and did not stand by since (after a standby wait it is `None`: the other
/// replica's progress is expected to be ahead).
pub fn check(
    slot: &str,
    row: Option<SlotRow>,
    believed: Option<Lsn>,
) -> Result<SlotPosition, ReplicationError> {
    let unusable = |message: String| Err(ReplicationError::SlotUnusable(message));
    let Some(row) = row else {
        return unusable(format!(
            "replication slot {slot:?} does not exist (dropped, or never created); the relay does not recreate it silently because events written after its last position would be skipped: reconcile what was written meanwhile, then restart the relay (it creates a missing slot at start when source.create_slot = true)"
        ));
    };
    match row.plugin.as_deref() {
        Some("pgoutput") => {}
        other => {
            return unusable(format!(
                "replication slot {slot:?} uses output plugin {:?}, not pgoutput; drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another source.slot",
                other.unwrap_or("none")
            ))
        }
    }
    if !row.in_this_database {
        return unusable(format!(
            "replication slot {slot:?} belongs to another database; use a slot created in the database of source.url"
        ));
    }
    let confirmed_text = row
        .confirmed_flush
        .map_or_else(|| "unknown".to_owned(), |l| l.to_string());
    match row.wal_status.as_deref() {
        Some("lost") => {
            return unusable(format!(
                "replication slot {slot:?} was invalidated by PostgreSQL (wal_status = lost): the WAL after its confirmed position {confirmed_text} was removed, usually because the slot fell more than max_slot_wal_keep_size behind; events written since then were never published. Reconcile the outbox rows written after that point, drop the slot (SELECT pg_drop_replication_slot('{slot}')), restart the relay to create a new one, and raise max_slot_wal_keep_size or alert on outbox_relay_replication_lag_bytes"
            ))
        }
        Some("unreserved") => warn!(
            slot,
            "slot is about to be invalidated (wal_status = unreserved): it is more than max_slot_wal_keep_size behind"
        ),
        _ => {}
    }
    let Some(confirmed) = row.confirmed_flush else {
        return unusable(format!(
            "replication slot {slot:?} has no confirmed position (it was never consistent); drop and recreate it"
        ));
    };
    Ok(SlotPosition {
        confirmed,
        advanced_from: believed.filter(|&b| confirmed > b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(plugin: &str, wal_status: &str, confirmed: u64) -> SlotRow {
        SlotRow {
            plugin: Some(plugin.into()),
            in_this_database: true,
            confirmed_flush: Some(Lsn(confirmed)),
            wal_status: Some(wal_status.into()),
        }
    }

    fn at(confirmed: u64) -> SlotPosition {
        SlotPosition {
            confirmed: Lsn(confirmed),
            advanced_from: None,
        }
    }

    fn message(result: Result<SlotPosition, ReplicationError>) -> String {
        match result {
            Err(ReplicationError::SlotUnusable(m)) => m,
            other => panic!("expected an unusable slot, got {other:?}"),
        }
    }

    #[test]
    fn a_healthy_slot_streams_from_its_confirmed_position() {
        assert_eq!(
            check("s", Some(row("pgoutput", "reserved", 10)), None).unwrap(),
            at(10)
        );
        assert_eq!(
            check("s", Some(row("pgoutput", "extended", 10)), Some(Lsn(10))).unwrap(),
            at(10)
        );
        assert_eq!(
            check("s", Some(row("pgoutput", "unreserved", 10)), Some(Lsn(20))).unwrap(),
            at(10),
            "behind our belief is fine: a status update may not have reached the server"
        );
    }

    #[test]
    fn each_unsafe_slot_stops_with_its_fix() {
        assert!(message(check("s", None, None)).contains("does not recreate it silently"));
        assert!(
            message(check("s", Some(row("test_decoding", "reserved", 1)), None))
                .contains("test_decoding")
        );
        let lost = message(check("s", Some(row("pgoutput", "lost", 1)), None));
        assert!(lost.contains("invalidated") && lost.contains("max_slot_wal_keep_size"));
        let elsewhere = SlotRow {
            in_this_database: false,
            ..row("pgoutput", "reserved", 1)
        };
        assert!(message(check("s", Some(elsewhere), None)).contains("another database"));
        let inconsistent = SlotRow {
            confirmed_flush: None,
            ..row("pgoutput", "reserved", 1)
        };
        assert!(message(check("s", Some(inconsistent), None)).contains("never consistent"));
    }

    #[test]
    fn a_slot_ahead_resumes_from_the_slot() {
        // After a standby wait, or on the first connection: expected.
        assert_eq!(
            check("s", Some(row("pgoutput", "reserved", 30)), None).unwrap(),
            at(30)
        );
        // Another replica held it while this one was away (or someone advanced it): no
        // stop, but the caller learns where this relay had been, to warn.
        assert_eq!(
            check("s", Some(row("pgoutput", "reserved", 30)), Some(Lsn(20))).unwrap(),
            SlotPosition {
                confirmed: Lsn(30),
                advanced_from: Some(Lsn(20)),
            }
        );
    }
}
