//! Writes an event row in the caller's transaction: the only way a service publishes.
//!
//! The row and the state change it announces commit or roll back together, so an event
//! exists exactly when its change does. The service's relay turns the row into a Kafka
//! record: topic `outbox.event.<aggregate_type>`, key `aggregate_id`, headers `id`,
//! `eventType`, `correlationId` and `traceparent` (see `config/*-relay.toml`).
//!
//! The row's `traceparent` is the W3C trace context of the span `write` is called in
//! (an HTTP request's, or the consumed event's), so the consumer of the event continues
//! the trace of whatever caused it (see [`crate::trace`]); NULL outside any trace, and the
//! record then has no `traceparent` header.

use tokio_postgres::Transaction;
use uuid::Uuid;

/// One event to publish.
#[derive(Debug, Clone)]
pub struct OutboxEvent<'a> {
    /// Routes the record: topic `outbox.event.<aggregate_type>`.
    pub aggregate_type: &'a str,
    /// The record key: events of one aggregate stay in order.
    pub aggregate_id: String,
    /// Header `eventType`, e.g. `OrderCreated`.
    pub event_type: &'a str,
    /// Header `correlationId`: the saga (order) this event belongs to.
    pub correlation_id: &'a str,
    /// The record value.
    pub payload: serde_json::Value,
}

/// Inserts `event` with a fresh id (the Kafka `id` header consumers dedupe on) and the
/// current span's `traceparent`.
pub async fn write(
    tx: &Transaction<'_>,
    event: &OutboxEvent<'_>,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::new_v4();
    let traceparent = crate::trace::current_traceparent();
    tx.execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, correlation_id, payload, \
         traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id,
            &event.aggregate_type,
            &event.aggregate_id,
            &event.event_type,
            &event.correlation_id,
            &event.payload,
            &traceparent,
        ],
    )
    .await?;
    tracing::info!(event_id = %id, event_type = event.event_type, "outbox event written");
    Ok(id)
}
