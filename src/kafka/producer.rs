//! The producer: records in, delivery reports out, acknowledgements to the checkpoint.
//!
//! At 50–100k events/s per-record costs dominate, so there is no future per record:
//! librdkafka's delivery callback ([`DeliveryContext::delivery`]) runs on the producer's
//! polling thread and acknowledges the event's transaction directly. The opaque value
//! handed to librdkafka is the transaction's sequence number, so nothing is allocated per
//! record beyond librdkafka's own copy of key, value and headers (the only copy between
//! the replication buffer and the wire).
//!
//! # Acknowledgement
//!
//! An event is acknowledged to the checkpoint only from a *successful* delivery report,
//! which with `acks=all` means every in-sync replica has it. A failed report never
//! acknowledges: the record goes back to the pipeline as [`RefusedRecord`], to be
//! dead-lettered (a fault of the row), held and sent again (a fault of its topic, see
//! [`super::hold`]), or the relay stops; in every case the slot stays behind the event.
//!
//! # A success without an offset is not an acknowledgement
//!
//! With `acks=all` the broker answers every record it appended with its offset. librdkafka
//! can also report a record delivered *without* one (offset -1001): it infers the delivery
//! when a later batch of the same partition succeeded ("implicitly acked by subsequent
//! batch success") or from a duplicate-sequence answer. The inference assumes the broker
//! enforces the producer's sequence numbers, and it does not while it holds no state for
//! the producer on that partition: on a partition's first writes, a batch that was
//! refused ("not leader", the partition still being set up) is then counted as delivered
//! because the next one was taken. The saga test lost rows that way on new topics
//! (confluentinc/confluent-kafka-go#921 describes the same on a leader change). Such a
//! record is therefore never acknowledged: it goes back to the sink as an
//! [`UnconfirmedRecord`] and is sent again. It may repeat (when the inference was right),
//! and if it really was lost it lands after records of its key that were sent later; it
//! is never lost. `outbox_relay_kafka_unconfirmed_deliveries_total` counts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Histogram};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message};
use tokio::sync::Notify;
use tracing::{debug, error, trace, warn};

use super::ack_batch::{AckBatch, Collected};
use super::client_config;
use super::poller::{BurstContext, PolledProducer};
use super::PublishError;
use crate::checkpoint::{CheckpointError, SharedCheckpoint, TxnSeq};
use crate::config::KafkaConfig;
use crate::dlq::Reason;
use crate::health::Health;
use crate::metrics as metric;
use crate::outbox::OutboundRecord;
use crate::replication::pgoutput::Oid;
use crate::replication::stream::POSTGRES_EPOCH_OFFSET_MICROS;
use crate::source::SourceEvent;

/// Records waiting this long without any delivery report make the relay unready.
const STALLED_AFTER: Duration = Duration::from_secs(5);

fn unix_millis() -> u64 {
    unix_micros() / 1000
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

thread_local! {
    /// The `outbox_relay_events_total` handle of the last delivery report on this thread
    /// (librdkafka's polling thread): table OID, topic, counter.
    static LAST_DELIVERED: std::cell::RefCell<Option<(Oid, Box<str>, Counter)>> =
        const { std::cell::RefCell::new(None) };
    /// The acknowledgements of the burst of reports being served on this thread (only the
    /// polling thread collects; see super::ack_batch).
    static ACKS: std::cell::RefCell<AckBatch> = std::cell::RefCell::new(AckBatch::default());
}

/// How long a newly created topic may take to appear in the producer's metadata.
const TOPIC_METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`partitions_writable`] waits for a new topic's partitions to be served.
const PARTITIONS_SERVED_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`EventProducer::failed`] looks again when nothing wakes it.
const FAILURE_POLL: Duration = Duration::from_millis(200);
/// How long a transactional producer with a full queue may go without a delivery report
/// before it is given up on (see [`EventProducer::transactional_stalled`]). Longer than a
/// broker restart takes (7 to 18 s in the fault suite).
const TRANSACTIONAL_STALL_LIMIT: Duration = Duration::from_secs(30);
/// How often a transaction's flush looks again when no delivery report wakes it.
const FLUSH_POLL: Duration = Duration::from_millis(5);
/// How long to wait for a delivery report before retrying a send the queue refused.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);

