//! Metric names, each described once, and the Prometheus recorder. Labels stay
//! low-cardinality: table, topic, class, operation, target; never an id.
//!
//! The recorder keeps every histogram sample (one per delivered event, for
//! [`DELIVERY_LATENCY`]) in a raw list until an upkeep pass folds them into the buckets.
//! Rendering `/metrics` runs one, but nothing else does when the recorder is installed
//! without the crate's HTTP listener: a relay nobody scrapes grew by some 20 MiB per
//! million events. [`install`] therefore runs the upkeep on its own thread every
//! [`UPKEEP_INTERVAL`], so memory stays bounded whether or not anyone scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod initial;
pub use initial::register;

/// Outbox rows acknowledged by Kafka, by table and topic; a dead-lettered row counts under
/// its dead-letter topic. Pre-registered at 0 (see [`initial`]).
pub const EVENTS: &str = "outbox_relay_events_total";
/// Rows routed to the dead-letter topic, by table and error class (counted when routed,
/// before the dead-letter topic acknowledges them).
pub const EVENTS_DEAD_LETTERED: &str = "outbox_relay_events_dead_lettered_total";
/// UPDATE / DELETE / TRUNCATE of outbox tables, acknowledged without publishing, by table
/// and op.
pub const EVENTS_IGNORED: &str = "outbox_relay_events_ignored_total";
/// Transactions read from the slot (counted at their commit message).
pub const TRANSACTIONS: &str = "outbox_relay_transactions_total";
/// Commit in PostgreSQL to acknowledgement by Kafka, per delivered record (dead letters
/// included).
pub const DELIVERY_LATENCY: &str = "outbox_relay_delivery_latency_seconds";
/// Commit to the relay's read of the Commit message: the walsender's and the network's
/// share of [`DELIVERY_LATENCY`] (see bench/README.md, "Where the latency goes").
pub const READ_LATENCY: &str = "outbox_relay_read_latency_seconds";
/// Now minus the commit time of the oldest transaction not yet acknowledged; with none
/// pending, now minus the last time the relay was caught up (or the last received commit,
/// if later) while the server's known WAL end is ahead of what it handled; 0 only when
/// caught up (see `source::lag`).
pub const LAG_SECONDS: &str = "outbox_relay_lag_seconds";
/// The server's WAL end as the relay knows it (its end at connection, raised by every
/// `wal_end` the walsender reports since) minus the flush LSN confirmed to it: the WAL the
/// slot retains for this relay, a lower bound while the walsender is behind.
pub const REPLICATION_LAG_BYTES: &str = "outbox_relay_replication_lag_bytes";
/// The flush LSN last reported to the server, as a number.
pub const CONFIRMED_FLUSH_LSN: &str = "outbox_relay_confirmed_flush_lsn";
/// Events handed downstream and not yet acknowledged.
pub const IN_FLIGHT_EVENTS: &str = "outbox_relay_in_flight_events";
/// Messages in librdkafka's queue (waiting or in flight to the broker).
pub const KAFKA_QUEUE_MESSAGES: &str = "outbox_relay_kafka_queue_messages";
/// 1 while streaming from PostgreSQL (`target="postgres"`) or while a Kafka broker is up
/// and answering (`target="kafka"`).
pub const CONNECTED: &str = "outbox_relay_connected";
/// 1 while another relay holds the slot and this one stands by to take over.
pub const STANDBY: &str = "outbox_relay_standby";
/// 1 while the broker refuses the topic and the relay holds its records, 0 once it takes
/// them again, by topic.
pub const TOPIC_BLOCKED: &str = "outbox_relay_topic_blocked";
/// 1 while the stream is held for a table whose columns no longer match the config, by
/// table.
pub const TABLE_BLOCKED: &str = "outbox_relay_table_blocked";
/// Reconnections, by target: PostgreSQL reconnections of the supervisor, and the Kafka
/// client's new broker connections from librdkafka's statistics.
pub const RECONNECTS: &str = "outbox_relay_reconnects_total";
/// Times the Kafka client was given its bootstrap servers again (see `kafka::rebootstrap`).
pub const KAFKA_REBOOTSTRAPS: &str = "outbox_relay_kafka_rebootstraps_total";
/// Records librdkafka reported delivered without the broker's offset, sent again (see
/// `kafka::producer`).
pub const KAFKA_UNCONFIRMED_DELIVERIES: &str = "outbox_relay_kafka_unconfirmed_deliveries_total";
/// Connections that found the server's history gone back (restore, failover, another system).
pub const HISTORY_REWINDS: &str = "outbox_relay_history_rewinds_total";
/// Connections that found the slot ahead of what this relay acknowledged.
pub const SLOT_ADVANCED_ELSEWHERE: &str = "outbox_relay_slot_advanced_elsewhere_total";
/// Transactions read again from their start because the last connection ended inside them.
pub const TRANSACTION_RESTARTS: &str = "outbox_relay_transaction_restarts_total";
/// In-process restarts of the pipeline after a retryable failure.
pub const PIPELINE_RESTARTS: &str = "outbox_relay_pipeline_restarts_total";
/// Always 1, with the version as a label.
pub const BUILD_INFO: &str = "outbox_relay_build_info";
/// Always 1, with the replication slot as a label: which instances are replicas of one
/// relay, for alerts over all of them (e.g. every replica of a slot standing by). A label
/// here rather than on [`STANDBY`] and [`CONNECTED`] keeps their series as they were.
pub const SLOT_INFO: &str = "outbox_relay_slot_info";
/// Exactly-once: Kafka transactions committed.
pub const KAFKA_TRANSACTIONS_COMMITTED: &str = "outbox_relay_kafka_transactions_committed_total";
/// Exactly-once: Kafka transactions aborted, by reason (topic, row, table, delivery,
/// fenced, stream_ended, error).
pub const KAFKA_TRANSACTIONS_ABORTED: &str = "outbox_relay_kafka_transactions_aborted_total";
/// Exactly-once: from the commit decision (progress record sent) to the broker's answer.
pub const KAFKA_TRANSACTION_COMMIT: &str = "outbox_relay_kafka_transaction_commit_seconds";
/// Exactly-once: events the slot sent again that committed progress already covers,
/// skipped.
pub const EVENTS_ALREADY_PUBLISHED: &str = "outbox_relay_events_already_published_total";
/// Average broker round-trip time from librdkafka's statistics, by broker.
pub const KAFKA_BROKER_RTT: &str = "outbox_relay_kafka_broker_rtt_seconds";
/// Transmit errors since start from librdkafka's statistics, by broker.
pub const KAFKA_BROKER_TX_ERRORS: &str = "outbox_relay_kafka_broker_tx_errors";

