//! How the coupon service reacts: claim the order's coupon, release it when the order
//! fails elsewhere.
//!
//! Each order has at most one `coupon_claims` row, and every reaction first takes the
//! order's lock (`crate::lock`), reads the row (or its absence), decides with a pure
//! function, and writes; the coupon row itself is locked (`FOR UPDATE`) while it is
//! claimed, so two orders racing for one coupon take turns and the second is refused.
//! An order without a coupon gets a CLAIMED row with code NULL, so it too is answered
//! once.

use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::branch::BranchWork;
use crate::events::{
    self, aggregate, kind, Branch, CouponApplied, OrderProcessing, ProcessingFailed,
};

/// A `coupon_claims` row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    Released,
    Refused,
    Void,
}

impl Claim {
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::Claimed => "CLAIMED",
            Claim::Released => "RELEASED",
            Claim::Refused => "REFUSED",
            Claim::Void => "VOID",
        }
    }

    pub fn parse(raw: &str) -> Option<Claim> {
        [Claim::Claimed, Claim::Released, Claim::Refused, Claim::Void]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// A coupon as its row says: the discount, and the order holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coupon {
    pub discount: i64,
    pub used_by: Option<Uuid>,
}

/// What `OrderProcessing` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnOrder {
    /// The order was answered (or voided) already.
    Nothing(Claim),
    /// No coupon: CLAIMED with code NULL, `CouponApplied{null, 0}`.
    NoCoupon,
    /// Mark the coupon used by the order, CLAIMED, `CouponApplied{code, discount}`.
    Use { discount: i64 },
    /// REFUSED, `OrderProcessingFailed{branch: "coupon", reason}`.
    Refuse(String),
}

/// Decides `OrderProcessing` from the order's claim (if any), its coupon code and that
/// coupon's row (`None`: no such coupon).
pub fn on_order(
    existing: Option<Claim>,
    order_id: Uuid,
    code: Option<&str>,
    coupon: Option<Coupon>,
) -> OnOrder {
    if let Some(claim) = existing {
        return OnOrder::Nothing(claim);
    }
    let Some(code) = code else {
        return OnOrder::NoCoupon;
    };
    match coupon {
        None => OnOrder::Refuse(format!("coupon {code} does not exist")),
        Some(Coupon {
            used_by: Some(holder),
            ..
        }) if holder != order_id => OnOrder::Refuse(format!("coupon {code} is already used")),
        Some(Coupon { discount, .. }) => OnOrder::Use { discount },
    }
}

/// What a compensation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCompensate {
    /// Make the coupon (if any) unused again, RELEASED.
    Release,
    /// No row yet: insert VOID, so a late `OrderProcessing` claims nothing.
    Void,
    /// Refused, released or void already.
    Nothing,
}

/// Decides a compensation from the order's claim.
pub fn on_compensate(existing: Option<Claim>) -> OnCompensate {
    match existing {
        None => OnCompensate::Void,
        Some(Claim::Claimed) => OnCompensate::Release,
        Some(Claim::Released | Claim::Refused | Claim::Void) => OnCompensate::Nothing,
    }
}

/// The coupon service's part of an order, for [`crate::branch::BranchSaga`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Coupons;

impl BranchWork for Coupons {
    const BRANCH: Branch = Branch::Coupon;
    const SERVICE: &'static str = "checkout coupon service";

    async fn take(
        &self,
        tx: &Transaction<'_>,
        order: &OrderProcessing,
    ) -> Result<(), tokio_postgres::Error> {
        claim(tx, order).await
    }

    async fn undo(
        &self,
        tx: &Transaction<'_>,
        order_id: Uuid,
    ) -> Result<(), tokio_postgres::Error> {
        compensate(tx, order_id).await
    }
}

async fn existing_claim(
    tx: &Transaction<'_>,
    order_id: Uuid,
) -> Result<Option<(Claim, Option<String>)>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT state, code FROM coupon_claims WHERE order_id = $1",
            &[&order_id],
        )
        .await?;
    Ok(row.and_then(|r| Some((Claim::parse(r.get(0))?, r.get(1)))))
}

