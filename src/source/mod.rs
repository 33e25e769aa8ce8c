//! The replication source: the I/O loop around the [`assembler`]. It streams pgoutput
//! from the slot, feeds the assembler, hands its batches downstream through a bounded
//! channel, and reports the flush LSN.
//!
//! The assembler registers each transaction and event with the [`SharedCheckpoint`]
//! *before* the event is handed over, so an acknowledgement can never arrive for work the
//! checkpoint does not know. While the downstream channel is full (backpressure), the
//! loop stops reading WAL but keeps sending heartbeat status updates, so a slow broker
//! never trips the server's `wal_sender_timeout`.
//!
//! # No exit orphans anything
//!
//! [`Source::run`] has one way out: whether the connection failed (an error while the
//! channel was full, a status update into a dead socket), downstream went away, or
//! shutdown began, it first [releases](assembler::Assembler::release) every event the
//! assembler registered and did not hand over. What stays in flight afterwards is exactly
//! what downstream holds, which it acknowledges or, if it fails, halts the pipeline. The
//! supervisor's wait for a drained checkpoint before it reconnects therefore always ends.
//!
//! # Where a connection starts
//!
//! At the later of the slot's `confirmed_flush_lsn` and the relay's own flush LSN (a status
//! update may not have reached the server before a disconnect), unless the server's
//! [`history`] went back: then at the slot's position, never past it. Either way the start
//! is at or below the server's WAL end (`debug_assert!`ed): the relay never asks for a
//! position the server's own history does not hold.
//!
//! Before it starts, every connection checks the slot ([`slot`]) and the publication
//! ([`publication`]): a publication that carries more than `source.tables` stops the relay.

pub mod assembler;
pub mod events;
pub mod history;
pub mod lag;
pub mod publication;
pub mod slot;
pub mod status;

use std::pin::Pin;
use std::time::Duration;

use metrics::{Counter, Histogram};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use assembler::{Assembler, Step};
pub use events::{Change, EventBatch, SourceEvent, TransactionInfo};
use history::{Rewind, SharedHistory, Verdict};
use lag::{LagClock, Progress, ServerEnd};
use status::StatusSchedule;

use crate::checkpoint::SharedCheckpoint;
use crate::config::OnNewSystem;
use crate::ident::{quote_literal, TableName};
use crate::metrics as metric;
use crate::replication::pgoutput;
use crate::replication::{
    Lsn, ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
    StandbyStatus,
};

/// What the source needs from the config.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Told when streaming starts and stops (readiness).
    pub health: crate::health::Health,
    pub tls: crate::tls::TlsSettings,
    pub slot: String,
    pub publication: String,
    /// `source.tables`: exactly what the publication must cover (see [`publication`]).
    pub tables: Vec<TableName>,
    pub status_interval: Duration,
    pub max_batch_events: usize,
    /// With nothing from the server for this long the connection is presumed dead; at
    /// half of it the relay asks the server for a reply.
    pub receive_timeout: Duration,
    /// The last position this relay acknowledged on an earlier connection, while no other
    /// relay held the slot since: a slot found ahead of it was advanced by something else
    /// (see [`slot`]). `None` on the first connection and after a standby wait.
    pub believed_flush: Option<Lsn>,
    /// What the relay saw of the server on earlier connections (see [`history`]).
    pub history: SharedHistory,
    pub on_new_system: OnNewSystem,
}

impl SourceSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        SourceSettings {
            health: crate::health::Health::default(),
            tls: config.tls_settings(),
            slot: config.source.slot.as_str().to_owned(),
            publication: config.source.publication.as_str().to_owned(),
            tables: config.source.tables.clone(),
            status_interval: Duration::from_millis(config.source.status_interval_ms),
            max_batch_events: config.source.max_batch_events,
            receive_timeout: Duration::from_millis(config.source.wal_receiver_timeout_ms),
            believed_flush: None,
            history: SharedHistory::default(),
            on_new_system: config.source.on_new_system,
        }
    }
}

