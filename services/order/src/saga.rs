//! How the order service reacts to the saga's outcome events.
//!
//! An order leaves PENDING once, and only from PENDING: the `WHERE status = 'PENDING'`
//! makes a late or repeated outcome harmless even beyond the inbox's guarantee.

use saga_kit::consumer::{Event, HandleError, Handler};
use serde::Deserialize;
use tokio_postgres::Transaction;
use uuid::Uuid;

/// The outcome part of `DeliveryCreated` and `ProductDecreased` payloads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    order_id: Uuid,
    success: bool,
    reason: Option<String>,
}

/// The order service's [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct OrderSaga;

impl Handler for OrderSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        let status = match event.event_type.as_str() {
            "DeliveryCreated" | "ProductDecreased" => {
                let outcome: Outcome = event.parse()?;
                match (event.event_type.as_str(), outcome.success) {
                    ("DeliveryCreated", true) => ("COMPLETED", outcome),
                    (_, false) => ("CANCELLED", outcome),
                    // Stock reserved: the delivery's outcome decides.
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        let (status, outcome) = status;
        let changed = tx
            .execute(
                "UPDATE orders SET status = $2, reason = $3, updated_at = now() \
                 WHERE id = $1 AND status = 'PENDING'",
                &[&outcome.order_id, &status, &outcome.reason],
            )
            .await?;
        if changed == 1 {
            tracing::info!(status, reason = ?outcome.reason, "order closed");
        } else {
            tracing::warn!(
                status,
                "order not pending (unknown or already closed); nothing to do"
            );
        }
        Ok(())
    }
}
