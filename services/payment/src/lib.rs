//! The payment service: the payment → points saga's entry point, and its compensation.
//!
//! `POST /payments` records the payment (PENDING) and a `ReservationCompleted` event in
//! one transaction and answers `202 Accepted`: whether points are rewarded is not known
//! yet, so the client polls `GET /payments/{id}` (the `Location` header). The points
//! service answers on `outbox.event.points`:
//! - `PointsRewarded` → COMPLETED;
//! - `PointsRewardFailed` → the compensation: the payment is refunded → REFUNDED, with a
//!   `PaymentRefunded` event;
//! - and when the refund itself fails for good (the card gateway declines it, see
//!   [`gateway`]) → NEEDS_ATTENTION, with a `CompensationFailed` event and
//!   `saga_compensation_failed_total{saga="payment-points"}` counted. Nothing retries a
//!   declined refund forever and nothing drops it: an operator finds it at
//!   `GET /payments?status=NEEDS_ATTENTION`.
//!
//! # Layout
//! - [`api`]: the HTTP endpoints and request validation.
//! - [`saga`]: the reactions to the points service's events.
//! - [`gateway`]: the card gateway's answer to a refund.

pub mod api;
pub mod gateway;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

use gateway::CardGateway;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "payment-service";
/// The payments table.
pub const MIGRATION: &str = include_str!("../migrations/0001_payments.sql");
/// Outbox routing: the payment's events go to topic `outbox.event.payment`.
pub const AGGREGATE: &str = "payment";
/// The points service's answers.
pub const TOPICS: [&str; 1] = ["outbox.event.points"];
/// The saga's name in `saga_compensation_failed_total{saga}`.
pub const SAGA: &str = "payment-points";

/// Connects, migrates, and starts the API and the consumer.
pub async fn start(
    config: ServiceConfig,
    gateway: CardGateway,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    saga_kit::service::launch(
        &config,
        MIGRATION,
        &TOPICS,
        api::router,
        saga::PaymentSaga::new(gateway),
        shutdown,
    )
    .await
}
