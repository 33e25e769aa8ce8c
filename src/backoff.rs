//! Exponential backoff with full jitter, for reconnecting to PostgreSQL and Kafka.
//!
//! Full jitter (a uniform delay between zero and the exponential cap) keeps a fleet of
//! sidecars that lost the same database at the same moment from reconnecting in lockstep.
//!
//! Every retry loop of the relay (database preparation, reconnects, pipeline restarts,
//! topic creation, dead-letter writes) draws its delay from a [`Backoff`] and waits with
//! [`pause`], which gives way to shutdown.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First retry waits up to this long.
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(200);
/// No retry waits longer than this.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// The delays between attempts at one thing.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The exponential cap for the next attempt, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt: uniform in [ceiling / 2, ceiling], so it always
    /// backs off a little even when the jitter draws low.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            random_u64() % spread
        })
    }

    /// The last attempt succeeded: start over from the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Sleeps `delay` unless `shutdown` fires first; returns whether to try again.
pub async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// A random number from the standard library's per-process random hash keys.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x5EED);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside jitter of {ceiling:?}"
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_sleeps_or_gives_way_to_shutdown() {
        let shutdown = CancellationToken::new();
        assert!(pause(Duration::from_secs(5), &shutdown).await);
        shutdown.cancel();
        assert!(!pause(Duration::from_secs(5), &shutdown).await);
    }

    #[test]
    fn jitter_varies() {
        let mut delays = std::collections::HashSet::new();
        for _ in 0..20 {
            delays
                .insert(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay());
        }
        assert!(delays.len() > 1, "no jitter");
    }
}
