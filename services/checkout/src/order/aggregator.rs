//! The join of the two branches: `StockReserved` and `CouponApplied`, in either order,
//! duplicates included, make one `OrderProcessingSucceeded`.
//!
//! The seed keeps this state in Redis beside the consumer; here it is two columns of the
//! order row (`stock_reserved`, `coupon_applied`), changed in the consumer's transaction,
//! so the join, the event it emits and the consumer's position commit together.
//!
//! # Exactly once
//! [`apply`] locks the order row (`FOR UPDATE`) before it reads the flags, so two replicas
//! applying the two answers at the same moment take turns: the second sees the first's
//! flag. [`decide`] then emits only when this answer completes the pair *and* the order is
//! still PROCESSING, and the same statement that records it moves the order to PAYING. So:
//! - the pair completes in exactly one transaction, whichever answer comes second;
//! - a repeated answer (the same event redelivered past the inbox, or a second event with
//!   another id) finds its flag set, or the order PAYING, and changes nothing;
//! - an answer after the order closed (cancelled by the other branch or the deadline)
//!   changes nothing: its branch is compensated by the `OrderProcessingFailed` that closed
//!   the order.

use tokio_postgres::Transaction;
use uuid::Uuid;

use super::state::{self, OrderRow, Status};
use crate::events::{self, aggregate, kind, Payment};

/// A branch's success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Stock,
    Coupon { discount: i64 },
}

impl Answer {
    fn branch(self) -> &'static str {
        match self {
            Answer::Stock => "stock",
            Answer::Coupon { .. } => "coupon",
        }
    }
}

/// What one answer does to the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Recorded; the other branch has not answered yet.
    Record,
    /// Recorded, and it completes the pair: PAYING, and `OrderProcessingSucceeded`.
    Complete,
    /// This branch had answered already: nothing.
    Duplicate,
    /// The order is not PROCESSING any more: nothing (a late answer).
    Late(Status),
    /// No such order (never created here): nothing.
    UnknownOrder,
}

/// The join's decision: pure, so every interleaving is a unit test.
pub fn decide(order: &OrderRow, answer: Answer) -> Step {
    if order.status != Status::Processing {
        return Step::Late(order.status);
    }
    let (this, other) = match answer {
        Answer::Stock => (order.stock_reserved, order.coupon_applied),
        Answer::Coupon { .. } => (order.coupon_applied, order.stock_reserved),
    };
    match (this, other) {
        (true, _) => Step::Duplicate,
        (false, false) => Step::Record,
        (false, true) => Step::Complete,
    }
}

