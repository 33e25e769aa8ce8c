//! The card gateway's answer to a refund.
//!
//! A real service would call its payment provider; the example refuses refunds to cards
//! whose number contains a marker, so the demo and the tests can make a compensation fail
//! on purpose (the seed's "compensation failure" case) and show what happens then.

/// Environment variable holding the marker (case-insensitive).
pub const REFUND_REFUSED_ENV: &str = "REFUND_REFUSED_CARD_CONTAINS";
/// Used when the variable is unset.
pub const DEFAULT_REFUND_REFUSED: &str = "refund-declined";

/// Which cards the gateway refuses refunds to.
#[derive(Debug, Clone)]
pub struct CardGateway {
    refused: String,
}

impl CardGateway {
    pub fn new(refused: &str) -> CardGateway {
        CardGateway {
            refused: refused.to_lowercase(),
        }
    }

    /// From [`REFUND_REFUSED_ENV`], else [`DEFAULT_REFUND_REFUSED`].
    pub fn from_env() -> CardGateway {
        let value = std::env::var(REFUND_REFUSED_ENV);
        CardGateway::new(value.as_deref().unwrap_or(DEFAULT_REFUND_REFUSED))
    }

    /// Why a refund to `card` is refused for good, or `None` if it goes through.
    pub fn refuses_refund(&self, card: &str) -> Option<String> {
        card.to_lowercase()
            .contains(&self.refused)
            .then(|| format!("card gateway declined the refund to card {card}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_cards_with_the_marker_ignoring_case() {
        let gateway = CardGateway::new("Refund-Declined");
        assert!(gateway.refuses_refund("4111-REFUND-declined").is_some());
        assert_eq!(gateway.refuses_refund("4111-1111"), None);
    }
}
