//! The checkout product service: the stock branch.
//!
//! On `OrderProcessing` it reserves the order's quantity (`StockReserved`) or refuses
//! (`OrderProcessingFailed{branch: "stock"}`). It gives the stock back when the order
//! fails elsewhere: an `OrderProcessingFailed` of another branch (coupon, deadline) or an
//! `OrderPaymentFailed`. One `stock_reservations` row per order makes each of these
//! happen once, whatever order the events arrive in (see [`saga`]).
//!
//! # Layout
//! - [`api`]: `PUT /products/{id}` (set stock) and `GET /products/{id}`.
//! - [`saga`]: the reactions, with their pure decisions ([`saga::on_order`],
//!   [`saga::on_compensate`]).
//!
//! # Environment
//! Beyond `saga_kit::config::ServiceConfig`: `CHECKOUT_JITTER_MS` (see
//! [`crate::settings`]).

pub mod api;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

use crate::settings::BranchSettings;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "checkout-product-service";
/// The products and reservations tables.
pub const MIGRATION: &str = include_str!("../../migrations/0001_products.sql");
/// New orders, and the failures that compensate them.
pub const TOPICS: [&str; 3] = crate::branch::TOPICS;

/// Reads [`BranchSettings`] from the environment, then [`start_with`].
pub async fn start(
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    let settings = BranchSettings::from_env()?;
    start_with(config, settings, shutdown).await
}

/// Connects, migrates, and starts the API and the consumer.
pub async fn start_with(
    config: ServiceConfig,
    settings: BranchSettings,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    crate::branch::start(
        config,
        MIGRATION,
        api::router,
        saga::Stock,
        settings,
        shutdown,
    )
    .await
}
