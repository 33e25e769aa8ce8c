//! Shared pieces of the integration tests: a real PostgreSQL ([`pg`]) and helpers to run
//! the relay's source against it.
#![allow(dead_code)]

pub mod chaos;
pub mod kafka;
pub mod pg;
pub mod proxy;
pub mod relay;
pub mod workload;

use std::path::Path;
use std::time::Duration;

use outbox_relay::checkpoint::SharedCheckpoint;
use outbox_relay::config::Config;
use outbox_relay::replication::pgoutput::{ColumnValue, Relation, TupleData};
use outbox_relay::replication::{Lsn, ReplicationError};
use outbox_relay::source::{EventBatch, Source, SourceSettings};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Debezium's outbox table, as the relay expects it by default.
pub const OUTBOX_DDL: &str = "CREATE TABLE public.outbox (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL
)";

/// An outbox with no constraints, so poison rows can be written at all.
pub const LOOSE_OUTBOX: &str = "CREATE TABLE public.outbox (
    id uuid, aggregatetype text, aggregateid text, type text, payload text
)";

/// A relay config for `db` on `cluster`, streaming `public.outbox` through `slot`.
pub fn relay_config(cluster: &pg::PgCluster, db: &str, slot: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "{url}"
slot = "{slot}"
publication = "{slot}_pub"
tables = ["public.outbox"]
status_interval_ms = 200
"#,
        url = cluster.url(db)
    );
    Config::from_toml(&text, Path::new("test.toml"), |_| None).expect("test config is valid")
}

/// A running source: its batches, its checkpoint and its task.
pub struct RunningSource {
    pub events: mpsc::Receiver<EventBatch>,
    pub checkpoint: SharedCheckpoint,
    pub task: JoinHandle<Result<(), ReplicationError>>,
}

/// Creates the publication and slot for `config`, connects and starts streaming.
pub async fn start_source(config: &Config) -> RunningSource {
    init_logging();
    let admin = outbox_relay::admin_sql::connect(config)
        .await
        .expect("admin connection");
    outbox_relay::admin_sql::prepare(&admin, config)
        .await
        .expect("prepare publication and slot");
    let checkpoint = SharedCheckpoint::new(Lsn::ZERO);
    let source = Source::connect(
        &config.postgres_config(),
        SourceSettings::from_config(config),
        &checkpoint,
    )
    .await
    .expect("source connects");
    let (tx, events) = mpsc::channel(config.source.channel_capacity_batches);
    let task = tokio::spawn(source.run(
        tx,
        CancellationToken::new(),
        CancellationToken::new(),
        Duration::from_secs(1),
    ));
    RunningSource {
        events,
        checkpoint,
        task,
    }
}

/// The text of column `name` of `row`, `None` for NULL.
pub fn column_text(relation: &Relation, row: &TupleData, name: &str) -> Option<String> {
    let index = relation
        .column_index(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    match &row.columns[index] {
        ColumnValue::Text(bytes) => Some(String::from_utf8(bytes.to_vec()).expect("utf-8 column")),
        ColumnValue::Null => None,
        other => panic!("column {name} is {other:?}, expected text"),
    }
}

/// The slot's `confirmed_flush_lsn`.
pub async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot exists");
    row.get::<_, String>(0).parse().expect("lsn")
}

/// The server's current WAL insert position: every commit so far ends at or before it.
pub async fn insert_lsn(client: &tokio_postgres::Client) -> Lsn {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("pg_current_wal_insert_lsn");
    row.get::<_, String>(0).parse().expect("lsn")
}

/// Commits a marker row to the outbox (aggregatetype `marker`, so its own topic) and
/// returns a position inside its transaction: the slot passes it exactly when the marker,
/// and so every transaction committed before it, is acknowledged.
///
/// Waiting for the slot to pass the insert LSN instead can take long or forever on an idle
/// cluster: the walsender reports positions past WAL without outbox changes only when more
/// WAL comes, and with `synchronous_commit = off` trailing records may not be flushed at all.
pub async fn marker(client: &tokio_postgres::Client) -> Lsn {
    let rows = client
        .simple_query(
            "BEGIN;
             INSERT INTO outbox VALUES (gen_random_uuid(), 'marker', 'marker', 'Marker', '{}');
             SELECT pg_current_wal_insert_lsn()::text;
             COMMIT",
        )
        .await
        .expect("marker transaction");
    let lsn = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("marker LSN");
    lsn.parse().expect("lsn")
}

/// The sum of every series of metric `name` in a Prometheus text page (0 when absent):
/// counters are listed at 0 from the start, so "none happened" is a sum, not an absence.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `probe` until it returns `Some`, or panics with `what` after `timeout`.
/// Polling an observable condition is the synchronisation; the pause only spaces the polls.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the openssl CLI in `dir` (tests make their certificates with it); panics with its
/// stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny deterministic PRNG (xorshift64*), so test workloads are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Logs to the test's captured output, filtered by `RUST_LOG` (off by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
