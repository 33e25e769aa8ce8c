//! History checks: is the server still on the history this relay streamed from?
//!
//! A restore from a backup, a point-in-time recovery or a failover to a lagging standby
//! takes the database back in time: its WAL ends below positions the relay has already
//! seen, and the slot (restored with it) sits where it was then. Transactions committed on
//! the new history reuse those positions. A relay that resumed from its own in-memory
//! position would ask PostgreSQL to start past them, and PostgreSQL skips every
//! transaction that commits below the start: lost without a word.
//!
//! So every connection compares what `IDENTIFY_SYSTEM` reports (system identifier,
//! timeline, WAL flush position) with what this relay last saw. A WAL end below the
//! relay's position, or a new timeline, means the history went back: the relay rewinds to
//! the slot's `confirmed_flush_lsn`, never past it, logs it as an error and counts
//! `outbox_relay_history_rewinds_total`. Another system identifier is another database:
//! the relay stops, unless `source.on_new_system = "follow"`.
//!
//! The same record remembers the transaction left open by the last connection, so a
//! transaction that is restarted again and again (longer than the connection survives)
//! shows in `outbox_relay_transaction_restarts_total`.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::replication::{Lsn, SystemIdentity};

/// What this relay last saw of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub system_id: String,
    pub timeline: u32,
    /// The furthest WAL position the server told this relay about (data, keepalives, or
    /// the start it accepted).
    pub position: Lsn,
}

/// How the server's history relates to what this relay saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// First connection, or the same history: streaming resumes where the relay was.
    Same,
    /// The history went back: start at the slot's confirmed position.
    Rewound(Rewind),
    /// Another database system answers at `source.url`.
    OtherSystem { was: String, now: String },
}

/// Why the history is known to have gone back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewind {
    /// The server's WAL ends before a position this relay has seen.
    WalBehind { server_wal: Lsn, ours: Lsn },
    /// The server switched timelines (a standby was promoted, or a point-in-time recovery).
    Timeline { was: u32, now: u32 },
    /// Another system, followed because `source.on_new_system = "follow"`.
    OtherSystem { was: String, now: String },
}

impl Rewind {
    /// What probably happened, for the one error line.
    pub fn probable_cause(&self) -> &'static str {
        match self {
            Rewind::WalBehind { .. } => {
                "the database was probably restored from a backup, or failed over to a standby that was behind"
            }
            Rewind::Timeline { .. } => {
                "the database probably failed over to a promoted standby or went through a point-in-time recovery"
            }
            Rewind::OtherSystem { .. } => {
                "source.url now reaches another database system (a rebuilt or replaced cluster), followed as source.on_new_system = \"follow\" says"
            }
        }
    }
}

/// Compares `identity` with what was `seen`; `flushed` is the relay's own checkpoint.
pub fn check(seen: Option<&Seen>, flushed: Lsn, identity: &SystemIdentity) -> Verdict {
    let ours = seen.map_or(flushed, |s| s.position.max(flushed));
    if let Some(seen) = seen {
        if seen.system_id != identity.system_id {
            return Verdict::OtherSystem {
                was: seen.system_id.clone(),
                now: identity.system_id.clone(),
            };
        }
        if seen.timeline != identity.timeline {
            return Verdict::Rewound(Rewind::Timeline {
                was: seen.timeline,
                now: identity.timeline,
            });
        }
    }
    // A server never sends WAL it has not flushed, so on one history its flush position
    // is at least everything this relay heard of.
    if identity.xlog_position < ours {
        return Verdict::Rewound(Rewind::WalBehind {
            server_wal: identity.xlog_position,
            ours,
        });
    }
    Verdict::Same
}

/// What one relay process remembers across connections (and pipeline restarts).
#[derive(Debug, Default)]
pub struct History {
    pub seen: Option<Seen>,
    /// The server as the current (or last) connection found it: its WAL end then is the
    /// end of its history, which exactly-once progress must not be past (see
    /// [`crate::progress`]).
    pub connected: Option<Seen>,
    /// Commit LSN of the transaction the last connection left unfinished, and how many
    /// connections in a row have left it so.
    unfinished: Option<(Lsn, u64)>,
}

