//! One order's events, serialised within a service.
//!
//! A branch service hears about an order on several topics (`OrderProcessing`, and the
//! failures that compensate it), and the partitions of different topics may be owned by
//! different replicas: a compensation can run at the same moment as the reservation it
//! undoes, before that order has any row to lock. A transaction-scoped advisory lock on
//! the order id closes that gap: every handler of a branch service takes it first, so
//! "read the order's row (or its absence), decide, write" is never interleaved for one
//! order. It is released at commit or rollback; a hash collision only serialises two
//! unrelated orders. Each consumer transaction takes exactly one such lock, so two cannot
//! wait on each other.

use tokio_postgres::Transaction;
use uuid::Uuid;

/// Takes the order's advisory lock for the rest of `tx`.
pub(crate) async fn order(
    tx: &Transaction<'_>,
    order_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 17))",
        &[&order_id],
    )
    .await?;
    Ok(())
}
