//! Transaction assembly, without I/O: pgoutput messages in, event batches and checkpoint
//! registrations out.
//!
//! The assembler opens a checkpoint transaction at each Begin, turns row changes into
//! [`SourceEvent`]s collected in one batch, registers them with the checkpoint before they
//! can leave ([`Assembler::hand_over`]) and closes the transaction at Commit. It has no
//! sockets and no clock, so its tests drive it through any interleaving of messages,
//! keepalives, hand-overs, acknowledgements and failures.
//!
//! # Nothing registered is orphaned
//!
//! Some events are registered while they still sit in the batch: at Commit (the commit
//! may not be recorded before its events are counted, or the flush LSN could pass them)
//! and at a keepalive. When the connection ends before the batch leaves, by an error or
//! by shutdown, [`Assembler::release`] gives those registrations back to the checkpoint
//! ([`crate::checkpoint::Checkpoint::release`]). The I/O loop calls it on every exit, so
//! the in-flight count always returns to zero once downstream has acknowledged what it
//! really received, and a reconnect that waits for that can never wait forever.

use std::sync::Arc;

use super::events::{Change, EventBatch, SourceEvent, TransactionInfo};
use crate::checkpoint::{CheckpointError, SharedCheckpoint, TxnSeq};
use crate::replication::pgoutput::{self, PgOutputMessage};
use crate::replication::relations::RelationCache;
use crate::replication::Lsn;

/// A pgoutput stream that cannot be assembled into transactions.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("Begin inside an open transaction")]
    NestedBegin,
    #[error("Commit without Begin")]
    CommitWithoutBegin,
    #[error("row change outside a transaction")]
    ChangeOutsideTransaction,
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(pgoutput::Oid),
    #[error("checkpoint bookkeeping failed: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// What one message did, for the I/O loop's logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A transaction began.
    Began(Arc<TransactionInfo>),
    /// A transaction committed; the flush LSN is now `flushed`.
    Committed { flushed: Lsn },
    /// A row change joined the batch, or a message that changes nothing downstream.
    Other,
}

/// What [`Assembler::release`] gave back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Released {
    /// Registered events that never left.
    pub events: u64,
    /// The transaction still open when the connection ended, if any.
    pub open: Option<Arc<TransactionInfo>>,
}

struct OpenTransaction {
    seq: TxnSeq,
    info: Arc<TransactionInfo>,
    /// Events of this transaction in the batch and not yet registered (the batch's tail).
    unregistered: u64,
}

/// The transaction assembler of one replication connection.
#[allow(missing_debug_implementations)]
pub struct Assembler {
    checkpoint: SharedCheckpoint,
    relations: RelationCache,
    current: Option<OpenTransaction>,
    batch: EventBatch,
    /// How many events at the front of `batch` are registered with the checkpoint.
    registered: usize,
    max_batch_events: usize,
}

impl Assembler {
    pub fn new(checkpoint: SharedCheckpoint, max_batch_events: usize) -> Self {
        Assembler {
            checkpoint,
            relations: RelationCache::default(),
            current: None,
            batch: Vec::new(),
            registered: 0,
            max_batch_events: max_batch_events.max(1),
        }
    }

    /// Events waiting to be handed over.
    pub fn batch_len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch should leave before more is read.
    pub fn is_full(&self) -> bool {
        self.batch.len() >= self.max_batch_events
    }

