//! The supervisor: prepares the database, wires source → sink, reconnects the source,
//! restarts the pipeline in-process after retryable failures, and stops gracefully.
//!
//! # Never wait for what cannot come
//!
//! Every wait here is bounded or ends on an event that is sure to come:
//!
//! - Before the source reconnects it waits until the checkpoint has nothing in flight, so
//!   the new connection starts from a settled position ([`Checkpoint::resume`]). That wait
//!   ends because what is in flight is exactly what the sink holds: the source releases
//!   every event it registered and did not hand over on *every* exit (see
//!   [`crate::source`]), and the sink either acknowledges what it holds (librdkafka
//!   retries without limit; a frozen broker only delays it) or fails, which halts the
//!   wait too.
//! - Connecting is bounded by `source.wal_receiver_timeout_ms`; a standby polls.
//!   Should the producer deliver nothing for [`DRAIN_LIMIT`] all the same (seen once
//!   after a broker freeze), the wait ends with a retryable error and the pipeline restarts
//!   with a new producer: the events in flight were not confirmed, so the slot sends them
//!   again.
//! - After the sink or the source failed, the other half gets at most
//!   `source.shutdown_timeout_ms` to stop.
//!
//! # Retry means retry
//!
//! A failure that [`crate::policy`] classifies as retryable never ends the process: the
//! source reconnects by itself, and any other retryable failure (the sink's, or a task
//! that died) restarts the whole pipeline in-process, with backoff, from the checkpoint
//! (its flush LSN and the server history it saw carry over). Only what needs an operator
//! ends [`run`] with an error.
//!
//! [`Checkpoint::resume`]: crate::checkpoint::Checkpoint::resume

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::exactly_once::{ExactlyOnce, Refusals};
use super::sink::Sink;
use super::RelayError;
use crate::admin_sql;
use crate::backoff::{self, Backoff};
use crate::checkpoint::SharedCheckpoint;
use crate::config::{Config, KafkaConfig};
use crate::health::Health;
use crate::kafka::topics::SeenTopics;
use crate::kafka::{EventProducer, Hold, TopicManager};
use crate::metrics as metric;
use crate::outbox::Router;
use crate::replication::{Lsn, ReplicationError};
use crate::source::history::SharedHistory;
use crate::source::{EventBatch, Source, SourceSettings};

