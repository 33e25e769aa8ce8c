//! How the product service reacts: reserve stock for an order, give it back when the
//! order fails elsewhere.
//!
//! Each order has at most one `stock_reservations` row, and every reaction first takes
//! the order's lock (`crate::lock`), reads the row (or its absence), decides with a pure
//! function, and writes. So, in any arrival order:
//! - `OrderProcessing` reserves or refuses once; a second one (another event id) finds
//!   the row and does nothing;
//! - a compensation before the `OrderProcessing` writes VOID, and the late
//!   `OrderProcessing` then does nothing (no stock is taken for a dead order);
//! - a compensation gives back exactly what was taken, once (RESERVED → RESTORED).
//!
//! Stock is taken with the product row locked (`FOR UPDATE`), so concurrent orders for
//! one product never oversell; the table's `CHECK (stock >= 0)` is the last line.

use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::branch::BranchWork;
use crate::events::{
    self, aggregate, kind, Branch, OrderProcessing, ProcessingFailed, StockReserved,
};

/// A `stock_reservations` row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    Restored,
    Refused,
    Void,
}

impl Reservation {
    pub fn as_str(self) -> &'static str {
        match self {
            Reservation::Reserved => "RESERVED",
            Reservation::Restored => "RESTORED",
            Reservation::Refused => "REFUSED",
            Reservation::Void => "VOID",
        }
    }

    pub fn parse(raw: &str) -> Option<Reservation> {
        [
            Reservation::Reserved,
            Reservation::Restored,
            Reservation::Refused,
            Reservation::Void,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// What `OrderProcessing` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnOrder {
    /// The order was answered (or voided) already.
    Nothing(Reservation),
    /// Take the quantity, RESERVED, `StockReserved`.
    Reserve,
    /// REFUSED, `OrderProcessingFailed{branch: "stock", reason}`.
    Refuse(String),
}

/// Decides `OrderProcessing` from the order's reservation (if any) and the product's
/// stock (`None`: no such product).
pub fn on_order(
    existing: Option<Reservation>,
    stock: Option<i32>,
    order: &OrderProcessing,
) -> OnOrder {
    if let Some(state) = existing {
        return OnOrder::Nothing(state);
    }
    let (product, wanted) = (order.product_id, order.quantity);
    match stock {
        None => OnOrder::Refuse(format!("product {product} does not exist")),
        Some(have) if have >= wanted => OnOrder::Reserve,
        Some(have) => OnOrder::Refuse(format!(
            "product {product}: out of stock (wanted {wanted}, have {have})"
        )),
    }
}

/// What a compensation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCompensate {
    /// Give the stock back, RESTORED.
    Restore,
    /// No row yet: insert VOID, so a late `OrderProcessing` reserves nothing.
    Void,
    /// Refused, restored or void already.
    Nothing,
}

/// Decides a compensation from the order's reservation.
pub fn on_compensate(existing: Option<Reservation>) -> OnCompensate {
    match existing {
        None => OnCompensate::Void,
        Some(Reservation::Reserved) => OnCompensate::Restore,
        Some(Reservation::Restored | Reservation::Refused | Reservation::Void) => {
            OnCompensate::Nothing
        }
    }
}

/// The product service's part of an order, for [`crate::branch::BranchSaga`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stock;

impl BranchWork for Stock {
    const BRANCH: Branch = Branch::Stock;
    const SERVICE: &'static str = "checkout product service";

    async fn take(
        &self,
        tx: &Transaction<'_>,
        order: &OrderProcessing,
    ) -> Result<(), tokio_postgres::Error> {
        reserve(tx, order).await
    }

    async fn undo(
        &self,
        tx: &Transaction<'_>,
        order_id: Uuid,
    ) -> Result<(), tokio_postgres::Error> {
        compensate(tx, order_id).await
    }
}

async fn reservation(
    tx: &Transaction<'_>,
    order_id: Uuid,
) -> Result<Option<(Reservation, Option<i64>, Option<i32>)>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT state, product_id, quantity FROM stock_reservations WHERE order_id = $1",
            &[&order_id],
        )
        .await?;
    Ok(row.and_then(|r| {
        let state = Reservation::parse(r.get(0))?;
        Some((state, r.get(1), r.get(2)))
    }))
}

