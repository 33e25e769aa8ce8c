//! How far behind the server the relay is, in seconds and in bytes: the core of the
//! `outbox_relay_lag_seconds` and `outbox_relay_replication_lag_bytes` gauges, without
//! I/O so each case can be tested.
//!
//! # Why not just the oldest pending transaction
//!
//! The commit time of the oldest transaction the relay holds and Kafka has not yet
//! acknowledged says how late *that* transaction is. With nothing pending it says nothing:
//! the relay may have acknowledged all it received while the server has much more WAL to
//! send (a backlog after a restart, a large transaction the walsender is still decoding).
//! Reporting 0 then hides exactly the lag an operator wants to see. So with nothing
//! pending the relay reports 0 only when it has handled (received, and acknowledged or
//! found nothing to publish in) the server's whole known WAL: its WAL end at connection
//! time, and every `wal_end` of a data message or a keepalive since. Otherwise it counts
//! from the last moment it is known to have had everything: the later of the last time
//! it was caught up and the commit time of the last transaction it received (whatever the
//! server still has to send committed after that, so the true lag is at most this much).
//!
//! # What the relay can know of the server's WAL end
//!
//! During streaming PostgreSQL tells the client only how far its walsender has read
//! (the `wal_end` of keepalives and data messages), not its current WAL end
//! (`pg_current_wal_lsn()`); `IDENTIFY_SYSTEM` gives the true end, but only once per
//! connection. [`ServerEnd`] is the larger of the two: exact at connection time, then a
//! lower bound while the walsender is behind. A walsender still decoding a large
//! transaction written after the connection began can therefore make the relay look
//! caught up (lag 0) until that transaction's first message arrives.

use crate::replication::Lsn;

/// The furthest WAL position the relay knows the server has: its WAL end when the
/// connection began, raised by every `wal_end` the walsender reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerEnd(Lsn);

impl ServerEnd {
    /// At connection time: `IDENTIFY_SYSTEM`'s position, the server's WAL end then.
    pub fn at_connect(xlog_position: Lsn) -> Self {
        ServerEnd(xlog_position)
    }

    /// A data message or keepalive said the walsender has read up to `wal_end`.
    pub fn heard(&mut self, wal_end: Lsn) {
        self.0 = self.0.max(wal_end);
    }

    pub fn lsn(self) -> Lsn {
        self.0
    }

    /// WAL the slot still retains for this relay: the server's end minus the flush
    /// position confirmed to it (0 when the relay is at or past it).
    pub fn bytes_after(self, flushed: Lsn) -> u64 {
        self.0.bytes_after(flushed)
    }
}

/// What [`LagClock::seconds`] needs to know of the relay's state, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// PostgreSQL-epoch microseconds now.
    pub now_micros: i64,
    /// Commit time of the oldest transaction not yet acknowledged, if any.
    pub oldest_pending_micros: Option<i64>,
    pub server_end: ServerEnd,
    /// The furthest position the relay has handled: the larger of the last `wal_end` it
    /// received and its flush position. With nothing pending, everything before it was
    /// acknowledged or published nothing.
    pub handled: Lsn,
}

/// Remembers when the relay last had everything and the last commit time it received
/// (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagClock {
    /// When the relay last had confirmed all the server had told it of (PostgreSQL-epoch
    /// microseconds); the connection's start until then, so a backlog found at connection
    /// counts from the connection until its first transaction arrives.
    caught_up_at_micros: i64,
    /// Commit time of the last transaction received.
    last_commit_micros: Option<i64>,
}

impl LagClock {
    pub fn new(connected_at_micros: i64) -> Self {
        LagClock {
            caught_up_at_micros: connected_at_micros,
            last_commit_micros: None,
        }
    }

    /// A transaction committed at `commit_ts_micros` began arriving.
    pub fn received(&mut self, commit_ts_micros: i64) {
        self.last_commit_micros = Some(
            self.last_commit_micros
                .map_or(commit_ts_micros, |last| last.max(commit_ts_micros)),
        );
    }

    /// Seconds behind the server, never negative; 0 only when nothing is pending and the
    /// relay handled the server's whole known WAL.
    pub fn seconds(&mut self, progress: Progress) -> f64 {
        let behind_since = match progress.oldest_pending_micros {
            Some(oldest) => oldest,
            None if progress.server_end.lsn() <= progress.handled => {
                self.caught_up_at_micros = progress.now_micros;
                return 0.0;
            }
            None => self
                .last_commit_micros
                .map_or(self.caught_up_at_micros, |commit| {
                    commit.max(self.caught_up_at_micros)
                }),
        };
        (progress.now_micros - behind_since).max(0) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn progress(now: i64, oldest: Option<i64>, end: u64, handled: u64) -> Progress {
        Progress {
            now_micros: now,
            oldest_pending_micros: oldest,
            server_end: ServerEnd::at_connect(Lsn(end)),
            handled: Lsn(handled),
        }
    }

    #[test]
    fn pending_transactions_count_from_the_oldest_commit() {
        let mut clock = LagClock::new(0);
        let lag = clock.seconds(progress(10 * SECOND, Some(4 * SECOND), 900, 100));
        assert_eq!(lag, 6.0);
    }

    #[test]
    fn nothing_pending_and_everything_handled_is_caught_up() {
        let mut clock = LagClock::new(0);
        assert_eq!(clock.seconds(progress(10 * SECOND, None, 500, 500)), 0.0);
        assert_eq!(clock.seconds(progress(20 * SECOND, None, 400, 500)), 0.0);
    }

    #[test]
    fn nothing_pending_but_server_ahead_counts_from_the_last_time_caught_up() {
        let mut clock = LagClock::new(0);
        assert_eq!(clock.seconds(progress(10 * SECOND, None, 500, 500)), 0.0);
        // The connection's WAL end (or a keepalive) shows more WAL than was handled.
        let lag = clock.seconds(progress(13 * SECOND, None, 900, 500));
        assert_eq!(lag, 3.0);
    }

    #[test]
    fn a_backlog_at_connection_counts_from_the_connection() {
        let mut clock = LagClock::new(5 * SECOND);
        let lag = clock.seconds(progress(7 * SECOND, None, 900, 100));
        assert_eq!(lag, 2.0, "not 0 although nothing was received yet");
    }

    #[test]
    fn the_last_received_commit_bounds_the_lag_once_acknowledged() {
        let mut clock = LagClock::new(0);
        clock.received(8 * SECOND);
        clock.received(6 * SECOND); // never goes back
        let lag = clock.seconds(progress(10 * SECOND, None, 900, 500));
        assert_eq!(lag, 2.0);
    }

    #[test]
    fn the_clock_never_goes_negative() {
        let mut clock = LagClock::new(0);
        let lag = clock.seconds(progress(SECOND, Some(2 * SECOND), 900, 100));
        assert_eq!(lag, 0.0);
    }

    #[test]
    fn retained_bytes_are_the_server_end_minus_the_flush() {
        let mut end = ServerEnd::at_connect(Lsn(1_000));
        end.heard(Lsn(900));
        assert_eq!(end.lsn(), Lsn(1_000));
        end.heard(Lsn(1_500));
        assert_eq!(end.bytes_after(Lsn(1_200)), 300);
        assert_eq!(end.bytes_after(Lsn(2_000)), 0);
    }
}
