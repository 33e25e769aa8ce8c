//! The sink: routes each event, makes sure its topic exists, hands it to the producer,
//! and dead-letters what can never be published. Delivery reports acknowledge events on
//! librdkafka's thread (see [`crate::kafka::producer`]).
//!
//! A broker outage needs no code here: librdkafka retries without limit, its bounded queue
//! fills, [`EventProducer::send`] waits, the channel behind the sink fills, and the source
//! stops reading WAL while it keeps heartbeating.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, trace, warn};

use super::exactly_once::{refused_before, Admit, ExactlyOnce};
use super::RelayError;
use crate::backoff::{self, Backoff};
use crate::checkpoint::SharedCheckpoint;
use crate::config::OnError;
use crate::dlq;
use crate::health::Health;
use crate::kafka::producer::InFlight;
use crate::kafka::{EventProducer, Hold, PublishError, TopicManager};
use crate::metrics as metric;
use crate::outbox::{OutboundRecord, Routed, Router, TablePolicy};
use crate::policy::{self, Action, Failure};
use crate::source::{EventBatch, SourceEvent};

/// Pause before a refused dead-letter write is sent again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// Exactly-once: how often a due transaction looks again for its last Commit.
const DUE_RECHECK: Duration = Duration::from_millis(2);
/// How often the sink looks for failed deliveries while no events arrive.
const FAILURE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// A change of a table outside `source.tables`: the relay stops before it (see
/// [`crate::outbox`]), logging the table and the fix, never the row.
fn stop_on_foreign(foreign: crate::outbox::ForeignTable) -> RelayError {
    error!(table = %foreign.table, publication = %foreign.publication, fix = %foreign.fix, "stopping: a table outside source.tables is in the publication; the slot stays before its change");
    RelayError::Foreign(foreign)
}

/// Routes events and hands them to the producer.
pub(super) struct Sink {
    pub(super) router: Router,
    pub(super) producer: EventProducer,
    pub(super) topics: TopicManager,
    /// Records refused for a fault of their topic: sent again before anything newer.
    pub(super) hold: Hold,
    pub(super) checkpoint: SharedCheckpoint,
    pub(super) health: Health,
    /// A table fault holds the stream: nothing more is published (see
    /// [`Sink::hold_for_table`]).
    pub(super) table_held: bool,
    /// `outbox_relay_events_ignored_total` handles by table and operation, made once each.
    pub(super) ignored: foldhash::HashMap<(Arc<str>, &'static str), metrics::Counter>,
    /// With `kafka.delivery = "exactly_once"`: the Kafka transactions (see
    /// [`super::exactly_once`]).
    pub(super) exactly_once: Option<ExactlyOnce>,
}

impl Sink {
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<EventBatch>,
        shutdown: CancellationToken,
        flush_timeout: Duration,
    ) -> Result<(), RelayError> {
        let mut failure_check = tokio::time::interval(FAILURE_CHECK_INTERVAL);
        let outcome = loop {
            // Exactly-once: wake when the open transaction is due by age too, and while it
            // is due but its last PostgreSQL transaction's Commit has not been read, look
            // again soon (the Commit may come without more events to wake the sink).
            let due = match self.transaction_due_in() {
                Some(left) if left.is_zero() => DUE_RECHECK,
                Some(left) => left,
                None => FAILURE_CHECK_INTERVAL,
            };
            let step = tokio::select! {
                batch = events.recv() => match batch {
                    Some(batch) => match self.handle_reports(&shutdown).await {
                        Ok(()) => self.publish(batch, &shutdown).await,
                        Err(e) => Err(e),
                    },
                    None => break Ok(()),
                },
                _ = failure_check.tick() => match self.handle_reports(&shutdown).await {
                    Ok(()) => self.delivery_failures(),
                    Err(e) => Err(e),
                },
                _ = sleep(due), if self.exactly_once.is_some() => Ok(()),
            };
            let step = match step {
                Ok(()) if self.exactly_once.is_some() && !self.table_held => {
                    self.transaction_step(!events.is_empty()).await
                }
                other => other,
            };
            if let Err(e) = step {
                break Err(e);
            }
            if self.hold.interrupted() || self.table_held {
                break Ok(()); // Stopping while a topic or a table is held: publish nothing newer.
            }
        };
        if self.exactly_once.is_some() {
            // Commits what is whole; aborts the rest, which the slot sends again.
            let ended = self
                .end_transactions(outcome.is_err() || self.table_held)
                .await;
            // A producer stuck on a broker librdkafka cannot let go of can block in its
            // destructor: dropped on a thread of its own, it never holds up the restart.
            let Sink { producer, .. } = self;
            let _ = std::thread::Builder::new()
                .name("producer-drop".into())
                .spawn(move || drop(producer));
            outcome?;
            return ended;
        }
        // Whatever was handed to librdkafka before a stop still gets its chance to be
        // delivered (and acknowledged), so the slot ends as close to the failure as is safe.
        let producer = &self.producer;
        tokio::task::block_in_place(|| producer.flush(flush_timeout)).ok();
        outcome?;
        self.producer.check_failures()?;
        Ok(())
    }

