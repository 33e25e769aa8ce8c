//! What the probes report: whether the relay holds its slot and reaches Kafka.
//!
//! Liveness (`/healthz`) only says the process answers. Readiness (`/readyz`) says the
//! relay is doing its job: streaming from the slot *and* with a broker up. A standby relay
//! waiting for a slot held elsewhere, one cut off from Kafka, one holding a topic the
//! broker refuses ([`crate::kafka::hold`]), or one holding the stream for a table a
//! migration changed under its config is alive but not ready.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Why a topic is held (its fix), while one is.
    blocked: Mutex<Option<String>>,
    /// Why the stream is held for a table whose columns no longer match the config.
    table_blocked: Mutex<Option<String>>,
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

    /// A topic is held (`Some`, with the reason and its fix), or none is any more.
    pub fn set_topic_blocked(&self, reason: Option<String>) {
        *self.inner.blocked.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// The stream is held for a table whose shape no longer matches the config (`Some`,
    /// with the fix), or is not any more.
    pub fn set_table_blocked(&self, reason: Option<String>) {
        *self
            .inner
            .table_blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// `Ok` when ready, else the reason, one line.
    pub fn readiness(&self) -> Result<(), Cow<'static, str>> {
        if !self.inner.streaming.load(Ordering::Relaxed) {
            if self.is_standby() {
                return Err("standby: the replication slot is in use by another connection".into());
            }
            return Err("not streaming from the replication slot".into());
        }
        if !self.inner.kafka_up.load(Ordering::Relaxed) {
            return Err("no Kafka broker is reachable".into());
        }
        let table = self
            .inner
            .table_blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = table.as_ref() {
            return Err(reason.clone().into());
        }
        let blocked = self.inner.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = blocked.as_ref() {
            return Err(reason.clone().into());
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
        let reason = |health: &Health| health.readiness().map_err(Cow::into_owned);
        assert_eq!(
            reason(&health),
            Err("not streaming from the replication slot".into())
        );
        health.set_standby(true);
        assert_eq!(
            reason(&health),
            Err("standby: the replication slot is in use by another connection".into())
        );
        health.set_standby(false);
        health.set_streaming(true);
        assert_eq!(reason(&health), Err("no Kafka broker is reachable".into()));
        health.set_kafka_up(true);
        assert_eq!(reason(&health), Ok(()));
        health.set_topic_blocked(Some("topic t is blocked: grant Write".into()));
        assert_eq!(
            reason(&health),
            Err("topic t is blocked: grant Write".into())
        );
        health.set_topic_blocked(None);
        assert_eq!(reason(&health), Ok(()));
    }
}
