//! Logs: text by default, JSON with `LOG_FORMAT=json` (for containers); `RUST_LOG` filters.
//!
//! Every consumed event is handled inside a span carrying `correlation_id` (the order id),
//! so one saga can be followed across the three services' logs with a single grep.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
