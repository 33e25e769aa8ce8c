//! What the probes report: whether the relay holds its slot and reaches Kafka.
//!
//! Liveness (`/healthz`) only says the process answers. Readiness (`/readyz`) says the
//! relay is doing its job: streaming from the slot *and* with a broker up. A standby relay
//! waiting for a slot held elsewhere, or one cut off from Kafka, is alive but not ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared flags, set by the source and the producer, read by the probes.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    streaming: AtomicBool,
    standby: AtomicBool,
    kafka_up: AtomicBool,
}

impl Health {
    pub fn set_streaming(&self, streaming: bool) {
        self.inner.streaming.store(streaming, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::CONNECTED, "target" => "postgres")
            .set(f64::from(u8::from(streaming)));
    }

    /// The slot is streaming to another process (another replica of this relay): this one
    /// waits to take over.
    pub fn set_standby(&self, standby: bool) {
        self.inner.standby.store(standby, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STANDBY).set(f64::from(u8::from(standby)));
    }

    pub fn is_standby(&self) -> bool {
        self.inner.standby.load(Ordering::Relaxed)
    }

    pub fn set_kafka_up(&self, up: bool) {
        self.inner.kafka_up.store(up, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::CONNECTED, "target" => "kafka")
            .set(f64::from(u8::from(up)));
    }

    /// `Ok` when ready, else the reason, one line.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.inner.streaming.load(Ordering::Relaxed) {
            if self.is_standby() {
                return Err("standby: the replication slot is in use by another connection");
            }
            return Err("not streaming from the replication slot");
        }
        if !self.inner.kafka_up.load(Ordering::Relaxed) {
            return Err("no Kafka broker is reachable");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_both() {
        let health = Health::default();
        assert_eq!(
            health.readiness(),
            Err("not streaming from the replication slot")
        );
        health.set_standby(true);
        assert_eq!(
            health.readiness(),
            Err("standby: the replication slot is in use by another connection")
        );
        health.set_standby(false);
        health.set_streaming(true);
        assert_eq!(health.readiness(), Err("no Kafka broker is reachable"));
        health.set_kafka_up(true);
        assert_eq!(health.readiness(), Ok(()));
    }
}