/// A delivery librdkafka gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    pub topic: String,
    pub code: RDKafkaErrorCode,
    pub seq: TxnSeq,
}

/// What librdkafka carries with each record until its delivery report: the event to
/// acknowledge, and, should the broker refuse the record for reasons of its own, what is
/// needed to dead-letter it.
#[derive(Debug)]
pub struct InFlight {
    pub event: SourceEvent,
    /// Set when the record is itself a dead letter (with the reason it carries).
    pub dead_letter: Option<Reason>,
}

/// A record the broker refused permanently for a reason that concerns the record (to be
/// dead-lettered) or its topic (to be held and sent again): handed back to the pipeline
/// instead of stopping the relay.
#[derive(Debug)]
pub struct RefusedRecord {
    pub in_flight: InFlight,
    /// When it was first handed to the producer, among all records: held records go out
    /// again in this order (delivery reports can come back in another).
    pub order: u64,
    pub topic: String,
    pub code: RDKafkaErrorCode,
}

/// A record librdkafka reported delivered without the broker's offset: not acknowledged,
/// to be sent again (see the module docs).
#[derive(Debug)]
pub struct UnconfirmedRecord {
    pub in_flight: InFlight,
    /// Its place in first send order, kept when it is sent again.
    pub order: u64,
    pub topic: String,
    pub partition: i32,
}

/// What librdkafka carries per record: the [`InFlight`] and its place in send order.
/// A record of the relay's own (exactly-once progress) carries no event.
#[derive(Debug)]
pub struct Sent {
    order: u64,
    in_flight: Option<InFlight>,
}

