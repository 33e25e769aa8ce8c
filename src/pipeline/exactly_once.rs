//! The sink's exactly-once half (`kafka.delivery = "exactly_once"`): Kafka transactions
//! around whole PostgreSQL transactions, a progress record in each, and acknowledgement
//! only after the commit.
//!
//! # Start and takeover
//!
//! Before its first record a run of the pipeline (a start, a restart, a standby that took
//! the slot over) calls `init_transactions` with the slot's `transactional.id`: that
//! fences every older producer of the id (a frozen replica that wakes up can commit
//! nothing more) and aborts the transaction it left open. Then it reads the slot's last
//! committed progress ([`crate::kafka::progress_reader`]) and skips what it covers as the
//! slot sends it again ([`crate::progress`] says when a record must skip nothing).
//! It waits for the slot first: only the replica that holds the slot fences the others.
//!
//! # Commit
//!
//! At a PostgreSQL commit once the transaction is due ([`super::transaction`]), the
//! progress record goes out, every delivery report is awaited, and only if none of them
//! failed, was refused or came without an offset is the Kafka transaction committed. Its
//! events are then acknowledged to the checkpoint. Anything else aborts it: nothing of it
//! becomes visible, nothing of it is acknowledged, and the pipeline restarts, so the slot
//! sends it all again. A record the broker refused for a fault of its own is remembered
//! and dead-lettered when it comes again (in the transaction around it); a topic fault
//! restarts with backoff until the topic takes records, which holds the stream.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{error, info, warn};

use super::sink::Sink;
use super::transaction::{complete_through, Batcher};
use super::RelayError;
use crate::config::KafkaConfig;
use crate::kafka::progress_reader;
use crate::metrics as metric;
use crate::progress::{self, Progress, SkipRule};
use crate::replication::Lsn;
use crate::source::history::{Seen, SharedHistory};
use crate::source::SourceEvent;

/// Bound on `init_transactions`, a commit and an abort (each waits for the coordinator).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on an abort: it only frees the partitions' last stable offset sooner, since the
/// next producer of the id aborts the transaction anyway.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reading the last progress back.
const PROGRESS_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows remembered as refused by the broker (see [`Refusals`]); a relay that meets more
/// stops rather than forget one.
const REFUSALS_CAPACITY: usize = 10_000;

/// Rows the broker refused for a fault of their own inside a transaction that was then
/// aborted: dead-lettered when the slot sends them again. Kept across pipeline restarts.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<HashSet<(Lsn, String)>>>);

impl Refusals {
    /// Remembers the row with event id `id` of the transaction committing at `commit_lsn`.
    pub fn remember(
        &self,
        commit_lsn: Lsn,
        id: String,
        code: RDKafkaErrorCode,
    ) -> Result<(), RelayError> {
        let mut rows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if rows.len() >= REFUSALS_CAPACITY {
            return Err(RelayError::Internal(format!(
                "more than {REFUSALS_CAPACITY} rows refused by Kafka ({code}) are waiting to be dead-lettered"
            )));
        }
        rows.insert((commit_lsn, id));
        Ok(())
    }

    /// Whether the row was refused before (and forgets it: it is dead-lettered now).
    pub fn take(&self, commit_lsn: Lsn, id: &str) -> bool {
        let mut rows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        rows.remove(&(commit_lsn, id.to_owned()))
    }
}

/// What a run of the pipeline knows once its transactions are initialized.
#[derive(Debug)]
struct Started {
    server: Seen,
    key: String,
    skip: Option<SkipRule>,
    /// The latest commit time included so far on this history (carried into every record).
    max_commit_ts_micros: i64,
}

/// The exactly-once state of one run of the sink.
#[derive(Debug)]
pub(super) struct ExactlyOnce {
    pub(super) batcher: Batcher,
    kafka: KafkaConfig,
    progress_topic: Arc<str>,
    slot: String,
    history: SharedHistory,
    pub(super) refusals: Refusals,
    started: Option<Started>,
}

