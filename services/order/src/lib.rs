//! The order service: the saga's entry point and the place its outcome is read.
//!
//! `POST /orders` writes the order (PENDING) and an `OrderCreated` event in one
//! transaction and answers `202 Accepted` at once: the outcome is not known yet, so the
//! client polls `GET /orders/{id}` (the `Location` header) until the status is final.
//! The consumer closes the order: `DeliveryCreated` success → COMPLETED, failure →
//! CANCELLED; a failed `ProductDecreased` (no stock) → CANCELLED.
//!
//! # Layout
//! - [`api`]: the HTTP endpoints and request validation.
//! - [`saga`]: the reactions to other services' events.

pub mod api;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "order-service";
/// The orders table.
pub const MIGRATION: &str = include_str!("../migrations/0001_orders.sql");
/// Outbox routing: `OrderCreated` goes to topic `outbox.event.order`.
pub const AGGREGATE: &str = "order";
/// Where the saga's outcome comes from.
pub const TOPICS: [&str; 2] = ["outbox.event.delivery", "outbox.event.product"];

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
        saga::OrderSaga,
        shutdown,
    )
    .await
}