/// Receives librdkafka's callbacks: delivery reports and client errors.
#[derive(Debug)]
pub struct DeliveryContext {
    checkpoint: SharedCheckpoint,
    /// At-least-once: a successful delivery report acknowledges its event. Exactly-once:
    /// it does not; the sink acknowledges a Kafka transaction's events once it committed.
    acknowledge_on_delivery: bool,
    health: Health,
    /// `outbox_relay_events_total` counters by relation OID and topic, made once each.
    delivered_counters: Mutex<HashMap<Oid, HashMap<String, Counter>>>,
    latency: Histogram,
    /// Broker connections so far (librdkafka statistics), to count reconnects.
    connects: AtomicU64,
    /// When the last delivery report arrived (ms since the Unix epoch).
    last_report_ms: AtomicU64,
    failure: Mutex<Option<FailedDelivery>>,
    /// Set once `failure` or `credentials` holds something: the per-record check before
    /// each send is then one atomic load while all is well.
    faulted: AtomicBool,
    /// Why the broker refused the relay's credentials, once it has.
    credentials: Mutex<Option<String>>,
    /// Who the relay authenticates as, for the operator's fix.
    principal: String,
    /// Refused for a fault of the row. Bounded by librdkafka's queue: at most every record
    /// in flight can be refused.
    refused: Mutex<Vec<RefusedRecord>>,
    /// Refused for a fault of the topic, in report order (per partition, send order).
    /// Bounded the same way.
    held: Mutex<Vec<RefusedRecord>>,
    /// Reported delivered without an offset, to be sent again. Bounded the same way.
    unconfirmed: Mutex<Vec<UnconfirmedRecord>>,
    unconfirmed_total: Counter,
    /// Woken by every delivery report: room in the queue, or a failure to look at.
    delivered: Arc<Notify>,
    /// Gives librdkafka its bootstrap servers back when it forgot every broker.
    rebootstrap: super::rebootstrap::Rebootstrap,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // Broker connection errors land here; librdkafka retries them itself, bad
        // credentials included: those the relay stops on (see crate::policy).
        let code = error.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) {
            error!(error = %error, reason, principal = %self.principal, "kafka refused the relay's credentials");
            self.credentials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| reason.to_owned());
            self.faulted.store(true, Ordering::Release);
            self.health.set_kafka_up(false);
            self.delivered.notify_one();
            return;
        }
        warn!(error = %error, reason, "kafka client error");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_kafka_up(false);
        }
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): broker state, round trip,
    /// transmit errors and queue depth.
    fn stats(&self, stats: Statistics) {
        self.rebootstrap.check(&stats, unix_millis());
        let mut up = false;
        let mut connects = 0u64;
        for (name, broker) in &stats.brokers {
            if broker.nodeid < 0 {
                continue; // bootstrap placeholders
            }
            up |= broker.state == "UP";
            connects += broker.connects.unwrap_or(0).max(0) as u64;
            if let Some(rtt) = &broker.rtt {
                metrics::gauge!(metric::KAFKA_BROKER_RTT, "broker" => name.clone())
                    .set(rtt.avg as f64 / 1e6);
            }
            metrics::gauge!(metric::KAFKA_BROKER_TX_ERRORS, "broker" => name.clone())
                .set(broker.txerrs as f64);
        }
        // A broker can look UP while it answers nothing (frozen, partitioned): with records
        // waiting and no delivery report for a while, Kafka is not doing its part.
        let stalled = stats.msg_cnt > 0 && self.silent_ms() > STALLED_AFTER.as_millis() as u64;
        self.health.set_kafka_up(up && !stalled);
        let before = self.connects.swap(connects, Ordering::Relaxed);
        if before > 0 && connects > before {
            metrics::counter!(metric::RECONNECTS, "target" => "kafka").increment(connects - before);
        }
        metrics::gauge!(metric::KAFKA_QUEUE_MESSAGES).set(stats.msg_cnt as f64);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let Sent { order, in_flight } = *sent;
        let now_unix_micros = unix_micros();
        self.last_report_ms
            .store(now_unix_micros / 1000, Ordering::Relaxed);
        let Some(in_flight) = in_flight else {
            // The relay's own record: only a failure matters (it fails the transaction).
            match result {
                Ok(message) if message.offset() >= 0 => {}
                Ok(message) => {
                    self.unconfirmed_total.increment(1);
                    self.record_failure(
                        message.topic().to_owned(),
                        RDKafkaErrorCode::Fail,
                        TxnSeq(0),
                    );
                }
                Err((e, message)) => {
                    error!(topic = message.topic(), error = %e, "progress record not delivered");
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    self.record_failure(message.topic().to_owned(), code, TxnSeq(0));
                }
            }
            self.delivered.notify_one();
            return;
        };
        let seq = in_flight.event.seq;
        match result {
            Ok(message) if message.offset() < 0 => {
                self.unconfirmed_total.increment(1);
                warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    "librdkafka reported a record delivered without an offset from the broker; \
                     not acknowledging it and sending it again (it may repeat, it is never lost)"
                );
                self.unconfirmed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(UnconfirmedRecord {
                        in_flight,
                        order,
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                    });
            }
            Ok(message) => {
                trace!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    seq = seq.0,
                    "delivered"
                );
                self.count_delivery(&in_flight.event, message.topic(), now_unix_micros);
                if self.acknowledge_on_delivery {
                    self.acknowledge(seq);
                }
                // Exactly-once: acknowledged when its transaction commits.
            }
            Err((e, message)) => {
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                let topic = message.topic().to_owned();
                let queue = match crate::policy::refused(code) {
                    crate::policy::Action::DeadLetter => {
                        warn!(%topic, error = %e, "broker refused a record");
                        &self.refused
                    }
                    // Every queued record of the topic comes back this way: the hold logs
                    // once per topic instead (see super::hold).
                    crate::policy::Action::Hold => {
                        debug!(%topic, error = %e, "broker refused the topic; holding the record");
                        &self.held
                    }
                    _ => {
                        error!(%topic, error = %e, "delivery failed");
                        self.record_failure(topic, code, seq);
                        self.delivered.notify_one();
                        return;
                    }
                };
                queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(RefusedRecord {
                        in_flight,
                        order,
                        topic,
                        code,
                    });
            }
        }
        self.delivered.notify_one();
    }
}

impl BurstContext for DeliveryContext {
    fn burst_begin(&self) {
        ACKS.with_borrow_mut(|batch| batch.begin(self.acknowledge_on_delivery));
    }

    fn burst_end(&self) {
        self.hand_over_acks();
        ACKS.with_borrow_mut(AckBatch::end);
    }
}

