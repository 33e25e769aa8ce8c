//! The saga's wire contract, in one place, so the four services cannot disagree on it:
//! aggregate types (the relay routes each to topic `outbox.event.<aggregatetype>`), event
//! types (header `eventType`) and payloads (camelCase JSON).
//!
//! Every event is keyed by its order id (`aggregateid`, so one order's events keep their
//! order within a topic) and carries it as `correlation_id`.

use saga_kit::outbox::{self, OutboxEvent};
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;
use uuid::Uuid;

/// Aggregate types: the topic is `outbox.event.` followed by one of these.
pub mod aggregate {
    pub const PROCESSING: &str = "order.processing";
    pub const STOCK_SUCCESS: &str = "order.processing.stock.success";
    pub const COUPON_SUCCESS: &str = "order.processing.coupon.success";
    pub const PROCESSING_FAIL: &str = "order.processing.fail";
    pub const PROCESSING_SUCCESS: &str = "order.processing.success";
    pub const PAYMENT: &str = "order.payment";
    pub const PAYMENT_SUCCESS: &str = "order.payment.success";
    pub const PAYMENT_FAIL: &str = "order.payment.fail";
    pub const PROCESSED: &str = "order.processed";
}

/// The full topic names (`outbox.event.<aggregate>`), as consumers subscribe to them.
pub mod topic {
    pub const PROCESSING: &str = "outbox.event.order.processing";
    pub const STOCK_SUCCESS: &str = "outbox.event.order.processing.stock.success";
    pub const COUPON_SUCCESS: &str = "outbox.event.order.processing.coupon.success";
    pub const PROCESSING_FAIL: &str = "outbox.event.order.processing.fail";
    pub const PROCESSING_SUCCESS: &str = "outbox.event.order.processing.success";
    pub const PAYMENT: &str = "outbox.event.order.payment";
    pub const PAYMENT_SUCCESS: &str = "outbox.event.order.payment.success";
    pub const PAYMENT_FAIL: &str = "outbox.event.order.payment.fail";
    pub const PROCESSED: &str = "outbox.event.order.processed";
}

/// Event types (header `eventType`).
pub mod kind {
    pub const ORDER_PROCESSING: &str = "OrderProcessing";
    pub const STOCK_RESERVED: &str = "StockReserved";
    pub const COUPON_APPLIED: &str = "CouponApplied";
    pub const PROCESSING_FAILED: &str = "OrderProcessingFailed";
    pub const PROCESSING_SUCCEEDED: &str = "OrderProcessingSucceeded";
    pub const PAYMENT_REQUESTED: &str = "OrderPaymentRequested";
    pub const PAID: &str = "OrderPaid";
    pub const PAYMENT_FAILED: &str = "OrderPaymentFailed";
    pub const PROCESSED: &str = "OrderProcessed";
}

/// `OrderProcessing` (order → product, coupon): the order to fulfil.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderProcessing {
    pub order_id: Uuid,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub unit_price: i64,
    #[serde(default)]
    pub coupon_code: Option<String>,
}

/// `StockReserved` (product → order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    pub order_id: Uuid,
    pub product_id: i64,
    pub quantity: i32,
}

/// `CouponApplied` (coupon → order); an order without a coupon gets code `null`, 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponApplied {
    pub order_id: Uuid,
    pub coupon_code: Option<String>,
    pub discount: i64,
}

/// Who failed the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branch {
    Stock,
    Coupon,
    /// The order's own deadline passed before both branches answered.
    Deadline,
}

/// `OrderProcessingFailed` (product, coupon, or the order's deadline → everyone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingFailed {
    pub order_id: Uuid,
    pub branch: Branch,
    pub reason: String,
}

/// `OrderProcessingSucceeded`, `OrderPaymentRequested` and `OrderPaid`: the same fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub order_id: Uuid,
    pub user_id: i64,
    pub amount: i64,
}

/// `OrderPaymentFailed` (user → order, product, coupon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub user_id: i64,
    pub amount: i64,
    pub reason: String,
}

/// `OrderProcessed` (order → whoever reports on orders).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Processed {
    pub order_id: Uuid,
    pub user_id: i64,
    pub amount: i64,
    pub discount: i64,
}

/// What the user pays: `unit_price * quantity - discount`, never below 0 (and saturating
/// rather than overflowing on absurd inputs).
pub fn amount(unit_price: i64, quantity: i32, discount: i64) -> i64 {
    unit_price
        .saturating_mul(i64::from(quantity))
        .saturating_sub(discount)
        .max(0)
}

/// Writes one event of order `order_id` to the outbox in `tx`: keyed and correlated by the
/// order id.
pub async fn emit(
    tx: &Transaction<'_>,
    aggregate_type: &str,
    event_type: &str,
    order_id: Uuid,
    payload: &impl Serialize,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = order_id.to_string();
    let payload = serde_json::to_value(payload).expect("event payloads serialise");
    outbox::write(
        tx,
        &OutboxEvent {
            aggregate_type,
            aggregate_id: id.clone(),
            event_type,
            correlation_id: &id,
            payload,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_are_the_relay_routes_of_the_aggregate_types() {
        let pairs = [
            (aggregate::PROCESSING, topic::PROCESSING),
            (aggregate::STOCK_SUCCESS, topic::STOCK_SUCCESS),
            (aggregate::COUPON_SUCCESS, topic::COUPON_SUCCESS),
            (aggregate::PROCESSING_FAIL, topic::PROCESSING_FAIL),
            (aggregate::PROCESSING_SUCCESS, topic::PROCESSING_SUCCESS),
            (aggregate::PAYMENT, topic::PAYMENT),
            (aggregate::PAYMENT_SUCCESS, topic::PAYMENT_SUCCESS),
            (aggregate::PAYMENT_FAIL, topic::PAYMENT_FAIL),
            (aggregate::PROCESSED, topic::PROCESSED),
        ];
        for (aggregate, topic) in pairs {
            assert_eq!(format!("outbox.event.{aggregate}"), topic);
        }
    }

    #[test]
    fn payloads_are_camel_case() {
        let id = Uuid::nil();
        let failed = ProcessingFailed {
            order_id: id,
            branch: Branch::Deadline,
            reason: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({ "orderId": id, "branch": "deadline", "reason": "r" })
        );
        let applied = CouponApplied {
            order_id: id,
            coupon_code: None,
            discount: 0,
        };
        assert_eq!(
            serde_json::to_value(&applied).unwrap(),
            json!({ "orderId": id, "couponCode": null, "discount": 0 })
        );
        let processing: OrderProcessing = serde_json::from_value(json!({
            "orderId": id, "userId": 1, "productId": 2, "quantity": 3, "unitPrice": 4
        }))
        .unwrap();
        assert_eq!(processing.coupon_code, None);
        assert!(serde_json::from_value::<ProcessingFailed>(
            json!({ "orderId": id, "branch": "weather", "reason": "r" })
        )
        .is_err());
    }

    #[test]
    fn the_amount_never_goes_below_zero_or_overflows() {
        assert_eq!(amount(100, 3, 50), 250);
        assert_eq!(amount(100, 3, 0), 300);
        assert_eq!(amount(10, 1, 500), 0);
        assert_eq!(amount(i64::MAX, 2, 0), i64::MAX);
        assert_eq!(amount(i64::MAX, 2, i64::MAX), 0);
    }
}
