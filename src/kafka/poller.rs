//! The producer's polling thread: the relay's own, in place of rust-rdkafka's
//! `ThreadedProducer`, so that it knows where a burst of delivery reports ends.
//!
//! rust-rdkafka's thread calls `poll(100 ms)`, which serves reports back to back until
//! the 100 ms are up: nothing marks the end of a burst, so each report had to
//! acknowledge its event on its own, one checkpoint lock and one wake-up of the source
//! per record. This thread polls in short slices while reports flow and tells the
//! context when each slice ends ([`BurstContext`]), so a burst is acknowledged at once.
//!
//! - **While reports flow**, a slice is [`BURST_SLICE`]: an acknowledgement waits at most
//!   that long (plus the burst's own callbacks) before the checkpoint has it. Nothing
//!   waits on it but the slot's confirmed position, which the source reports every
//!   `status_interval_ms` anyway.
//! - **Once a slice brought nothing**, the thread waits [`IDLE_SLICE`] with collection
//!   off: the first report after a quiet spell acknowledges at once, and an idle relay
//!   wakes ten times a second, as before.
//! - **[`PolledProducer::settle`]** waits until the thread has handed over every report
//!   it served so far (one slice), so that a graceful stop reports all that Kafka
//!   acknowledged.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// A poll slice while delivery reports flow.
pub const BURST_SLICE: Duration = Duration::from_millis(1);
/// A poll slice once a slice brought no report.
pub const IDLE_SLICE: Duration = Duration::from_millis(100);

/// A producer context that collects over a slice of polling.
pub trait BurstContext: ProducerContext {
    /// Before a slice, on the polling thread: `collect` is whether reports may be kept
    /// until [`BurstContext::burst_end`].
    fn burst_begin(&self, collect: bool);
    /// After the slice: hands over what was kept; returns whether any report came.
    fn burst_end(&self) -> bool;
}

/// Slices completed by the polling thread, and whether it has stopped.
#[derive(Debug, Default)]
struct Progress {
    slices: u64,
    stopped: bool,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    progress: Mutex<Progress>,
    slice_done: Condvar,
}

/// A `BaseProducer` served by its own polling thread (see the module docs).
#[allow(missing_debug_implementations)]
pub struct PolledProducer<C: BurstContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl<C: BurstContext + 'static> PolledProducer<C> {
    /// Creates the producer and starts its polling thread.
    pub fn new(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let shared = Arc::new(Shared::default());
        let thread = {
            let producer = Arc::clone(&producer);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("kafka-reports".into())
                .spawn(move || serve_reports(&producer, &shared))
                .map_err(|e| {
                    KafkaError::ClientCreation(format!("cannot start the polling thread: {e}"))
                })?
        };
        Ok(PolledProducer {
            producer,
            shared,
            thread: Some(thread),
        })
    }

    /// The producer itself, for calls that run on another thread.
    pub fn shared(&self) -> Arc<BaseProducer<C>> {
        Arc::clone(&self.producer)
    }

    /// Waits, at most `timeout`, until the polling thread has handed over every report it
    /// served before this call: one slice ends after it. Returns whether it did.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut progress = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The slice running now may have begun before the reports it serves: wait for the
        // one after it too.
        let target = progress.slices + 2;
        while progress.slices < target && !progress.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            progress = self
                .shared
                .slice_done
                .wait_timeout(progress, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl<C: BurstContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: BurstContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The polling thread: slices of [`BURST_SLICE`] while reports flow, [`IDLE_SLICE`]
/// otherwise, each ended by [`BurstContext::burst_end`].
fn serve_reports<C: BurstContext>(producer: &BaseProducer<C>, shared: &Shared) {
    let mut flowing = false;
    loop {
        let context = producer.context();
        context.burst_begin(flowing);
        producer.poll(if flowing { BURST_SLICE } else { IDLE_SLICE });
        flowing = context.burst_end();
        let stopping = shared.stop.load(Ordering::Relaxed);
        {
            let mut progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
            progress.slices += 1;
            progress.stopped = stopping;
        }
        shared.slice_done.notify_all();
        if stopping {
            return;
        }
    }
}
