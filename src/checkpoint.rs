//! What may be acknowledged: the flush LSN the relay reports to PostgreSQL.
//!
//! # The acknowledgement rule
//!
//! The slot's confirmed LSN never passes an event that is not durably acknowledged
//! downstream. Concretely, the flush LSN is the commit end LSN of the newest transaction
//! such that it *and every earlier transaction* is committed (its Commit message was
//! read) and has every one of its events acknowledged. Delivery is therefore
//! at-least-once: after a crash, PostgreSQL resends every transaction whose commit end is
//! past the confirmed LSN, so only events that were not yet acknowledged (or that belong
//! to a transaction not yet fully acknowledged) can repeat, and they repeat unchanged.
//!
//! # Progress tracking
//!
//! Transactions get consecutive sequence numbers ([`TxnSeq`]) in commit order, which is
//! the order pgoutput sends them. Events are counted per transaction; an event's
//! acknowledgement names its transaction. A large transaction is published while it is
//! still arriving: its events are counted as they come and its commit LSN is only known,
//! and only acknowledgeable, once its Commit arrives.
//!
//! When nothing is in flight, the WAL end reported by a keepalive may be acknowledged:
//! every transaction that committed before that position has been received and handled
//! (the stream is in order), and a transaction still open on the server commits after it,
//! so it will still be sent. Without this, a slot on an idle outbox would pin WAL
//! written by other tables and databases forever.
//!
//! Progress is monotonic: the flush LSN only moves forward, except by [`Checkpoint::rewind`]
//! when the server's own history went back (a restore, a failover to a lagging standby),
//! where the positions of the old history mean nothing.
//!
//! # Nothing registered is orphaned
//!
//! Every event registered with [`Checkpoint::add_events`] ends in exactly one of two ways:
//! downstream acknowledges it ([`Checkpoint::ack`]), or the connection that read it ends
//! before it was handed over and the source releases it ([`Checkpoint::release`]). A
//! released event will be sent again by the server on the next connection, so its
//! transaction can never be flushed on this one: it pins the flush LSN until
//! [`Checkpoint::resume`] forgets it. Without the release, the in-flight count never
//! reaches zero and whoever waits for it ([`SharedCheckpoint::drained`]) waits forever.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::replication::Lsn;

/// A transaction's place in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnSeq(pub u64);

#[derive(Debug, Clone, Copy)]
struct TxnProgress {
    /// Events handed downstream and not yet acknowledged.
    outstanding: u64,
    /// Known once the Commit message is read.
    commit_end: Option<Lsn>,
    /// Commit time from the Begin message (microseconds since 2000-01-01), for lag.
    commit_ts_micros: i64,
    /// Some of its events were released unsent: it must not be flushed on this connection.
    released: bool,
    /// Events registered in all (released ones included).
    registered: u64,
}

/// What the checkpoint knows of one transaction, for the exactly-once sink: it may end a
/// Kafka transaction after a PostgreSQL transaction only once it has all of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnState {
    /// Known once its Commit message was read.
    pub commit_end: Option<Lsn>,
    /// Events registered so far; all of them once `commit_end` is known.
    pub registered: u64,
    /// Some events never left the source (its connection ended): it is incomplete downstream.
    pub released: bool,
}

/// A bookkeeping mistake by the caller: acknowledging what was never sent, or twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("acknowledgement for unknown transaction {0:?}")]
    UnknownTransaction(TxnSeq),
    #[error(
        "transaction {seq:?} acknowledged {acked} events but only {outstanding} are outstanding"
    )]
    TooManyAcks {
        seq: TxnSeq,
        acked: u64,
        outstanding: u64,
    },
    #[error("transaction {0:?} committed twice or out of order")]
    BadCommit(TxnSeq),
}

/// The pure state machine behind the flush LSN (no locking, no I/O).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Transactions not yet folded into `flushed`, oldest first.
    pending: VecDeque<TxnProgress>,
    /// Sequence number of `pending[0]`.
    first_seq: u64,
    flushed: Lsn,
    in_flight_events: u64,
}

impl Checkpoint {
    /// Starts at `flushed`, the slot's confirmed position.
    pub fn new(flushed: Lsn) -> Self {
        Checkpoint {
            pending: VecDeque::new(),
            first_seq: 0,
            flushed,
            in_flight_events: 0,
        }
    }

    /// The position that may be reported as flushed.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Events handed downstream and not yet acknowledged.
    pub fn in_flight_events(&self) -> u64 {
        self.in_flight_events
    }

    /// Commit time of the oldest transaction not yet acknowledged, if any: how far behind
    /// the relay is.
    pub fn oldest_commit_ts_micros(&self) -> Option<i64> {
        self.pending.front().map(|t| t.commit_ts_micros)
    }

