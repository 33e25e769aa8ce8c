//! How the user service reacts to `OrderPaymentRequested`: charge once, or refuse.
//!
//! The order's lock (`crate::lock`) and its `charges` row make a repeated request (another
//! event id) change nothing; the user row is locked (`FOR UPDATE`) while it is debited, so
//! two orders of one user never overdraw it.

use saga_kit::consumer::{Event, HandleError, Handler};
use tokio_postgres::Transaction;

use crate::events::{self, aggregate, kind, Payment, PaymentFailed};

/// What a payment request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnPayment {
    /// The order was charged or refused already.
    Nothing,
    /// Debit, CHARGED, `OrderPaid`.
    Charge,
    /// REFUSED, `OrderPaymentFailed{reason}`.
    Refuse(String),
}

/// Decides a payment request from whether the order has a charge row and the user's
/// balance (`None`: no such user).
pub fn on_payment(charged: bool, balance: Option<i64>, request: &Payment) -> OnPayment {
    if charged {
        return OnPayment::Nothing;
    }
    let amount = request.amount;
    match balance {
        None => OnPayment::Refuse(format!("user {} does not exist", request.user_id)),
        Some(b) if b >= amount => OnPayment::Charge,
        Some(b) => OnPayment::Refuse(format!("balance {b} is below amount {amount}")),
    }
}

/// The user service's [`Handler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UserSaga;

impl Handler for UserSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        match event.event_type.as_str() {
            kind::PAYMENT_REQUESTED => charge(tx, &event.parse()?).await?,
            other => {
                return Err(HandleError::permanent(format!(
                    "unknown event type {other:?} on {}: the checkout user service handles \
                     OrderPaymentRequested",
                    event.topic
                )))
            }
        }
        Ok(())
    }
}

async fn charge(tx: &Transaction<'_>, request: &Payment) -> Result<(), tokio_postgres::Error> {
    crate::lock::order(tx, request.order_id).await?;
    let charged = tx
        .query_opt(
            "SELECT 1 FROM charges WHERE order_id = $1",
            &[&request.order_id],
        )
        .await?
        .is_some();
    let balance: Option<i64> = if charged {
        None
    } else {
        tx.query_opt(
            "SELECT balance FROM users WHERE id = $1 FOR UPDATE",
            &[&request.user_id],
        )
        .await?
        .map(|r| r.get(0))
    };
    let decision = on_payment(charged, balance, request);
    let state = match &decision {
        OnPayment::Nothing => {
            tracing::info!("order charged or refused already; nothing to do");
            return Ok(());
        }
        OnPayment::Charge => "CHARGED",
        OnPayment::Refuse(_) => "REFUSED",
    };
    tx.execute(
        "INSERT INTO charges (order_id, user_id, amount, state) VALUES ($1, $2, $3, $4)",
        &[&request.order_id, &request.user_id, &request.amount, &state],
    )
    .await?;
    match decision {
        OnPayment::Charge => {
            let left: i64 = tx
                .query_one(
                    "UPDATE users SET balance = balance - $2 WHERE id = $1 RETURNING balance",
                    &[&request.user_id, &request.amount],
                )
                .await?
                .get(0);
            events::emit(
                tx,
                aggregate::PAYMENT_SUCCESS,
                kind::PAID,
                request.order_id,
                request,
            )
            .await?;
            tracing::info!(amount = request.amount, balance_left = left, "order paid");
        }
        OnPayment::Refuse(reason) => {
            let failed = PaymentFailed {
                order_id: request.order_id,
                user_id: request.user_id,
                amount: request.amount,
                reason,
            };
            events::emit(
                tx,
                aggregate::PAYMENT_FAIL,
                kind::PAYMENT_FAILED,
                request.order_id,
                &failed,
            )
            .await?;
            tracing::info!(reason = %failed.reason, "payment refused");
        }
        OnPayment::Nothing => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn request(amount: i64) -> Payment {
        Payment {
            order_id: Uuid::nil(),
            user_id: 5,
            amount,
        }
    }

    #[test]
    fn a_request_is_charged_when_the_balance_covers_it() {
        assert_eq!(
            on_payment(false, Some(100), &request(100)),
            OnPayment::Charge
        );
        assert_eq!(on_payment(false, Some(0), &request(0)), OnPayment::Charge);
        assert_eq!(
            on_payment(false, Some(99), &request(100)),
            OnPayment::Refuse("balance 99 is below amount 100".into())
        );
        assert_eq!(
            on_payment(false, None, &request(1)),
            OnPayment::Refuse("user 5 does not exist".into())
        );
    }

    #[test]
    fn an_order_is_charged_at_most_once() {
        assert_eq!(
            on_payment(true, Some(1000), &request(1)),
            OnPayment::Nothing
        );
        assert_eq!(on_payment(true, None, &request(1)), OnPayment::Nothing);
    }
}
