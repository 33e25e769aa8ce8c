//! With nothing scraping `/metrics`, the relay's memory stays flat: its peak RSS after
//! 2,000,000 events is within 8 MiB of its peak after 500,000. Before the metrics upkeep
//! thread, every delivery-latency sample was kept until a render, about 20 MiB per million
//! events.
//!
//! It streams 2,000,000 rows, so it is `#[ignore]`d in the per-commit suite and run in
//! release by `scripts/chaos.sh` (`--include-ignored`), which prints its figures.

mod common;

use std::time::{Duration, Instant};

use common::chaos::Stage;
use common::kafka::Broker;
use common::pg::PgCluster;
use common::{confirmed_flush, marker, wait_for};

const FIRST: i64 = 500_000;
const TOTAL: i64 = 2_000_000;
/// Rows per transaction: large enough to write 2,000,000 rows quickly.
const CHUNK: i64 = 50_000;
const MIB: u64 = 1024;

async fn write(admin: &tokio_postgres::Client, from: i64, to: i64) {
    for start in (from..to).step_by(CHUNK as usize) {
        admin
            .execute(
                "INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || (i % 50), 'Created', \
                 jsonb_build_object('seq', i) FROM generate_series($1::bigint, $2::bigint) AS i",
                &[&start, &((start + CHUNK).min(to) - 1)],
            )
            .await
            .expect("insert outbox rows");
    }
}

async fn drained(stage: &Stage) {
    let end = marker(&stage.admin).await;
    wait_for(
        "the relay to acknowledge every row written",
        Duration::from_secs(900),
        || async { (confirmed_flush(&stage.admin, &stage.slot).await >= end).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "2,000,000 events: run by scripts/chaos.sh in release"]
async fn peak_rss_stays_flat_without_a_scraper() {
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "memflat").await;
    let address = format!("127.0.0.1:{}", cluster.port());
    let config = stage.config("relay.toml", &address, &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let started = Instant::now();
    write(&stage.admin, 0, FIRST).await;
    drained(&stage).await;
    let at_first = relay.peak_rss_kib();
    write(&stage.admin, FIRST, TOTAL).await;
    drained(&stage).await;
    let at_total = relay.peak_rss_kib();
    let grew = at_total.saturating_sub(at_first);
    println!(
        "memory: peak RSS {} MiB after {FIRST} events, {} MiB after {TOTAL} (+{:.1} MiB), \
         nothing scraping; {:.0} s",
        at_first / MIB,
        at_total / MIB,
        grew as f64 / MIB as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(
        grew < 8 * MIB,
        "peak RSS grew {grew} KiB between event {FIRST} and {TOTAL}:\n{}",
        relay.log()
    );
}

/// Exactly-once: a 1,000,000-row PostgreSQL transaction is never split, so it streams into
/// one Kafka transaction; the relay's memory stays bounded by its producer queue meanwhile
/// (the events of the open transaction are counted per transaction, not kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1,000,000 events in one transaction: run by scripts/chaos.sh in release"]
async fn a_million_row_transaction_streams_through_one_kafka_transaction_in_bounded_memory() {
    const ROWS: i64 = 1_000_000;
    const COMMITTED: &str = "outbox_relay_kafka_transactions_committed_total";
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "memeos").await;
    let address = format!("127.0.0.1:{}", cluster.port());
    let config = common::chaos::with_kafka_settings(
        &stage.config("relay.toml", &address, &broker.bootstrap()),
        "delivery = \"exactly_once\"",
    );
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    common::chaos::wait_ready(&relay, Duration::from_secs(60)).await;
    let before = common::metric_sum(&relay.admin_get("/metrics").1, COMMITTED);
    let started = Instant::now();
    stage
        .admin
        .execute(
            "INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || (i % 50), 'Created', \
             jsonb_build_object('seq', i) FROM generate_series(1, $1::bigint) AS i",
            &[&ROWS],
        )
        .await
        .expect("one large transaction");
    drained(&stage).await;
    let page = relay.admin_get("/metrics").1;
    let committed = common::metric_sum(&page, COMMITTED) - before;
    let published = common::metric_sum(&page, "outbox_relay_events_total");
    let peak = relay.peak_rss_kib();
    println!(
        "memory: exactly-once, one {ROWS}-row transaction: {committed} Kafka transaction(s), \
         {published} events, peak RSS {} MiB; {:.0} s",
        peak / MIB,
        started.elapsed().as_secs_f64()
    );
    // `drained` commits one marker row after the large transaction.
    assert_eq!(
        published as i64,
        ROWS + 1,
        "every row published once:\n{page}"
    );
    // Split at transaction_max_events (100,000), it would take ten or more; the marker's
    // transaction may commit on its own or with it.
    assert!(
        (1.0..=2.0).contains(&committed),
        "{committed} Kafka transactions for one PostgreSQL transaction and a marker"
    );
    assert!(
        peak < 128 * MIB,
        "peak RSS {peak} KiB for one large transaction:\n{}",
        relay.log()
    );
}