    /// Transactions begun and not yet folded into the flush LSN.
    pub fn pending_transactions(&self) -> usize {
        self.pending.len()
    }

    /// A Begin message: opens the next transaction.
    pub fn begin(&mut self) -> TxnSeq {
        self.begin_at(0)
    }

    /// A Begin message with its commit time, which [`Checkpoint::oldest_commit_ts_micros`] reports.
    pub fn begin_at(&mut self, commit_ts_micros: i64) -> TxnSeq {
        self.pending.push_back(TxnProgress {
            outstanding: 0,
            commit_end: None,
            commit_ts_micros,
            released: false,
            registered: 0,
        });
        TxnSeq(self.first_seq + self.pending.len() as u64 - 1)
    }

    /// `count` more events of `seq` go downstream. Call before handing them over.
    pub fn add_events(&mut self, seq: TxnSeq, count: u64) -> Result<(), CheckpointError> {
        let txn = self.slot(seq)?;
        txn.outstanding += count;
        txn.registered += count;
        self.in_flight_events += count;
        Ok(())
    }

    /// A Commit message: `seq` is complete and ends at `end_lsn`.
    pub fn commit(&mut self, seq: TxnSeq, end_lsn: Lsn) -> Result<bool, CheckpointError> {
        let txn = self.slot(seq)?;
        if txn.commit_end.is_some() {
            return Err(CheckpointError::BadCommit(seq));
        }
        txn.commit_end = Some(end_lsn);
        Ok(self.advance())
    }

    /// Downstream durably handled `count` events of `seq`. Returns whether the flush LSN moved.
    pub fn ack(&mut self, seq: TxnSeq, count: u64) -> Result<bool, CheckpointError> {
        self.take_acks(seq, count)?;
        Ok(self.advance())
    }

    /// [`Checkpoint::ack`] for `(seq, count)` runs (a burst of delivery reports), in any
    /// order, folding them into the flush LSN once. Stops at the first run it rejects;
    /// the runs before it stay acknowledged. Returns whether the flush LSN moved.
    pub fn ack_runs(&mut self, runs: &[(TxnSeq, u64)]) -> Result<bool, CheckpointError> {
        let outcome = runs
            .iter()
            .try_for_each(|&(seq, count)| self.take_acks(seq, count));
        let moved = self.advance();
        outcome.map(|()| moved)
    }

    /// Counts `count` events of `seq` as acknowledged, without folding the flush LSN.
    fn take_acks(&mut self, seq: TxnSeq, count: u64) -> Result<(), CheckpointError> {
        let txn = self.slot(seq)?;
        if count > txn.outstanding {
            return Err(CheckpointError::TooManyAcks {
                seq,
                acked: count,
                outstanding: txn.outstanding,
            });
        }
        txn.outstanding -= count;
        self.in_flight_events -= count;
        Ok(())
    }

    /// `count` registered events of `seq` will never be handed over (their connection
    /// ended first). They leave the in-flight count, and `seq` can no longer be flushed:
    /// the server sends it again after [`Checkpoint::resume`].
    pub fn release(&mut self, seq: TxnSeq, count: u64) -> Result<(), CheckpointError> {
        let txn = self.slot(seq)?;
        if count > txn.outstanding {
            return Err(CheckpointError::TooManyAcks {
                seq,
                acked: count,
                outstanding: txn.outstanding,
            });
        }
        txn.outstanding -= count;
        txn.released = true;
        self.in_flight_events -= count;
        Ok(())
    }

    /// The server's history went back (restore, failover to a lagging standby, another
    /// system): positions past `to`, the slot's confirmed position on the new history,
    /// belong to WAL that no longer exists. Resumes at `to`, even below the flush LSN.
    /// Call only when nothing is in flight, as [`Checkpoint::resume`].
    pub fn rewind(&mut self, to: Lsn) {
        debug_assert_eq!(self.in_flight_events, 0, "rewind with events in flight");
        self.first_seq += self.pending.len() as u64;
        self.pending.clear();
        self.flushed = to;
    }

    /// Resumes on a new replication connection that starts at `start` (at least the
    /// current flush LSN). Call only when nothing is in flight: transactions left open by
    /// the old connection hold no events and will be sent again in full, so they are
    /// forgotten; sequence numbers go on from where they were.
    pub fn resume(&mut self, start: Lsn) {
        debug_assert_eq!(self.in_flight_events, 0, "resume with events in flight");
        self.first_seq += self.pending.len() as u64;
        self.pending.clear();
        self.flushed = self.flushed.max(start);
    }

