//! Exactly-once progress, without I/O: the record each Kafka transaction commits beside
//! its rows, and the rule that decides which transactions the slot sends again were
//! already published.
//!
//! # Why a progress record
//!
//! The slot's confirmed position moves only after Kafka committed (the acknowledgement
//! rule), and a crash can come between the two. PostgreSQL then sends again every
//! transaction past the slot's position, some of which Kafka already holds. The progress
//! record, written in the same Kafka transaction as the rows, says exactly how far Kafka
//! got: the commit end LSN of the last PostgreSQL transaction included. On every start and
//! takeover the relay reads the last committed one and skips what it covers, so
//! `read_committed` consumers see each row once.
//!
//! # Never skip rows of another history
//!
//! A restore or a failover takes the database back: the slot goes back with it and
//! positions below the record are reused by new transactions. Skipping those would lose
//! them without a word, so a record skips nothing when
//!
//! - it names another system identifier (its key already does), or
//! - it is past the server's WAL end at connection (the server never had that history), or
//! - it is on a later timeline than the server's,
//!
//! and, because a restore soon writes past the old position on the same timeline, a
//! transaction is skipped only if it also committed no later than the latest commit time
//! the record covers ([`SkipRule::already_published`]). Rows written after a restore
//! committed after everything the old history published, so they are never skipped. The
//! price is an assumption about clocks: a failover to a server whose clock is behind the
//! old one's could publish a few rows twice (never lose one).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::replication::Lsn;
use crate::source::history::Seen;
use crate::source::TransactionInfo;

/// What the last committed Kafka transaction of a slot included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub slot: String,
    pub system_id: String,
    pub timeline: u32,
    /// Commit end LSN of the last PostgreSQL transaction included.
    pub commit_end: Lsn,
    /// The latest commit time (microseconds since 2000-01-01) of any transaction included
    /// so far on this history.
    pub max_commit_ts_micros: i64,
}

/// The record's wire form (JSON, so that an operator can read the topic).
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    slot: String,
    system_id: String,
    timeline: u32,
    commit_end_lsn: String,
    max_commit_ts_micros: i64,
}

/// A progress record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("progress record is not valid: {0}")]
pub struct ProgressError(String);

/// The record's key: slot and system identifier, so that a rebuilt database never finds
/// the old one's progress, and relays of several slots can share the topic.
pub fn key(slot: &str, system_id: &str) -> String {
    format!("{slot}@{system_id}")
}

impl Progress {
    pub fn key(&self) -> String {
        key(&self.slot, &self.system_id)
    }

    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            slot: self.slot.clone(),
            system_id: self.system_id.clone(),
            timeline: self.timeline,
            commit_end_lsn: self.commit_end.to_string(),
            max_commit_ts_micros: self.max_commit_ts_micros,
        };
        serde_json::to_vec(&wire).expect("a progress record always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Progress, ProgressError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| ProgressError(e.to_string()))?;
        let commit_end = wire
            .commit_end_lsn
            .parse()
            .map_err(|_| ProgressError(format!("commit_end_lsn {:?}", wire.commit_end_lsn)))?;
        Ok(Progress {
            slot: wire.slot,
            system_id: wire.system_id,
            timeline: wire.timeline,
            commit_end,
            max_commit_ts_micros: wire.max_commit_ts_micros,
        })
    }
}

/// Which transactions the slot sends again were already published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkipRule {
    /// Transactions whose commit record starts before this (the end of the last included
    /// one's) were included...
    pub through: Lsn,
    /// ... if they committed no later than this.
    pub max_commit_ts_micros: i64,
}

impl SkipRule {
    /// Whether `transaction` is covered by committed progress: it commits before its
    /// end (commit records do not overlap, so it is that transaction or an earlier one)
    /// and no later than the latest commit time included (see the module docs).
    pub fn already_published(&self, transaction: &TransactionInfo) -> bool {
        transaction.commit_lsn < self.through
            && transaction.commit_ts_micros <= self.max_commit_ts_micros
    }
}

/// Why a progress record found at start skips nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrusted {
    /// Written for another database system.
    OtherSystem { record: String, server: String },
    /// Past the end of the server's WAL: the database went back (a restore, a failover
    /// to a standby that was behind).
    AheadOfServer { record: Lsn, server_wal: Lsn },
    /// On a timeline the server has not reached: the server's history is older.
    LaterTimeline { record: u32, server: u32 },
}