async fn reserve(
    tx: &Transaction<'_>,
    order: &OrderProcessing,
) -> Result<(), tokio_postgres::Error> {
    crate::lock::order(tx, order.order_id).await?;
    let existing = reservation(tx, order.order_id).await?.map(|(s, ..)| s);
    let stock: Option<i32> = tx
        .query_opt(
            "SELECT stock FROM products WHERE id = $1 FOR UPDATE",
            &[&order.product_id],
        )
        .await?
        .map(|r| r.get(0));
    let decision = on_order(existing, stock, order);
    let state = match &decision {
        OnOrder::Nothing(state) => {
            tracing::info!(
                state = state.as_str(),
                "order already answered or void; nothing to do"
            );
            return Ok(());
        }
        OnOrder::Reserve => Reservation::Reserved,
        OnOrder::Refuse(_) => Reservation::Refused,
    };
    tx.execute(
        "INSERT INTO stock_reservations (order_id, product_id, quantity, state) \
         VALUES ($1, $2, $3, $4)",
        &[
            &order.order_id,
            &order.product_id,
            &order.quantity,
            &state.as_str(),
        ],
    )
    .await?;
    match decision {
        OnOrder::Reserve => {
            let left: i32 = tx
                .query_one(
                    "UPDATE products SET stock = stock - $2 WHERE id = $1 RETURNING stock",
                    &[&order.product_id, &order.quantity],
                )
                .await?
                .get(0);
            let reserved = StockReserved {
                order_id: order.order_id,
                product_id: order.product_id,
                quantity: order.quantity,
            };
            events::emit(
                tx,
                aggregate::STOCK_SUCCESS,
                kind::STOCK_RESERVED,
                order.order_id,
                &reserved,
            )
            .await?;
            tracing::info!(stock_left = left, "stock reserved");
        }
        OnOrder::Refuse(reason) => {
            let failed = ProcessingFailed {
                order_id: order.order_id,
                branch: Branch::Stock,
                reason,
            };
            events::emit(
                tx,
                aggregate::PROCESSING_FAIL,
                kind::PROCESSING_FAILED,
                order.order_id,
                &failed,
            )
            .await?;
            tracing::info!(reason = %failed.reason, "stock refused");
        }
        OnOrder::Nothing(_) => {}
    }
    Ok(())
}

async fn compensate(tx: &Transaction<'_>, order_id: Uuid) -> Result<(), tokio_postgres::Error> {
    crate::lock::order(tx, order_id).await?;
    let existing = reservation(tx, order_id).await?;
    match on_compensate(existing.map(|(s, ..)| s)) {
        OnCompensate::Void => {
            tx.execute(
                "INSERT INTO stock_reservations (order_id, state) VALUES ($1, 'VOID')",
                &[&order_id],
            )
            .await?;
            tracing::info!("order failed before it reached the stock branch: VOID");
        }
        OnCompensate::Restore => {
            let (_, product_id, quantity) = existing.expect("a reserved row");
            tx.execute(
                "UPDATE stock_reservations SET state = 'RESTORED' WHERE order_id = $1",
                &[&order_id],
            )
            .await?;
            let stock: i32 = tx
                .query_one(
                    "UPDATE products SET stock = stock + $2 WHERE id = $1 RETURNING stock",
                    &[&product_id, &quantity],
                )
                .await?
                .get(0);
            tracing::info!(
                ?product_id,
                ?quantity,
                stock,
                "stock restored (compensation)"
            );
        }
        OnCompensate::Nothing => {
            tracing::info!("nothing reserved to give back");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(quantity: i32) -> OrderProcessing {
        OrderProcessing {
            order_id: Uuid::nil(),
            user_id: 1,
            product_id: 7,
            quantity,
            unit_price: 10,
            coupon_code: None,
        }
    }

    #[test]
    fn an_order_is_reserved_when_the_stock_suffices() {
        assert_eq!(on_order(None, Some(3), &order(3)), OnOrder::Reserve);
        assert_eq!(
            on_order(None, Some(2), &order(3)),
            OnOrder::Refuse("product 7: out of stock (wanted 3, have 2)".into())
        );
        assert_eq!(
            on_order(None, None, &order(1)),
            OnOrder::Refuse("product 7 does not exist".into())
        );
    }

    #[test]
    fn an_order_is_answered_once_and_never_after_it_was_voided() {
        for state in [
            Reservation::Reserved,
            Reservation::Restored,
            Reservation::Refused,
            Reservation::Void,
        ] {
            assert_eq!(
                on_order(Some(state), Some(100), &order(1)),
                OnOrder::Nothing(state)
            );
        }
    }

    #[test]
    fn compensation_gives_back_only_what_was_taken_once() {
        assert_eq!(
            on_compensate(Some(Reservation::Reserved)),
            OnCompensate::Restore
        );
        assert_eq!(on_compensate(None), OnCompensate::Void);
        for state in [
            Reservation::Restored,
            Reservation::Refused,
            Reservation::Void,
        ] {
            assert_eq!(on_compensate(Some(state)), OnCompensate::Nothing);
        }
    }

    #[test]
    fn states_round_trip() {
        for state in [
            Reservation::Reserved,
            Reservation::Restored,
            Reservation::Refused,
            Reservation::Void,
        ] {
            assert_eq!(Reservation::parse(state.as_str()), Some(state));
        }
    }
}
