//! The delivery service: ships orders whose stock is reserved, or compensates.
//!
//! It keeps the address from `OrderCreated` and waits for a successful `ProductDecreased`
//! (in either order). Then it creates a delivery and announces `DeliveryCreated`
//! (success), or, for an address it cannot serve, announces `DeliveryCreated` (failure)
//! and, in the same transaction, `IncreaseProductCommand`: the compensation that gives
//! the reserved stock back.
//!
//! Routing: `DeliveryCreated` has aggregate type `delivery` (topic
//! `outbox.event.delivery`, key = order id); `IncreaseProductCommand` has aggregate type
//! `product-command` (topic `outbox.event.product-command`, key = product id), so the
//! product service reads commands from their own topic.
//!
//! # Layout
//! - [`rule`]: which addresses cannot be served (configurable, so the demo can fail one).
//! - [`saga`]: the reactions to `OrderCreated` and `ProductDecreased`.

pub mod rule;
pub mod saga;

use axum::routing::get;
use axum::Router;
use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "delivery-service";
/// The delivery tables.
pub const MIGRATION: &str = include_str!("../migrations/0001_deliveries.sql");
/// New orders (addresses) and stock reservations.
pub const TOPICS: [&str; 2] = ["outbox.event.order", "outbox.event.product"];

/// Connects, migrates, and starts `/healthz` and the consumer.
pub async fn start(
    config: ServiceConfig,
    rule: rule::DeliveryRule,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    saga_kit::service::launch(
        &config,
        MIGRATION,
        &TOPICS,
        |_| Router::new().route("/healthz", get(saga_kit::http::healthz)),
        saga::DeliverySaga { rule },
        shutdown,
    )
    .await
}