impl fmt::Display for Distrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distrusted::OtherSystem { record, server } => write!(
                f,
                "it was written for database system {record}, and the server is {server}"
            ),
            Distrusted::AheadOfServer { record, server_wal } => write!(
                f,
                "it is at {record}, past the server's WAL end {server_wal}: the database went back (a restore, or a failover to a standby that was behind)"
            ),
            Distrusted::LaterTimeline { record, server } => write!(
                f,
                "it is on timeline {record}, and the server is on the earlier timeline {server}"
            ),
        }
    }
}

/// The skip rule for a relay whose server is `server` (as found at connection) and whose
/// last committed progress is `progress`: `Ok(None)` with no record, `Err` for a record
/// that must skip nothing.
pub fn resume(progress: Option<&Progress>, server: &Seen) -> Result<Option<SkipRule>, Distrusted> {
    let Some(progress) = progress else {
        return Ok(None);
    };
    if progress.system_id != server.system_id {
        return Err(Distrusted::OtherSystem {
            record: progress.system_id.clone(),
            server: server.system_id.clone(),
        });
    }
    if progress.commit_end > server.position {
        return Err(Distrusted::AheadOfServer {
            record: progress.commit_end,
            server_wal: server.position,
        });
    }
    if progress.timeline > server.timeline {
        return Err(Distrusted::LaterTimeline {
            record: progress.timeline,
            server: server.timeline,
        });
    }
    Ok(Some(SkipRule {
        through: progress.commit_end,
        max_commit_ts_micros: progress.max_commit_ts_micros,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(end: u64, ts: i64) -> Progress {
        Progress {
            slot: "s".into(),
            system_id: "7".into(),
            timeline: 1,
            commit_end: Lsn(end),
            max_commit_ts_micros: ts,
        }
    }

    fn server(wal: u64) -> Seen {
        Seen {
            system_id: "7".into(),
            timeline: 1,
            position: Lsn(wal),
        }
    }

    fn txn(commit_lsn: u64, ts: i64) -> TransactionInfo {
        TransactionInfo {
            xid: 1,
            commit_lsn: Lsn(commit_lsn),
            commit_ts_micros: ts,
        }
    }

    #[test]
    fn records_round_trip() {
        let p = progress(0x1_0000_0042, 99);
        assert_eq!(Progress::decode(&p.encode()), Ok(p.clone()));
        assert_eq!(p.key(), "s@7");
        assert!(Progress::decode(b"{\"slot\":1}").is_err());
    }

    #[test]
    fn transactions_before_the_end_and_not_later_are_skipped() {
        let rule = resume(Some(&progress(1_000, 500)), &server(2_000))
            .unwrap()
            .unwrap();
        assert!(rule.already_published(&txn(900, 400)));
        // The last included transaction's own commit record starts before its end.
        assert!(rule.already_published(&txn(960, 500)));
        assert!(
            !rule.already_published(&txn(1_000, 400)),
            "at or past the end"
        );
        assert!(!rule.already_published(&txn(1_200, 600)));
    }

    #[test]
    fn rows_written_after_a_restore_are_never_skipped() {
        // Same system and timeline, WAL already written past the old position again: the
        // new transactions committed after everything the record covers.
        let rule = resume(Some(&progress(1_000, 500)), &server(5_000))
            .unwrap()
            .unwrap();
        assert!(!rule.already_published(&txn(900, 501)));
        assert!(!rule.already_published(&txn(10, 10_000)));
    }

    #[test]
    fn a_record_of_another_history_skips_nothing() {
        assert_eq!(resume(None, &server(1)), Ok(None));
        let ahead = resume(Some(&progress(3_000, 1)), &server(2_000)).unwrap_err();
        assert!(matches!(ahead, Distrusted::AheadOfServer { .. }));
        assert!(ahead.to_string().contains("restore"), "{ahead}");
        let mut other = progress(1, 1);
        other.system_id = "8".into();
        assert!(matches!(
            resume(Some(&other), &server(2_000)),
            Err(Distrusted::OtherSystem { .. })
        ));
        let mut later = progress(1, 1);
        later.timeline = 2;
        assert!(matches!(
            resume(Some(&later), &server(2_000)),
            Err(Distrusted::LaterTimeline { .. })
        ));
        // A promoted standby (later timeline on the server) may still use it.
        let mut promoted = server(2_000);
        promoted.timeline = 2;
        assert!(resume(Some(&progress(1_000, 1)), &promoted)
            .unwrap()
            .is_some());
    }
}
