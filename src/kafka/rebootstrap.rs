//! Gives librdkafka its bootstrap servers back when it has forgotten every broker.
//!
//! librdkafka 2.10–2.12 drops every broker a metadata response does not list, the
//! bootstrap ones included. A cluster whose brokers are all fenced by the controller
//! answers metadata with zero brokers and the topics still in it. A single-node cluster
//! does this after a pause longer than `broker.session.timeout.ms` (a VM stall, a long
//! GC, SIGSTOP), and a bigger one in a full outage. The client then has no broker left
//! to ask. The successful response also stopped its re-bootstrap timer, and nothing
//! restarts it, so it waits forever with records queued: the relay "hangs after the
//! broker came back". This is librdkafka issue #5301; the upstream fix (commit
//! `ee8b6ca`, "re-bootstrap if metadata request returned no brokers") is in no release
//! yet.
//!
//! The relay watches the statistics librdkafka emits every second. When they list no
//! configured or learned broker, it adds the bootstrap list again. That is what
//! librdkafka's own re-bootstrap does (`rd_kafka_brokers_add` on the configured list).
//! It logs one warning and counts `outbox_relay_kafka_rebootstraps_total`. Adding a
//! broker that is already known is a no-op in librdkafka, so a false alarm costs
//! nothing.
//!
//! The admin client (topic lookups and creation) serves no statistics: rust-rdkafka polls
//! only its results queue. Its owner adds the list again whenever one of its requests
//! fails ([`Rebootstrap::after_failed_request`]); otherwise the first new topic after a
//! fencing waited on an admin client with no broker, for good (seen in CI).
#![allow(unsafe_code)] // One FFI call the rdkafka crate does not wrap; see `rebootstrap`.

use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::bindings::{rd_kafka_brokers_add, rd_kafka_t};
use rdkafka::statistics::Statistics;
use tracing::warn;

use crate::metrics as metric;

/// At most one re-bootstrap per this long: librdkafka needs a moment to connect.
const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Whether librdkafka's statistics list no broker it could send a request to: none from
/// `bootstrap.servers` ("configured") and none learned from metadata. The internal and
/// logical brokers (the unassigned-partition queue, the coordinator) send nothing.
pub fn lost_every_broker(stats: &Statistics) -> bool {
    !stats
        .brokers
        .values()
        .any(|broker| matches!(broker.source.as_str(), "configured" | "learned"))
}

/// Re-adds the bootstrap list to one librdkafka client when it has lost every broker.
#[derive(Debug)]
pub struct Rebootstrap {
    bootstrap: CString,
    /// The client, set once it exists ([`Rebootstrap::attach`]).
    client: AtomicPtr<rd_kafka_t>,
    /// When the list was last added again (ms since the Unix epoch), for [`MIN_INTERVAL`].
    last_ms: AtomicU64,
}

impl Rebootstrap {
    /// For a client whose `bootstrap.servers` is `bootstrap` (a validated config value,
    /// so it holds no NUL byte; one would only disable this watchdog).
    pub fn new(bootstrap: &str) -> Rebootstrap {
        Rebootstrap {
            bootstrap: CString::new(bootstrap).unwrap_or_default(),
            client: AtomicPtr::new(std::ptr::null_mut()),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Binds to the client. Call it with the `native_ptr()` of the client whose context
    /// owns this value, so the pointer lives as long as any callback that reaches
    /// [`Rebootstrap::check`].
    pub fn attach(&self, client: *mut rd_kafka_t) {
        self.client.store(client, Ordering::Release);
    }

    /// Called from the client's statistics callback, `now_ms` since the Unix epoch.
    pub fn check(&self, stats: &Statistics, now_ms: u64) {
        if lost_every_broker(stats) {
            self.add_bootstrap(
                now_ms,
                "the Kafka client had no broker left (a metadata answer listed none, e.g. \
                 after the cluster fenced its brokers); adding the bootstrap servers again",
            );
        }
    }

    /// Called by the owner of a client that serves no statistics (the admin client: its
    /// main queue is never polled) when a request found no broker to answer it. Adding
    /// the list again costs nothing when the brokers are known.
    pub fn after_failed_request(&self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.add_bootstrap(
            now_ms,
            "a Kafka admin request found no broker to answer it (e.g. after the cluster \
             fenced its brokers); adding the bootstrap servers again",
        );
    }

    /// Adds the bootstrap list to the client, at most once per [`MIN_INTERVAL`].
    fn add_bootstrap(&self, now_ms: u64, why: &'static str) {
        let last = self.last_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < MIN_INTERVAL.as_millis() as u64 {
            return;
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        let client = self.client.load(Ordering::Acquire);
        if client.is_null() || self.bootstrap.as_bytes().is_empty() {
            return;
        }
        // SAFETY: `client` is the live handle of the client this value was attached to
        // ([`Rebootstrap::attach`]), and both callers run while that client lives: its
        // own statistics callback, or the owner that holds the client. It is thread safe
        // (`rd_kafka_brokers_add` takes the client's own lock) and copies the string.
        let added = unsafe { rd_kafka_brokers_add(client, self.bootstrap.as_ptr()) };
        metrics::counter!(metric::KAFKA_REBOOTSTRAPS).increment(1);
        warn!(bootstrap = %self.bootstrap.to_string_lossy(), added, "{why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(sources: &[&str]) -> Statistics {
        let brokers = sources.iter().enumerate().map(|(i, source)| {
            let broker = rdkafka::statistics::Broker {
                source: (*source).to_owned(),
                ..Default::default()
            };
            (format!("b{i}"), broker)
        });
        Statistics {
            brokers: brokers.collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_client_with_only_internal_brokers_has_lost_every_broker() {
        assert!(lost_every_broker(&stats(&[])));
        assert!(lost_every_broker(&stats(&["internal"])));
        assert!(lost_every_broker(&stats(&["internal", "logical"])));
    }

    #[test]
    fn a_configured_or_learned_broker_is_enough() {
        assert!(!lost_every_broker(&stats(&["configured"])));
        assert!(!lost_every_broker(&stats(&["internal", "learned"])));
    }

    #[test]
    fn no_client_attached_means_no_call_and_at_most_one_try_per_interval() {
        let rebootstrap = Rebootstrap::new("127.0.0.1:1");
        let lost = stats(&["internal"]);
        rebootstrap.check(&lost, 10_000);
        assert_eq!(rebootstrap.last_ms.load(Ordering::Relaxed), 10_000);
        rebootstrap.check(&lost, 11_000);
        assert_eq!(
            rebootstrap.last_ms.load(Ordering::Relaxed),
            10_000,
            "rate limited"
        );
        rebootstrap.check(&lost, 16_000);
        assert_eq!(rebootstrap.last_ms.load(Ordering::Relaxed), 16_000);
        rebootstrap.check(&stats(&["learned"]), 30_000);
        assert_eq!(
            rebootstrap.last_ms.load(Ordering::Relaxed),
            16_000,
            "not lost"
        );
    }
}
