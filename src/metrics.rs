//! Metric names, each described once. Labels stay low-cardinality: table, topic, class,
//! operation; never an id.

/// Rows written to the dead-letter topic, by table and error class.
pub const EVENTS_DEAD_LETTERED: &str = "outbox_relay_events_dead_lettered_total";
/// UPDATE / DELETE / TRUNCATE of outbox tables, acknowledged without publishing.
pub const EVENTS_IGNORED: &str = "outbox_relay_events_ignored_total";

/// Registers the descriptions with whatever recorder is installed.
pub fn describe() {
    metrics::describe_counter!(
        EVENTS_DEAD_LETTERED,
        "Outbox rows published to the dead-letter topic instead of their own, by table and class"
    );
    metrics::describe_counter!(
        EVENTS_IGNORED,
        "UPDATE, DELETE and TRUNCATE changes of outbox tables, which publish nothing"
    );
}