impl DeliveryContext {
    /// One delivered event: kept for the end of the burst on the polling thread (see
    /// super::ack_batch), acknowledged at once anywhere else.
    fn acknowledge(&self, seq: TxnSeq) {
        match ACKS.with_borrow_mut(|batch| batch.add(seq)) {
            Collected::Kept => {}
            Collected::Full => self.hand_over_acks(),
            Collected::AckNow => {
                if let Err(e) = self.checkpoint.ack(seq, 1) {
                    self.acknowledgement_rejected(e);
                }
            }
        }
    }

    /// Acknowledges the burst's collected events under one checkpoint lock.
    fn hand_over_acks(&self) {
        let outcome =
            ACKS.with_borrow_mut(|batch| batch.hand_over(|runs| self.checkpoint.ack_runs(runs)));
        if let Some(Err(e)) = outcome {
            self.acknowledgement_rejected(e);
        }
    }

    /// A bookkeeping bug must not move the slot: report it and stop acking.
    fn acknowledgement_rejected(&self, e: CheckpointError) {
        error!(error = %e, "acknowledgement rejected by the checkpoint");
        let seq = match e {
            CheckpointError::UnknownTransaction(seq)
            | CheckpointError::TooManyAcks { seq, .. }
            | CheckpointError::BadCommit(seq) => seq,
        };
        self.record_failure(String::new(), RDKafkaErrorCode::Fail, seq);
    }

    /// Milliseconds since the last delivery report.
    fn silent_ms(&self) -> u64 {
        unix_millis().saturating_sub(self.last_report_ms.load(Ordering::Relaxed))
    }

    fn count_delivery(&self, event: &SourceEvent, topic: &str, now_unix_micros: u64) {
        let commit_unix_micros = event.transaction.commit_ts_micros + POSTGRES_EPOCH_OFFSET_MICROS;
        self.latency
            .record((now_unix_micros as i64 - commit_unix_micros).max(0) as f64 / 1e6);
        let crate::source::Change::Insert { relation, .. } = &event.change else {
            return;
        };
        // Reports come in bursts of one partition's batch: the same table and topic as the
        // report before, whose counter handle the polling thread keeps at hand.
        let hit = LAST_DELIVERED.with_borrow(|last| match last {
            Some((oid, last_topic, counter)) if *oid == relation.oid && **last_topic == *topic => {
                counter.increment(1);
                true
            }
            _ => false,
        });
        if hit {
            return;
        }
        let mut counters = self
            .delivered_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let by_topic = counters.entry(relation.oid).or_default();
        let counter = match by_topic.get(topic) {
            Some(counter) => counter.clone(),
            None => {
                let counter = metrics::counter!(metric::EVENTS, "table" => relation.qualified_name(), "topic" => topic.to_owned());
                by_topic.insert(topic.to_owned(), counter.clone());
                counter
            }
        };
        counter.increment(1);
        LAST_DELIVERED.set(Some((relation.oid, topic.into(), counter)));
    }

    fn record_failure(&self, topic: String, code: RDKafkaErrorCode, seq: TxnSeq) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(FailedDelivery { topic, code, seq });
        self.faulted.store(true, Ordering::Release);
    }
}

/// The relay's Kafka producer.
#[allow(missing_debug_implementations)]
pub struct EventProducer {
    producer: PolledProducer<DeliveryContext>,
    /// The next record's place in send order.
    next_order: AtomicU64,
    delivered: Arc<Notify>,
}

impl EventProducer {
    /// A producer for `kafka`; transactional (exactly-once) with a `transactional_id`.
    pub fn new(
        kafka: &KafkaConfig,
        checkpoint: SharedCheckpoint,
        health: Health,
        transactional_id: Option<&str>,
    ) -> Result<Self, PublishError> {
        let delivered = Arc::new(Notify::new());
        let context = DeliveryContext {
            checkpoint,
            acknowledge_on_delivery: transactional_id.is_none(),
            health,
            delivered_counters: Mutex::new(HashMap::new()),
            latency: metrics::histogram!(metric::DELIVERY_LATENCY),
            connects: AtomicU64::new(0),
            last_report_ms: AtomicU64::new(unix_millis()),
            failure: Mutex::new(None),
            faulted: AtomicBool::new(false),
            credentials: Mutex::new(None),
            principal: crate::policy::principal(&kafka.properties),
            refused: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            unconfirmed: Mutex::new(Vec::new()),
            unconfirmed_total: metrics::counter!(metric::KAFKA_UNCONFIRMED_DELIVERIES),
            delivered: Arc::clone(&delivered),
            rebootstrap: super::rebootstrap::Rebootstrap::new(&kafka.bootstrap_servers),
        };
        let producer = PolledProducer::new(
            &client_config::producer_config(kafka, transactional_id),
            context,
        )
        .map_err(PublishError::Client)?;
        let client = producer.client();
        client.context().rebootstrap.attach(client.native_ptr());
        Ok(EventProducer {
            producer,
            next_order: AtomicU64::new(0),
            delivered,
        })
    }

