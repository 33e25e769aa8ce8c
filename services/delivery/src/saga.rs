//! How the delivery service reacts: collect address and reservation, then decide once.

use saga_kit::consumer::{Event, HandleError, Handler};
use saga_kit::outbox::{self, OutboxEvent};
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::rule::DeliveryRule;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCreated {
    order_id: Uuid,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProductDecreased {
    order_id: Uuid,
    product_id: i64,
    quantity: i32,
    success: bool,
}

/// The delivery service's [`Handler`].
#[derive(Debug, Clone)]
pub struct DeliverySaga {
    pub rule: DeliveryRule,
}

impl Handler for DeliverySaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        let order_id = match event.event_type.as_str() {
            "OrderCreated" => {
                let order: OrderCreated = event.parse()?;
                tx.execute(
                    "INSERT INTO delivery_requests (order_id, address) VALUES ($1, $2) \
                     ON CONFLICT (order_id) DO UPDATE SET address = EXCLUDED.address",
                    &[&order.order_id, &order.address],
                )
                .await?;
                order.order_id
            }
            "ProductDecreased" => {
                let decreased: ProductDecreased = event.parse()?;
                if !decreased.success {
                    // No stock, no delivery: the order service cancels the order itself.
                    return Ok(());
                }
                tx.execute(
                    "INSERT INTO delivery_requests (order_id, product_id, quantity, stock_reserved) \
                     VALUES ($1, $2, $3, true) ON CONFLICT (order_id) DO UPDATE SET \
                     product_id = EXCLUDED.product_id, quantity = EXCLUDED.quantity, stock_reserved = true",
                    &[&decreased.order_id, &decreased.product_id, &decreased.quantity],
                )
                .await?;
                decreased.order_id
            }
            _ => return Ok(()),
        };
        self.decide(tx, order_id, &event.correlation_id).await
    }
}

impl DeliverySaga {
    /// Once the address and the reservation are both known, and only the first time:
    /// deliver, or fail and ask for the stock back.
    async fn decide(
        &self,
        tx: &Transaction<'_>,
        order_id: Uuid,
        correlation_id: &str,
    ) -> Result<(), HandleError> {
        let ready = tx
            .query_opt(
                "UPDATE delivery_requests SET decided = true \
                 WHERE order_id = $1 AND address IS NOT NULL AND stock_reserved AND NOT decided \
                 RETURNING address, product_id, quantity",
                &[&order_id],
            )
            .await?;
        let Some(row) = ready else {
            return Ok(()); // Still waiting for the other half, or already decided.
        };
        let (address, product_id, quantity): (String, i64, i32) =
            (row.get(0), row.get(1), row.get(2));
        let order_key = order_id.to_string();
        let outcome = match self.rule.refuses(&address) {
            None => {
                let delivery_id = Uuid::new_v4();
                tx.execute(
                    "INSERT INTO deliveries (id, order_id, address) VALUES ($1, $2, $3)",
                    &[&delivery_id, &order_id, &address],
                )
                .await?;
                tracing::info!(%delivery_id, "delivery created");
                json!({ "orderId": order_id, "deliveryId": delivery_id, "success": true, "reason": null })
            }
            Some(reason) => {
                tracing::info!(%reason, "delivery failed; asking for the stock back");
                let command = OutboxEvent {
                    aggregate_type: "product-command",
                    aggregate_id: product_id.to_string(),
                    event_type: "IncreaseProductCommand",
                    correlation_id,
                    payload: json!({ "orderId": order_id, "productId": product_id, "quantity": quantity }),
                };
                outbox::write(tx, &command).await?;
                json!({ "orderId": order_id, "deliveryId": null, "success": false, "reason": reason })
            }
        };
        let event = OutboxEvent {
            aggregate_type: "delivery",
            aggregate_id: order_key,
            event_type: "DeliveryCreated",
            correlation_id,
            payload: outcome,
        };
        outbox::write(tx, &event).await?;
        Ok(())
    }
}
