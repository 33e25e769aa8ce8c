//! The product service: owns stock.
//!
//! On `OrderCreated` it takes the quantity from stock with one conditional `UPDATE`
//! (`... WHERE stock >= $q`), which PostgreSQL's row lock makes atomic: concurrent orders
//! never oversell. It answers with `ProductDecreased` (success, or failure with a reason).
//! On `IncreaseProductCommand` (the delivery service's compensation) it gives the order's
//! reservation back, once.
//!
//! # Layout
//! - [`api`]: `GET /products/{id}` (stock) and `PUT /products/{id}` (set up a product).
//! - [`saga`]: the reactions to `OrderCreated` and `IncreaseProductCommand`.

pub mod api;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "product-service";
/// The products and reservations tables.
pub const MIGRATION: &str = include_str!("../migrations/0001_products.sql");
/// Outbox routing: `ProductDecreased` goes to topic `outbox.event.product`.
pub const AGGREGATE: &str = "product";
/// New orders, and the compensation command.
pub const TOPICS: [&str; 2] = ["outbox.event.order", "outbox.event.product-command"];

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
        saga::ProductSaga,
        shutdown,
    )
    .await
}
