//! The checkout user service: balances, and the saga's payment step.
//!
//! On `OrderPaymentRequested` it debits the user's balance (`OrderPaid`) or refuses
//! (`OrderPaymentFailed`, which makes product and coupon compensate and the order
//! cancel). One `charges` row per order makes the charge happen at most once.
//!
//! # Layout
//! - [`api`]: `PUT /users/{id}/balance` and `GET /users/{id}`.
//! - [`saga`]: the reaction, with its pure decision ([`saga::on_payment`]).

pub mod api;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

use crate::events::topic;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "checkout-user-service";
/// The users and charges tables.
pub const MIGRATION: &str = include_str!("../../migrations/0001_users.sql");
/// Payment requests.
pub const TOPICS: [&str; 1] = [topic::PAYMENT];

/// Connects, migrates, and starts the API and the consumer.
pub async fn start(
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    saga_kit::service::launch(
        &config,
        MIGRATION,
        &TOPICS,
        api::router,
        saga::UserSaga,
        shutdown,
    )
    .await
}