impl ExactlyOnce {
    pub(super) fn new(
        kafka: &KafkaConfig,
        slot: &str,
        history: SharedHistory,
        refusals: Refusals,
    ) -> Self {
        ExactlyOnce {
            batcher: Batcher::new(
                kafka.transaction_max_events,
                Duration::from_millis(kafka.transaction_max_ms),
            ),
            kafka: kafka.clone(),
            progress_topic: Arc::from(kafka.progress_topic.as_str()),
            slot: slot.to_owned(),
            history,
            refusals,
            started: None,
        }
    }
}

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Publish it in the open transaction.
    Publish,
    /// Already committed on Kafka (acknowledged here).
    AlreadyPublished,
}

/// Codes of a transactional producer that can do nothing more: fenced by a newer one
/// (another replica took the slot over), or failed fatally.
fn is_fatal_code(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// Whether `error` means the transactional producer can do nothing more.
pub(super) fn is_fatal(error: &crate::kafka::PublishError) -> bool {
    is_fatal_code(error.code())
}

/// A send that failed in exactly-once mode: a fenced (or fatally failed) producer, or a
/// retryable failure, restarts the pipeline (the transaction is aborted); a failure an
/// operator must fix stops as in at-least-once mode.
pub(super) fn publish_failure(error: crate::kafka::PublishError) -> RelayError {
    if is_fatal(&error) {
        metrics::counter!(metric::KAFKA_TRANSACTIONS_ABORTED, "reason" => "fenced").increment(1);
        error!(error = %error, "the transactional producer was fenced (another replica of this slot took over, same transactional.id) or failed fatally; nothing more of this one becomes visible");
        return RelayError::Transaction(format!("fenced or failed producer: {error}"));
    }
    if error.is_retryable() {
        return RelayError::Transaction(error.to_string());
    }
    error.into()
}

/// A transactional call that failed: fenced by another replica, or anything else (the
/// transaction is aborted and the pipeline restarts).
fn transaction_error(step: &str, e: &KafkaError) -> RelayError {
    if is_fatal_code(e.rdkafka_error_code()) {
        error!(step, error = %e, "fenced: another replica of this slot took over (same transactional.id); nothing more of this one becomes visible");
        metrics::counter!(metric::KAFKA_TRANSACTIONS_ABORTED, "reason" => "fenced").increment(1);
        return RelayError::Transaction(format!("fenced by another replica at {step}: {e}"));
    }
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) {
        error!(step, error = %e, "Kafka refuses the relay's transactional.id; grant it Write and Describe on the TransactionalId (kafka-acls.sh --add --allow-principal <the relay's principal> --operation Write --operation Describe --transactional-id <kafka.transactional_id>); retrying with backoff");
    }
    RelayError::Transaction(format!("{step} failed: {e}"))
}

impl Sink {
    fn eos(&mut self) -> &mut ExactlyOnce {
        self.exactly_once
            .as_mut()
            .expect("exactly-once calls are made only in exactly-once mode")
    }

    /// Initializes transactions and reads the committed progress, once per run, once the
    /// source holds the slot. Returns whether it is done (false: no connection yet).
    pub(super) async fn start_transactions(&mut self) -> Result<bool, RelayError> {
        let eos = self.eos();
        if eos.started.is_some() {
            return Ok(true);
        }
        let Some(server) = eos.history.lock().connected.clone() else {
            return Ok(false);
        };
        let topic = Arc::clone(&eos.progress_topic);
        let key = progress::key(&eos.slot, &server.system_id);
        self.topics
            .ensure_progress_topic(&topic, &self.producer)
            .await?;
        self.producer
            .init_transactions(TRANSACTION_CALL_TIMEOUT)
            .await
            .map_err(|e| transaction_error("init_transactions", &e))?;
        let kafka = self.eos().kafka.clone();
        let read_key = key.clone();
        let read_topic = topic.to_string();
        let last = tokio::task::spawn_blocking(move || {
            progress_reader::read_last(&kafka, &read_topic, &read_key, PROGRESS_READ_TIMEOUT)
        })
        .await
        .map_err(|e| RelayError::Internal(format!("progress reader: {e}")))??;
        let (skip, max_commit_ts_micros) = match progress::resume(last.as_ref(), &server) {
            Ok(Some(rule)) => {
                info!(topic = %topic, key, through = %rule.through, "resuming after the committed progress: transactions the slot sends again up to it are already on Kafka and are skipped");
                (Some(rule), rule.max_commit_ts_micros)
            }
            Ok(None) => {
                info!(topic = %topic, key, "no committed progress for this slot yet");
                (None, i64::MIN)
            }
            Err(distrusted) => {
                error!(topic = %topic, key, reason = %distrusted, "the committed progress belongs to another history and skips nothing: every transaction the slot sends is published");
                (None, i64::MIN)
            }
        };
        self.eos().started = Some(Started {
            server,
            key,
            skip,
            max_commit_ts_micros,
        });
        Ok(true)
    }