/// A connected source, streaming from the slot's confirmed position.
#[allow(missing_debug_implementations)]
pub struct Source {
    stream: ReplicationStream,
    settings: SourceSettings,
    checkpoint: SharedCheckpoint,
    assembler: Assembler,
    /// Highest WAL position the server has told us about.
    received: Lsn,
    /// The server's WAL end as far as the relay knows it (see [`lag`]).
    server_end: ServerEnd,
    /// When the relay last had everything, for the lag gauge (see [`lag`]).
    lag: LagClock,
    status: StatusSchedule,
    /// When the server was last heard from (or last listened to, after backpressure).
    last_heard: Instant,
    /// Whether a reply was already requested since `last_heard`.
    pinged: bool,
    /// Fires when the next status update is due. Kept across loop turns and moved only
    /// when the schedule changes: a timer made afresh on every turn would be registered
    /// and cancelled with the runtime's timer wheel each time.
    status_timer: Pin<Box<Sleep>>,
    /// Fires at [`Source::silence_deadline`], kept the same way.
    silence_timer: Pin<Box<Sleep>>,
    /// `outbox_relay_transactions_total`, counted at every Commit.
    transactions: Counter,
    /// `outbox_relay_read_latency_seconds`, recorded at every Commit.
    read_latency: Histogram,
    /// Commit time of the transaction being read (from its Begin).
    open_commit_ts_micros: i64,
}

/// Moves `timer` to `deadline` unless it is already set there.
fn aim(timer: &mut Pin<Box<Sleep>>, deadline: Instant) {
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
}

/// Why the streaming loop ended without an error.
enum Stop {
    /// Shutdown or downstream gone: drain what is in flight (bounded), then close.
    Drain,
    /// Downstream failed: nothing more will be acknowledged, close at once.
    Halt,
}

