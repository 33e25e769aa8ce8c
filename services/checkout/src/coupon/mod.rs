//! The checkout coupon service: the coupon branch.
//!
//! On `OrderProcessing` it claims the order's single-use coupon (`CouponApplied` with its
//! discount), answers `CouponApplied{couponCode: null, discount: 0}` for an order without
//! one, or refuses (`OrderProcessingFailed{branch: "coupon"}`: used by another order, or
//! unknown). It releases the coupon when the order fails elsewhere: an
//! `OrderProcessingFailed` of another branch (stock, deadline) or an `OrderPaymentFailed`.
//! One `coupon_claims` row per order makes each of these happen once, in any arrival
//! order (see [`saga`]).
//!
//! # Layout
//! - [`api`]: `PUT /coupons/{code}` (create) and `GET /coupons/{code}`.
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
pub const SERVICE: &str = "checkout-coupon-service";
/// The coupons and claims tables.
pub const MIGRATION: &str = include_str!("../../migrations/0001_coupons.sql");
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
        saga::Coupons,
        settings,
        shutdown,
    )
    .await
}
