//! W3C trace context across the outbox: the span that writes an event is the parent of
//! the span that consumes it, in another service, through the relay.
//!
//! STUB (to be implemented with `tracing` + `opentelemetry`): the signatures below are
//! the contract the services code against; the bodies do nothing yet.

/// The W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) of the current span, for
/// an outbox row's `traceparent` column or a row that must continue the trace later
/// (e.g. an order whose deadline a background task enforces). `None` outside any trace.
pub fn current_traceparent() -> Option<String> {
    None
}

/// Makes `span` continue the trace `traceparent` (a new trace when `None` or malformed)
/// and records its trace id in the span's `trace_id` field, which the span must declare
/// (`trace_id = tracing::field::Empty`) so every log line inside it carries the id.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let _ = (span, traceparent);
}
