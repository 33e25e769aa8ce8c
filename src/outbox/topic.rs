//! Topic names: the template, and Kafka's rules for what a topic may be called.
//!
//! A leaf: it imports nothing of the crate, so the config's validation can use its rules
//! without an import circle.

use foldhash::HashMap;
use std::sync::Arc;

use bytes::Bytes;

/// The placeholder in topic templates, as in Debezium's `route.topic.replacement`.
pub const ROUTED_BY_VALUE: &str = "${routedByValue}";
/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_CHARS: usize = 249;
/// Routed values remembered per template before the cache starts over (bounded memory).
const CACHE_CAPACITY: usize = 1_024;

/// Why a name cannot be a Kafka topic.
pub fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name == "." || name == ".." {
        return Some("may not be '.' or '..'".into());
    }
    if name.len() > MAX_TOPIC_CHARS {
        return Some(format!(
            "is {} characters long; Kafka allows at most 249",
            name.len()
        ));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|bad| format!("contains {bad:?}; Kafka allows only [a-zA-Z0-9._-]"))
}

/// A topic template with `${routedByValue}`, and the names it produced (each is built and
/// validated once per distinct routed value, not once per row).
#[derive(Debug)]
pub struct TopicTemplate {
    template: String,
    cache: HashMap<Bytes, Result<Arc<str>, String>>,
}

impl TopicTemplate {
    pub fn new(template: &str) -> Self {
        TopicTemplate {
            template: template.to_owned(),
            cache: HashMap::default(),
        }
    }

    /// Whether the template needs a routed value.
    pub fn is_routed(&self) -> bool {
        self.template.contains(ROUTED_BY_VALUE)
    }

    /// The topic for `routed_value`, or why that value makes no valid topic.
    pub fn topic(&mut self, routed_value: &Bytes) -> Result<Arc<str>, String> {
        if let Some(cached) = self.cache.get(routed_value) {
            return cached.clone();
        }
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        let built = match std::str::from_utf8(routed_value) {
            Ok(value) => {
                let name = self.template.replace(ROUTED_BY_VALUE, value);
                match topic_name_problem(&name) {
                    None => Ok(Arc::from(name)),
                    Some(problem) => Err(format!("topic {name:?} {problem}")),
                }
            }
            Err(_) => Err("routed value is not UTF-8".to_owned()),
        };
        self.cache.insert(routed_value.clone(), built.clone());
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_rules() {
        assert_eq!(topic_name_problem("outbox.event.Order_1-x"), None);
        assert!(topic_name_problem("").is_some());
        assert!(topic_name_problem("..").is_some());
        assert!(topic_name_problem("a b").unwrap().contains("' '"));
        assert!(topic_name_problem("ü").is_some());
        assert!(topic_name_problem(&"a".repeat(249)).is_none());
        assert!(topic_name_problem(&"a".repeat(250))
            .unwrap()
            .contains("250"));
    }

    #[test]
    fn template_is_filled_and_checked() {
        let mut t = TopicTemplate::new("outbox.event.${routedByValue}");
        assert!(t.is_routed());
        assert_eq!(
            &*t.topic(&Bytes::from_static(b"order")).unwrap(),
            "outbox.event.order"
        );
        assert_eq!(
            &*t.topic(&Bytes::from_static(b"order")).unwrap(),
            "outbox.event.order"
        );
        assert!(t
            .topic(&Bytes::from_static(b"bad/type"))
            .unwrap_err()
            .contains("'/'"));
        assert!(!TopicTemplate::new("fixed").is_routed());
    }
}
