//! Which addresses the delivery service cannot serve.
//!
//! A real service would ask a carrier; the example uses a substring so the demo and the
//! tests can make a delivery fail on purpose and show the compensation.

/// Environment variable holding the substring (case-insensitive).
pub const UNDELIVERABLE_ENV: &str = "UNDELIVERABLE_ADDRESS_CONTAINS";
/// Used when the variable is unset.
pub const DEFAULT_UNDELIVERABLE: &str = "nowhere";

/// Addresses containing `undeliverable` (ignoring case) fail.
#[derive(Debug, Clone)]
pub struct DeliveryRule {
    undeliverable: String,
}

impl DeliveryRule {
    pub fn new(undeliverable: &str) -> DeliveryRule {
        DeliveryRule {
            undeliverable: undeliverable.to_lowercase(),
        }
    }

    /// From [`UNDELIVERABLE_ENV`], else [`DEFAULT_UNDELIVERABLE`].
    pub fn from_env() -> DeliveryRule {
        let value = std::env::var(UNDELIVERABLE_ENV);
        DeliveryRule::new(value.as_deref().unwrap_or(DEFAULT_UNDELIVERABLE))
    }

    /// Why `address` cannot be served, or `None` if it can.
    pub fn refuses(&self, address: &str) -> Option<String> {
        address
            .to_lowercase()
            .contains(&self.undeliverable)
            .then(|| format!("address not deliverable: {address}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_substring_ignoring_case() {
        let rule = DeliveryRule::new("NoWhere");
        assert!(rule.refuses("1 Nowhere Lane").is_some());
        assert_eq!(rule.refuses("Seoul, Gangnam-gu"), None);
    }
}