/// How often a standby relay tries to take the slot over (with jitter, half to all of it).
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often a reconnect that waits for in-flight events says so.
const DRAIN_REPORT: Duration = Duration::from_secs(10);
/// How long a reconnect waits for in-flight events before the pipeline is restarted.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// A pipeline that ran this long before failing starts its restart backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the relay until `shutdown` fires (then stops gracefully, `Ok`) or a failure that
/// retrying cannot fix (`Err`, with the operator's fix in the message).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    health: Health,
) -> Result<(), RelayError> {
    let kafka = config.kafka.clone().ok_or_else(|| {
        RelayError::Config(
            "kafka.bootstrap_servers: required key is missing; add a [kafka] section with bootstrap_servers".into(),
        )
    })?;
    prepare_database(&config, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let mut carried = Carried {
        flushed: Lsn::ZERO,
        history: SharedHistory::default(),
        refusals: Refusals::default(),
        seen_topics: SeenTopics::default(),
    };
    let mut backoff = Backoff::default();
    let mut first = true;
    loop {
        let started = Instant::now();
        let outcome = match Pipeline::build(&config, &kafka, &health, &carried) {
            Ok(pipeline) => {
                pipeline
                    .drive(&config, &shutdown, &health, &mut carried)
                    .await
            }
            // A producer that cannot be built at the first start is a config problem.
            Err(e) if first => return Err(e),
            Err(e) => Err(e),
        };
        first = false;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && shutdown.is_cancelled() => return Ok(()),
            Err(e) if e.is_retryable() => {
                if started.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(
                    error = %e,
                    flush = %carried.flushed,
                    retry_in_ms = delay.as_millis() as u64,
                    "pipeline failed with a retryable error; restarting it in-process from the checkpoint"
                );
                metrics::counter!(metric::PIPELINE_RESTARTS).increment(1);
                if !backoff::pause(delay, &shutdown).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// What one run of the pipeline hands to the next.
struct Carried {
    /// The flush LSN reached: acknowledged by Kafka, perhaps not yet reported.
    flushed: Lsn,
    /// What the source saw of the server (see [`crate::source::history`]).
    history: SharedHistory,
    /// Exactly-once: rows Kafka refused, to dead-letter when the slot sends them again.
    refusals: Refusals,
    /// Topics confirmed since the relay started: one of them missing after a restart is
    /// held, never dead-lettered (see [`crate::kafka::topics`]).
    seen_topics: SeenTopics,
}

/// One run's checkpoint and sink, ready to start.
struct Pipeline {
    checkpoint: SharedCheckpoint,
    sink: Sink,
}

impl Pipeline {
    fn build(
        config: &Config,
        kafka: &KafkaConfig,
        health: &Health,
        carried: &Carried,
    ) -> Result<Pipeline, RelayError> {
        let checkpoint = SharedCheckpoint::new(carried.flushed);
        let transactional_id = config.transactional_id();
        let producer = EventProducer::new(
            kafka,
            checkpoint.clone(),
            health.clone(),
            transactional_id.as_deref(),
        )?;
        let exactly_once = transactional_id.map(|_| {
            // Transactions start only once this run's source holds the slot (see
            // super::exactly_once): forget the server the last run's connection found.
            carried.history.lock().connected = None;
            ExactlyOnce::new(
                kafka,
                config.source.slot.as_str(),
                carried.history.clone(),
                carried.refusals.clone(),
            )
        });
        let topics = TopicManager::new(kafka, carried.seen_topics.clone())?;
        let sink = Sink {
            router: Router::new(config),
            producer,
            topics,
            hold: Hold::new(kafka, health.clone(), checkpoint.clone()),
            checkpoint: checkpoint.clone(),
            health: health.clone(),
            table_held: false,
            ignored: Default::default(),
            exactly_once,
        };
        Ok(Pipeline { checkpoint, sink })
    }

    /// Runs source and sink until shutdown or a failure; on the way out, hands the
    /// flush LSN and the history on in `carried`.
    async fn drive(
        self,
        config: &Config,
        shutdown: &CancellationToken,
        health: &Health,
        carried: &mut Carried,
    ) -> Result<(), RelayError> {
        let Pipeline { checkpoint, sink } = self;
        let (events_tx, events_rx) = mpsc::channel(config.source.channel_capacity_batches);
        let drain_timeout = Duration::from_millis(config.source.shutdown_timeout_ms);
        let mut sink_task = tokio::spawn(sink.run(events_rx, shutdown.clone(), drain_timeout));
        let halt = CancellationToken::new();
        let mut source_task: JoinHandle<Result<(), RelayError>> = tokio::spawn(run_source(
            config.clone(),
            health.clone(),
            checkpoint.clone(),
            carried.history.clone(),
            events_tx,
            shutdown.clone(),
            halt.clone(),
        ));
        let outcome = tokio::select! {
            // The sink failed (or ended first): stop reading WAL, report what was delivered
            // before the failure, and stop. Nothing after it is acknowledged.
            sink_result = &mut sink_task => {
                halt.cancel();
                let source_result = match tokio::time::timeout(drain_timeout, &mut source_task).await {
                    Ok(source_result) => Some(flatten(source_result)),
                    Err(_) => {
                        source_task.abort();
                        None
                    }
                };
                run_outcome(flatten(sink_result), source_result, shutdown.is_cancelled())
            }
            source_result = &mut source_task => {
                let source_result = flatten(source_result);
                // The source dropped its sender: the sink drains the channel and ends.
                let sink_result = match tokio::time::timeout(drain_timeout, &mut sink_task).await {
                    Ok(result) => flatten(result),
                    Err(_) => {
                        sink_task.abort();
                        warn!("sink did not drain before the shutdown timeout");
                        Ok(())
                    }
                };
                run_outcome(source_result, Some(sink_result), shutdown.is_cancelled())
            }
        };
        carried.flushed = carried.flushed.max(checkpoint.flushed());
        health.set_streaming(false);
        outcome
    }
}

/// One run's outcome from both halves' results: `first`, the half that ended first, and
/// `second` (`None` when it had to be aborted).
///
/// The first failure is the run's failure, as before. But the sink also ends by itself,
/// `Ok`, once the source dropped its sender, and both tasks can be done by the time the
/// supervisor looks: a first `Ok` must never hide the second half's error (a run that
/// ends `Ok` ends the process with success; seen in CI after a restore, where the relay
/// exited instead of restarting). A run that ends `Ok` without a shutdown is itself
/// retryable: only a shutdown stops the relay without an error.
fn run_outcome(
    first: Result<(), RelayError>,
    second: Option<Result<(), RelayError>>,
    shutting_down: bool,
) -> Result<(), RelayError> {
    match (first, second) {
        (Err(first), Some(Err(second))) => {
            warn!(error = %second, "the other half of the pipeline did not stop cleanly");
            Err(first)
        }
        (Err(first), _) => Err(first),
        (Ok(()), Some(Err(second))) => Err(second),
        (Ok(()), _) if shutting_down => Ok(()),
        (Ok(()), _) => Err(RelayError::Internal(
            "the pipeline ended without a shutdown; restarting it".into(),
        )),
    }
}

fn flatten(
    joined: Result<Result<(), RelayError>, tokio::task::JoinError>,
) -> Result<(), RelayError> {
    joined.map_err(|e| RelayError::Internal(format!("task failed: {e}")))?
}

/// Creates the publication and slot when configured to, retrying while the database is
/// unreachable.
async fn prepare_database(config: &Config, shutdown: &CancellationToken) -> Result<(), RelayError> {
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let client = admin_sql::connect(config).await?;
            admin_sql::prepare(&client, config).await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not ready");
                if !backoff::pause(delay, shutdown).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Streams from the slot, reconnecting after every retryable failure.
async fn run_source(
    config: Config,
    health: Health,
    checkpoint: SharedCheckpoint,
    history: SharedHistory,
    events: mpsc::Sender<EventBatch>,
    shutdown: CancellationToken,
    halt: CancellationToken,
) -> Result<(), RelayError> {
    let pg = config.postgres_config();
    let mut settings = SourceSettings {
        health: health.clone(),
        history,
        ..SourceSettings::from_config(&config)
    };
    let drain_timeout = Duration::from_millis(config.source.shutdown_timeout_ms);
    let exactly_once = config.kafka.as_ref().is_some_and(|k| k.exactly_once());
    let mut backoff = Backoff::default();
    let mut standby_poll = Backoff::new(STANDBY_POLL, STANDBY_POLL);
    loop {
        let connect = tokio::time::timeout(
            settings.receive_timeout,
            Source::connect(&pg, settings.clone(), &checkpoint),
        );
        let connected = match connect.await {
            Ok(result) => result,
            Err(_) => Err(ReplicationError::ReceiveTimeout(settings.receive_timeout)),
        };
        let outcome = match connected {
            Ok(source) => {
                backoff.reset();
                if health.is_standby() {
                    info!(slot = %config.source.slot, "took over the replication slot");
                    health.set_standby(false);
                }
                let outcome = source
                    .run(
                        events.clone(),
                        shutdown.clone(),
                        halt.clone(),
                        drain_timeout,
                    )
                    .await;
                // What this relay acknowledged; the slot found ahead of it next time was
                // advanced by someone else (warned about, see source::slot).
                settings.believed_flush = Some(checkpoint.flushed());
                outcome
            }
            Err(e) if e.is_slot_in_use() && !shutdown.is_cancelled() => {
                // The slot is the lock: another replica streams, this one stands by. (Or
                // the server has not yet noticed this relay's previous connection is gone:
                // standing by until it does is right too.) Progress made meanwhile is
                // legitimately ahead of ours.
                if !health.is_standby() {
                    info!(slot = %config.source.slot, error = %e, "slot is in use by another connection (another replica); standing by to take over");
                    health.set_standby(true);
                }
                settings.believed_flush = None;
                tokio::select! {
                    _ = sleep(standby_poll.next_delay()) => continue,
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = halt.cancelled() => return Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        health.set_streaming(false);
        match outcome {
            Ok(()) => return Ok(()),
            // Exactly-once: the open Kafka transaction may hold part of a PostgreSQL
            // transaction the new connection sends again; the whole pipeline restarts
            // (aborting it) instead of reconnecting the source alone.
            Err(e) if exactly_once && e.is_retryable() && !shutdown.is_cancelled() => {
                warn!(error = %e, "replication connection lost; restarting the pipeline (exactly-once)");
                metrics::counter!(metric::RECONNECTS, "target" => "postgres").increment(1);
                return Err(e.into());
            }
            Err(e) if e.is_retryable() && !shutdown.is_cancelled() && !halt.is_cancelled() => {
                warn!(error = %e, "replication connection lost; reconnecting");
                metrics::counter!(metric::RECONNECTS, "target" => "postgres").increment(1);
            }
            Err(e) if shutdown.is_cancelled() || halt.is_cancelled() => {
                info!(error = %e, "replication ended during shutdown");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        // Start the next connection from a settled checkpoint: everything handed
        // downstream is acknowledged first (see Checkpoint::resume). This ends: nothing
        // unsent is registered (the source released it), and the sink acknowledges what
        // it holds or fails, which halts.
        let waiting = Instant::now();
        let mut report = tokio::time::interval_at(waiting + DRAIN_REPORT, DRAIN_REPORT);
        loop {
            tokio::select! {
                _ = checkpoint.drained() => break,
                _ = shutdown.cancelled() => return Ok(()),
                _ = halt.cancelled() => return Ok(()),
                _ = report.tick() => {
                    let in_flight = checkpoint.lock().in_flight_events();
                    if waiting.elapsed() >= DRAIN_LIMIT {
                        // Seen after a broker freeze: the producer delivered nothing more.
                        // Restart the pipeline (a new producer, the slot re-read from the
                        // checkpoint) instead of waiting without bound.
                        return Err(RelayError::Internal(format!(
                            "{in_flight} events still unacknowledged {} s after the replication connection ended; restarting the pipeline",
                            DRAIN_LIMIT.as_secs()
                        )));
                    }
                    info!(
                        in_flight,
                        waited_s = waiting.elapsed().as_secs(),
                        "waiting for Kafka to acknowledge what is in flight before reconnecting"
                    );
                }
            }
        }
        debug!(
            waited_ms = waiting.elapsed().as_millis() as u64,
            "in-flight events acknowledged; reconnecting"
        );
        let delay = backoff.next_delay();
        debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting after backoff"
        );
        if !backoff::pause(delay, &shutdown).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> RelayError {
        RelayError::Replication(ReplicationError::Closed)
    }

    #[test]
    fn a_sink_that_drained_after_the_source_failed_restarts_with_the_source_error() {
        let outcome = run_outcome(Ok(()), Some(Err(lost())), false);
        assert!(
            matches!(
                outcome,
                Err(RelayError::Replication(ReplicationError::Closed))
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn the_sink_failure_wins_over_the_source_it_halted() {
        let sink = RelayError::Internal("sink".into());
        let outcome = run_outcome(Err(sink), Some(Err(lost())), false);
        assert!(matches!(outcome, Err(RelayError::Internal(m)) if m == "sink"));
        let outcome = run_outcome(Err(RelayError::Internal("sink".into())), None, false);
        assert!(matches!(outcome, Err(RelayError::Internal(m)) if m == "sink"));
    }

    #[test]
    fn a_source_that_failed_first_keeps_its_error_over_the_sink_that_drained_after_it() {
        let slot_lost = RelayError::Replication(ReplicationError::SlotUnusable("lost".into()));
        let outcome = run_outcome(
            Err(slot_lost),
            Some(Err(RelayError::Internal("sink".into()))),
            false,
        );
        assert!(
            matches!(
                outcome,
                Err(RelayError::Replication(ReplicationError::SlotUnusable(_)))
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn only_a_shutdown_ends_a_run_without_an_error() {
        assert!(run_outcome(Ok(()), Some(Ok(())), true).is_ok());
        assert!(run_outcome(Ok(()), None, true).is_ok());
        for source in [Some(Ok(())), None] {
            let outcome = run_outcome(Ok(()), source, false);
            assert!(
                outcome.as_ref().is_err_and(|e| e.is_retryable()),
                "{outcome:?}"
            );
        }
    }
}