    /// Admits `event` into the open Kafka transaction: skips it when committed progress
    /// covers it, commits the open transaction first when it is due and the event begins
    /// another PostgreSQL transaction, and begins one when none is open.
    pub(super) async fn admit(&mut self, event: &SourceEvent) -> Result<Admit, RelayError> {
        if !self.start_transactions().await? {
            return Err(RelayError::Internal(
                "an event arrived before the source connected".into(),
            ));
        }
        let eos = self.eos();
        let covered = eos
            .started
            .as_ref()
            .and_then(|s| s.skip)
            .is_some_and(|rule| rule.already_published(&event.transaction));
        if covered {
            metrics::counter!(metric::EVENTS_ALREADY_PUBLISHED).increment(1);
            self.checkpoint
                .ack(event.seq, 1)
                .map_err(|e| RelayError::Internal(e.to_string()))?;
            return Ok(Admit::AlreadyPublished);
        }
        // Inside a batch more events wait by definition: only size (or the stretched age)
        // ends a transaction here; between batches, `commit_if_due` looks at the channel.
        let now = Instant::now();
        if eos.batcher.at_boundary(event.seq) && eos.batcher.is_due(now, true) {
            self.commit().await?;
        }
        if self
            .eos()
            .batcher
            .add(event.seq, event.transaction.commit_ts_micros, now)
        {
            self.producer
                .begin_transaction()
                .map_err(|e| transaction_error("begin_transaction", &e))?;
        }
        Ok(Admit::Publish)
    }

    /// Commits the open transaction if it is due and holds whole PostgreSQL transactions
    /// only (between batches, and on the sink's timer); `backlog`: more batches wait.
    pub(super) async fn commit_if_due(&mut self, backlog: bool) -> Result<(), RelayError> {
        if self.eos().batcher.is_due(Instant::now(), backlog) {
            self.commit().await?;
        }
        Ok(())
    }

    /// How long until the open transaction is due by age.
    pub(super) fn transaction_due_in(&self) -> Option<Duration> {
        self.exactly_once
            .as_ref()
            .and_then(|eos| eos.batcher.due_in(Instant::now()))
    }

