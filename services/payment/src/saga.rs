//! How the payment service reacts to the points service: close the payment, or
//! compensate it (refund), or flag a compensation that failed.
//!
//! A payment leaves PENDING once, and only from PENDING (`WHERE status = 'PENDING'`), so a
//! late or repeated answer is harmless even beyond the inbox's guarantee.

use saga_kit::consumer::{Event, HandleError, Handler};
use saga_kit::outbox::{self, OutboxEvent};
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::gateway::CardGateway;

/// `PointsRewarded`: `{"paymentId", "userId", "points"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rewarded {
    payment_id: Uuid,
    points: i64,
}

/// `PointsRewardFailed`: `{"paymentId", "userId", "reason"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RewardFailed {
    payment_id: Uuid,
    reason: String,
}

/// The payment service's [`Handler`].
#[derive(Debug, Clone)]
pub struct PaymentSaga {
    gateway: CardGateway,
}

impl PaymentSaga {
    pub fn new(gateway: CardGateway) -> PaymentSaga {
        PaymentSaga { gateway }
    }
}

impl Handler for PaymentSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        match event.event_type.as_str() {
            "PointsRewarded" => complete(tx, &event.parse()?).await,
            "PointsRewardFailed" => {
                compensate(tx, &self.gateway, &event.parse()?, &event.correlation_id).await
            }
            // No other type belongs on this topic: a record of one is dead-lettered.
            other => Err(HandleError::permanent(format!(
                "unknown event type {other:?} on {}: the payment service handles PointsRewarded and PointsRewardFailed",
                event.topic
            ))),
        }
    }
}

async fn complete(tx: &Transaction<'_>, rewarded: &Rewarded) -> Result<(), HandleError> {
    let changed = tx
        .execute(
            "UPDATE payments SET status = 'COMPLETED', points = $2, updated_at = now() \
             WHERE id = $1 AND status = 'PENDING'",
            &[&rewarded.payment_id, &rewarded.points],
        )
        .await?;
    if changed == 1 {
        tracing::info!(
            points = rewarded.points,
            "payment completed (points rewarded)"
        );
    } else {
        tracing::warn!("payment not pending (unknown or already closed); nothing to do");
    }
    Ok(())
}

/// Points were refused: give the money back. A refund the gateway declines for good is
/// not retried: the payment is flagged for an operator, and the saga says so.
async fn compensate(
    tx: &Transaction<'_>,
    gateway: &CardGateway,
    failed: &RewardFailed,
    correlation_id: &str,
) -> Result<(), HandleError> {
    let row = tx
        .query_opt(
            "SELECT card, amount FROM payments WHERE id = $1 AND status = 'PENDING' FOR UPDATE",
            &[&failed.payment_id],
        )
        .await?;
    let Some(row) = row else {
        tracing::warn!("payment not pending (unknown or already closed); nothing to compensate");
        return Ok(());
    };
    let (card, amount): (String, i64) = (row.get(0), row.get(1));
    let declined = gateway.refuses_refund(&card);
    let (status, event_type, reason) = match &declined {
        None => (
            "REFUNDED",
            "PaymentRefunded",
            format!("points refused: {}", failed.reason),
        ),
        Some(why) => (
            "NEEDS_ATTENTION",
            "CompensationFailed",
            format!("points refused: {}; refund failed: {why}", failed.reason),
        ),
    };
    tx.execute(
        "UPDATE payments SET status = $2, reason = $3, updated_at = now() WHERE id = $1",
        &[&failed.payment_id, &status, &reason],
    )
    .await?;
    let event = OutboxEvent {
        aggregate_type: crate::AGGREGATE,
        aggregate_id: failed.payment_id.to_string(),
        event_type,
        correlation_id,
        payload: json!({
            "paymentId": failed.payment_id,
            "refundAmount": amount,
            "reason": reason,
        }),
    };
    outbox::write(tx, &event).await?;
    match declined {
        None => tracing::info!(amount, %reason, "payment refunded (compensation)"),
        Some(_) => {
            // Counted before the commit: a transaction that then fails is retried, and the
            // retry counts again. Rare (a database error at commit), and an over-count
            // errs on the side of an operator looking.
            metrics::counter!("saga_compensation_failed_total", "saga" => crate::SAGA).increment(1);
            tracing::error!(amount, %reason, "compensation failed: the payment needs an operator");
        }
    }
    Ok(())
}
