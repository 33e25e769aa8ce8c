//! The deadline: an order whose branches have not both answered within
//! `CHECKOUT_DEADLINE_MS` is cancelled, and the order itself writes
//! `OrderProcessingFailed{branch: "deadline"}` so both branches compensate whatever they
//! did (or record that the order is void, if they have not seen it yet).
//!
//! # Why a sweeper, and why it is safe with replicas
//! The deadline is a column (`deadline_at`, set from the database clock when the order is
//! created), and every replica runs a sweeper that, every `CHECKOUT_SWEEP_MS`, takes the
//! overdue PROCESSING orders one transaction each:
//! - `FOR UPDATE SKIP LOCKED` hands each overdue order to one sweeper; a second replica
//!   skips it, and an order the aggregator holds is skipped and looked at again next time
//!   (by then it may be PAYING, and is no longer overdue-and-PROCESSING);
//! - the cancellation is guarded by `status = 'PROCESSING'` under that lock, and it and
//!   its `OrderProcessingFailed` commit in one transaction: both or neither;
//! - an answer that arrives after the cancellation finds the order CANCELLED (see
//!   `aggregator`), so a cancelled order never becomes PAYING.
//!
//! Each cancellation runs inside a span `deadline` adopted from the order's stored
//! `traceparent`, so its log lines and its event continue the order's trace.
//!
//! A sweep handles at most [`BATCH`] orders, so one tick's work is bounded; the rest wait
//! for the next tick.

use std::time::Duration;

use saga_kit::db::Pool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::{self, OrderRow, Status};
use crate::events::{self, aggregate, kind, Branch, ProcessingFailed};

/// The most orders one sweep cancels.
pub const BATCH: usize = 100;

/// Why the deadline cancelled `order`: the branches that had not answered.
pub fn reason(order: &OrderRow) -> String {
    let missing: Vec<&str> = [
        (!order.stock_reserved).then_some("stock"),
        (!order.coupon_applied).then_some("coupon"),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("deadline: no answer from {}", missing.join(" and "))
}

/// Sweeps every `every` until `shutdown`. A failed sweep is logged and tried again at the
/// next tick: the database coming back is all it needs.
pub async fn run(pool: Pool, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match sweep(&pool).await {
            Ok(0) => {}
            Ok(cancelled) => tracing::info!(cancelled, "deadline sweep"),
            Err(e) => tracing::warn!(error = %e, "deadline sweep failed; trying again next tick"),
        }
    }
}

/// One sweep: cancels up to [`BATCH`] overdue orders, one transaction each; how many.
pub async fn sweep(pool: &Pool) -> Result<usize, SweepError> {
    let mut client = pool.get().await?;
    let mut cancelled = 0;
    while cancelled < BATCH {
        let tx = client.transaction().await?;
        let Some(order) = state::lock_next_overdue(&tx).await? else {
            return Ok(cancelled);
        };
        let span = tracing::info_span!("deadline", order_id = %order.id,
            correlation_id = %order.id, trace_id = tracing::field::Empty);
        saga_kit::trace::adopt(&span, order.traceparent.as_deref());
        async {
            cancel(&tx, &order).await?;
            tx.commit().await
        }
        .instrument(span)
        .await?;
        cancelled += 1;
    }
    Ok(cancelled)
}

/// CANCELLED with the reason, and `OrderProcessingFailed{branch: "deadline"}`.
async fn cancel(
    tx: &tokio_postgres::Transaction<'_>,
    order: &OrderRow,
) -> Result<(), tokio_postgres::Error> {
    let reason = reason(order);
    if !state::set_status(tx, order, Status::Cancelled, Some(&reason)).await? {
        return Ok(());
    }
    let failed = ProcessingFailed {
        order_id: order.id,
        branch: Branch::Deadline,
        reason: reason.clone(),
    };
    events::emit(
        tx,
        aggregate::PROCESSING_FAIL,
        kind::PROCESSING_FAILED,
        order.id,
        &failed,
    )
    .await?;
    tracing::warn!(%reason, "order cancelled: deadline passed");
    Ok(())
}

/// Why a sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Pool(#[from] saga_kit::db::DbError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn order(stock: bool, coupon: bool) -> OrderRow {
        OrderRow {
            id: Uuid::nil(),
            status: Status::Processing,
            user_id: 1,
            quantity: 1,
            unit_price: 1,
            stock_reserved: stock,
            coupon_applied: coupon,
            discount: 0,
            payment_requested: false,
            traceparent: None,
        }
    }

    #[test]
    fn the_reason_names_the_silent_branches() {
        assert_eq!(
            reason(&order(false, false)),
            "deadline: no answer from stock and coupon"
        );
        assert_eq!(
            reason(&order(true, false)),
            "deadline: no answer from coupon"
        );
        assert_eq!(
            reason(&order(false, true)),
            "deadline: no answer from stock"
        );
    }
}
