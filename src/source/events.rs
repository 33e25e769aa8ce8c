//! What the source hands downstream: row changes tagged with their transaction.

use std::sync::Arc;

use crate::checkpoint::TxnSeq;
use crate::replication::pgoutput::{OldTuple, Relation, TupleData};
use crate::replication::Lsn;

/// The transaction an event belongs to, shared by all its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionInfo {
    pub xid: u32,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_ts_micros: i64,
}

/// One row change of a published table.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Insert {
        relation: Arc<Relation>,
        row: TupleData,
    },
    Update {
        relation: Arc<Relation>,
        old: Option<OldTuple>,
        row: TupleData,
    },
    Delete {
        relation: Arc<Relation>,
        old: OldTuple,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
    },
}

impl Change {
    /// The operation's name, for logs and metrics labels.
    pub fn operation(&self) -> &'static str {
        match self {
            Change::Insert { .. } => "insert",
            Change::Update { .. } => "update",
            Change::Delete { .. } => "delete",
            Change::Truncate { .. } => "truncate",
        }
    }
}

/// A change plus what is needed to acknowledge it.
///
/// Every event must be acknowledged exactly once, with
/// [`crate::checkpoint::SharedCheckpoint::ack`] on `seq`, once it is durably handled (or
/// deliberately ignored). Until then the slot cannot move past its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceEvent {
    pub seq: TxnSeq,
    pub transaction: Arc<TransactionInfo>,
    pub change: Change,
}

/// Events go downstream in batches, to pay the channel's cost once per batch.
pub type EventBatch = Vec<SourceEvent>;