    /// What is known of `seq`, while it is pending (not yet folded into the flush LSN).
    pub fn transaction(&self, seq: TxnSeq) -> Option<TxnState> {
        let index = usize::try_from(seq.0.checked_sub(self.first_seq)?).ok()?;
        self.pending.get(index).map(|txn| TxnState {
            commit_end: txn.commit_end,
            registered: txn.registered,
            released: txn.released,
        })
    }

    /// A keepalive reported `wal_end`. With nothing pending, everything before it is handled.
    pub fn idle_position(&mut self, wal_end: Lsn) -> bool {
        if self.pending.is_empty() && wal_end > self.flushed {
            self.flushed = wal_end;
            return true;
        }
        false
    }

    fn slot(&mut self, seq: TxnSeq) -> Result<&mut TxnProgress, CheckpointError> {
        let index = seq
            .0
            .checked_sub(self.first_seq)
            .ok_or(CheckpointError::UnknownTransaction(seq))?;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.pending.get_mut(i))
            .ok_or(CheckpointError::UnknownTransaction(seq))
    }

    /// Folds every finished transaction at the front into the flush LSN.
    fn advance(&mut self) -> bool {
        let before = self.flushed;
        while let Some(front) = self.pending.front() {
            match front.commit_end {
                Some(end) if front.outstanding == 0 && !front.released => {
                    // Commit ends arrive in commit order, so this never moves backwards;
                    // max() keeps progress monotonic even if a caller breaks that (equal
                    // and lower ends are covered by the property tests).
                    self.flushed = self.flushed.max(end);
                    self.pending.pop_front();
                    self.first_seq += 1;
                }
                _ => break,
            }
        }
        debug_assert!(self.flushed >= before, "flush LSN went backwards");
        self.flushed > before
    }
}

/// The checkpoint shared between the source (which registers work) and the sinks (which
/// acknowledge it), plus a wake-up for the source when the flush LSN moves.
#[derive(Debug, Clone)]
pub struct SharedCheckpoint {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Checkpoint>,
    /// The flush LSN moved.
    advanced: Notify,
    /// In-flight events reached zero.
    drained: Notify,
}

impl SharedCheckpoint {
    pub fn new(flushed: Lsn) -> Self {
        SharedCheckpoint {
            inner: Arc::new(Shared {
                state: Mutex::new(Checkpoint::new(flushed)),
                advanced: Notify::new(),
                drained: Notify::new(),
            }),
        }
    }

    /// Locks the state. Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Checkpoint> {
        // A panic while holding the lock leaves the counts as they were: still safe.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acknowledges `count` events of `seq`; wakes the source when the flush LSN moved.
    pub fn ack(&self, seq: TxnSeq, count: u64) -> Result<(), CheckpointError> {
        let (moved, drained) = {
            let mut state = self.lock();
            let moved = state.ack(seq, count)?;
            (moved, state.in_flight_events() == 0)
        };
        self.wake(moved, drained);
        Ok(())
    }

    /// Acknowledges `(seq, count)` runs under one lock (see [`Checkpoint::ack_runs`]);
    /// wakes the source once when the flush LSN moved.
    pub fn ack_runs(&self, runs: &[(TxnSeq, u64)]) -> Result<(), CheckpointError> {
        let (outcome, drained) = {
            let mut state = self.lock();
            let outcome = state.ack_runs(runs);
            (outcome, state.in_flight_events() == 0)
        };
        // Wake on a partial success too: what was acknowledged before the bad run stands.
        self.wake(outcome.as_ref().map_or(true, |moved| *moved), drained);
        outcome.map(|_| ())
    }

    /// After acknowledgements: wakes the source when the flush LSN `moved`, and the
    /// waiters of [`SharedCheckpoint::drained`] when nothing is in flight any more.
    fn wake(&self, moved: bool, drained: bool) {
        if moved {
            self.inner.advanced.notify_one();
        }
        if drained {
            self.inner.drained.notify_waiters();
        }
    }

    /// Releases registered events that will never be handed over (see
    /// [`Checkpoint::release`]): `(seq, count)` runs, in any order.
    pub fn release(
        &self,
        runs: impl IntoIterator<Item = (TxnSeq, u64)>,
    ) -> Result<(), CheckpointError> {
        let drained = {
            let mut state = self.lock();
            for (seq, count) in runs {
                state.release(seq, count)?;
            }
            state.in_flight_events() == 0
        };
        if drained {
            self.inner.drained.notify_waiters();
        }
        Ok(())
    }

    /// Resolves after an acknowledgement moved the flush LSN (or already has, unobserved).
    pub async fn advanced(&self) {
        self.inner.advanced.notified().await;
    }

    /// Resolves once no event is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.inner.drained.notified();
            if self.lock().in_flight_events() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn flushed(&self) -> Lsn {
        self.lock().flushed()
    }
}

#[cfg(test)]
mod tests;
