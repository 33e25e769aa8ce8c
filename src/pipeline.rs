//! The relay's main loop: source → route → produce → acknowledge, with reconnects and a
//! graceful stop.
//!
//! Two tasks joined by one bounded channel of event batches. The source task owns the
//! replication connection and reconnects on its own (exponential backoff with jitter);
//! before it reconnects it waits until everything in flight is acknowledged, so the new
//! connection starts from a settled checkpoint. The sink task routes each event, makes
//! sure its topic exists and hands it to the producer; delivery reports acknowledge
//! events on librdkafka's thread. A broker outage needs no code here: librdkafka retries
//! without limit, its bounded queue fills, the sink waits, the channel fills, and the
//! source stops reading WAL while it keeps heartbeating.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admin_sql::{self, AdminError};
use crate::backoff::Backoff;
use crate::checkpoint::SharedCheckpoint;
use crate::config::Config;
use crate::config::OnError;
use crate::dlq;
use crate::health::Health;
use crate::kafka::producer::InFlight;
use crate::kafka::{EventProducer, Hold, PublishError, TopicManager};
use crate::metrics as metric;
use crate::outbox::{OutboundRecord, Routed, Router, TablePolicy};
use crate::policy::{self, Action, Failure};
use crate::replication::{Lsn, ReplicationError};
use crate::source::{EventBatch, Source, SourceEvent, SourceSettings};