    /// Hands `record` to librdkafka; its delivery report acknowledges `in_flight.event`.
    /// Waits while the queue is full: that wait is the relay's backpressure, never an
    /// unbounded buffer.
    pub async fn send(
        &self,
        record: &OutboundRecord,
        in_flight: InFlight,
    ) -> Result<(), PublishError> {
        self.try_send(record, in_flight).await.map_err(|(e, _)| e)
    }

    /// [`EventProducer::send`], handing `in_flight` back when librdkafka refuses the
    /// record at once (so a held record can be sent again later).
    pub async fn try_send(
        &self,
        record: &OutboundRecord,
        in_flight: InFlight,
    ) -> Result<(), (PublishError, InFlight)> {
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        self.send_as(record, in_flight, order).await
    }

    /// [`EventProducer::try_send`] for a held record, keeping its place in send order.
    pub async fn send_as(
        &self,
        record: &OutboundRecord,
        in_flight: InFlight,
        order: u64,
    ) -> Result<(), (PublishError, InFlight)> {
        // Built once: librdkafka takes the headers over with the record, and hands them
        // back with a record the full queue refused, for the next attempt.
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_ref()),
            });
        }
        let mut headers = Some(headers);
        let mut opaque = Box::new(Sent {
            order,
            in_flight: Some(in_flight),
        });
        loop {
            if let Err(e) = self.check_failures() {
                return Err((e, take_in_flight(*opaque)));
            }
            let mut message =
                BaseRecord::<[u8], [u8], Box<Sent>>::with_opaque_to(&record.topic, opaque);
            message.headers = headers.take();
            if let Some(key) = &record.key {
                message = message.key(key.as_ref());
            }
            if let Some(payload) = &record.payload {
                message = message.payload(payload.as_ref());
            }
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), refused)) => {
                    opaque = refused.delivery_opaque;
                    headers = refused.headers;
                    if self.transactional_stalled() {
                        let error = PublishError::Produce {
                            topic: record.topic.to_string(),
                            source: KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        };
                        return Err((error, take_in_flight(*opaque)));
                    }
                    self.wait_report(QUEUE_FULL_WAIT).await;
                }
                Err((e, refused)) => {
                    let error = PublishError::Produce {
                        topic: record.topic.to_string(),
                        source: e,
                    };
                    return Err((error, take_in_flight(*refused.delivery_opaque)));
                }
            }
        }
    }

    /// Sends the relay's own record (exactly-once progress) in the open transaction; a
    /// failed delivery fails the transaction (see [`EventProducer::check_failures`]).
    pub async fn send_own(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let mut opaque = Box::new(Sent {
            order: self.next_order.fetch_add(1, Ordering::Relaxed),
            in_flight: None,
        });
        loop {
            self.check_failures()?;
            let message = BaseRecord::<[u8], [u8], Box<Sent>>::with_opaque_to(topic, opaque)
                .key(key)
                .payload(payload);
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), refused)) => {
                    opaque = refused.delivery_opaque;
                    self.wait_report(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => {
                    return Err(PublishError::Produce {
                        topic: topic.to_owned(),
                        source: e,
                    })
                }
            }
        }
    }

    /// A transactional producer whose queue is full and that has had no delivery report
    /// for [`TRANSACTIONAL_STALL_LIMIT`]: given up on, so that the pipeline restarts with
    /// a new one (the transaction is aborted; the slot sends its rows again).
    ///
    /// After a broker pause longer than `broker.session.timeout.ms` the cluster fences its
    /// broker, and librdkafka drops it while the transaction coordinator still holds it:
    /// the broker is then neither usable nor gone, so the re-bootstrap watchdog (see
    /// [`super::rebootstrap`]) never fires, and the queue never drains. The fault suite
    /// hung on it. A producer that is not transactional recovers by itself there, and
    /// waits without a limit, as its backpressure should.
    fn transactional_stalled(&self) -> bool {
        let context = self.producer.context();
        !context.acknowledge_on_delivery
            && context.silent_ms() > TRANSACTIONAL_STALL_LIMIT.as_millis() as u64
    }

    /// Runs one blocking transactional call of librdkafka on a blocking thread.
    async fn transactional(
        &self,
        call: impl FnOnce(&BaseProducer<DeliveryContext>) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), KafkaError> {
        let producer = self.producer.shared();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// `init_transactions`: fences every older producer of the same `transactional.id`
    /// and aborts the transaction it left open.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.transactional(move |p| p.init_transactions(timeout))
            .await
    }

    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Waits for every record of the open transaction to be reported, so that
    /// [`EventProducer::check_failures`] and the refused and unconfirmed queues are final
    /// before it commits.
    ///
    /// Not rdkafka's `flush`: that polls for delivery reports in slices of 100 ms while the
    /// producer's own thread serves them, so it returns tens of milliseconds after the
    /// last one, on every commit. This asks librdkafka to send what lingers now, then
    /// waits on the reports themselves.
    pub async fn flush_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A zero timeout only wakes the broker threads ("flushing": linger ends now).
        let _ = self.producer.flush(Duration::ZERO);
        while self.producer.in_flight_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            self.wait_report(FLUSH_POLL).await;
        }
        Ok(())
    }

    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.transactional(move |p| p.commit_transaction(timeout))
            .await
    }

    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.transactional(move |p| p.abort_transaction(timeout))
            .await
    }

    /// Why the open transaction must not commit, if anything was refused, left
    /// unconfirmed or failed since it began; empties the queues of refused and
    /// unconfirmed records (the transaction is aborted, and the slot sends them again).
    /// Returns the records refused for a fault of their own, to be dead-lettered then.
    pub fn transaction_faults(&self) -> (Option<String>, Vec<RefusedRecord>) {
        let refused = self.take_refused();
        let held = self.take_held();
        let unconfirmed = self.take_unconfirmed();
        let fault = if let Err(e) = self.check_failures() {
            Some(e.to_string())
        } else if let Some(first) = held.first() {
            Some(format!(
                "Kafka refused topic {} ({}); fix: {}",
                first.topic,
                first.code,
                crate::policy::topic_fix(
                    first.code,
                    &first.topic,
                    &self.producer.context().principal
                )
            ))
        } else if let Some(first) = refused.first() {
            Some(format!(
                "Kafka refused a record of topic {} ({}); it goes to the dead-letter topic when the slot sends it again",
                first.topic, first.code
            ))
        } else {
            unconfirmed.first().map(|first| {
                format!(
                    "librdkafka reported a record of topic {} (partition {}) delivered without an offset",
                    first.topic, first.partition
                )
            })
        };
        (fault, refused)
    }

    /// Waits for the next delivery report, at most `limit`.
    pub async fn wait_report(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.delivered.notified()).await;
    }

    /// Whether this producer's own metadata lists `topic`'s partitions now (one metadata
    /// request). A topic the broker refuses may have lost them (librdkafka drops the
    /// partitions of a topic whose metadata carries an error): records sent before they
    /// are back would wait in the unassigned queue and could be overtaken (see
    /// [`EventProducer::wait_for_topic`]).
    pub async fn knows_partitions(&self, topic: &str) -> bool {
        let producer = self.producer.shared();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .is_ok_and(|m| !super::partitions_of(&m, &topic).is_empty())
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until this producer's own metadata lists `topic`'s partitions, then (best
    /// effort, see [`partitions_writable`]) until each partition's leader serves it.
    ///
    /// librdkafka parks records for a topic whose partitions it does not know yet in an
    /// "unassigned" queue and partitions them when metadata arrives; records produced
    /// after that moment can overtake them and break per-key order. Producing only once
    /// the partitions are known avoids that window.
    pub async fn wait_for_topic(&self, topic: &str) -> Result<(), PublishError> {
        let producer = self.producer.shared();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + TOPIC_METADATA_TIMEOUT;
            let partitions = loop {
                let known = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map(|m| super::partitions_of(&m, &topic));
                match known {
                    Ok(partitions) if !partitions.is_empty() => break partitions,
                    Ok(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Ok(_) => return Err(PublishError::UnknownTopic(topic)),
                    Err(e) => return Err(PublishError::Client(e)),
                }
            };
            partitions_writable(&producer, &topic, &partitions);
            Ok(())
        })
        .await
        .map_err(|_| PublishError::Client(KafkaError::Canceled))?
    }

    /// Records the broker refused since the last call, for the dead-letter topic.
    pub fn take_refused(&self) -> Vec<RefusedRecord> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Records the broker refused for a fault of their topic since the last call, in
    /// report order, to be held and sent again.
    pub fn take_held(&self) -> Vec<RefusedRecord> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Records reported delivered without an offset since the last call, in report order,
    /// to be sent again.
    pub fn take_unconfirmed(&self) -> Vec<UnconfirmedRecord> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .unconfirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Whether records refused for a fault of their topic wait to be sent again.
    pub fn has_held(&self) -> bool {
        !self
            .producer
            .context()
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The first delivery librdkafka gave up on, as an error.
    pub fn check_failures(&self) -> Result<(), PublishError> {
        let context = self.producer.context();
        if !context.faulted.load(Ordering::Acquire) {
            return Ok(());
        }
        let credentials = context
            .credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(reason) = credentials {
            return Err(PublishError::Credentials {
                principal: context.principal.clone(),
                reason,
            });
        }
        let failure = self
            .producer
            .context()
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match failure {
            Some(failed) => Err(PublishError::Delivery(failed)),
            None => Ok(()),
        }
    }

    /// Resolves with the first failure [`EventProducer::check_failures`] reports, to race
    /// against work that would otherwise wait for a broker that will never take it.
    pub async fn failed(&self) -> PublishError {
        loop {
            if let Err(e) = self.check_failures() {
                return e;
            }
            self.wait_report(FAILURE_POLL).await;
        }
    }

    /// Messages handed over and not yet reported.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits (blocking a thread, up to `timeout`) for outstanding deliveries, and until
    /// the polling thread has acknowledged them all to the checkpoint.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        self.producer.flush(timeout).map_err(PublishError::Client)?;
        self.producer
            .settle(timeout.saturating_sub(started.elapsed()));
        Ok(())
    }
}

