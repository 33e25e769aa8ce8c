//! When to send a standby status update.
//!
//! Two reasons to send one: the periodic heartbeat (so the server's `wal_sender_timeout`
//! never fires, even while the relay is blocked on a full downstream channel), and
//! progress (so WAL is released soon after it is safe). Progress updates are rate-limited
//! to one per [`MIN_STATUS_GAP`]: at 100k events/s the flush LSN moves constantly, and one
//! update per acknowledgement would cost more than the events.

use std::time::Duration;

use tokio::time::Instant;

use crate::replication::Lsn;

/// Shortest gap between two status updates sent because of progress. Short enough that a
/// burst of WAL elsewhere (hundreds of MB/s on a fast disk) is confirmed within a few MB;
/// long enough to cap updates at 50 a second under a constant stream of acknowledgements.
pub const MIN_STATUS_GAP: Duration = Duration::from_millis(20);

/// The schedule of standby status updates.
#[derive(Debug, Clone)]
pub struct StatusSchedule {
    interval: Duration,
    last_sent_at: Instant,
    last_sent_flush: Lsn,
    next_heartbeat: Instant,
    progress_due: Option<Instant>,
}

impl StatusSchedule {
    pub fn new(interval: Duration, flushed: Lsn, now: Instant) -> Self {
        StatusSchedule {
            interval,
            last_sent_at: now,
            last_sent_flush: flushed,
            next_heartbeat: now + interval,
            progress_due: None,
        }
    }

    /// When the next update is due.
    pub fn due(&self) -> Instant {
        self.progress_due
            .map_or(self.next_heartbeat, |p| p.min(self.next_heartbeat))
    }

    /// The flush LSN is now `flushed`: if that is news, send it soon.
    pub fn progressed(&mut self, flushed: Lsn, now: Instant) {
        if flushed > self.last_sent_flush && self.progress_due.is_none() {
            self.progress_due = Some(now.max(self.last_sent_at + MIN_STATUS_GAP));
        }
    }

    /// An update carrying `flushed` was just sent.
    pub fn sent(&mut self, flushed: Lsn, now: Instant) {
        self.last_sent_at = now;
        self.last_sent_flush = flushed;
        self.next_heartbeat = now + self.interval;
        self.progress_due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn heartbeat_and_rate_limited_progress() {
        let start = Instant::now();
        let mut s = StatusSchedule::new(Duration::from_secs(1), Lsn(10), start);
        assert_eq!(s.due(), start + Duration::from_secs(1));

        s.progressed(Lsn(10), start);
        assert_eq!(
            s.due(),
            start + Duration::from_secs(1),
            "no news, no update"
        );

        s.progressed(Lsn(20), start);
        assert_eq!(
            s.due(),
            start + MIN_STATUS_GAP,
            "rate-limited after the last send"
        );

        tokio::time::advance(Duration::from_millis(150)).await;
        let now = Instant::now();
        s.sent(Lsn(20), now);
        assert_eq!(s.due(), now + Duration::from_secs(1));

        tokio::time::advance(Duration::from_millis(500)).await;
        s.progressed(Lsn(30), Instant::now());
        assert_eq!(s.due(), Instant::now(), "gap already passed: send at once");
    }
}