impl Source {
    /// Connects and starts streaming where it is safe to (see the module docs): the later
    /// of the slot's `confirmed_flush_lsn` and what `checkpoint` already confirmed, unless
    /// the server's history went back, then the slot's position.
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
        let slot = slot_position(&mut connection, &settings.slot, settings.believed_flush).await?;
        check_publication(&mut connection, &settings.publication, &settings.tables).await?;
        let confirmed = slot.confirmed;
        let flushed = checkpoint.flushed();
        let verdict = history::check(settings.history.lock().seen.as_ref(), flushed, &identity);
        let rewind = match verdict {
            Verdict::Same => None,
            Verdict::Rewound(rewind) => Some(rewind),
            Verdict::OtherSystem { was, now } => match settings.on_new_system {
                OnNewSystem::Stop => return Err(ReplicationError::OtherSystem { was, now }),
                OnNewSystem::Follow => Some(Rewind::OtherSystem { was, now }),
            },
        };
        let start = match &rewind {
            None => confirmed.max(flushed),
            Some(rewind) => {
                let ours = settings
                    .history
                    .lock()
                    .seen
                    .as_ref()
                    .map_or(flushed, |s| s.position.max(flushed));
                error!(
                    slot = %settings.slot,
                    relay_position = %ours,
                    server_wal = %identity.xlog_position,
                    slot_confirmed = %confirmed,
                    timeline = identity.timeline,
                    system_id = %identity.system_id,
                    cause = ?rewind,
                    "the server's history went back: its WAL ends at {} but this relay was at {ours}; {}. Resuming from the slot's confirmed position {confirmed}, never past it: rows committed on the new history are all published, rows the relay published from the old history after that position may be published again",
                    identity.xlog_position,
                    rewind.probable_cause(),
                );
                metrics::counter!(metric::HISTORY_REWINDS).increment(1);
                confirmed
            }
        };
        if let Some(advanced_from) = slot.advanced_from {
            warn!(
                slot = %settings.slot,
                confirmed = %confirmed,
                last_acknowledged = %advanced_from,
                "the slot moved from {advanced_from} to {confirmed} while this relay was disconnected: another replica streamed from it (the documented standby setup), or something advanced it (pg_replication_slot_advance, a drop and recreate); resuming from the slot"
            );
            metrics::counter!(metric::SLOT_ADVANCED_ELSEWHERE).increment(1);
        }
        // The acknowledgement rule's other half: never start past the server's history.
        debug_assert!(
            start <= identity.xlog_position,
            "start {start} past the server's WAL end {}",
            identity.xlog_position
        );
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
        if rewind.is_some() {
            checkpoint.lock().rewind(start);
        } else {
            checkpoint.lock().resume(start);
        }
        settings.history.lock().streaming(&identity, start);
        settings.health.set_streaming(true);
        Ok(Source {
            stream,
            status: StatusSchedule::new(settings.status_interval, confirmed, Instant::now()),
            assembler: Assembler::new(checkpoint.clone(), settings.max_batch_events),
            settings,
            checkpoint: checkpoint.clone(),
            received: start,
            server_end: ServerEnd::at_connect(identity.xlog_position),
            lag: LagClock::new(crate::replication::stream::postgres_now_micros()),
            last_heard: Instant::now(),
            pinged: false,
            status_timer: Box::pin(sleep_until(Instant::now())),
            silence_timer: Box::pin(sleep_until(Instant::now())),
            transactions: metrics::counter!(metric::TRANSACTIONS),
            read_latency: metrics::histogram!(metric::READ_LATENCY),
            open_commit_ts_micros: 0,
        })
    }

    /// Streams until the connection fails, the receiver is dropped, or `shutdown` fires.
    ///
    /// On shutdown it stops reading WAL, keeps reporting progress while what is in flight
    /// is delivered (for at most `drain_timeout`), sends a final status with the last safe
    /// LSN and closes the connection. Events still in flight then are simply not
    /// acknowledged: they will be sent again after a restart. `halt` is the same without
    /// the wait, for when downstream has stopped and nothing more will be acknowledged.
    ///
    /// On every exit, error or not, the events the assembler registered and did not hand
    /// over are released first (see the module docs).
    pub async fn run(
        mut self,
        events: mpsc::Sender<EventBatch>,
        shutdown: CancellationToken,
        halt: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), ReplicationError> {
        let stopped = self.stream_until_stop(&events, &shutdown, &halt).await;
        let released = self.assembler.release();
        {
            let mut history = self.settings.history.lock();
            history.heard(self.received);
            if let Ok(released) = &released {
                history.left_open(released.open.as_ref().map(|t| t.commit_lsn));
            }
        }
        let released = released?;
        if released.events > 0 {
            debug!(
                events = released.events,
                "released registered events that were never handed over"
            );
        }
        match stopped {
            Ok(Stop::Drain) => self.finish(drain_timeout).await,
            Ok(Stop::Halt) => self.finish(Duration::ZERO).await,
            Err(e) => {
                self.settings.health.set_streaming(false);
                if let Some(open) = released.open {
                    warn!(
                        xid = open.xid,
                        commit_lsn = %open.commit_lsn,
                        "connection lost inside a transaction; it will be read again from its start"
                    );
                }
                Err(e)
            }
        }
    }

    async fn stream_until_stop(
        &mut self,
        events: &mpsc::Sender<EventBatch>,
        shutdown: &CancellationToken,
        halt: &CancellationToken,
    ) -> Result<Stop, ReplicationError> {
        loop {
            let (due, silence) = (self.status.due(), self.silence_deadline());
            aim(&mut self.status_timer, due);
            aim(&mut self.silence_timer, silence);
            // Timers first: a busy stream must not starve the heartbeat.
            tokio::select! {
                biased;
                _ = halt.cancelled() => return Ok(Stop::Halt),
                _ = shutdown.cancelled() => return Ok(Stop::Drain),
                _ = &mut self.status_timer => self.send_status(false).await?,
                _ = self.checkpoint.advanced() => {
                    self.status.progressed(self.checkpoint.flushed(), Instant::now());
                }
                message = self.stream.next() => {
                    self.heard();
                    self.handle(message?).await?;
                    while !self.assembler.is_full() {
                        match self.stream.try_next() {
                            Some(message) => self.handle(message?).await?,
                            None => break,
                        }
                    }
                    if let Some(stop) = self.hand_over(events, shutdown, halt).await? {
                        return Ok(stop);
                    }
                    // The socket was not read while the channel was full: silence from
                    // the server during that time says nothing about the connection.
                    self.heard();
                }
                _ = &mut self.silence_timer => self.on_silence().await?,
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
        // Nothing unsent is registered any more (released), so this is what downstream holds.
        while checkpoint.lock().in_flight_events() > 0 {
            tokio::select! {
                _ = checkpoint.drained() => {}
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

    /// Sends the assembler's batch downstream, heartbeating while the channel is full.
    /// The batch stays with the assembler until a permit is in hand, so an error while
    /// waiting leaves it there to be released. Returns how to stop when the receiver is
    /// gone or shutdown began.
    async fn hand_over(
        &mut self,
        events: &mpsc::Sender<EventBatch>,
        shutdown: &CancellationToken,
        halt: &CancellationToken,
    ) -> Result<Option<Stop>, ReplicationError> {
        if self.assembler.batch_len() == 0 {
            return Ok(None);
        }
        loop {
            let due = self.status.due();
            aim(&mut self.status_timer, due);
            tokio::select! {
                biased;
                permit = events.reserve() => {
                    return Ok(match permit {
                        Ok(permit) => {
                            permit.send(self.assembler.hand_over()?);
                            None
                        }
                        Err(_) => Some(Stop::Drain),
                    });
                }
                _ = halt.cancelled() => return Ok(Some(Stop::Halt)),
                _ = shutdown.cancelled() => return Ok(Some(Stop::Drain)),
                _ = &mut self.status_timer => self.send_status(false).await?,
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
                self.server_end.heard(wal_end);
                let decoded =
                    pgoutput::decode(data).map_err(|source| ReplicationError::Decode {
                        lsn: wal_start,
                        source,
                    })?;
                if let pgoutput::PgOutputMessage::Relation(relation) = &decoded {
                    debug!(relation = %relation.qualified_name(), oid = relation.oid, "relation");
                }
                match self.assembler.apply(decoded)? {
                    Step::Began(transaction) => {
                        self.open_commit_ts_micros = transaction.commit_ts_micros;
                        self.lag.received(transaction.commit_ts_micros);
                        let restarts = self.settings.history.lock().began(transaction.commit_lsn);
                        if let Some(restarts) = restarts {
                            metrics::counter!(metric::TRANSACTION_RESTARTS).increment(1);
                            warn!(
                                xid = transaction.xid,
                                commit_lsn = %transaction.commit_lsn,
                                restarts,
                                "reading again a transaction that the last connection left unfinished"
                            );
                        }
                    }
                    Step::Committed { flushed } => {
                        self.status.progressed(flushed, Instant::now());
                        self.transactions.increment(1);
                        let read_after = crate::replication::stream::postgres_now_micros()
                            - self.open_commit_ts_micros;
                        self.read_latency.record(read_after.max(0) as f64 / 1e6);
                    }
                    Step::Other => {}
                }
                Ok(())
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.received = self.received.max(wal_end);
                self.server_end.heard(wal_end);
                debug!(wal_end = %wal_end, reply_requested, "keepalive");
                if self.assembler.keepalive(wal_end)? {
                    self.status.progressed(wal_end, Instant::now());
                }
                if reply_requested {
                    self.send_status(false).await?;
                }
                Ok(())
            }
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
    /// Lag in seconds and bytes are measured against the server's WAL end as far as the
    /// relay knows it, not against what it has received (see [`lag`]).
    fn report_progress(&mut self, flushed: Lsn) {
        let (in_flight, oldest) = {
            let checkpoint = self.checkpoint.lock();
            (
                checkpoint.in_flight_events(),
                checkpoint.oldest_commit_ts_micros(),
            )
        };
        let lag_seconds = self.lag.seconds(Progress {
            now_micros: crate::replication::stream::postgres_now_micros(),
            oldest_pending_micros: oldest,
            server_end: self.server_end,
            handled: self.received.max(flushed),
        });
        metrics::gauge!(metric::CONFIRMED_FLUSH_LSN).set(flushed.0 as f64);
        metrics::gauge!(metric::REPLICATION_LAG_BYTES)
            .set(self.server_end.bytes_after(flushed) as f64);
        metrics::gauge!(metric::IN_FLIGHT_EVENTS).set(in_flight as f64);
        metrics::gauge!(metric::LAG_SECONDS).set(lag_seconds);
    }
}

/// The slot's position, once [`slot::check`] finds the slot safe to stream.
async fn slot_position(
    connection: &mut ReplicationConnection,
    slot: &str,
    believed: Option<Lsn>,
) -> Result<slot::SlotPosition, ReplicationError> {
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
                    .map(|lsn| {
                        lsn.parse().map_err(|_| {
                            ReplicationError::Protocol("bad confirmed_flush_lsn".into())
                        })
                    })
                    .transpose()?,
                wal_status: column(3),
            })
        }
    };
    slot::check(slot, row, believed)
}

/// Stops before streaming from a publication that carries more (or less) than
/// `tables`; warns about options that differ from the ones the relay creates.
async fn check_publication(
    connection: &mut ReplicationConnection,
    name: &str,
    tables: &[TableName],
) -> Result<(), ReplicationError> {
    let rows = connection
        .simple_query(&crate::admin_sql::publication_rows_sql(&quote_literal(
            name,
        )))
        .await?;
    let found =
        publication::PublicationFound::from_rows(&rows).map_err(ReplicationError::Protocol)?;
    for warning in publication::check(name, tables, found.as_ref())? {
        warn!(publication = name, "{warning}");
    }
    Ok(())
}
