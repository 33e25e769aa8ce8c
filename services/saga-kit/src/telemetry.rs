//! Logs and trace ids: text by default, JSON with `LOG_FORMAT=json` (for containers);
//! `RUST_LOG` filters the logs.
//!
//! Every consumed event is handled inside a span carrying `correlation_id` (the order id)
//! and `trace_id` (the W3C trace it continues, see [`crate::trace`]), and every HTTP
//! request inside a span carrying `trace_id`, so one saga can be followed across the
//! services' logs with a single grep, by either id. Both formats print the fields of the
//! spans a line was logged in.
//!
//! Beside the log layer sits a `tracing-opentelemetry` layer over the SDK tracer provider
//! of [`crate::trace`]: it gives every span OpenTelemetry ids. It sees spans at INFO and
//! above whatever `RUST_LOG` says, since a span filtered out of the logs must still carry
//! its trace into the outbox. Nothing is exported by default; with the `otlp` cargo feature,
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://collector:4318`) turns on an OTLP/HTTP
//! exporter, and the spans' events are then exported too.

use std::io::IsTerminal;

use opentelemetry_sdk::trace::TracerProviderBuilder;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable that turns the OTLP exporter on (with the `otlp` feature).
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The log filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,rdkafka=warn";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines: `event{correlation_id=… trace_id=…}: message`.
    Text,
    /// One JSON object per line, the span fields under `span` and `spans`.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT=json` is [`LogFormat::Json`]; anything else is [`LogFormat::Text`].
    pub fn from_env() -> LogFormat {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Installs the global subscriber (logs to stderr, coloured only on a terminal and
/// without `NO_COLOR`); a second call (tests) is a no-op.
pub fn init() {
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = build(
        LogFormat::from_env(),
        filter_from_env(),
        std::io::stderr,
        ansi,
    )
    .try_init();
}

/// [`init`] with the format and log destination given, e.g. a buffer a test reads back
/// (no colours).
pub fn init_with<W>(format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = subscriber(format, filter_from_env(), writer).try_init();
}

/// `RUST_LOG`, or [`DEFAULT_FILTER`].
pub fn filter_from_env() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// The subscriber [`init`] installs: the OpenTelemetry layer and the log layer, which
/// `filter` filters, writing to `writer` without colours. Public so a test can use it
/// as a scoped default.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    build(format, filter, writer, false)
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let exporting = exporting();
    let traced = filter_fn(move |meta: &Metadata<'_>| {
        *meta.level() <= Level::INFO && (meta.is_span() || exporting)
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(crate::trace::tracer())
        .with_filter(traced);
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(logs.with_filter(filter))
}

/// Flushes and stops the span exporter, if any (at process exit: the batch exporter
/// would otherwise lose its last spans).
pub fn shutdown() {
    if exporting() {
        if let Err(e) = crate::trace::provider().shutdown() {
            tracing::warn!(error = %e, "span exporter did not shut down cleanly");
        }
    }
}

/// Whether spans are exported: the `otlp` feature and [`OTLP_ENDPOINT_VAR`] set.
fn exporting() -> bool {
    cfg!(feature = "otlp") && std::env::var_os(OTLP_ENDPOINT_VAR).is_some_and(|v| !v.is_empty())
}

/// Adds the OTLP exporter to `builder` when [`exporting`]. The exporter reads its
/// endpoint, headers and timeout from the standard `OTEL_EXPORTER_OTLP_*` variables.
pub(crate) fn with_exporter(builder: TracerProviderBuilder) -> TracerProviderBuilder {
    #[cfg(feature = "otlp")]
    if exporting() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => return builder.with_batch_exporter(exporter),
            Err(e) => eprintln!("OTLP span exporter not started ({OTLP_ENDPOINT_VAR} set): {e}"),
        }
    }
    builder
}
