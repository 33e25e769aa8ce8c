//! W3C trace context across the outbox: the span that writes an event is the parent of
//! the span that consumes it, in another service, through the relay.
//!
//! # Why this shape
//! The services never produce to Kafka, so no Kafka instrumentation can carry the trace:
//! the trace travels as data. [`crate::outbox::write`] stores the writing span's W3C
//! `traceparent` (`00-<trace id>-<span id>-<flags>`) in the outbox row's `traceparent`
//! column; each relay config maps that column to the Kafka header `traceparent`
//! (`[[outbox.additional_headers]]`, no relay code); the consumer ([`crate::consumer`])
//! [`adopt`]s the header as the parent of the span its handler runs in. HTTP requests
//! ([`continue_request`]) continue a caller's `traceparent` the same way, so one trace
//! runs from the request that started a saga through every event it caused.
//!
//! Spans get their ids from `tracing-opentelemetry` over an OpenTelemetry SDK tracer
//! provider whose sampler is always on, so every span has ids to log and propagate even
//! though, by default, nothing is exported: the ids only reach the logs, in each span's
//! `trace_id` field (see [`crate::telemetry`]). With the `otlp` cargo feature and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP.
//!
//! Parsing and formatting are the OpenTelemetry SDK's [`TraceContextPropagator`]'s, so
//! what a Java service (Micrometer, the OpenTelemetry agent) writes is read the same way.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The Kafka header, HTTP header and outbox column that carry the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The span field every traced span declares; [`adopt`] records the 32-hex trace id in it.
pub const TRACE_ID_FIELD: &str = "trace_id";
/// The instrumentation scope spans are created under (the OpenTelemetry tracer's name).
const TRACER_NAME: &str = "saga-kit";

/// The W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) of the current span, for
/// an outbox row's `traceparent` column or a row that must continue the trace later
/// (e.g. an order whose deadline a background task enforces). `None` outside any trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes `span` continue the trace `traceparent` (a new trace when `None` or malformed)
/// and records its trace id in the span's `trace_id` field, which the span must declare
/// (`trace_id = tracing::field::Empty`) so every log line inside it carries the id.
///
/// Call it before the span is first entered: the OpenTelemetry span is built then, and
/// its parent cannot change afterwards (the span keeps the parent it had, and its id is
/// still recorded).
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let parsed = traceparent.map(parse);
    let parent = match &parsed {
        Some(Ok(remote)) => Context::new().with_remote_span_context(remote.clone()),
        Some(Err(_)) | None => Context::new(),
    };
    let reparented = span.set_parent(parent);
    if let Some(id) = trace_id_of(span) {
        span.record(TRACE_ID_FIELD, tracing::field::display(id));
    }
    // Logged last: a log event in between would be filtered by the per-layer filters,
    // whose per-thread state must not sit between `set_parent` and the span's creation.
    if let Some(Err(e)) = parsed {
        tracing::debug!(error = %e, "ignoring a malformed traceparent; started a new trace");
    }
    if let Err(e) = reparented {
        tracing::debug!(error = %e, "span not re-parented");
    }
}

/// The `traceparent` of `span`'s OpenTelemetry context; `None` when it has none (the
/// span is disabled, or no OpenTelemetry layer is installed).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    format(&span.context())
}

/// The 32-hex trace id of `span`, as [`adopt`] records it.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The trace id part of a `traceparent` (what the `trace_id` log field shows), if valid.
pub fn trace_id_in(traceparent: &str) -> Option<String> {
    parse(traceparent).ok().map(|c| c.trace_id().to_string())
}

/// Why a `traceparent` was not adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// Not `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids (W3C Trace Context, level 1).
    #[error("not a W3C traceparent: {0:?}")]
    Malformed(String),
}

/// The remote span context a `traceparent` names.
///
/// The propagator alone is lenient where W3C is not (it pads a short id with zeros), so
/// the field lengths are checked first; it then checks the version, the hex and the
/// all-zero ids. It extracts into an empty context: on failure, it would otherwise hand
/// back the current span's context, as if the input had named it.
pub fn parse(traceparent: &str) -> Result<SpanContext, TraceparentError> {
    let malformed = || TraceparentError::Malformed(shorten(traceparent));
    if !has_w3c_field_lengths(traceparent) {
        return Err(malformed());
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    let remote = context.span().span_context().clone();
    (remote.is_valid() && remote.is_remote())
        .then_some(remote)
        .ok_or_else(malformed)
}

/// `<2>-<32>-<16>-<2>` lowercase hex digits, then (future versions) more fields.
fn has_w3c_field_lengths(traceparent: &str) -> bool {
    let mut fields = traceparent.split('-');
    [2, 32, 16, 2].iter().all(|&len| {
        fields.next().is_some_and(|field| {
            field.len() == len
                && field
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    })
}

/// `context`'s span as a `traceparent`; `None` for a context without a valid span.
pub fn format(context: &Context) -> Option<String> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// At most 64 characters of untrusted input, for an error message.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Axum middleware (installed by [`crate::service::start`]): every request runs in a
/// span `request{method, path, trace_id}` continuing the request's `traceparent` header,
/// or starting a new trace without one, so a handler's outbox rows and log lines belong
/// to the caller's trace.
pub async fn continue_request(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    adopt(&span, traceparent);
    next.run(request).instrument(span).await
}

/// The process's tracer provider: always-on sampling, so every span has ids; an OTLP
/// exporter only with the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set.
pub(crate) fn provider() -> &'static SdkTracerProvider {
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let builder = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOn);
        crate::telemetry::with_exporter(builder).build()
    })
}

/// The tracer the tracing layer creates OpenTelemetry spans with.
pub(crate) fn tracer() -> SdkTracer {
    provider().tracer(TRACER_NAME)
}

#[cfg(test)]
mod tests;
