//! The open Kafka transaction of the exactly-once sink, without I/O: which PostgreSQL
//! transactions it holds, when it is due to commit, and what to acknowledge once it has.
//!
//! A Kafka transaction holds whole PostgreSQL transactions only: `read_committed`
//! consumers then see all the events of a database transaction or none. It therefore ends
//! only at a PostgreSQL commit: at the first one after `transaction_max_events` events or
//! `transaction_max_ms`, whichever comes first. A PostgreSQL transaction larger than that
//! keeps the Kafka transaction open until its last event; the producer's bounded queue
//! still bounds the relay's memory, since delivered records leave it before the commit.
//!
//! Its events are acknowledged to the checkpoint only after the commit (never from
//! delivery reports, which come before it), so the slot never passes a row that a crash
//! could still abort. What it must remember to do so is one `(transaction, events)` run
//! per PostgreSQL transaction: at most `transaction_max_events` + 1 of them.

use std::time::{Duration, Instant};

use crate::checkpoint::{TxnSeq, TxnState};
use crate::replication::Lsn;

/// One open Kafka transaction.
#[derive(Debug)]
pub struct OpenTransaction {
    pub opened_at: Instant,
    pub events: u64,
    /// Events per PostgreSQL transaction, in commit order.
    pub runs: Vec<(TxnSeq, u64)>,
    /// The latest commit time among the PostgreSQL transactions it holds.
    pub max_commit_ts_micros: i64,
}

/// Decides the boundaries of Kafka transactions.
#[derive(Debug)]
pub struct Batcher {
    max_events: u64,
    max_age: Duration,
    open: Option<OpenTransaction>,
}

impl Batcher {
    pub fn new(max_events: usize, max_age: Duration) -> Self {
        Batcher {
            max_events: max_events.max(1) as u64,
            max_age,
            open: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether an event of `seq` would start another PostgreSQL transaction than the
    /// last one the open Kafka transaction holds: the only place it may end.
    pub fn at_boundary(&self, seq: TxnSeq) -> bool {
        self.last().is_some_and(|(last, _)| last != seq)
    }

    /// Whether the open transaction has reached its size or age.
    pub fn is_due(&self, now: Instant) -> bool {
        self.open.as_ref().is_some_and(|open| {
            open.events >= self.max_events || now.duration_since(open.opened_at) >= self.max_age
        })
    }

    /// How long until the open transaction is due by age (zero when it already is).
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.open
            .as_ref()
            .map(|open| (open.opened_at + self.max_age).saturating_duration_since(now))
    }

    /// Counts one event of `seq` (committed at `commit_ts_micros`) into the open
    /// transaction. Returns true when that opened a new one (the producer must begin it).
    pub fn add(&mut self, seq: TxnSeq, commit_ts_micros: i64, now: Instant) -> bool {
        let opened = self.open.is_none();
        let open = self.open.get_or_insert_with(|| OpenTransaction {
            opened_at: now,
            events: 0,
            runs: Vec::new(),
            max_commit_ts_micros: i64::MIN,
        });
        open.events += 1;
        open.max_commit_ts_micros = open.max_commit_ts_micros.max(commit_ts_micros);
        match open.runs.last_mut() {
            Some((last, count)) if *last == seq => *count += 1,
            _ => open.runs.push((seq, 1)),
        }
        opened
    }

    /// The last PostgreSQL transaction held, and how many of its events.
    pub fn last(&self) -> Option<(TxnSeq, u64)> {
        self.open
            .as_ref()
            .and_then(|open| open.runs.last().copied())
    }

    /// Ends the open transaction (committed or aborted), handing back what it held.
    pub fn take(&mut self) -> Option<OpenTransaction> {
        self.open.take()
    }
}

/// The commit end of the last PostgreSQL transaction held, when the Kafka transaction
/// holds all of it: its Commit was read, every one of its events reached the sink
/// (`seen`), and none was left behind by a connection that ended.
pub fn complete_through(state: Option<TxnState>, seen: u64) -> Option<Lsn> {
    let state = state?;
    let end = state.commit_end?;
    (!state.released && state.registered == seen).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_ends_only_at_a_postgres_commit_once_due() {
        let start = Instant::now();
        let mut batcher = Batcher::new(3, Duration::from_millis(100));
        assert!(!batcher.is_due(start));
        assert!(
            batcher.add(TxnSeq(1), 10, start),
            "the first event opens it"
        );
        assert!(!batcher.add(TxnSeq(1), 10, start));
        assert!(!batcher.at_boundary(TxnSeq(1)));
        // A large PostgreSQL transaction: due by size, but its events keep coming.
        batcher.add(TxnSeq(1), 10, start);
        batcher.add(TxnSeq(1), 10, start);
        assert!(batcher.is_due(start));
        assert!(
            !batcher.at_boundary(TxnSeq(1)),
            "never inside a transaction"
        );
        assert!(batcher.at_boundary(TxnSeq(2)));
        batcher.add(TxnSeq(2), 30, start);
        assert_eq!(batcher.last(), Some((TxnSeq(2), 1)));
        let open = batcher.take().unwrap();
        assert_eq!(open.runs, vec![(TxnSeq(1), 4), (TxnSeq(2), 1)]);
        assert_eq!(open.events, 5);
        assert_eq!(open.max_commit_ts_micros, 30);
        assert!(!batcher.is_open());
    }

    #[test]
    fn a_transaction_is_due_by_age() {
        let start = Instant::now();
        let mut batcher = Batcher::new(1_000, Duration::from_millis(100));
        batcher.add(TxnSeq(7), 1, start);
        assert!(!batcher.is_due(start + Duration::from_millis(99)));
        assert_eq!(
            batcher.due_in(start + Duration::from_millis(40)),
            Some(Duration::from_millis(60))
        );
        assert!(batcher.is_due(start + Duration::from_millis(100)));
    }

    #[test]
    fn only_a_whole_transaction_completes_it() {
        let state = |end: Option<u64>, registered, released| {
            Some(TxnState {
                commit_end: end.map(Lsn),
                registered,
                released,
            })
        };
        assert_eq!(complete_through(state(Some(9), 3, false), 3), Some(Lsn(9)));
        assert_eq!(
            complete_through(state(None, 3, false), 3),
            None,
            "no Commit yet"
        );
        assert_eq!(
            complete_through(state(Some(9), 4, false), 3),
            None,
            "an event still in the channel"
        );
        assert_eq!(
            complete_through(state(Some(9), 3, true), 3),
            None,
            "events left behind by a connection that ended"
        );
        assert_eq!(complete_through(None, 3), None);
    }
}