/// The event a record carries (every record handed to [`EventProducer::send_as`] has one).
fn take_in_flight(sent: Sent) -> InFlight {
    sent.in_flight
        .expect("records sent through send_as always carry their event")
}

/// Waits, at most [`PARTITIONS_SERVED_TIMEOUT`], until the leader of each of `partitions`
/// answers for it (a ListOffsets request).
///
/// A broker lists a new topic's partitions in its metadata a moment before its replica
/// manager has made them, and answers "not leader" to produce requests meanwhile. Those
/// first refusals are where librdkafka counts a refused batch as delivered (see the module
/// docs): the relay then sends the record again, out of order for its key. Waiting until
/// each partition is served keeps new topics out of that window. It is best effort, and
/// correctness does not rest on it: a partition that answers with anything but "not
/// ready yet" (an ACL, say) is left to the first produce request to report.
fn partitions_writable(producer: &BaseProducer<DeliveryContext>, topic: &str, partitions: &[i32]) {
    let deadline = std::time::Instant::now() + PARTITIONS_SERVED_TIMEOUT;
    for &partition in partitions {
        loop {
            match producer
                .client()
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
            {
                Err(KafkaError::MetadataFetch(code))
                    if not_served_yet(code) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    debug!(topic, partition, error = %e, "partition not confirmed served; producing anyway");
                    break;
                }
                Ok(_) => break,
            }
        }
    }
}

/// Answers a partition gives while it is still being set up on its leader.
fn not_served_yet(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::UnknownLeaderEpoch
    )
}
