//! The checkout saga (issue 17, seed `order-stock-coupon-aggregator.md`): an order forks
//! into two branches that run in parallel, stock and coupon, joins them in an aggregator,
//! then charges the user.
//!
//! ```text
//! POST /orders ─▶ order ── OrderProcessing ──┬─▶ product: StockReserved | OrderProcessingFailed
//!                                            └─▶ coupon:  CouponApplied | OrderProcessingFailed
//!   order (aggregator): both successes ─▶ OrderProcessingSucceeded ─▶ order ─▶ OrderPaymentRequested
//!   user: OrderPaid | OrderPaymentFailed ─▶ order: COMPLETED (OrderProcessed) | CANCELLED
//! ```
//!
//! The seed keeps the join in Redis next to a producer; here every service follows the
//! transactional outbox (as the other example services do): a state change, the events it
//! causes and the consumer's position commit in one local transaction, and each service's
//! relay publishes its outbox. So the aggregator's "both answers are in, emit once" is a
//! row lock and a status guard in the order database, not a cache that can disagree with it.
//!
//! Failures compensate by choreography, as the seed's table 3.2 says: an
//! `OrderProcessingFailed` (from a branch, or from the order's own deadline) makes the
//! *other* branch undo what it did, and an `OrderPaymentFailed` makes both undo theirs.
//! A branch that hears of the failure before the order itself (topics are not ordered
//! among each other) records a `VOID` row, so the order's late arrival does nothing.
//!
//! # Layout
//! - [`order`]: `POST /orders`, the aggregator, the deadline sweeper, the payment step.
//! - [`product`]: stock reservations and their compensation.
//! - [`coupon`]: single-use coupons and their compensation.
//! - [`user`]: balances and charges.
//! - [`branch`]: what product and coupon share: the events they read, their dispatch.
//! - [`events`]: the topics, event types and payloads all four share (the contract).
//! - [`settings`]: the environment settings beyond `saga_kit::config::ServiceConfig`.
//!
//! Decisions are pure functions next to the thin SQL that applies them (`decide`,
//! `transition`), so the rules are unit-tested without a database and the database code
//! only locks, reads, and writes what the decision says.

pub mod branch;
pub mod coupon;
pub mod events;
pub mod order;
pub mod product;
pub mod settings;
pub mod user;

mod lock;
