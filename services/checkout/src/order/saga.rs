//! How the order service reacts to the saga's events.
//!
//! - `StockReserved`, `CouponApplied`: the join ([`super::aggregator`]).
//! - `OrderProcessingFailed` (a branch's, or its own deadline's): PROCESSING → CANCELLED
//!   with its reason. The branches compensate on the same event; the order does nothing
//!   more.
//! - `OrderProcessingSucceeded` (its own, as in the seed's table 3.1): writes
//!   `OrderPaymentRequested`, once (`payment_requested`), while PAYING.
//! - `OrderPaid`: PAYING → COMPLETED, and `OrderProcessed`.
//! - `OrderPaymentFailed`: PAYING → CANCELLED with its reason (product and coupon
//!   compensate on the same event).
//!
//! Every reaction locks the order first and decides with [`react`] (pure): an event that
//! does not fit the order's status (late, or repeated) changes nothing and is logged.

use saga_kit::consumer::{Event, HandleError, Handler};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregator::{self, Answer};
use super::state::{self, OrderRow, Status};
use crate::events::{
    self, aggregate, kind, CouponApplied, Payment, PaymentFailed, Processed, ProcessingFailed,
    StockReserved,
};

/// The order service's [`Handler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSaga;

/// An event that moves the order on (the branch answers are the aggregator's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `OrderProcessingFailed`.
    ProcessingFailed,
    /// `OrderProcessingSucceeded`.
    RequestPayment,
    /// `OrderPaid`.
    Paid,
    /// `OrderPaymentFailed`.
    PaymentFailed,
}

/// What to do about a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// → CANCELLED with the event's reason.
    Cancel,
    /// Write `OrderPaymentRequested` (the status stays PAYING).
    RequestPayment,
    /// → COMPLETED, and `OrderProcessed`.
    Complete,
}

/// The order's state machine for everything but the join; `None`: nothing to do.
pub fn react(order: &OrderRow, request: Request) -> Option<Action> {
    match (order.status, request) {
        (Status::Processing, Request::ProcessingFailed) => Some(Action::Cancel),
        (Status::Paying, Request::RequestPayment) if !order.payment_requested => {
            Some(Action::RequestPayment)
        }
        (Status::Paying, Request::Paid) => Some(Action::Complete),
        (Status::Paying, Request::PaymentFailed) => Some(Action::Cancel),
        _ => None,
    }
}

impl Handler for OrderSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        match event.event_type.as_str() {
            kind::STOCK_RESERVED => {
                let reserved: StockReserved = event.parse()?;
                aggregator::apply(tx, reserved.order_id, Answer::Stock).await?;
            }
            kind::COUPON_APPLIED => {
                let applied: CouponApplied = event.parse()?;
                let answer = Answer::Coupon {
                    discount: applied.discount.max(0),
                };
                aggregator::apply(tx, applied.order_id, answer).await?;
            }
            kind::PROCESSING_FAILED => {
                let failed: ProcessingFailed = event.parse()?;
                let reason = failed.reason;
                step(
                    tx,
                    failed.order_id,
                    Request::ProcessingFailed,
                    Some(&reason),
                )
                .await?;
            }
            kind::PROCESSING_SUCCEEDED => {
                let succeeded: Payment = event.parse()?;
                step(tx, succeeded.order_id, Request::RequestPayment, None).await?;
            }
            kind::PAID => {
                let paid: Payment = event.parse()?;
                step(tx, paid.order_id, Request::Paid, None).await?;
            }
            kind::PAYMENT_FAILED => {
                let failed: PaymentFailed = event.parse()?;
                let reason = failed.reason;
                step(tx, failed.order_id, Request::PaymentFailed, Some(&reason)).await?;
            }
            other => {
                return Err(HandleError::permanent(format!(
                    "unknown event type {other:?} on {}: the checkout order service handles \
                     StockReserved, CouponApplied, OrderProcessingFailed, \
                     OrderProcessingSucceeded, OrderPaid and OrderPaymentFailed",
                    event.topic
                )))
            }
        }
        Ok(())
    }
}

/// Locks the order, decides, applies.
async fn step(
    tx: &Transaction<'_>,
    order_id: Uuid,
    request: Request,
    reason: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let Some(order) = state::lock(tx, order_id).await? else {
        tracing::warn!(?request, "event for an unknown order; nothing to do");
        return Ok(());
    };
    let Some(action) = react(&order, request) else {
        tracing::info!(
            ?request,
            status = order.status.as_str(),
            "event does not apply to the order's status (late or repeated); nothing to do"
        );
        return Ok(());
    };
    match action {
        Action::Cancel => {
            let reason = reason.unwrap_or("no reason given");
            state::set_status(tx, &order, Status::Cancelled, Some(reason)).await?;
            tracing::info!(%reason, "order cancelled");
        }
        Action::RequestPayment => {
            tx.execute(
                "UPDATE orders SET payment_requested = true, updated_at = now() WHERE id = $1",
                &[&order.id],
            )
            .await?;
            let payment = Payment {
                order_id,
                user_id: order.user_id,
                amount: order.amount(),
            };
            events::emit(
                tx,
                aggregate::PAYMENT,
                kind::PAYMENT_REQUESTED,
                order_id,
                &payment,
            )
            .await?;
            tracing::info!(amount = payment.amount, "payment requested");
        }
        Action::Complete => {
            state::set_status(tx, &order, Status::Completed, None).await?;
            let processed = Processed {
                order_id,
                user_id: order.user_id,
                amount: order.amount(),
                discount: order.discount,
            };
            events::emit(
                tx,
                aggregate::PROCESSED,
                kind::PROCESSED,
                order_id,
                &processed,
            )
            .await?;
            tracing::info!(amount = processed.amount, "order completed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: Status, payment_requested: bool) -> OrderRow {
        OrderRow {
            id: Uuid::nil(),
            status,
            user_id: 1,
            quantity: 1,
            unit_price: 1,
            stock_reserved: true,
            coupon_applied: true,
            discount: 0,
            payment_requested,
            traceparent: None,
        }
    }

    #[test]
    fn a_processing_failure_cancels_only_a_processing_order() {
        let fail = Request::ProcessingFailed;
        assert_eq!(
            react(&order(Status::Processing, false), fail),
            Some(Action::Cancel)
        );
        for status in [Status::Paying, Status::Completed, Status::Cancelled] {
            assert_eq!(react(&order(status, false), fail), None, "{status:?}");
        }
    }

    #[test]
    fn payment_is_requested_once_and_only_while_paying() {
        let request = Request::RequestPayment;
        assert_eq!(
            react(&order(Status::Paying, false), request),
            Some(Action::RequestPayment)
        );
        assert_eq!(react(&order(Status::Paying, true), request), None);
        for status in [Status::Processing, Status::Completed, Status::Cancelled] {
            assert_eq!(react(&order(status, false), request), None, "{status:?}");
        }
    }

    #[test]
    fn the_payment_outcome_closes_a_paying_order_once() {
        let paying = order(Status::Paying, true);
        assert_eq!(react(&paying, Request::Paid), Some(Action::Complete));
        assert_eq!(react(&paying, Request::PaymentFailed), Some(Action::Cancel));
        for status in [Status::Processing, Status::Completed, Status::Cancelled] {
            for request in [Request::Paid, Request::PaymentFailed] {
                assert_eq!(react(&order(status, true), request), None, "{status:?}");
            }
        }
    }
}