/// Latency buckets, in seconds: from half a millisecond to a minute, fine below 10 ms,
/// where a relay that keeps up spends its time.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// How often the upkeep thread folds histogram samples into their buckets: the crate's
/// own exporter uses 5 s. At the relay's rates that holds at most a few seconds of
/// samples (well under a MiB), and a pass costs a lock per histogram, nothing measurable.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Upkeep passes completed since the process started (see [`upkeep_passes`]).
static UPKEEP_PASSES: AtomicU64 = AtomicU64::new(0);

/// Why the metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(#[source] std::io::Error),
}

/// Installs the Prometheus recorder, starts its upkeep (see the module docs) and describes
/// every metric; the handle renders them.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(READ_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(KAFKA_TRANSACTION_COMMIT.into()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    spawn_upkeep(handle.clone(), UPKEEP_INTERVAL).map_err(MetricsError::Upkeep)?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Runs [`PrometheusHandle::run_upkeep`] every `interval` on a detached thread. The
/// recorder is global and lives as long as the process, and so does the thread: it holds
/// no resource that needs a clean stop, and the process's exit ends it.
fn spawn_upkeep(handle: PrometheusHandle, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            // The sleep is the interval timer; it synchronises nothing.
            std::thread::sleep(interval);
            handle.run_upkeep();
            UPKEEP_PASSES.fetch_add(1, Ordering::Release);
        })?;
    Ok(())
}

/// How many upkeep passes have completed, so a test can wait for one to have run after
/// the samples it recorded instead of guessing a time.
pub fn upkeep_passes() -> u64 {
    UPKEEP_PASSES.load(Ordering::Acquire)
}

