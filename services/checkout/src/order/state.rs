//! An order's row as the saga's reactions see it, read under its row lock.
//!
//! Every reaction of the order service (a branch answer, a failure, the payment's
//! outcome, the deadline) first locks the order (`SELECT … FOR UPDATE`), then decides
//! with a pure function of this snapshot, then writes. Two replicas applying two events of
//! one order at once therefore take turns, and the second decides on what the first
//! committed.

use tokio_postgres::Transaction;
use uuid::Uuid;

/// An order's status (column `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the stock and coupon branches.
    Processing,
    /// Both branches succeeded; the user is being charged.
    Paying,
    Completed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Processing => "PROCESSING",
            Status::Paying => "PAYING",
            Status::Completed => "COMPLETED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(raw: &str) -> Option<Status> {
        [
            Status::Processing,
            Status::Paying,
            Status::Completed,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// The columns the reactions decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub id: Uuid,
    pub status: Status,
    pub user_id: i64,
    pub quantity: i32,
    pub unit_price: i64,
    pub stock_reserved: bool,
    pub coupon_applied: bool,
    pub discount: i64,
    pub payment_requested: bool,
    pub traceparent: Option<String>,
}

impl OrderRow {
    /// What the user pays, with the discount known so far.
    pub fn amount(&self) -> i64 {
        crate::events::amount(self.unit_price, self.quantity, self.discount)
    }
}

const COLUMNS: &str = "id, status, user_id, quantity, unit_price, stock_reserved, \
    coupon_applied, discount, payment_requested, traceparent";

/// The order, locked until `tx` ends; `None` if there is no such order.
pub async fn lock(
    tx: &Transaction<'_>,
    id: Uuid,
) -> Result<Option<OrderRow>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM orders WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?;
    Ok(row.map(|r| from_row(&r)))
}

/// The next PROCESSING order past its deadline that no other transaction holds, locked
/// until `tx` ends (`SKIP LOCKED`: two sweepers, or a sweeper and the aggregator, never
/// wait on each other's order and never take the same one).
pub async fn lock_next_overdue(
    tx: &Transaction<'_>,
) -> Result<Option<OrderRow>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM orders \
                 WHERE status = 'PROCESSING' AND deadline_at <= now() \
                 ORDER BY deadline_at LIMIT 1 FOR UPDATE SKIP LOCKED"
            ),
            &[],
        )
        .await?;
    Ok(row.map(|r| from_row(&r)))
}

/// Sets the status (and the reason, when closing), guarded by the status it was read
/// with: `false` if the row changed meanwhile, which the row lock rules out.
pub async fn set_status(
    tx: &Transaction<'_>,
    order: &OrderRow,
    status: Status,
    reason: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    let changed = tx
        .execute(
            "UPDATE orders SET status = $3, reason = coalesce($4, reason), updated_at = now() \
             WHERE id = $1 AND status = $2",
            &[&order.id, &order.status.as_str(), &status.as_str(), &reason],
        )
        .await?;
    Ok(changed == 1)
}

fn from_row(row: &tokio_postgres::Row) -> OrderRow {
    let status: String = row.get(1);
    OrderRow {
        id: row.get(0),
        // The CHECK constraint allows only the four.
        status: Status::parse(&status).unwrap_or(Status::Cancelled),
        user_id: row.get(2),
        quantity: row.get(3),
        unit_price: row.get(4),
        stock_reserved: row.get(5),
        coupon_applied: row.get(6),
        discount: row.get(7),
        payment_requested: row.get(8),
        traceparent: row.get(9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for status in [
            Status::Processing,
            Status::Paying,
            Status::Completed,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("PENDING"), None);
    }
}