async fn claim(tx: &Transaction<'_>, order: &OrderProcessing) -> Result<(), tokio_postgres::Error> {
    crate::lock::order(tx, order.order_id).await?;
    let existing = existing_claim(tx, order.order_id).await?.map(|(c, _)| c);
    let code = order.coupon_code.as_deref();
    let coupon = match (existing, code) {
        (None, Some(code)) => tx
            .query_opt(
                "SELECT discount, used_by FROM coupons WHERE code = $1 FOR UPDATE",
                &[&code],
            )
            .await?
            .map(|r| Coupon {
                discount: r.get(0),
                used_by: r.get(1),
            }),
        _ => None,
    };
    let decision = on_order(existing, order.order_id, code, coupon);
    let (state, discount) = match &decision {
        OnOrder::Nothing(claim) => {
            tracing::info!(
                state = claim.as_str(),
                "order already answered or void; nothing to do"
            );
            return Ok(());
        }
        OnOrder::NoCoupon => (Claim::Claimed, 0),
        OnOrder::Use { discount } => (Claim::Claimed, *discount),
        OnOrder::Refuse(_) => (Claim::Refused, 0),
    };
    tx.execute(
        "INSERT INTO coupon_claims (order_id, code, state) VALUES ($1, $2, $3)",
        &[&order.order_id, &code, &state.as_str()],
    )
    .await?;
    match decision {
        OnOrder::NoCoupon | OnOrder::Use { .. } => {
            if matches!(decision, OnOrder::Use { .. }) {
                tx.execute(
                    "UPDATE coupons SET used_by = $2 WHERE code = $1",
                    &[&code, &order.order_id],
                )
                .await?;
            }
            let applied = CouponApplied {
                order_id: order.order_id,
                coupon_code: order.coupon_code.clone(),
                discount,
            };
            events::emit(
                tx,
                aggregate::COUPON_SUCCESS,
                kind::COUPON_APPLIED,
                order.order_id,
                &applied,
            )
            .await?;
            tracing::info!(code = ?applied.coupon_code, discount, "coupon applied");
        }
        OnOrder::Refuse(reason) => {
            let failed = ProcessingFailed {
                order_id: order.order_id,
                branch: Branch::Coupon,
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
            tracing::info!(reason = %failed.reason, "coupon refused");
        }
        OnOrder::Nothing(_) => {}
    }
    Ok(())
}

async fn compensate(tx: &Transaction<'_>, order_id: Uuid) -> Result<(), tokio_postgres::Error> {
    crate::lock::order(tx, order_id).await?;
    let existing = existing_claim(tx, order_id).await?;
    match on_compensate(existing.as_ref().map(|(c, _)| *c)) {
        OnCompensate::Void => {
            tx.execute(
                "INSERT INTO coupon_claims (order_id, state) VALUES ($1, 'VOID')",
                &[&order_id],
            )
            .await?;
            tracing::info!("order failed before it reached the coupon branch: VOID");
        }
        OnCompensate::Release => {
            let code = existing.and_then(|(_, code)| code);
            tx.execute(
                "UPDATE coupon_claims SET state = 'RELEASED' WHERE order_id = $1",
                &[&order_id],
            )
            .await?;
            if let Some(code) = &code {
                tx.execute(
                    "UPDATE coupons SET used_by = NULL WHERE code = $1 AND used_by = $2",
                    &[code, &order_id],
                )
                .await?;
            }
            tracing::info!(?code, "coupon released (compensation)");
        }
        OnCompensate::Nothing => tracing::info!("no coupon claimed to release"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);

    fn coupon(used_by: Option<Uuid>) -> Option<Coupon> {
        Some(Coupon {
            discount: 300,
            used_by,
        })
    }

    #[test]
    fn an_unused_coupon_is_claimed_and_an_order_without_one_is_answered() {
        assert_eq!(
            on_order(None, ORDER, Some("C"), coupon(None)),
            OnOrder::Use { discount: 300 }
        );
        assert_eq!(on_order(None, ORDER, None, None), OnOrder::NoCoupon);
    }

    #[test]
    fn a_used_or_unknown_coupon_is_refused() {
        assert_eq!(
            on_order(None, ORDER, Some("C"), coupon(Some(OTHER))),
            OnOrder::Refuse("coupon C is already used".into())
        );
        assert_eq!(
            on_order(None, ORDER, Some("C"), None),
            OnOrder::Refuse("coupon C does not exist".into())
        );
    }

    #[test]
    fn an_order_is_answered_once_and_never_after_it_was_voided() {
        for claim in [Claim::Claimed, Claim::Released, Claim::Refused, Claim::Void] {
            assert_eq!(
                on_order(Some(claim), ORDER, Some("C"), coupon(None)),
                OnOrder::Nothing(claim)
            );
            assert_eq!(
                on_order(Some(claim), ORDER, None, None),
                OnOrder::Nothing(claim)
            );
        }
    }

    #[test]
    fn compensation_releases_only_a_claim_once() {
        assert_eq!(on_compensate(Some(Claim::Claimed)), OnCompensate::Release);
        assert_eq!(on_compensate(None), OnCompensate::Void);
        for claim in [Claim::Released, Claim::Refused, Claim::Void] {
            assert_eq!(on_compensate(Some(claim)), OnCompensate::Nothing);
        }
    }
}