/// Pause before a refused dead-letter write is sent again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// How often a standby relay tries to take the slot over (with jitter, half to all of it).
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the sink looks for failed deliveries while no events arrive.
const FAILURE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("row {} of table {table} (xid {xid}, commit {lsn}) cannot be published ({class}): {reason}; fix the row or the [outbox] config, or set on_error = \"dlq\"", id.as_deref().unwrap_or("(no id)"))]
    Row {
        table: Arc<str>,
        id: Option<String>,
        xid: u32,
        lsn: Lsn,
        class: &'static str,
        reason: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

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
    let checkpoint = SharedCheckpoint::new(Lsn::ZERO);
    let producer = EventProducer::new(&kafka, checkpoint.clone(), health.clone())?;
    let topics = TopicManager::new(&kafka)?;
    let (events_tx, events_rx) = mpsc::channel(config.source.channel_capacity_batches);
    let sink = Sink {
        router: Router::new(&config.outbox, &config.dlq.topic),
        producer,
        topics,
        hold: Hold::new(&kafka, health.clone(), checkpoint.clone()),
        checkpoint: checkpoint.clone(),
    };
    let drain_timeout = Duration::from_millis(config.source.shutdown_timeout_ms);
    let mut sink_task = tokio::spawn(sink.run(events_rx, shutdown.clone(), drain_timeout));
    let halt = CancellationToken::new();
    let mut source_task: JoinHandle<Result<(), RelayError>> = tokio::spawn(run_source(
        config.clone(),
        health,
        checkpoint,
        events_tx,
        shutdown.clone(),
        halt.clone(),
    ));
    tokio::select! {
        // The sink failed (or ended first): stop reading WAL, report what was delivered
        // before the failure, and stop. Nothing after it is acknowledged.
        sink_result = &mut sink_task => {
            halt.cancel();
            match tokio::time::timeout(drain_timeout, &mut source_task).await {
                Ok(source_result) => {
                    if let Err(e) = flatten(source_result) {
                        warn!(error = %e, "replication did not stop cleanly");
                    }
                }
                Err(_) => source_task.abort(),
            }
            flatten(sink_result)
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
            source_result.and(sink_result)
        }
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
                tokio::select! {
                    _ = sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
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
    events: mpsc::Sender<EventBatch>,
    shutdown: CancellationToken,
    halt: CancellationToken,
) -> Result<(), RelayError> {
    let pg = config.postgres_config();
    let mut settings = SourceSettings {
        health: health.clone(),
        ..SourceSettings::from_config(&config)
    };
    let drain_timeout = Duration::from_millis(config.source.shutdown_timeout_ms);
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
                // What this relay acknowledged is what the slot may not pass without it.
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
        // downstream is acknowledged first (see Checkpoint::resume).
        tokio::select! {
            _ = checkpoint.drained() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let delay = backoff.next_delay();
        debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting after backoff"
        );
        tokio::select! {
            _ = sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Routes events and hands them to the producer.
struct Sink {
    router: Router,
    producer: EventProducer,
    topics: TopicManager,
    /// Records refused for a fault of their topic: sent again before anything newer.
    hold: Hold,
    checkpoint: SharedCheckpoint,
}

impl Sink {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<EventBatch>,
        shutdown: CancellationToken,
        flush_timeout: Duration,
    ) -> Result<(), RelayError> {
        let mut failure_check = tokio::time::interval(FAILURE_CHECK_INTERVAL);
        let outcome = loop {
            let step = tokio::select! {
                batch = events.recv() => match batch {
                    Some(batch) => match self.dead_letter_refused(&shutdown).await {
                        Ok(()) => self.publish(batch, &shutdown).await,
                        Err(e) => Err(e),
                    },
                    None => break Ok(()),
                },
                _ = failure_check.tick() => match self.dead_letter_refused(&shutdown).await {
                    Ok(()) => self.producer.check_failures().map_err(RelayError::from),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = step {
                break Err(e);
            }
            if self.hold.interrupted() {
                break Ok(()); // Stopping while a topic is held: publish nothing newer.
            }
        };
        // Whatever was handed to librdkafka before a stop still gets its chance to be
        // delivered (and acknowledged), so the slot ends as close to the failure as is safe.
        let producer = &self.producer;
        tokio::task::block_in_place(|| producer.flush(flush_timeout)).ok();
        outcome?;
        self.producer.check_failures()?;
        Ok(())
    }

    async fn publish(
        &mut self,
        batch: EventBatch,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        for event in batch {
            if self.hold.interrupted() {
                return Ok(());
            }
            match self.router.route(&event.change) {
                Routed::Publish(record) => self.publish_record(&event, record, shutdown).await?,
                Routed::Ignore { table, operation } => {
                    debug!(%table, operation, "ignored outbox operation");
                    metrics::counter!(metric::EVENTS_IGNORED, "table" => table.to_string(), "op" => operation)
                        .increment(1);
                    self.ack(&event)?;
                }
                Routed::Reject { policy, problem } => {
                    let reason = dlq::Reason {
                        class: problem.class(),
                        message: problem.to_string(),
                    };
                    self.reject(&event, &policy, None, reason, shutdown).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends a routed record; a failure that concerns only this row dead-letters it.
    async fn publish_record(
        &mut self,
        event: &SourceEvent,
        record: OutboundRecord,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let in_flight = InFlight {
            event: event.clone(),
            dead_letter: None,
        };
        let sent = match self.ensure_topic(&record.topic, shutdown).await {
            Ok(()) => self.producer.try_send(&record, in_flight).await,
            Err(e) => Err((e, in_flight)),
        };
        let Err((error, in_flight)) = sent else {
            return Ok(());
        };
        match policy::classify(Failure::Publish(&error)) {
            Action::DeadLetter => {
                let reason = dlq::Reason {
                    class: policy::publish_class(&error),
                    message: error.to_string(),
                };
                let policy = Arc::clone(&record.policy);
                self.reject(event, &policy, Some(&record), reason, shutdown)
                    .await
            }
            // The topic refuses it: hold it until it takes it (never the DLQ).
            Action::Hold => {
                let held = Hold::refused_at_send(&record.topic, &error, in_flight);
                self.hold_refused(Some(held), shutdown).await
            }
            Action::Retry | Action::Stop => Err(error.into()),
        }
    }

    /// Sends records refused for a fault of their topic (and `held`) again until Kafka
    /// takes them, before anything newer (see [`crate::kafka::hold`]).
    async fn hold_refused(
        &mut self,
        held: Option<crate::kafka::producer::RefusedRecord>,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let (producer, topics, router) = (&self.producer, &mut self.topics, &mut self.router);
        Ok(self
            .hold
            .run(producer, topics, router, held, shutdown)
            .await?)
    }

    /// Records the broker refused after accepting them into the queue (delivery reports):
    /// first those refused for a fault of their topic are held and sent again until Kafka
    /// takes them; then those refused for a fault of their own are dead-lettered. A refused
    /// dead letter is sent again after a pause: the dead-letter topic never drops a row.
    async fn dead_letter_refused(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        if self.producer.has_held() {
            self.hold_refused(None, shutdown).await?;
        }
        for refused in self.producer.take_refused() {
            let event = refused.in_flight.event;
            let (policy, original) = match self.router.route(&event.change) {
                Routed::Publish(record) => (Arc::clone(&record.policy), Some(record)),
                Routed::Reject { policy, .. } => (policy, None),
                Routed::Ignore { .. } => {
                    self.ack(&event)?;
                    continue;
                }
            };
            match refused.in_flight.dead_letter {
                // The row was already logged and counted when it was first dead-lettered:
                // only the write is repeated.
                Some(reason) => {
                    warn!(topic = %refused.topic, code = ?refused.code, "dead-letter write refused; retrying");
                    tokio::select! {
                        _ = sleep(DEAD_LETTER_RETRY) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    let dead = dlq::record(&event, &policy, original.as_ref(), &reason);
                    self.send_dead_letter(&event, &dead, reason, shutdown)
                        .await?;
                }
                None => {
                    let reason = dlq::Reason {
                        class: policy::code_class(refused.code),
                        message: format!(
                            "Kafka refused the record for topic {}: {}",
                            refused.topic, refused.code
                        ),
                    };
                    self.reject(&event, &policy, original.as_ref(), reason, shutdown)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// A row that can never be published: stop (`on_error = "stop"`) or dead-letter it.
    async fn reject(
        &mut self,
        event: &SourceEvent,
        policy: &Arc<TablePolicy>,
        original: Option<&OutboundRecord>,
        reason: dlq::Reason,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let dead = dlq::record(event, policy, original, &reason);
        let id = dead
            .headers
            .iter()
            .find(|(name, _)| &**name == "id")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        if policy.on_error == OnError::Stop {
            let error = RelayError::Row {
                table: Arc::clone(&policy.table),
                id,
                xid: event.transaction.xid,
                lsn: event.transaction.commit_lsn,
                class: reason.class,
                reason: reason.message,
            };
            error!(error = %error, "stopping (on_error = \"stop\"): the slot stays before this row");
            return Err(error);
        }
        warn!(
            table = %policy.table,
            lsn = %event.transaction.commit_lsn,
            id = id.as_deref().unwrap_or("unknown"),
            class = reason.class,
            reason = %reason.message,
            dlq = %dead.topic,
            "dead-lettering row"
        );
        metrics::counter!(metric::EVENTS_DEAD_LETTERED, "table" => policy.table.to_string(), "class" => reason.class)
            .increment(1);
        self.send_dead_letter(event, &dead, reason, shutdown).await
    }

    /// Writes `dead` to its dead-letter topic. The topic must take the row: retry without
    /// limit, never drop it, and acknowledge nothing after it meanwhile (the checkpoint
    /// waits for it).
    async fn send_dead_letter(
        &mut self,
        event: &SourceEvent,
        dead: &OutboundRecord,
        reason: dlq::Reason,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut backoff = Backoff::default();
        loop {
            let sent = match self.ensure_topic(&dead.topic, shutdown).await {
                Ok(()) => {
                    let in_flight = InFlight {
                        event: event.clone(),
                        dead_letter: Some(reason.clone()),
                    };
                    self.producer.send(dead, in_flight).await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(dlq = %dead.topic, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot write the dead-letter topic; retrying");
                    tokio::select! {
                        _ = sleep(delay) => {}
                        _ = shutdown.cancelled() => return Err(e.into()),
                    }
                }
            }
        }
    }

    fn ack(&self, event: &SourceEvent) -> Result<(), RelayError> {
        self.checkpoint
            .ack(event.seq, 1)
            .map_err(|e| RelayError::Internal(e.to_string()))
    }

    /// Makes sure `topic` exists, retrying while the broker is unreachable.
    async fn ensure_topic(
        &mut self,
        topic: &Arc<str>,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut backoff = Backoff::default();
        loop {
            // A failure the relay stops on (bad credentials) ends the wait for the topic.
            let ensured = tokio::select! {
                ensured = self.topics.ensure(topic, &self.producer) => ensured,
                failed = self.producer.failed() => Err(failed),
            };
            match ensured {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    let delay = backoff.next_delay();
                    warn!(%topic, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot create topic yet");
                    tokio::select! {
                        _ = sleep(delay) => {}
                        _ = shutdown.cancelled() => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
