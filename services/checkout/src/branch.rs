//! What the two branch services, product (stock) and coupon, share: the events they
//! read, how each is dispatched, and how a branch service starts.
//!
//! Both branches have the same shape, as the seed's table 3.2 gives it: take their part
//! of an `OrderProcessing` (or refuse it), and undo it when the order fails anywhere
//! else, on an `OrderProcessingFailed` of another branch or the deadline, or on an
//! `OrderPaymentFailed`. Only the part itself differs, so each service implements
//! [`BranchWork`] (its SQL and its pure decisions stay in its own module) and
//! [`BranchSaga`] does the rest.

use std::future::Future;

use axum::Router;
use saga_kit::config::ServiceConfig;
use saga_kit::consumer::{Event, HandleError, Handler};
use saga_kit::db::Pool;
use saga_kit::service::{Running, ServiceError};
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{kind, topic, Branch, OrderProcessing, PaymentFailed, ProcessingFailed};
use crate::settings::BranchSettings;

/// New orders, and the failures that compensate them.
pub const TOPICS: [&str; 3] = [
    topic::PROCESSING,
    topic::PROCESSING_FAIL,
    topic::PAYMENT_FAIL,
];

/// One branch's own part of an order, inside the consumer's transaction.
pub trait BranchWork: Send + Sync + 'static {
    /// Which branch this is.
    const BRANCH: Branch;
    /// The service's name, for the error that names an event type it does not handle.
    const SERVICE: &'static str;

    /// Takes this branch's part of `order` and answers (success or
    /// `OrderProcessingFailed`), once per order.
    fn take(
        &self,
        tx: &Transaction<'_>,
        order: &OrderProcessing,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;

    /// Gives back what [`BranchWork::take`] took for `order_id`, once; if the order was
    /// not seen yet, records that it is void so a late `OrderProcessing` takes nothing.
    fn undo(
        &self,
        tx: &Transaction<'_>,
        order_id: Uuid,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;
}

/// Whether an `OrderProcessingFailed` of branch `failed` compensates branch `own`: every
/// failure but its own (a refusal took nothing).
pub fn compensates(own: Branch, failed: Branch) -> bool {
    failed != own
}

/// The [`Handler`] of a branch service: dispatches the three event types to its work.
#[derive(Debug, Clone, Copy, Default)]
pub struct BranchSaga<W> {
    work: W,
    settings: BranchSettings,
}

impl<W: BranchWork> BranchSaga<W> {
    pub fn new(work: W, settings: BranchSettings) -> BranchSaga<W> {
        BranchSaga { work, settings }
    }
}

impl<W: BranchWork> Handler for BranchSaga<W> {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        match event.event_type.as_str() {
            kind::ORDER_PROCESSING => {
                let order: OrderProcessing = event.parse()?;
                self.settings.delay().await;
                self.work.take(tx, &order).await?;
            }
            kind::PROCESSING_FAILED => {
                let failed: ProcessingFailed = event.parse()?;
                self.settings.delay().await;
                if compensates(W::BRANCH, failed.branch) {
                    self.work.undo(tx, failed.order_id).await?;
                } else {
                    tracing::info!("this branch's own failure; nothing to undo");
                }
            }
            kind::PAYMENT_FAILED => {
                let failed: PaymentFailed = event.parse()?;
                self.settings.delay().await;
                self.work.undo(tx, failed.order_id).await?;
            }
            other => {
                return Err(HandleError::permanent(format!(
                    "unknown event type {other:?} on {}: the {} handles OrderProcessing, \
                     OrderProcessingFailed and OrderPaymentFailed",
                    event.topic,
                    W::SERVICE
                )))
            }
        }
        Ok(())
    }
}

/// Connects, migrates `migration`, and starts `routes` and a consumer of [`TOPICS`]
/// applying events with `work`.
pub async fn start<W: BranchWork>(
    config: ServiceConfig,
    migration: &str,
    routes: impl FnOnce(Pool) -> Router,
    work: W,
    settings: BranchSettings,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    saga_kit::service::launch(
        &config,
        migration,
        &TOPICS,
        routes,
        BranchSaga::new(work, settings),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_undoes_every_failure_but_its_own() {
        assert!(!compensates(Branch::Stock, Branch::Stock));
        assert!(compensates(Branch::Stock, Branch::Coupon));
        assert!(compensates(Branch::Stock, Branch::Deadline));
        assert!(!compensates(Branch::Coupon, Branch::Coupon));
        assert!(compensates(Branch::Coupon, Branch::Stock));
        assert!(compensates(Branch::Coupon, Branch::Deadline));
    }
}
