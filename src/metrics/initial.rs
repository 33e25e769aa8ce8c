//! The series `/metrics` lists from the start, at 0, before any event.
//!
//! A labelled counter otherwise appears only at its first increment, and Prometheus'
//! `rate()` and `increase()` need two samples of a series: the first burst of events (or
//! of dead letters, or the first reconnect) would be invisible to every alert and graph,
//! and an alert on "no deliveries" would have no series to evaluate at all. So each
//! series whose labels are known from the config is registered once, when the relay
//! starts; the registry keeps it, and the use sites find it there (nothing is registered
//! per event).
//!
//! What cannot be known honestly is left out: a table whose topic is routed per row
//! (`${routedByValue}`) gets its `outbox_relay_events_total` series per topic at the first
//! delivery to that topic, as before. For such a table the relay registers the series of
//! its dead-letter topic (fixed, and counted in the same counter) and one series labelled
//! with the table alone, so `sum by (table)` and alerts on the table exist from the start
//! without inventing a topic name.

use crate::config::{Config, ROUTED_BY_VALUE};

use super::*;

/// Every `class` label [`EVENTS_DEAD_LETTERED`] can carry: those of
/// [`crate::outbox::RowProblem::class`] and of the Kafka refusals
/// ([`crate::policy::publish_class`], [`crate::policy::code_class`]). The tests below
/// tie this list to both.
pub const DEAD_LETTER_CLASSES: &[&str] = &[
    // The row cannot become a record (outbox::RowProblem).
    "invalid_json",
    "too_large",
    "missing_column",
    "null_column",
    "toasted_column",
    "invalid_topic",
    "invalid_bytea",
    // Kafka refused the record (policy).
    "message_too_large",
    "topic_authorization_failed",
    "unknown_topic",
    "kafka_rejected",
];

/// Operations an outbox table can see besides inserts ([`EVENTS_IGNORED`]'s `op`).
const IGNORED_OPERATIONS: &[&str] = &["update", "delete", "truncate"];

/// Reasons [`KAFKA_TRANSACTIONS_ABORTED`] counts (see `pipeline::exactly_once`).
const ABORT_REASONS: &[&str] = &[
    "topic",
    "row",
    "table",
    "delivery",
    "fenced",
    "stream_ended",
    "error",
];

/// Targets of [`CONNECTED`] and [`RECONNECTS`].
const TARGETS: &[&str] = &["postgres", "kafka"];

/// One outbox table's label values, as the use sites spell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSeries {
    /// `schema.table`.
    pub table: String,
    /// Topics its events are counted under from the start: its own when the topic does
    /// not depend on the row, and its dead-letter topic.
    pub topics: Vec<String>,
    /// Whether the topic is routed per row (a table-only series stands in for it).
    pub routed: bool,
}

/// The tables of `source.tables` with the topics known for each (see the module docs).
pub fn table_series(config: &Config) -> Vec<TableSeries> {
    config
        .source
        .tables
        .iter()
        .map(|table| {
            let mapping = config.outbox.mapping_for(table);
            let routed = mapping.topic.contains(ROUTED_BY_VALUE);
            let dlq = mapping
                .dlq_topic
                .clone()
                .unwrap_or_else(|| config.dlq.topic.clone());
            let mut topics = Vec::with_capacity(2);
            if !routed {
                topics.push(mapping.topic.clone());
            }
            if !topics.contains(&dlq) {
                topics.push(dlq);
            }
            TableSeries {
                table: table.to_string(),
                topics,
                routed,
            }
        })
        .collect()
}