impl History {
    /// A connection streams from `start` on `identity`'s history.
    pub fn streaming(&mut self, identity: &SystemIdentity, start: Lsn) {
        self.seen = Some(Seen {
            system_id: identity.system_id.clone(),
            timeline: identity.timeline,
            position: start,
        });
        self.connected = Some(Seen {
            system_id: identity.system_id.clone(),
            timeline: identity.timeline,
            position: identity.xlog_position,
        });
    }

    /// The server told this relay about `position`.
    pub fn heard(&mut self, position: Lsn) {
        if let Some(seen) = self.seen.as_mut() {
            seen.position = seen.position.max(position);
        }
    }

    /// A connection ended with the transaction committing at `open` unfinished.
    pub fn left_open(&mut self, open: Option<Lsn>) {
        self.unfinished = open.map(|lsn| match self.unfinished {
            Some((same, n)) if same == lsn => (lsn, n),
            _ => (lsn, 0),
        });
    }

    /// A transaction committing at `commit_lsn` begins. Returns how many times it has
    /// been restarted, when it is the one the last connection left unfinished.
    pub fn began(&mut self, commit_lsn: Lsn) -> Option<u64> {
        match self.unfinished.as_mut() {
            Some((lsn, n)) if *lsn == commit_lsn => {
                *n += 1;
                Some(*n)
            }
            _ => None,
        }
    }
}

/// [`History`] shared by the connections of one relay.
#[derive(Debug, Clone, Default)]
pub struct SharedHistory(Arc<Mutex<History>>);

impl SharedHistory {
    /// Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(system: &str, timeline: u32, wal: u64) -> SystemIdentity {
        SystemIdentity {
            system_id: system.into(),
            timeline,
            xlog_position: Lsn(wal),
            database: None,
        }
    }

    fn seen(position: u64) -> Seen {
        Seen {
            system_id: "7".into(),
            timeline: 1,
            position: Lsn(position),
        }
    }

    #[test]
    fn the_same_history_resumes() {
        assert_eq!(check(None, Lsn(0), &identity("7", 1, 10)), Verdict::Same);
        assert_eq!(
            check(Some(&seen(100)), Lsn(90), &identity("7", 1, 100)),
            Verdict::Same
        );
        assert_eq!(
            check(Some(&seen(100)), Lsn(90), &identity("7", 1, 500)),
            Verdict::Same
        );
    }

    #[test]
    fn a_wal_end_below_what_was_seen_is_a_rewind() {
        assert_eq!(
            check(Some(&seen(100)), Lsn(90), &identity("7", 1, 99)),
            Verdict::Rewound(Rewind::WalBehind {
                server_wal: Lsn(99),
                ours: Lsn(100)
            })
        );
        // The checkpoint alone is enough, e.g. after a pipeline restart.
        assert!(matches!(
            check(None, Lsn(200), &identity("7", 1, 150)),
            Verdict::Rewound(Rewind::WalBehind { .. })
        ));
    }

    #[test]
    fn a_new_timeline_or_system_is_noticed() {
        assert_eq!(
            check(Some(&seen(100)), Lsn(90), &identity("7", 2, 500)),
            Verdict::Rewound(Rewind::Timeline { was: 1, now: 2 })
        );
        assert_eq!(
            check(Some(&seen(100)), Lsn(90), &identity("8", 1, 500)),
            Verdict::OtherSystem {
                was: "7".into(),
                now: "8".into()
            }
        );
    }

    #[test]
    fn restarts_of_the_same_unfinished_transaction_are_counted() {
        let mut history = History::default();
        assert_eq!(history.began(Lsn(50)), None);
        history.left_open(Some(Lsn(50)));
        assert_eq!(history.began(Lsn(40)), None, "another transaction");
        assert_eq!(history.began(Lsn(50)), Some(1));
        history.left_open(Some(Lsn(50)));
        assert_eq!(history.began(Lsn(50)), Some(2));
        history.left_open(None);
        assert_eq!(history.began(Lsn(50)), None, "it finished once");
    }
}
