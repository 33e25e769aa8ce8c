//! The replication source: one task that streams pgoutput from the slot, decodes it,
//! hands row changes downstream in bounded batches, and reports the flush LSN.
//!
//! The task owns the replication connection. It registers each transaction and event
//! with the [`SharedCheckpoint`] *before* handing the event over, so an acknowledgement can
//! never arrive for work the checkpoint does not know. While the downstream channel is
//! full (backpressure), it stops reading WAL but keeps sending heartbeat status updates,
//! so a slow broker never trips the server's `wal_sender_timeout`.

pub mod events;
pub mod slot;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use events::{Change, EventBatch, SourceEvent, TransactionInfo};
use status::StatusSchedule;

use crate::checkpoint::{SharedCheckpoint, TxnSeq};
use crate::ident::quote_literal;
use crate::metrics as metric;
use crate::replication::pgoutput::{self, PgOutputMessage};
use crate::replication::relations::RelationCache;
use crate::replication::{
    Lsn, ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
    StandbyStatus,
};

/// How often shutdown re-checks what is still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// What the source needs from the config.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Told when streaming starts and stops (readiness).
    pub health: crate::health::Health,
    pub tls: crate::tls::TlsSettings,
    pub slot: String,
    pub publication: String,
    pub status_interval: Duration,
    pub max_batch_events: usize,
    /// With nothing from the server for this long the connection is presumed dead; at
    /// half of it the relay asks the server for a reply.
    pub receive_timeout: Duration,
    /// The last position this relay acknowledged on an earlier connection, while no other
    /// relay held the slot since: a slot found ahead of it was advanced by something else
    /// (see [`slot`]). `None` on the first connection and after a standby wait.
    pub believed_flush: Option<Lsn>,
}

impl SourceSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        SourceSettings {
            health: crate::health::Health::default(),
            tls: config.tls_settings(),
            slot: config.source.slot.as_str().to_owned(),
            publication: config.source.publication.as_str().to_owned(),
            status_interval: Duration::from_millis(config.source.status_interval_ms),
            max_batch_events: config.source.max_batch_events,
            receive_timeout: Duration::from_millis(config.source.wal_receiver_timeout_ms),
            believed_flush: None,
        }
    }
}

/// A connected source, streaming from the slot's confirmed position.
#[allow(missing_debug_implementations)]
pub struct Source {
    stream: ReplicationStream,
    settings: SourceSettings,
    checkpoint: SharedCheckpoint,
    relations: RelationCache,
    /// The open transaction and its events not yet registered with the checkpoint.
    current: Option<OpenTransaction>,
    batch: EventBatch,
    /// Highest WAL position the server has told us about.
    received: Lsn,
    /// Registered events dropped unsent at shutdown (they will be resent after restart).
    abandoned_events: u64,
    status: StatusSchedule,
    /// When the server was last heard from (or last listened to, after backpressure).
    last_heard: Instant,
    /// Whether a reply was already requested since `last_heard`.
    pinged: bool,
}

struct OpenTransaction {
    seq: TxnSeq,
    info: Arc<TransactionInfo>,
    unregistered_events: u64,
}

