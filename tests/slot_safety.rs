//! A slot that cannot be trusted stops the relay with the fix, never a silent skip:
//! invalidated (`wal_status = lost`), dropped, or made by another plugin. A slot advanced
//! by something else while the relay was away is not a stop (another replica does that in
//! the documented standby setup) but a warning and a metric. Each test changes the slot
//! under a relay kept away from PostgreSQL by a blocking proxy, or before it starts.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::chaos::Stage;
use common::kafka::Broker;
use common::pg::{PgCluster, PgOptions};
use common::proxy::FaultProxy;
use common::relay::RelayProcess;
use common::workload::write_seq;
use common::{confirmed_flush, marker, wait_for};

/// A database with an outbox and a relay config for it, reaching PostgreSQL at `address`.
async fn stage(cluster: &PgCluster, name: &str, address: &str) -> (Stage, PathBuf) {
    let stage = Stage::new(cluster, name).await;
    let config = stage.config("relay.toml", address, &Broker::shared().bootstrap());
    (stage, config)
}

/// Waits for the relay to exit by itself, non-zero, saying `needle`.
async fn assert_stops_saying(relay: &mut RelayProcess, needle: &str) -> String {
    let status = relay.wait_exit(Duration::from_secs(60)).await;
    let log = relay.log();
    assert!(!status.success(), "a stop is a failure exit:\n{log}");
    assert!(log.contains(needle), "expected {needle:?} in:\n{log}");
    log
}

/// Keeps the relay away (proxy blocks and cuts), then waits until the slot is free.
async fn take_relay_away(proxy: &FaultProxy, admin: &tokio_postgres::Client, slot: &str) {
    proxy.block();
    proxy.cut();
    wait_for(
        "the slot to be released",
        Duration::from_secs(30),
        || async {
            let row = admin
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap();
            (!row.get::<_, bool>(0)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_stops_the_relay_and_is_not_recreated() {
    let cluster = PgCluster::shared();
    let proxy = FaultProxy::to(format!("127.0.0.1:{}", cluster.port())).await;
    let (stage, config) = stage(cluster, "dropped", &proxy.address()).await;
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;

    take_relay_away(&proxy, &stage.admin, &stage.slot).await;
    stage
        .admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&stage.slot])
        .await
        .unwrap();
    proxy.unblock();
    assert_stops_saying(&mut relay, "does not recreate it silently").await;
    let exists = stage
        .admin
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&stage.slot],
        )
        .await
        .unwrap();
    assert!(exists.is_none(), "the slot was not recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_advanced_behind_the_relays_back_is_followed_with_a_warning() {
    let cluster = PgCluster::shared();
    let proxy = FaultProxy::to(format!("127.0.0.1:{}", cluster.port())).await;
    let (stage, config) = stage(cluster, "advanced", &proxy.address()).await;
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    write_seq(&stage.admin, 0, 100).await;
    let delivered = marker(&stage.admin).await;
    wait_for(
        "the first rows to be acknowledged",
        Duration::from_secs(60),
        || async { (confirmed_flush(&stage.admin, &stage.slot).await >= delivered).then_some(()) },
    )
    .await;

    take_relay_away(&proxy, &stage.admin, &stage.slot).await;
    // Rows the relay never saw, then the slot moved past them by hand. (The slot only
    // advances over flushed WAL: commit these synchronously, the cluster's default is off.)
    stage
        .admin
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    write_seq(&stage.admin, 100, 200).await;
    stage
        .admin
        .execute(
            "SELECT pg_replication_slot_advance($1, pg_current_wal_flush_lsn())",
            &[&stage.slot],
        )
        .await
        .unwrap();
    proxy.unblock();
    // It resumes from the slot, says so and counts it, and publishes what comes next.
    wait_for(
        "the relay to resume from the advanced slot",
        Duration::from_secs(60),
        || {
            let warned = relay.log().contains("while this relay was disconnected");
            async move { warned.then_some(()) }
        },
    )
    .await;
    let after = marker(&stage.admin).await;
    wait_for(
        "rows after the advance to be acknowledged",
        Duration::from_secs(60),
        || async { (confirmed_flush(&stage.admin, &stage.slot).await >= after).then_some(()) },
    )
    .await;
    assert!(relay.is_running(), "no stop:\n{}", relay.log());
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        metrics.contains("outbox_relay_slot_advanced_elsewhere_total 1"),
        "counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_another_output_plugin_stops_the_relay() {
    let cluster = PgCluster::shared();
    let (stage, config) = stage(cluster, "plugin", &format!("127.0.0.1:{}", cluster.port())).await;
    stage
        .admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&stage.slot],
        )
        .await
        .unwrap();
    let mut relay = stage.start(&config);
    assert_stops_saying(
        &mut relay,
        "uses output plugin \"test_decoding\", not pgoutput",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_relay_with_the_fix() {
    // Its own cluster: a 1 MB max_slot_wal_keep_size would invalidate other tests' slots.
    let cluster = PgCluster::start(PgOptions {
        extra_conf: vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        ..PgOptions::default()
    });
    let (stage, config) = stage(&cluster, "lost", &format!("127.0.0.1:{}", cluster.port())).await;
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    assert!(relay.terminate().success());

    // With the relay gone, WAL piles up past max_slot_wal_keep_size; a checkpoint then
    // removes it and invalidates the slot.
    stage
        .admin
        .batch_execute("CREATE TABLE ballast (filler text)")
        .await
        .unwrap();
    wait_for(
        "the slot to be invalidated",
        Duration::from_secs(120),
        || async {
            stage
                .admin
                .batch_execute(
                    "INSERT INTO ballast SELECT repeat('x', 1000) FROM generate_series(1, 20000);
                 SELECT pg_switch_wal(); CHECKPOINT;",
                )
                .await
                .unwrap();
            let row = stage
                .admin
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&stage.slot],
                )
                .await
                .unwrap();
            (row.get::<_, Option<String>>(0).as_deref() == Some("lost")).then_some(())
        },
    )
    .await;

    let mut relay = stage.start(&config);
    let log = assert_stops_saying(
        &mut relay,
        "was invalidated by PostgreSQL (wal_status = lost)",
    )
    .await;
    assert!(
        log.contains("max_slot_wal_keep_size"),
        "names the setting:\n{log}"
    );
}