    /// The first delivery librdkafka gave up on, as the error the pipeline ends with: in
    /// exactly-once mode a fenced producer or a failed transaction restarts it (see
    /// [`super::exactly_once::publish_failure`]).
    fn delivery_failures(&self) -> Result<(), RelayError> {
        match self.producer.check_failures() {
            Ok(()) => Ok(()),
            Err(e) if self.exactly_once.is_some() => Err(super::exactly_once::publish_failure(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Exactly-once, between batches and on the timer: start the transactions once the
    /// source holds the slot (so a takeover fences the old replica at once), and commit
    /// the open transaction when it is due (`backlog`: more batches wait in the channel).
    async fn transaction_step(&mut self, backlog: bool) -> Result<(), RelayError> {
        if self.start_transactions().await? {
            self.commit_if_due(backlog).await?;
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        batch: EventBatch,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        for event in batch {
            if self.hold.interrupted() || self.table_held {
                return Ok(());
            }
            if self.exactly_once.is_some() && self.admit(&event).await? == Admit::AlreadyPublished {
                continue;
            }
            match self.router.route(&event.change) {
                Routed::Publish(record) => self.publish_record(event, record, shutdown).await?,
                Routed::Ignore { table, operation } => {
                    debug!(%table, operation, "ignored outbox operation");
                    self.ignored
                        .entry((Arc::clone(&table), operation))
                        .or_insert_with(|| {
                            metrics::counter!(metric::EVENTS_IGNORED, "table" => table.to_string(), "op" => operation)
                        })
                        .increment(1);
                    self.ack(&event)?;
                }
                Routed::Reject { policy, problem } if problem.is_table_fault() => {
                    self.hold_for_table(&event, &policy, &problem, shutdown)
                        .await;
                    return Ok(());
                }
                Routed::Reject { policy, problem } => {
                    let reason = dlq::Reason {
                        class: problem.class(),
                        message: problem.to_string(),
                    };
                    self.reject(&event, &policy, None, reason, shutdown).await?;
                }
                // Not acknowledged: the slot stays before it.
                Routed::Foreign(foreign) => return Err(stop_on_foreign(foreign)),
            }
        }
        Ok(())
    }

    /// A row of a table whose columns no longer match the config (a migration renamed or
    /// dropped one): every later row of it would fail the same way, so nothing is
    /// dead-lettered. The stream holds at this row until shutdown: readiness answers 503
    /// with the fix, `outbox_relay_table_blocked{table}` is 1, one error line per minute
    /// names table and column, and the row is never acknowledged, so the slot stays
    /// before it. The fix is a config change, so it takes a restart.
    async fn hold_for_table(
        &mut self,
        event: &SourceEvent,
        policy: &Arc<TablePolicy>,
        problem: &crate::outbox::RowProblem,
        shutdown: &CancellationToken,
    ) {
        self.table_held = true;
        let fix = problem.table_fix().unwrap_or_else(|| problem.to_string());
        if self.exactly_once.is_some() {
            // Its rows before this one must not wait in an open transaction (it would hold
            // read_committed consumers back): the slot sends them again after the fix.
            self.abort_for("table", &fix).await;
        }
        self.health.set_table_blocked(Some(fix.clone()));
        let table = policy.table.to_string();
        metrics::gauge!(metric::TABLE_BLOCKED, "table" => table.clone()).set(1.0);
        loop {
            error!(
                %table,
                lsn = %event.transaction.commit_lsn,
                xid = event.transaction.xid,
                fix = %fix,
                "the table's columns no longer match the config; holding the stream (nothing is dead-lettered, the slot stays before this row)"
            );
            tokio::select! {
                _ = sleep(crate::kafka::hold::LOG_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends a routed record; a failure that concerns only this row dead-letters it. The
    /// event moves into what librdkafka carries until its delivery report (no copy).
    async fn publish_record(
        &mut self,
        event: SourceEvent,
        record: OutboundRecord,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        trace!(
            topic = %record.topic,
            seq = event.seq.0,
            id = ?record.headers.iter().find(|(name, _)| &**name == "id").map(|(_, v)| String::from_utf8_lossy(v)),
            "sending"
        );
        if let Some(eos) = &self.exactly_once {
            if refused_before(&eos.refusals, &event, &record) {
                let reason = dlq::Reason {
                    class: "kafka_rejected",
                    message: format!(
                        "Kafka refused the record for topic {} (its transaction was aborted)",
                        record.topic
                    ),
                };
                let policy = Arc::clone(&record.policy);
                return self
                    .reject(&event, &policy, Some(&record), reason, shutdown)
                    .await;
            }
        }
        let ensured = if self.topics.is_known(&record.topic) {
            Ok(())
        } else {
            self.ensure_topic(&record.topic, shutdown).await
        };
        let in_flight = InFlight {
            event,
            dead_letter: None,
        };
        let sent = match ensured {
            Ok(()) => match self.topics.max_message_bytes(&record.topic) {
                // The broker would refuse it, and a broker refusal holds the topic: this
                // row is the one at fault, so it is checked (and dead-lettered) here.
                Some(limit) if record.wire_size() > limit => {
                    let problem = crate::outbox::RowProblem::TooLargeForTopic {
                        bytes: record.wire_size(),
                        limit,
                        topic: Arc::clone(&record.topic),
                    };
                    let reason = dlq::Reason {
                        class: problem.class(),
                        message: problem.to_string(),
                    };
                    let policy = Arc::clone(&record.policy);
                    return self
                        .reject(&in_flight.event, &policy, Some(&record), reason, shutdown)
                        .await;
                }
                _ => self.producer.try_send(&record, in_flight).await,
            },
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
                self.reject(&in_flight.event, &policy, Some(&record), reason, shutdown)
                    .await
            }
            // Exactly-once: the transaction cannot commit; the pipeline restarts with
            // backoff and the slot sends the rows again, until the topic takes them.
            Action::Hold if self.exactly_once.is_some() => Err(RelayError::Transaction(format!(
                "Kafka refused topic {}: {error}",
                record.topic
            ))),
            // The topic refuses it: hold it until it takes it (never the DLQ).
            Action::Hold => {
                let held = Hold::refused_at_send(&record.topic, &error, in_flight);
                self.hold_refused(Some(held), shutdown).await
            }
            Action::Retry | Action::Stop if self.exactly_once.is_some() => {
                Err(super::exactly_once::publish_failure(error))
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

    /// What delivery reports handed back: records to send again, hold or dead-letter.
    async fn handle_reports(&mut self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        if self.exactly_once.is_some() {
            return Ok(()); // Looked at before each commit (see super::exactly_once).
        }
        self.send_unconfirmed_again(shutdown).await?;
        self.dead_letter_refused(shutdown).await
    }

    /// Records librdkafka reported delivered without the broker's offset were never
    /// acknowledged (see [`crate::kafka::producer`]): they go out again now, keeping their
    /// place in send order should their topic be held.
    async fn send_unconfirmed_again(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        for unconfirmed in self.producer.take_unconfirmed() {
            let Some(record) =
                crate::kafka::hold::rebuild(&mut self.router, &unconfirmed.in_flight)
            else {
                // Nothing to publish after all (cannot happen for a record that was sent).
                self.ack(&unconfirmed.in_flight.event)?;
                continue;
            };
            let sent = self
                .producer
                .send_as(&record, unconfirmed.in_flight, unconfirmed.order)
                .await;
            let Err((error, in_flight)) = sent else {
                continue;
            };
            match policy::classify(Failure::Publish(&error)) {
                Action::Hold => {
                    let held = Hold::refused_at_send(&record.topic, &error, in_flight);
                    self.hold_refused(Some(held), shutdown).await?;
                }
                // Not acknowledged: the slot stays before it, and the server sends it again.
                _ => return Err(error.into()),
            }
        }
        Ok(())
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
                // Cannot happen (never sent); never dead-letter it all the same.
                Routed::Foreign(foreign) => return Err(stop_on_foreign(foreign)),
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
                // Exactly-once: the transaction cannot commit without it; the pipeline
                // restarts and the slot sends the row again (a fenced or stalled producer
                // could write nothing more anyway).
                Err(e) if self.exactly_once.is_some() => {
                    return Err(super::exactly_once::publish_failure(e));
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(dlq = %dead.topic, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot write the dead-letter topic; retrying");
                    if !backoff::pause(delay, shutdown).await {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// Acknowledges an event handled without a record of its own. Exactly-once: nothing
    /// here; its Kafka transaction acknowledges it once committed.
    fn ack(&self, event: &SourceEvent) -> Result<(), RelayError> {
        if self.exactly_once.is_some() {
            return Ok(());
        }
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
                    if !backoff::pause(delay, shutdown).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