impl Source {
    /// Connects and starts streaming where it is safe to: the later of the slot's
    /// `confirmed_flush_lsn` and what `checkpoint` already confirmed (a status update may
    /// not have reached the server before a disconnect). The relay thus never reports a
    /// position behind the server's, and never asks for what it already delivered.
    ///
    /// `checkpoint` must have nothing in flight (see [`Checkpoint::resume`]).
    ///
    /// [`Checkpoint::resume`]: crate::checkpoint::Checkpoint::resume
    pub async fn connect(
        pg: &tokio_postgres::Config,
        settings: SourceSettings,
        checkpoint: &SharedCheckpoint,
    ) -> Result<Source, ReplicationError> {
        let mut connection = ReplicationConnection::connect_tls(pg, &settings.tls).await?;
        let identity = connection.identify_system().await?;
        let confirmed =
            slot_confirmed_lsn(&mut connection, &settings.slot, settings.believed_flush).await?;
        let start = confirmed.max(checkpoint.flushed());
        info!(
            slot = %settings.slot,
            confirmed = %confirmed,
            start = %start,
            server_wal = %identity.xlog_position,
            "starting replication"
        );
        let stream = connection
            .start_replication(&settings.slot, start, &settings.publication)
            .await?;
        checkpoint.lock().resume(start);
        settings.health.set_streaming(true);
        Ok(Source {
            stream,
            status: StatusSchedule::new(settings.status_interval, confirmed, Instant::now()),
            settings,
            checkpoint: checkpoint.clone(),
            relations: RelationCache::default(),
            current: None,
            batch: Vec::new(),
            received: start,
            abandoned_events: 0,
            last_heard: Instant::now(),
            pinged: false,
        })
    }

