//! Parsing and formatting, `adopt`, the HTTP middleware, and the `trace_id` field in
//! both log formats, each under a scoped subscriber built as `telemetry::init` builds it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use super::*;
use crate::telemetry::{self, LogFormat};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Log lines written to memory, read back by the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

/// Runs `f` under the subscriber `telemetry::init` installs (format `format`, logs at
/// `filter`), returning what it logged.
fn logged<T>(format: LogFormat, filter: &str, f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let subscriber = telemetry::subscriber(format, EnvFilter::new(filter), captured.clone());
    let value = tracing::subscriber::with_default(subscriber, f);
    (value, captured.text())
}

fn traced_span() -> tracing::Span {
    tracing::info_span!("work", trace_id = tracing::field::Empty)
}

/// (trace id, span id) of a valid traceparent.
fn ids(traceparent: &str) -> (String, String) {
    let context = parse(traceparent).unwrap_or_else(|e| panic!("{traceparent}: {e}"));
    (
        context.trace_id().to_string(),
        context.span_id().to_string(),
    )
}

#[test]
fn a_traceparent_round_trips_through_parse_and_format() {
    for traceparent in [
        PARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    ] {
        let remote = parse(traceparent).unwrap();
        assert!(remote.is_remote());
        let context = Context::new().with_remote_span_context(remote);
        assert_eq!(format(&context).as_deref(), Some(traceparent));
    }
    assert_eq!(
        ids(PARENT),
        (TRACE.to_owned(), "b7ad6b7169203331".to_owned())
    );
    assert_eq!(trace_id_in(PARENT).as_deref(), Some(TRACE));
    assert_eq!(format(&Context::new()), None, "no span, no traceparent");
}

#[test]
fn malformed_traceparents_are_refused() {
    for bad in [
        "",
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ] {
        assert!(
            matches!(parse(bad), Err(TraceparentError::Malformed(_))),
            "{bad:?} accepted"
        );
        assert_eq!(trace_id_in(bad), None, "{bad:?}");
    }
}

#[test]
fn adopt_continues_the_parent_and_records_its_trace_id() {
    let ((child, inner), logs) = logged(LogFormat::Text, "info", || {
        let span = traced_span();
        adopt(&span, Some(PARENT));
        let _entered = span.enter();
        tracing::info!("inside");
        let inner = tracing::info_span!("inner").in_scope(current_traceparent);
        (current_traceparent().expect("a traceparent"), inner)
    });
    let (trace, span_id) = ids(&child);
    assert_eq!(trace, TRACE, "same trace as the parent");
    assert_ne!(
        span_id,
        ids(PARENT).1,
        "a span of its own (a child), not the parent"
    );
    assert!(child.ends_with("-01"), "sampled: {child}");
    let inner = inner.expect("nested spans are traced too");
    assert_eq!(ids(&inner).0, TRACE, "nested spans stay in the trace");
    assert_ne!(ids(&inner).1, span_id);
    let line = logs.lines().find(|l| l.contains("inside")).expect(&logs);
    assert!(line.contains(&format!("trace_id={TRACE}")), "{line}");
}

#[test]
fn no_or_a_malformed_traceparent_starts_a_new_trace() {
    let (traces, _) = logged(LogFormat::Text, "info", || {
        let outer = traced_span();
        adopt(&outer, Some(PARENT));
        let _entered = outer.enter();
        [None, Some("garbage"), Some("")].map(|traceparent| {
            let span = traced_span();
            adopt(&span, traceparent);
            (trace_id_of(&span), span.in_scope(current_traceparent))
        })
    });
    let mut seen = vec![TRACE.to_owned()];
    for (recorded, traceparent) in traces {
        let recorded = recorded.expect("a new root has a trace id");
        assert_eq!(recorded.len(), 32);
        assert!(!seen.contains(&recorded), "a new trace, not {seen:?}");
        assert_eq!(ids(&traceparent.expect("traceparent")).0, recorded);
        seen.push(recorded);
    }
}

#[test]
fn span_ids_exist_even_when_the_logs_filter_the_span_out() {
    let (traceparent, logs) = logged(LogFormat::Text, "warn", || {
        let span = traced_span();
        adopt(&span, Some(PARENT));
        span.in_scope(current_traceparent)
    });
    assert_eq!(ids(&traceparent.expect("traced at RUST_LOG=warn")).0, TRACE);
    assert_eq!(logs, "");
}

#[test]
fn outside_any_span_there_is_no_traceparent() {
    let (outside, _) = logged(LogFormat::Text, "info", current_traceparent);
    assert_eq!(outside, None);
    // Without the OpenTelemetry layer (a subscriber of someone else's) nothing breaks.
    let span = traced_span();
    adopt(&span, Some(PARENT));
    assert_eq!(span.in_scope(current_traceparent), None);
}

#[test]
fn json_log_lines_carry_the_trace_id_of_their_span() {
    let (_, logs) = logged(LogFormat::Json, "info", || {
        let span = traced_span();
        adopt(&span, Some(PARENT));
        span.in_scope(|| tracing::info!("inside"));
    });
    let line: serde_json::Value = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|l: &serde_json::Value| l["fields"]["message"] == "inside")
        .expect(&logs);
    assert_eq!(line["span"]["trace_id"], TRACE, "{line}");
    assert_eq!(line["spans"][0]["trace_id"], TRACE, "{line}");
}

/// A router like the services': one handler that writes what `outbox::write` would
/// store, behind the middleware `service::start` installs.
fn router() -> Router {
    Router::new()
        .route(
            "/orders",
            get(|| async {
                tracing::info!("handling");
                current_traceparent().unwrap_or_default()
            }),
        )
        .layer(axum::middleware::from_fn(continue_request))
}

async fn call(traceparent: Option<&str>) -> String {
    let mut request = Request::builder().uri("/orders");
    if let Some(traceparent) = traceparent {
        request = request.header(TRACEPARENT, traceparent);
    }
    let response = router()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_request_continues_its_callers_trace_or_starts_one() {
    let captured = Captured::default();
    let subscriber =
        telemetry::subscriber(LogFormat::Text, EnvFilter::new("info"), captured.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let continued = call(Some(PARENT)).await;
    assert_eq!(
        ids(&continued).0,
        TRACE,
        "the handler is in the caller's trace"
    );
    assert_ne!(
        ids(&continued).1,
        ids(PARENT).1,
        "in the request's own span"
    );
    let logs = captured.text();
    let line = logs.lines().find(|l| l.contains("handling")).expect(&logs);
    assert!(line.contains("request{"), "{line}");
    assert!(
        line.contains("method=GET") && line.contains("path=/orders"),
        "{line}"
    );
    assert!(line.contains(&format!("trace_id={TRACE}")), "{line}");

    for traceparent in [None, Some("not a traceparent")] {
        let started = call(traceparent).await;
        assert_ne!(ids(&started).0, TRACE, "{traceparent:?}: a new trace");
    }
}