/// Registers every series of the module docs at 0 (gauges: not connected, not standing
/// by) with the installed recorder, and sets [`SLOT_INFO`]. Call once at start-up, after
/// [`install`].
pub fn register(config: &Config) {
    use metrics::{counter, gauge};
    for series in table_series(config) {
        let table = series.table;
        for topic in series.topics {
            counter!(EVENTS, "table" => table.clone(), "topic" => topic).absolute(0);
        }
        if series.routed {
            counter!(EVENTS, "table" => table.clone()).absolute(0);
        }
        for &class in DEAD_LETTER_CLASSES {
            counter!(EVENTS_DEAD_LETTERED, "table" => table.clone(), "class" => class).absolute(0);
        }
        for &op in IGNORED_OPERATIONS {
            counter!(EVENTS_IGNORED, "table" => table.clone(), "op" => op).absolute(0);
        }
    }
    for &target in TARGETS {
        counter!(RECONNECTS, "target" => target).absolute(0);
        gauge!(CONNECTED, "target" => target).set(0.0);
    }
    for name in [
        TRANSACTIONS,
        KAFKA_REBOOTSTRAPS,
        KAFKA_UNCONFIRMED_DELIVERIES,
        HISTORY_REWINDS,
        SLOT_ADVANCED_ELSEWHERE,
        TRANSACTION_RESTARTS,
        PIPELINE_RESTARTS,
    ] {
        counter!(name).absolute(0);
    }
    if config.kafka.as_ref().is_some_and(|k| k.exactly_once()) {
        counter!(KAFKA_TRANSACTIONS_COMMITTED).absolute(0);
        counter!(EVENTS_ALREADY_PUBLISHED).absolute(0);
        for reason in ABORT_REASONS {
            counter!(KAFKA_TRANSACTIONS_ABORTED, "reason" => *reason).absolute(0);
        }
    }
    gauge!(STANDBY).set(0.0);
    gauge!(SLOT_INFO, "slot" => config.source.slot.as_str().to_owned()).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::RowProblem;
    use rdkafka::types::RDKafkaErrorCode;

    fn config(outbox: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://u@h/db\"\nslot = \"s\"\npublication = \"p\"\n\
             tables = [\"public.outbox\", \"app.events\"]\n\
             [kafka]\nbootstrap_servers = \"k:9092\"\n{outbox}"
        );
        Config::from_toml(&text, std::path::Path::new("relay.toml"), |_| None).expect("test config")
    }

    #[test]
    fn every_row_problem_class_is_registered() {
        let problems = [
            RowProblem::InvalidJson(String::new()),
            RowProblem::TooLarge { bytes: 2, limit: 1 },
            RowProblem::MissingColumn {
                table: "t".into(),
                column: "c".into(),
            },
            RowProblem::NullColumn { column: "c".into() },
            RowProblem::ToastedColumn { column: "c".into() },
            RowProblem::InvalidTopic(String::new()),
            RowProblem::BadBytea(String::new()),
            RowProblem::TooLargeForTopic {
                bytes: 2,
                limit: 1,
                topic: "t".into(),
            },
        ];
        for problem in &problems {
            // Exhaustive: a new variant fails to compile here until it is listed above.
            match problem {
                RowProblem::InvalidJson(_)
                | RowProblem::TooLarge { .. }
                | RowProblem::MissingColumn { .. }
                | RowProblem::NullColumn { .. }
                | RowProblem::ToastedColumn { .. }
                | RowProblem::InvalidTopic(_)
                | RowProblem::BadBytea(_)
                | RowProblem::TooLargeForTopic { .. } => {}
            }
            assert!(
                DEAD_LETTER_CLASSES.contains(&problem.class()),
                "{} is not pre-registered",
                problem.class()
            );
        }
    }

    #[test]
    fn every_kafka_refusal_class_is_registered() {
        use RDKafkaErrorCode::*;
        let codes = [
            MessageSizeTooLarge,
            InvalidMessageSize,
            TopicAuthorizationFailed,
            InvalidTopic,
            UnknownTopic,
            UnknownTopicOrPartition,
            Fail,
            PolicyViolation,
        ];
        for code in codes {
            let class = crate::policy::code_class(code);
            assert!(DEAD_LETTER_CLASSES.contains(&class), "{class} ({code:?})");
        }
        let unknown = crate::kafka::PublishError::UnknownTopic("t".into());
        let class = crate::policy::publish_class(&unknown);
        assert!(DEAD_LETTER_CLASSES.contains(&class), "{class}");
    }

    #[test]
    fn a_fixed_topic_is_registered_a_routed_one_is_not() {
        let config = config(
            "[outbox]\ntopic = \"events.${routedByValue}\"\n\
             [outbox.tables.\"app.events\"]\ntopic = \"app-events\"\ndlq_topic = \"app-dlq\"\n",
        );
        let series = table_series(&config);
        assert_eq!(
            series,
            vec![
                TableSeries {
                    table: "public.outbox".into(),
                    topics: vec![config.dlq.topic.clone()],
                    routed: true,
                },
                TableSeries {
                    table: "app.events".into(),
                    topics: vec!["app-events".into(), "app-dlq".into()],
                    routed: false,
                },
            ]
        );
    }
}
