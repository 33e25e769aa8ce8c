//! How the product service reacts: reserve stock for a new order, give it back on command.

use saga_kit::consumer::{Event, HandleError, Handler};
use saga_kit::outbox::{self, OutboxEvent};
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Transaction;
use uuid::Uuid;

/// The part of `OrderCreated` and `IncreaseProductCommand` payloads this service reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderLine {
    order_id: Uuid,
    product_id: i64,
    quantity: i32,
}

/// The product service's [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct ProductSaga;

impl Handler for ProductSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        match event.event_type.as_str() {
            "OrderCreated" => reserve(tx, &event.parse()?, &event.correlation_id).await,
            "IncreaseProductCommand" => release(tx, &event.parse()?).await,
            _ => Ok(()),
        }
    }
}

/// Takes the order's quantity from stock if there is enough, and says how it went.
async fn reserve(
    tx: &Transaction<'_>,
    line: &OrderLine,
    correlation_id: &str,
) -> Result<(), HandleError> {
    // Atomic check-and-decrement: the row lock serialises concurrent orders for a product.
    let taken = tx
        .query_opt(
            "UPDATE products SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING stock",
            &[&line.product_id, &line.quantity],
        )
        .await?;
    let failure = match taken {
        Some(row) => {
            tx.execute(
                "INSERT INTO reservations (order_id, product_id, quantity) VALUES ($1, $2, $3)",
                &[&line.order_id, &line.product_id, &line.quantity],
            )
            .await?;
            tracing::info!(stock_left = row.get::<_, i32>(0), "stock reserved");
            None
        }
        None => {
            let known = tx
                .query_opt("SELECT 1 FROM products WHERE id = $1", &[&line.product_id])
                .await?
                .is_some();
            Some(if known {
                "out of stock"
            } else {
                "unknown product"
            })
        }
    };
    if let Some(reason) = failure {
        tracing::info!(reason, "stock not reserved");
    }
    let event = OutboxEvent {
        aggregate_type: crate::AGGREGATE,
        aggregate_id: line.order_id.to_string(),
        event_type: "ProductDecreased",
        correlation_id,
        payload: json!({
            "orderId": line.order_id,
            "productId": line.product_id,
            "quantity": line.quantity,
            "success": failure.is_none(),
            "reason": failure,
        }),
    };
    outbox::write(tx, &event).await?;
    Ok(())
}

/// Gives an order's reservation back to stock, once (compensation).
async fn release(tx: &Transaction<'_>, line: &OrderLine) -> Result<(), HandleError> {
    let released = tx
        .query_opt(
            "UPDATE reservations SET released = true WHERE order_id = $1 AND NOT released \
             RETURNING product_id, quantity",
            &[&line.order_id],
        )
        .await?;
    let Some(row) = released else {
        tracing::warn!("no open reservation for this order; nothing to give back");
        return Ok(());
    };
    let (product_id, quantity): (i64, i32) = (row.get(0), row.get(1));
    let stock: i32 = tx
        .query_one(
            "UPDATE products SET stock = stock + $2 WHERE id = $1 RETURNING stock",
            &[&product_id, &quantity],
        )
        .await?
        .get(0);
    tracing::info!(product_id, quantity, stock, "stock restored (compensation)");
    Ok(())
}
