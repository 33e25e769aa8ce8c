//! The process's Prometheus recorder and the `GET /metrics` route every service serves.
//!
//! Services count with the `metrics` facade, re-exported as `saga_kit::metrics` so they
//! need no dependency of their own (`saga_kit::metrics::counter!(...)`). The exporter is
//! built without its HTTP listener: the text is rendered on request by the service's own
//! router ([`route`], merged by `service::start`), so a service has one port.
//!
//! # One recorder per process
//! The `metrics` facade has one global recorder per process, and a second install fails.
//! [`install`] therefore installs once (a `OnceLock`) and every later call returns the same
//! handle: the saga tests run several services in one test process, and they all share one
//! recorder, so each one's `/metrics` shows the counters of all of them. Labels (e.g.
//! `topic`) tell them apart; in production one process is one service.
//!
//! # Upkeep
//! The exporter's histograms keep samples until upkeep folds them, so a detached thread
//! runs it every [`UPKEEP_INTERVAL`], and memory stays bounded even when nobody scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Counter, label `topic` (the consumed topic): records the consumer could never apply
/// and wrote to `<topic>.DLT` instead (see `consumer`, "Dead letters").
pub const DEAD_LETTERED_TOTAL: &str = "saga_consumer_dead_lettered_total";
/// How often the upkeep thread folds histogram samples.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the recorder the first time, and returns the process's handle every time.
///
/// If another recorder was installed first (a test harness of its own), saga-kit's
/// counters go to that one; the handle returned is then of a recorder nobody feeds, and
/// `/metrics` renders nothing — logged once, as it is a wiring mistake.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "a metrics recorder was installed before saga-kit's; \
                /metrics renders nothing");
        }
        spawn_upkeep(handle.clone());
        metrics::describe_counter!(
            DEAD_LETTERED_TOTAL,
            "Consumed records that could never be applied and were written to <topic>.DLT"
        );
        handle
    })
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            // The sleep is the interval timer; it synchronises nothing.
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

/// The text exposition of every metric of this process.
pub fn render() -> String {
    install().render()
}

/// `GET /metrics`, to merge into a service's router.
pub fn route() -> Router {
    Router::new().route("/metrics", get(metrics_text))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
}

/// Counts one dead-lettered record of `topic`.
pub(crate) fn dead_lettered(topic: &str) {
    metrics::counter!(DEAD_LETTERED_TOTAL, "topic" => topic.to_owned()).increment(1);
}
