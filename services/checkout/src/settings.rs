//! Settings beyond `saga_kit::config::ServiceConfig`, read from the environment like it.
//!
//! - order: `CHECKOUT_DEADLINE_MS` (default 30000), how long both branches may take to
//!   answer before the order is cancelled; `CHECKOUT_SWEEP_MS` (default
//!   min(deadline / 4, 1000), at least 1), how often the deadline sweeper looks.
//! - product and coupon: `CHECKOUT_JITTER_MS` (default 0): each branch handler first
//!   sleeps a random 0..=N ms, a slow downstream simulated so the two branches' answers
//!   arrive in either order.
//!
//! Each is parsed through a lookup function ([`OrderSettings::from_lookup`]), so tests can
//! pass them to an in-process service without touching the process environment.

use std::time::Duration;

use saga_kit::config::ConfigError;

pub const DEADLINE_MS: &str = "CHECKOUT_DEADLINE_MS";
pub const SWEEP_MS: &str = "CHECKOUT_SWEEP_MS";
pub const JITTER_MS: &str = "CHECKOUT_JITTER_MS";
/// Default of [`DEADLINE_MS`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// The longest default sweep interval.
pub const MAX_DEFAULT_SWEEP: Duration = Duration::from_secs(1);

/// The order service's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderSettings {
    pub deadline: Duration,
    pub sweep: Duration,
}

impl OrderSettings {
    pub fn from_env() -> Result<OrderSettings, ConfigError> {
        OrderSettings::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let deadline = millis(&lookup, DEADLINE_MS)?.unwrap_or(DEFAULT_DEADLINE);
        if deadline.is_zero() {
            return Err(ConfigError::invalid(DEADLINE_MS, "0", "must be at least 1"));
        }
        let sweep = millis(&lookup, SWEEP_MS)?
            .unwrap_or_else(|| (deadline / 4).min(MAX_DEFAULT_SWEEP))
            .max(Duration::from_millis(1));
        Ok(OrderSettings { deadline, sweep })
    }
}

impl Default for OrderSettings {
    fn default() -> Self {
        OrderSettings::from_lookup(|_| None).expect("defaults are valid")
    }
}

/// A branch service's simulated latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BranchSettings {
    /// Each branch handler first sleeps a random 0..=jitter.
    pub jitter: Duration,
}

impl BranchSettings {
    pub fn from_env() -> Result<BranchSettings, ConfigError> {
        BranchSettings::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(BranchSettings {
            jitter: millis(&lookup, JITTER_MS)?.unwrap_or(Duration::ZERO),
        })
    }

    /// Sleeps a random 0..=jitter (nothing when it is 0). The randomness comes from a v4
    /// UUID, which is random enough for a simulated delay and needs no other crate.
    pub async fn delay(&self) {
        let most = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        if most == 0 {
            return;
        }
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        let ms = random % most.saturating_add(1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    lookup(name)
        .map(|raw| {
            raw.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| ConfigError::invalid(name, &raw, e))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_sweep_follows_the_deadline_unless_set() {
        let defaults = OrderSettings::default();
        assert_eq!(defaults.deadline, Duration::from_secs(30));
        assert_eq!(defaults.sweep, Duration::from_secs(1));
        let short = OrderSettings::from_lookup(lookup(&[(DEADLINE_MS, "2000")])).unwrap();
        assert_eq!(short.sweep, Duration::from_millis(500));
        let set =
            OrderSettings::from_lookup(lookup(&[(DEADLINE_MS, "2000"), (SWEEP_MS, "30")])).unwrap();
        assert_eq!(set.sweep, Duration::from_millis(30));
        let tiny = OrderSettings::from_lookup(lookup(&[(DEADLINE_MS, "2")])).unwrap();
        assert_eq!(tiny.sweep, Duration::from_millis(1));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let err = OrderSettings::from_lookup(lookup(&[(DEADLINE_MS, "soon")])).unwrap_err();
        assert!(err.to_string().contains("CHECKOUT_DEADLINE_MS"), "{err}");
        assert!(OrderSettings::from_lookup(lookup(&[(DEADLINE_MS, "0")])).is_err());
        let err = BranchSettings::from_lookup(lookup(&[(JITTER_MS, "-1")])).unwrap_err();
        assert!(err.to_string().contains("CHECKOUT_JITTER_MS"), "{err}");
        assert_eq!(
            BranchSettings::from_lookup(lookup(&[(JITTER_MS, "25")]))
                .unwrap()
                .jitter,
            Duration::from_millis(25)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_stays_within_the_jitter() {
        let settings = BranchSettings {
            jitter: Duration::from_millis(40),
        };
        for _ in 0..50 {
            let before = tokio::time::Instant::now();
            settings.delay().await;
            assert!(before.elapsed() <= Duration::from_millis(40));
        }
        let before = tokio::time::Instant::now();
        BranchSettings::default().delay().await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}