/// Applies a branch's success to order `order_id` inside the consumer's transaction.
pub async fn apply(
    tx: &Transaction<'_>,
    order_id: Uuid,
    answer: Answer,
) -> Result<Step, tokio_postgres::Error> {
    let branch = answer.branch();
    let Some(mut order) = state::lock(tx, order_id).await? else {
        tracing::warn!(branch, "answer for an unknown order; nothing to do");
        return Ok(Step::UnknownOrder);
    };
    let step = decide(&order, answer);
    match step {
        Step::Duplicate => {
            tracing::info!(branch, "branch had answered already; nothing to do");
            return Ok(step);
        }
        Step::Late(status) => {
            tracing::info!(
                branch,
                status = status.as_str(),
                "late answer: order closed; nothing to do"
            );
            return Ok(step);
        }
        Step::UnknownOrder => return Ok(step),
        Step::Record | Step::Complete => {}
    }
    if let Answer::Coupon { discount } = answer {
        order.discount = discount;
    }
    let next = if step == Step::Complete {
        Status::Paying
    } else {
        Status::Processing
    };
    let changed = tx
        .execute(
            "UPDATE orders SET \
               stock_reserved = stock_reserved OR $2, \
               coupon_applied = coupon_applied OR $3, \
               discount = $4, status = $5, updated_at = now() \
             WHERE id = $1 AND status = 'PROCESSING'",
            &[
                &order_id,
                &(answer == Answer::Stock),
                &matches!(answer, Answer::Coupon { .. }),
                &order.discount,
                &next.as_str(),
            ],
        )
        .await?;
    debug_assert_eq!(changed, 1, "the row lock keeps the order PROCESSING");
    if step == Step::Complete {
        let succeeded = Payment {
            order_id,
            user_id: order.user_id,
            amount: order.amount(),
        };
        events::emit(
            tx,
            aggregate::PROCESSING_SUCCESS,
            kind::PROCESSING_SUCCEEDED,
            order_id,
            &succeeded,
        )
        .await?;
        tracing::info!(
            branch,
            amount = succeeded.amount,
            "both branches succeeded: PAYING"
        );
    } else {
        tracing::info!(branch, "branch answer recorded; waiting for the other");
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: Status, stock: bool, coupon: bool) -> OrderRow {
        OrderRow {
            id: Uuid::nil(),
            status,
            user_id: 1,
            quantity: 2,
            unit_price: 100,
            stock_reserved: stock,
            coupon_applied: coupon,
            discount: 0,
            payment_requested: false,
            traceparent: None,
        }
    }

    const COUPON: Answer = Answer::Coupon { discount: 30 };

    /// Applies `answers` in turn as [`apply`] would (the row lock makes them sequential),
    /// returning each step.
    fn run(answers: &[Answer]) -> Vec<Step> {
        let mut row = order(Status::Processing, false, false);
        answers
            .iter()
            .map(|&answer| {
                let step = decide(&row, answer);
                if matches!(step, Step::Record | Step::Complete) {
                    match answer {
                        Answer::Stock => row.stock_reserved = true,
                        Answer::Coupon { .. } => row.coupon_applied = true,
                    }
                }
                if step == Step::Complete {
                    row.status = Status::Paying;
                }
                step
            })
            .collect()
    }

    #[test]
    fn either_order_completes_the_pair_once() {
        assert_eq!(
            run(&[Answer::Stock, COUPON]),
            [Step::Record, Step::Complete]
        );
        assert_eq!(
            run(&[COUPON, Answer::Stock]),
            [Step::Record, Step::Complete]
        );
    }

    #[test]
    fn duplicates_change_nothing_before_or_after_the_pair() {
        assert_eq!(
            run(&[Answer::Stock, Answer::Stock, COUPON, Answer::Stock, COUPON]),
            [
                Step::Record,
                Step::Duplicate,
                Step::Complete,
                Step::Late(Status::Paying),
                Step::Late(Status::Paying),
            ]
        );
    }

    #[test]
    fn every_interleaving_of_answers_and_duplicates_emits_exactly_once() {
        let answers = [Answer::Stock, COUPON, Answer::Stock, COUPON];
        // All 4! orders of two answers and one duplicate of each.
        let mut orders = vec![vec![]];
        for _ in 0..answers.len() {
            orders = orders
                .into_iter()
                .flat_map(|o: Vec<usize>| {
                    (0..answers.len())
                        .filter(|i| !o.contains(i))
                        .map(|i| [o.clone(), vec![i]].concat())
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        assert_eq!(orders.len(), 24);
        for o in orders {
            let sequence: Vec<Answer> = o.iter().map(|&i| answers[i]).collect();
            let steps = run(&sequence);
            let completes = steps.iter().filter(|s| **s == Step::Complete).count();
            assert_eq!(completes, 1, "{sequence:?} → {steps:?}");
        }
    }

    #[test]
    fn a_closed_order_ignores_answers() {
        for status in [Status::Cancelled, Status::Completed, Status::Paying] {
            assert_eq!(
                decide(&order(status, false, true), Answer::Stock),
                Step::Late(status)
            );
            assert_eq!(
                decide(&order(status, true, false), COUPON),
                Step::Late(status)
            );
        }
    }
}