    /// Commits the open transaction when its last PostgreSQL transaction is complete;
    /// does nothing otherwise (it commits at that transaction's end).
    async fn commit(&mut self) -> Result<(), RelayError> {
        let Some((seq, seen)) = self.eos().batcher.last() else {
            return Ok(());
        };
        let state = self.checkpoint.lock().transaction(seq);
        let Some(commit_end) = complete_through(state, seen) else {
            return Ok(());
        };
        let started_at = Instant::now();
        let eos = self.eos();
        let Some(open) = eos.batcher.take() else {
            return Ok(());
        };
        let started = eos
            .started
            .as_mut()
            .expect("a transaction opens only after start_transactions");
        let record = Progress {
            slot: eos.slot.clone(),
            system_id: started.server.system_id.clone(),
            timeline: started.server.timeline,
            commit_end,
            max_commit_ts_micros: started.max_commit_ts_micros.max(open.max_commit_ts_micros),
        };
        let key = started.key.clone();
        let topic = Arc::clone(&eos.progress_topic);
        let outcome = async {
            self.producer
                .send_own(&topic, key.as_bytes(), &record.encode())
                .await?;
            self.producer
                .flush_transaction(TRANSACTION_CALL_TIMEOUT)
                .await
                .map_err(|e| transaction_error("flush", &e))?;
            let (fault, refused) = self.producer.transaction_faults();
            if let Some(fault) = fault {
                self.remember_refused(refused)?;
                return Err(RelayError::Transaction(fault));
            }
            self.producer
                .commit_transaction(TRANSACTION_CALL_TIMEOUT)
                .await
                .map_err(|e| transaction_error("commit_transaction", &e))
        }
        .await;
        if let Err(e) = outcome {
            self.abort(&e).await;
            return Err(e);
        }
        metrics::counter!(metric::KAFKA_TRANSACTIONS_COMMITTED).increment(1);
        metrics::histogram!(metric::KAFKA_TRANSACTION_COMMIT)
            .record(started_at.elapsed().as_secs_f64());
        if let Some(started) = self.eos().started.as_mut() {
            started.max_commit_ts_micros = record.max_commit_ts_micros;
        }
        for (seq, events) in open.runs {
            self.checkpoint
                .ack(seq, events)
                .map_err(|e| RelayError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    /// Rows the broker refused for a fault of their own: remembered, to be dead-lettered
    /// when the slot sends them again.
    fn remember_refused(
        &mut self,
        refused: Vec<crate::kafka::producer::RefusedRecord>,
    ) -> Result<(), RelayError> {
        for record in refused {
            let event = &record.in_flight.event;
            let id = match self.router.route(&event.change) {
                crate::outbox::Routed::Publish(routed) => event_id(&routed),
                _ => None,
            };
            match id {
                Some(id) => {
                    warn!(topic = %record.topic, code = ?record.code, id, lsn = %event.transaction.commit_lsn, "Kafka refused the row; aborting its transaction, the row is dead-lettered when the slot sends it again");
                    self.eos()
                        .refusals
                        .remember(event.transaction.commit_lsn, id, record.code)?;
                }
                None => {
                    return Err(RelayError::Internal(format!(
                        "Kafka refused a row without an event id ({}) in topic {}",
                        record.code, record.topic
                    )))
                }
            }
        }
        Ok(())
    }

    /// Aborts the transaction [`Sink::commit`] took after `why`; nothing of it is
    /// acknowledged.
    async fn abort(&mut self, why: &RelayError) {
        let reason = match why {
            RelayError::Transaction(m) if m.starts_with("fenced") || m.contains("Fatal") => {
                // Counted where it was found; a fenced producer cannot abort either.
                return;
            }
            RelayError::Transaction(m) if m.contains("refused topic") => "topic",
            RelayError::Transaction(m) if m.contains("refused a record") => "row",
            RelayError::Transaction(_) | RelayError::Publish(_) => "delivery",
            _ => "error",
        };
        self.abort_now(reason, &why.to_string()).await;
    }

    /// Aborts the open transaction, if any, counting it under `reason`.
    pub(super) async fn abort_for(&mut self, reason: &'static str, why: &str) {
        if self.eos().batcher.take().is_some() {
            self.abort_now(reason, why).await;
        }
    }

    /// Aborts the producer's transaction (already taken off the batcher).
    async fn abort_now(&mut self, reason: &'static str, why: &str) {
        warn!(reason, why, "aborting the Kafka transaction; nothing of it is visible or acknowledged, and the slot sends its rows again");
        metrics::counter!(metric::KAFKA_TRANSACTIONS_ABORTED, "reason" => reason).increment(1);
        if let Err(e) = self.producer.abort_transaction(ABORT_TIMEOUT).await {
            warn!(error = %e, "abort_transaction failed; the broker aborts the transaction when the next producer of this id starts, or at transaction.timeout.ms");
        }
    }

    /// The stream ended (shutdown, or the source stopped): commits what is whole, aborts
    /// the rest.
    pub(super) async fn end_transactions(&mut self, failed: bool) -> Result<(), RelayError> {
        if !self.eos().batcher.is_open() {
            return Ok(());
        }
        if !failed {
            self.commit().await?;
        }
        self.abort_for(
            "stream_ended",
            "the stream ended inside a PostgreSQL transaction",
        )
        .await;
        Ok(())
    }
}

/// The record's event id (its `id` header), which names a refused row across restarts.
fn event_id(record: &crate::outbox::OutboundRecord) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(name, _)| &**name == "id")
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

/// Whether `record` is a row Kafka refused before for a fault of its own (see
/// [`Refusals`]): then it goes to the dead-letter topic instead.
pub(super) fn refused_before(
    refusals: &Refusals,
    event: &SourceEvent,
    record: &crate::outbox::OutboundRecord,
) -> bool {
    event_id(record).is_some_and(|id| refusals.take(event.transaction.commit_lsn, &id))
}