    /// Applies one decoded pgoutput message.
    pub fn apply(&mut self, message: PgOutputMessage) -> Result<Step, AssemblyError> {
        let change = match message {
            PgOutputMessage::Begin(begin) => {
                if self.current.is_some() {
                    return Err(AssemblyError::NestedBegin);
                }
                let seq = self.checkpoint.lock().begin_at(begin.commit_ts_micros);
                let info = Arc::new(TransactionInfo {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    commit_ts_micros: begin.commit_ts_micros,
                });
                self.current = Some(OpenTransaction {
                    seq,
                    info: Arc::clone(&info),
                    unregistered: 0,
                });
                return Ok(Step::Began(info));
            }
            PgOutputMessage::Commit(commit) => {
                let open = self
                    .current
                    .take()
                    .ok_or(AssemblyError::CommitWithoutBegin)?;
                let mut checkpoint = self.checkpoint.lock();
                // Count the events still in the batch first: a commit of a transaction
                // with nothing outstanding could otherwise be flushed past them.
                checkpoint.add_events(open.seq, open.unregistered)?;
                self.registered = self.batch.len();
                checkpoint.commit(open.seq, commit.end_lsn)?;
                return Ok(Step::Committed {
                    flushed: checkpoint.flushed(),
                });
            }
            PgOutputMessage::Relation(relation) => {
                self.relations.apply(relation);
                return Ok(Step::Other);
            }
            PgOutputMessage::Type(_) | PgOutputMessage::Origin(_) | PgOutputMessage::Message(_) => {
                return Ok(Step::Other)
            }
            PgOutputMessage::Insert(insert) => Change::Insert {
                relation: self.relation(insert.relation)?,
                row: insert.new,
            },
            PgOutputMessage::Update(update) => Change::Update {
                relation: self.relation(update.relation)?,
                old: update.old,
                row: update.new,
            },
            PgOutputMessage::Delete(delete) => Change::Delete {
                relation: self.relation(delete.relation)?,
                old: delete.old,
            },
            PgOutputMessage::Truncate(truncate) => Change::Truncate {
                relations: truncate
                    .relations
                    .iter()
                    .map(|oid| self.relation(*oid))
                    .collect::<Result<_, _>>()?,
            },
        };
        let open = self
            .current
            .as_mut()
            .ok_or(AssemblyError::ChangeOutsideTransaction)?;
        open.unregistered += 1;
        self.batch.push(SourceEvent {
            seq: open.seq,
            transaction: Arc::clone(&open.info),
            change,
        });
        Ok(Step::Other)
    }

    /// A keepalive at `wal_end`: with nothing pending, the checkpoint may confirm it.
    /// Returns whether the flush LSN moved.
    pub fn keepalive(&mut self, wal_end: Lsn) -> Result<bool, AssemblyError> {
        // Events still in the batch belong to registered transactions, so the checkpoint
        // is not idle while any of them is unsent.
        self.register_current()?;
        Ok(self.checkpoint.lock().idle_position(wal_end))
    }

    /// Registers every event of the batch and hands the batch out. Call only when it can
    /// leave at once (a channel permit in hand): from here on downstream owns its events.
    pub fn hand_over(&mut self) -> Result<EventBatch, AssemblyError> {
        self.register_current()?;
        self.registered = 0;
        // The next batch starts with room for as many events as this one had (within the
        // limit), instead of growing from empty by doubling.
        let room = self.batch.len().min(self.max_batch_events);
        Ok(std::mem::replace(&mut self.batch, Vec::with_capacity(room)))
    }

    /// The connection ended: releases every registered event still in the batch, drops
    /// the batch and the open transaction (the server sends both again), and reports what
    /// was given back.
    pub fn release(&mut self) -> Result<Released, AssemblyError> {
        let registered = &self.batch[..self.registered];
        let runs = registered
            .chunk_by(|a, b| a.seq == b.seq)
            .map(|run| (run[0].seq, run.len() as u64));
        self.checkpoint.release(runs)?;
        let released = Released {
            events: self.registered as u64,
            open: self.current.take().map(|open| open.info),
        };
        self.batch.clear();
        self.registered = 0;
        Ok(released)
    }

    fn register_current(&mut self) -> Result<(), AssemblyError> {
        if let Some(open) = self.current.as_mut().filter(|o| o.unregistered > 0) {
            self.checkpoint
                .lock()
                .add_events(open.seq, open.unregistered)?;
            open.unregistered = 0;
        }
        self.registered = self.batch.len();
        Ok(())
    }

    fn relation(&self, oid: pgoutput::Oid) -> Result<Arc<pgoutput::Relation>, AssemblyError> {
        self.relations
            .get(oid)
            .cloned()
            .ok_or(AssemblyError::UnknownRelation(oid))
    }
}

#[cfg(test)]
mod tests;