    /// Streams until the connection fails, the receiver is dropped, or `shutdown` fires.
    ///
    /// On shutdown it stops reading WAL, keeps reporting progress while what is in flight
    /// is delivered (for at most `drain_timeout`), sends a final status with the last safe
    /// LSN and closes the connection. Events still in flight then are simply not
    /// acknowledged: they will be sent again after a restart. `halt` is the same without
    /// the wait, for when downstream has stopped and nothing more will be acknowledged.
    pub async fn run(
        mut self,
        events: mpsc::Sender<EventBatch>,
        shutdown: CancellationToken,
        halt: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), ReplicationError> {
        loop {
            let silence = self.silence_deadline();
            // Timers first: a busy stream must not starve the heartbeat.
            tokio::select! {
                biased;
                _ = halt.cancelled() => return self.finish(Duration::ZERO).await,
                _ = shutdown.cancelled() => return self.finish(drain_timeout).await,
                _ = sleep_until(self.status.due()) => self.send_status(false).await?,
                _ = self.checkpoint.advanced() => {
                    self.status.progressed(self.checkpoint.flushed(), Instant::now());
                }
                message = self.stream.next() => {
                    self.heard();
                    self.handle(message?).await?;
                    while self.batch.len() < self.settings.max_batch_events {
                        match self.stream.try_next() {
                            Some(message) => self.handle(message?).await?,
                            None => break,
                        }
                    }
                    if !self.hand_over(&events, &shutdown).await? {
                        return self.finish(drain_timeout).await;
                    }
                    // The socket was not read while the channel was full: silence from
                    // the server during that time says nothing about the connection.
                    self.heard();
                }
                _ = sleep_until(silence) => self.on_silence().await?,
            }
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.pinged = false;
    }

    /// Half the receive timeout after the last message (time to ask for a reply), or the
    /// whole of it once asked (time to give up).
    fn silence_deadline(&self) -> Instant {
        let timeout = self.settings.receive_timeout;
        self.last_heard + if self.pinged { timeout } else { timeout / 2 }
    }

    /// The server has been silent: ask it for a reply first, as PostgreSQL's own
    /// walreceiver does (an idle walsender may legitimately say nothing), then give up on
    /// a connection that answers nothing, e.g. one cut somewhere without a reset.
    async fn on_silence(&mut self) -> Result<(), ReplicationError> {
        if self.pinged {
            return Err(ReplicationError::ReceiveTimeout(
                self.settings.receive_timeout,
            ));
        }
        debug!("server silent; requesting a reply");
        self.pinged = true;
        self.send_status(true).await
    }

    /// Waits for in-flight events (bounded), reports the final position and disconnects.
    async fn finish(mut self, drain_timeout: Duration) -> Result<(), ReplicationError> {
        let deadline = Instant::now() + drain_timeout;
        let checkpoint = self.checkpoint.clone();
        // Events of a batch abandoned at shutdown were registered but never handed over.
        while checkpoint.lock().in_flight_events() > self.abandoned_events {
            tokio::select! {
                _ = checkpoint.advanced() => {}
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = sleep_until(deadline) => {
                    info!(
                        in_flight = checkpoint.lock().in_flight_events(),
                        "shutdown timeout; undelivered events will be sent again after restart"
                    );
                    break;
                }
                _ = sleep_until(self.status.due()) => self.send_status(false).await?,
            }
        }
        self.send_status(false).await?;
        self.settings.health.set_streaming(false);
        info!(flush = %self.checkpoint.flushed(), "replication stopped");
        self.stream.close().await
    }

    /// Sends the current batch downstream, heartbeating while the channel is full.
    /// Returns false when the receiver is gone or shutdown began.
    async fn hand_over(
        &mut self,
        events: &mpsc::Sender<EventBatch>,
        shutdown: &CancellationToken,
    ) -> Result<bool, ReplicationError> {
        if self.batch.is_empty() {
            return Ok(true);
        }
        self.register_current_events();
        let batch = std::mem::take(&mut self.batch);
        loop {
            tokio::select! {
                biased;
                permit = events.reserve() => {
                    return Ok(match permit {
                        Ok(permit) => {
                            permit.send(batch);
                            true
                        }
                        Err(_) => false,
                    });
                }
                _ = sleep_until(self.status.due()) => self.send_status(false).await?,
                _ = shutdown.cancelled() => {
                    self.abandoned_events = batch.len() as u64;
                    return Ok(false);
                }
            }
        }
    }

    async fn handle(&mut self, message: ReplicationMessage) -> Result<(), ReplicationError> {
        match message {
            ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                self.received = self.received.max(wal_end);
                let decoded =
                    pgoutput::decode(data).map_err(|source| ReplicationError::Decode {
                        lsn: wal_start,
                        source,
                    })?;
                self.apply(decoded)
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.received = self.received.max(wal_end);
                debug!(wal_end = %wal_end, reply_requested, "keepalive");
                // Events still in `self.batch` belong to registered transactions, so the
                // checkpoint is not idle while any of them is unsent.
                self.register_current_events();
                if self.checkpoint.lock().idle_position(wal_end) {
                    self.status.progressed(wal_end, Instant::now());
                }
                if reply_requested {
                    self.send_status(false).await?;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, message: PgOutputMessage) -> Result<(), ReplicationError> {
        let change = match message {
            PgOutputMessage::Begin(begin) => {
                if self.current.is_some() {
                    return Err(protocol("Begin inside an open transaction"));
                }
                let seq = self.checkpoint.lock().begin_at(begin.commit_ts_micros);
                self.current = Some(OpenTransaction {
                    seq,
                    info: Arc::new(TransactionInfo {
                        xid: begin.xid,
                        commit_lsn: begin.final_lsn,
                        commit_ts_micros: begin.commit_ts_micros,
                    }),
                    unregistered_events: 0,
                });
                return Ok(());
            }
            PgOutputMessage::Commit(commit) => {
                let open = self
                    .current
                    .take()
                    .ok_or_else(|| protocol("Commit without Begin"))?;
                let mut checkpoint = self.checkpoint.lock();
                checkpoint
                    .add_events(open.seq, open.unregistered_events)
                    .and_then(|_| checkpoint.commit(open.seq, commit.end_lsn))
                    .map_err(|e| protocol(&e.to_string()))?;
                let flushed = checkpoint.flushed();
                drop(checkpoint);
                self.status.progressed(flushed, Instant::now());
                metrics::counter!(metric::TRANSACTIONS).increment(1);
                return Ok(());
            }
            PgOutputMessage::Relation(relation) => {
                debug!(relation = %relation.qualified_name(), oid = relation.oid, "relation");
                self.relations.apply(relation);
                return Ok(());
            }
            PgOutputMessage::Type(_) | PgOutputMessage::Origin(_) | PgOutputMessage::Message(_) => {
                return Ok(())
            }
            PgOutputMessage::Insert(insert) => Change::Insert {
                relation: self.relation(insert.relation)?,
                row: insert.new,
            },
            PgOutputMessage::Update(update) => Change::Update {
                relation: self.relation(update.relation)?,
                old: update.old,
                row: update.new,
            },
            PgOutputMessage::Delete(delete) => Change::Delete {
                relation: self.relation(delete.relation)?,
                old: delete.old,
            },
            PgOutputMessage::Truncate(truncate) => Change::Truncate {
                relations: truncate
                    .relations
                    .iter()
                    .map(|oid| self.relation(*oid))
                    .collect::<Result<_, _>>()?,
            },
        };
        let open = self
            .current
            .as_mut()
            .ok_or_else(|| protocol("row change outside a transaction"))?;
        open.unregistered_events += 1;
        self.batch.push(SourceEvent {
            seq: open.seq,
            transaction: Arc::clone(&open.info),
            change,
        });
        Ok(())
    }

    fn relation(&self, oid: pgoutput::Oid) -> Result<Arc<pgoutput::Relation>, ReplicationError> {
        self.relations.get(oid).cloned().ok_or_else(|| {
            protocol(&format!(
                "change for relation {oid} before its Relation message"
            ))
        })
    }

    /// Tells the checkpoint about the open transaction's events before they leave.
    fn register_current_events(&mut self) {
        if let Some(open) = self.current.as_mut().filter(|o| o.unregistered_events > 0) {
            self.checkpoint
                .lock()
                .add_events(open.seq, open.unregistered_events)
                .expect("the open transaction is registered at Begin");
            open.unregistered_events = 0;
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), ReplicationError> {
        let flushed = self.checkpoint.flushed();
        let status = StandbyStatus {
            write: self.received.max(flushed),
            flush: flushed,
            apply: flushed,
        };
        self.stream.send_status(status, reply_requested).await?;
        debug!(flush = %flushed, "standby status sent");
        self.report_progress(flushed);
        self.status.sent(flushed, Instant::now());
        Ok(())
    }
}

impl Source {
    /// Progress gauges, updated with every status update (so at least once a second).
    fn report_progress(&self, flushed: Lsn) {
        let (in_flight, oldest) = {
            let checkpoint = self.checkpoint.lock();
            (
                checkpoint.in_flight_events(),
                checkpoint.oldest_commit_ts_micros(),
            )
        };
        let lag_seconds = oldest.map_or(0.0, |commit| {
            (crate::replication::stream::postgres_now_micros() - commit).max(0) as f64 / 1e6
        });
        metrics::gauge!(metric::CONFIRMED_FLUSH_LSN).set(flushed.0 as f64);
        metrics::gauge!(metric::REPLICATION_LAG_BYTES)
            .set(self.received.bytes_after(flushed) as f64);
        metrics::gauge!(metric::IN_FLIGHT_EVENTS).set(in_flight as f64);
        metrics::gauge!(metric::LAG_SECONDS).set(lag_seconds);
    }
}

fn protocol(what: &str) -> ReplicationError {
    ReplicationError::Protocol(what.to_owned())
}

/// The slot's `confirmed_flush_lsn`, once [`slot::check`] finds the slot safe to stream.
async fn slot_confirmed_lsn(
    connection: &mut ReplicationConnection,
    slot: &str,
    believed: Option<Lsn>,
) -> Result<Lsn, ReplicationError> {
    let rows = connection
        .simple_query(&slot::slot_row_sql(&quote_literal(slot)))
        .await?;
    let row = match rows.into_iter().next() {
        None => None,
        Some(row) => {
            let column = |i: usize| row.get(i).cloned().flatten();
            Some(slot::SlotRow {
                plugin: column(0),
                in_this_database: column(1).as_deref() == Some("t"),
                confirmed_flush: column(2)
                    .map(|lsn| lsn.parse().map_err(|_| protocol("bad confirmed_flush_lsn")))
                    .transpose()?,
                wal_status: column(3),
            })
        }
    };
    slot::check(slot, row, believed)
}
