//! The producer's polling thread: the relay's own, in place of rust-rdkafka's
//! `ThreadedProducer`, so that it knows where a slice of delivery reports ends.
//!
//! rust-rdkafka's thread calls `poll(100 ms)`, which serves reports back to back until
//! the 100 ms are up: nothing marked the end of a slice, so each report had to
//! acknowledge its event on its own, one checkpoint lock and one wake-up of the source
//! per record. This thread polls in slices of [`SLICE`] and tells the context when each
//! one ends ([`BurstContext`]), so a slice's reports are acknowledged at once.
//!
//! - **The slice is long on purpose.** rust-rdkafka's `poll` waits on librdkafka's queue
//!   with the time left truncated to whole milliseconds, so once less than 1 ms is left
//!   it spins until the deadline. Slices of 1 ms spun most of a core under a steady
//!   stream (single-row drains took 15–21 CPU-seconds per million events instead of
//!   about 8, and starved the broker on 2 cores); a 50 ms slice spins at most its last
//!   millisecond, 2 % of the time.
//! - **What waits for it**: only the checkpoint, so the slot's confirmed position moves
//!   up to one slice later. Nothing is produced later, the delivery-report wake-ups
//!   ([`super::EventProducer::wait_report`]) come per report, and the source reports its
//!   position every `status_interval_ms` anyway.
//! - **[`PolledProducer::settle`]** waits until the thread has handed over every report
//!   it served so far (two slice ends), so that a graceful stop reports all that Kafka
//!   acknowledged.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// One poll slice: the longest an acknowledgement waits before the checkpoint has it.
pub const SLICE: Duration = Duration::from_millis(50);

/// A producer context that collects over a slice of polling.
pub trait BurstContext: ProducerContext {
    /// Before a slice, on the polling thread: reports may be kept until
    /// [`BurstContext::burst_end`].
    fn burst_begin(&self);
    /// After the slice: hands over what was kept.
    fn burst_end(&self);
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

/// The polling thread: slices of [`SLICE`], each ended by [`BurstContext::burst_end`].
fn serve_reports<C: BurstContext>(producer: &BaseProducer<C>, shared: &Shared) {
    loop {
        let context = producer.context();
        context.burst_begin();
        producer.poll(SLICE);
        context.burst_end();
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
