//! What the example saga services share, so each service's code is only its domain.
//!
//! The services (`order`, `product`, `delivery`) follow the transactional-outbox pattern
//! as a real user's services would: they never produce to Kafka. A state change and the
//! event announcing it are one local transaction ([`outbox`]); the service's own relay
//! (outbox-relay, a sidecar) publishes the event. Consuming is the mirror image: the
//! event's `id` header, its effect and the consumer's position are one local transaction
//! ([`consumer`]), so an event delivered twice changes state once.
//!
//! Nothing here depends on the relay crate: the contract between them is the outbox
//! table's columns and the Kafka records the relay makes of them.
//!
//! # Layout
//! - [`config`]: the settings every service reads from its environment.
//! - [`db`]: a small bounded PostgreSQL connection pool and the migrations runner.
//! - [`outbox`]: writes an event row in the caller's transaction.
//! - [`consumer`]: the idempotent Kafka consumer: a consumer-group member that starts
//!   each assigned partition at its stored offset (inbox + offsets in the database),
//!   dead-lettering what it can never apply to `<topic>.DLT` (`consumer::dead_letter`).
//! - [`http`]: the JSON error type every HTTP handler returns.
//! - [`idempotency`]: client `Idempotency-Key`s: a retried request creates once and
//!   gets the first response again.
//! - [`prometheus`]: the process's metrics recorder and the `GET /metrics` route; count
//!   with the re-exported [`metrics`] facade (`saga_kit::metrics::counter!`).
//! - [`service`]: runs a service's HTTP server and consumer until shutdown.
//! - [`telemetry`]: tracing set-up: text or JSON logs, OpenTelemetry span ids, an
//!   optional OTLP exporter (cargo feature `otlp`).
//! - [`trace`]: W3C trace context carried through the outbox (`traceparent` column, Kafka
//!   header and HTTP header), so a consumer's span continues its producer's trace.

pub mod config;
pub mod consumer;
pub mod db;
pub mod http;
pub mod idempotency;
pub mod outbox;
pub mod prometheus;
pub mod service;
pub mod telemetry;
pub mod trace;

/// The metrics facade the services count with; [`prometheus`] installs its recorder.
pub use metrics;

/// The outbox (with its dead-letter and `traceparent` columns), inbox, consumer-offset and idempotency-key
/// tables every service has in its own database.
pub const MESSAGING_MIGRATION: &str = include_str!("../migrations/0001_messaging.sql");