/// Registers the descriptions with whatever recorder is installed.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        EVENTS,
        "Outbox rows acknowledged by Kafka, by table and topic (a dead-lettered row counts under its dead-letter topic); at 0 from start for each table's fixed topics, and with the table label alone for a table routed per row; with exactly-once delivery counted when the broker appended the row, so the rows of an aborted transaction count again when published again"
    );
    describe_counter!(
        EVENTS_DEAD_LETTERED,
        "Outbox rows routed to the dead-letter topic instead of their own, by table and class, counted before the dead-letter topic acknowledges them; at 0 from start for every class"
    );
    describe_counter!(
        EVENTS_IGNORED,
        "UPDATE, DELETE and TRUNCATE changes of outbox tables, which publish nothing, by table and op"
    );
    describe_counter!(
        TRANSACTIONS,
        "Transactions read from the replication slot, counted at their commit"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from the PostgreSQL commit to the Kafka acknowledgement, per delivered record (dead letters included)"
    );
    describe_histogram!(
        READ_LATENCY,
        Unit::Seconds,
        "Time from the PostgreSQL commit to the relay having read the transaction's Commit message from the slot, per transaction: the walsender's and the network's share of the delivery latency"
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the oldest transaction not yet acknowledged; with none pending but the server's known WAL end ahead of what the relay handled, now minus the last time it was caught up (or the last received commit, if later); 0 only when caught up"
    );
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "WAL the slot retains for this relay: the server's WAL end as the relay knows it (its end at connection, raised by every position the walsender reports, so a lower bound while the walsender is behind) minus the flush LSN confirmed to it"
    );
    describe_gauge!(
        CONFIRMED_FLUSH_LSN,
        "The flush LSN last reported to PostgreSQL"
    );
    describe_gauge!(
        IN_FLIGHT_EVENTS,
        "Events handed downstream and not yet acknowledged"
    );
    describe_gauge!(
        KAFKA_QUEUE_MESSAGES,
        "Messages in the Kafka producer's queue, waiting or in flight to a broker (librdkafka statistics)"
    );
    describe_gauge!(
        CONNECTED,
        "1 while streaming from the slot (target=postgres) or while a Kafka broker is up and delivering (target=kafka)"
    );
    describe_gauge!(
        STANDBY,
        "1 while another relay holds the slot and this one stands by; 0 otherwise"
    );
    describe_gauge!(
        TOPIC_BLOCKED,
        "1 while the broker refuses the topic (authorization, deleted, policy, size) and the relay holds its records; 0 once it takes them again"
    );
    describe_gauge!(
        TABLE_BLOCKED,
        "1 while the stream is held because the table's columns no longer match the config (a column renamed or dropped by a migration)"
    );
    describe_counter!(
        RECONNECTS,
        "Reconnections to the target: postgres (pipeline reconnects) and kafka (new broker connections, librdkafka statistics)"
    );
    describe_counter!(
        KAFKA_REBOOTSTRAPS,
        "Times the Kafka client had lost every broker and was given its bootstrap servers again"
    );
    describe_counter!(
        KAFKA_UNCONFIRMED_DELIVERIES,
        "Records librdkafka reported delivered without an offset from the broker (inferred, not confirmed); each was sent again, so it may repeat but is never lost"
    );
    describe_counter!(
        HISTORY_REWINDS,
        "Connections that found the server's history gone back (restore, failover, another system); streaming resumed from the slot"
    );
    describe_counter!(
        SLOT_ADVANCED_ELSEWHERE,
        "Connections that found the slot ahead of this relay's last acknowledged position (another replica, or pg_replication_slot_advance)"
    );
    describe_counter!(
        TRANSACTION_RESTARTS,
        "Transactions read again from their start because the previous connection ended inside them"
    );
    describe_counter!(
        PIPELINE_RESTARTS,
        "In-process restarts of the pipeline after a retryable failure"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_gauge!(
        SLOT_INFO,
        "Always 1; the replication slot is a label, to group the replicas of one relay"
    );
    describe_counter!(
        KAFKA_TRANSACTIONS_COMMITTED,
        "Exactly-once delivery: Kafka transactions committed"
    );
    describe_counter!(
        KAFKA_TRANSACTIONS_ABORTED,
        "Exactly-once delivery: Kafka transactions aborted, by reason (topic, row, table, delivery, fenced, stream_ended, error); their rows are published again from the slot"
    );
    describe_histogram!(
        KAFKA_TRANSACTION_COMMIT,
        Unit::Seconds,
        "Exactly-once delivery: time from the commit decision (progress record sent) to the broker's answer"
    );
    describe_counter!(
        EVENTS_ALREADY_PUBLISHED,
        "Exactly-once delivery: events the slot sent again that the committed progress already covers, skipped"
    );
    describe_gauge!(
        KAFKA_BROKER_RTT,
        Unit::Seconds,
        "Average broker round-trip time (librdkafka statistics)"
    );
    describe_gauge!(
        KAFKA_BROKER_TX_ERRORS,
        "Transmit errors per broker since start (librdkafka statistics)"
    );
}
