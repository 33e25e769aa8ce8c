//! The checkout order service: the saga's entry point, its aggregator, its deadline, and
//! the payment step.
//!
//! `POST /orders` writes the order (PROCESSING) and `OrderProcessing` in one transaction
//! and answers `202 Accepted`; the client polls `GET /orders/{id}`. The product and coupon
//! services answer in parallel; the aggregator joins their successes into one
//! `OrderProcessingSucceeded` (→ PAYING), which this service consumes itself to ask the
//! user service for the money (`OrderPaymentRequested`); `OrderPaid` → COMPLETED (and
//! `OrderProcessed`). A branch's `OrderProcessingFailed`, the deadline, or
//! `OrderPaymentFailed` → CANCELLED with the reason.
//!
//! # Layout
//! - [`api`]: the HTTP endpoints and request validation.
//! - [`aggregator`]: the join of the two branches (pure [`aggregator::decide`]).
//! - [`deadline`]: the sweeper that cancels orders whose branches are too slow.
//! - [`saga`]: the other reactions (pure [`saga::react`]).
//! - [`state`]: the order row, locked, and its status.
//!
//! # Environment
//! Beyond `saga_kit::config::ServiceConfig`: `CHECKOUT_DEADLINE_MS` and
//! `CHECKOUT_SWEEP_MS` (see [`crate::settings`]).

pub mod aggregator;
pub mod api;
pub mod deadline;
pub mod saga;
pub mod state;

use saga_kit::config::ServiceConfig;
use saga_kit::consumer::ConsumerSettings;
use saga_kit::db::Pool;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

use crate::events::topic;
use crate::settings::OrderSettings;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "checkout-order-service";
/// The orders table.
pub const MIGRATION: &str = include_str!("../../migrations/0001_orders.sql");
/// The branches' answers, its own success (the payment step), the payment's outcome.
pub const TOPICS: [&str; 6] = [
    topic::STOCK_SUCCESS,
    topic::COUPON_SUCCESS,
    topic::PROCESSING_FAIL,
    topic::PROCESSING_SUCCESS,
    topic::PAYMENT_SUCCESS,
    topic::PAYMENT_FAIL,
];

/// Reads [`OrderSettings`] from the environment, then [`start_with`].
pub async fn start(
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    let settings = OrderSettings::from_env()?;
    start_with(config, settings, shutdown).await
}

/// Connects, migrates, and starts the API, the consumer and the deadline sweeper; the
/// returned task ends when the API and consumer have, after the sweeper stopped.
pub async fn start_with(
    config: ServiceConfig,
    settings: OrderSettings,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    let pool = Pool::connect(&config.database_url, config.db_pool_size).await?;
    pool.migrate(&[saga_kit::MESSAGING_MIGRATION, MIGRATION])
        .await?;
    let consumer = ConsumerSettings {
        bootstrap_servers: config.kafka_bootstrap_servers.clone(),
        group: config.consumer_group.clone(),
        topics: TOPICS.iter().map(|t| (*t).to_owned()).collect(),
    };
    let router = api::router(api::ApiState {
        pool: pool.clone(),
        deadline: settings.deadline,
    });
    let sweeper_stop = shutdown.child_token();
    let running = saga_kit::service::start(
        config.listen,
        router,
        consumer,
        pool.clone(),
        saga::OrderSaga,
        shutdown,
    )
    .await?;
    tracing::info!(deadline = ?settings.deadline, sweep = ?settings.sweep, "deadline sweeper");
    let sweeper = tokio::spawn(deadline::run(pool, settings.sweep, sweeper_stop.clone()));
    let service = running.task;
    let task = tokio::spawn(async move {
        let result = service.await;
        sweeper_stop.cancel();
        if let Err(e) = sweeper.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    });
    Ok(Running {
        addr: running.addr,
        task,
    })
}
