//! Outages the relay must ride out without a restart and without losing an event: the
//! broker frozen for 20 s, and PostgreSQL restarted under it.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::kafka::{unique_topic, Broker};
use common::pg::{PgCluster, PgOptions};
use common::relay::{config_text, RelayProcess};
use common::workload::{seq_of, write_seq};
use common::{confirmed_flush, insert_lsn, wait_for, OUTBOX_DDL};

/// Reads `topic` until every seq in `0..n` arrived; returns the distinct seqs.
async fn wait_all(broker: &Broker, topic: &str, n: i64) -> HashSet<i64> {
    let mut seen = HashSet::new();
    let mut checked = 0;
    broker
        .consume_until(&[topic], Duration::from_secs(240), |records| {
            seen.extend(records[checked..].iter().map(seq_of));
            checked = records.len();
            seen.len() as i64 >= n
        })
        .await;
    seen
}

fn write_config(
    dir: &Path,
    cluster: &PgCluster,
    db: &str,
    slot: &str,
    bootstrap: &str,
    prefix: &str,
) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        config_text(&cluster.url(db), slot, bootstrap, prefix, ""),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_for_20_seconds_loses_nothing_and_needs_no_restart() {
    let broker = Broker::start(); // Its own broker: freezing the shared one would stall others.
    let cluster = PgCluster::shared();
    let db = cluster.create_database("freeze").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let prefix = unique_topic("freeze");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        cluster,
        &db,
        "freeze_slot",
        &broker.bootstrap(),
        &prefix,
    );
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, "freeze_slot").await;
    let topic = format!("{prefix}.outbox.event.order");

    write_seq(&admin, 0, 5_000).await;
    broker
        .consume_count(&[&topic], 1, Duration::from_secs(60))
        .await;
    broker.freeze();
    // The outage itself: rows keep coming while the broker answers nothing for 20 s.
    write_seq(&admin, 5_000, 10_000).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        relay.is_running(),
        "the relay must ride out the outage:\n{}",
        relay.log()
    );
    broker.thaw();
    write_seq(&admin, 10_000, 15_000).await;
    let end = insert_lsn(&admin).await;

    let seen = wait_all(&broker, &topic, 15_000).await;
    assert_eq!(seen.len(), 15_000, "nothing lost");
    wait_for(
        "the slot to pass every row",
        Duration::from_secs(60),
        || async { (confirmed_flush(&admin, "freeze_slot").await >= end).then_some(()) },
    )
    .await;
    assert!(
        relay.is_running(),
        "recovered without a restart:\n{}",
        relay.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing_and_the_relay_reconnects() {
    // Its own cluster: restarting the shared one would break other tests.
    let cluster = PgCluster::start(PgOptions::default());
    let db = cluster.create_database("restart").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let prefix = unique_topic("restart");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::shared();
    let config = write_config(
        dir.path(),
        &cluster,
        &db,
        "restart_slot",
        &broker.bootstrap(),
        &prefix,
    );
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, "restart_slot").await;
    let topic = format!("{prefix}.outbox.event.order");

    write_seq(&admin, 0, 10_000).await;
    broker
        .consume_count(&[&topic], 1, Duration::from_secs(60))
        .await;
    cluster.restart("fast");
    let admin = cluster.client(&db).await;
    write_seq(&admin, 10_000, 20_000).await;
    let end = insert_lsn(&admin).await;

    let seen = wait_all(broker, &topic, 20_000).await;
    assert_eq!(seen.len(), 20_000, "nothing lost");
    wait_for(
        "the slot to pass every row",
        Duration::from_secs(60),
        || async { (confirmed_flush(&admin, "restart_slot").await >= end).then_some(()) },
    )
    .await;
    assert!(
        relay.is_running(),
        "reconnected by itself:\n{}",
        relay.log()
    );
    assert!(
        relay
            .log()
            .contains("replication connection lost; reconnecting"),
        "the restart was noticed and survived:\n{}",
        relay.log()
    );
}

/// The value of the first sample of `name` in a Prometheus text page.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_and_readiness_drops_while_the_broker_is_frozen_then_recover() {
    let broker = Broker::start();
    let cluster = PgCluster::shared();
    let db = cluster.create_database("lag").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let prefix = unique_topic("lag");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        cluster,
        &db,
        "lag_slot",
        &broker.bootstrap(),
        &prefix,
    );
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, "lag_slot").await;
    let topic = format!("{prefix}.outbox.event.order");
    write_seq(&admin, 0, 100).await;
    broker
        .consume_count(&[&topic], 100, Duration::from_secs(60))
        .await;
    wait_for("readiness", Duration::from_secs(30), || {
        let ready = relay.admin_get("/readyz").0 == 200;
        async move { ready.then_some(()) }
    })
    .await;

    broker.freeze();
    write_seq(&admin, 100, 200).await;
    let (lag, bytes) = wait_for(
        "lag to rise and readiness to drop",
        Duration::from_secs(60),
        || {
            let (_, body) = relay.admin_get("/metrics");
            let (status, reason) = relay.admin_get("/readyz");
            let lag = sample(&body, "outbox_relay_lag_seconds").unwrap_or(0.0);
            let bytes = sample(&body, "outbox_relay_replication_lag_bytes").unwrap_or(0.0);
            let dropped = status == 503 && reason.contains("Kafka") && lag > 2.0 && bytes > 0.0;
            async move { dropped.then_some((lag, bytes)) }
        },
    )
    .await;
    println!("broker frozen: lag {lag:.1} s, {bytes} bytes behind, /readyz 503");
    broker.thaw();

    wait_for(
        "lag to return to 0 and readiness to 200",
        Duration::from_secs(60),
        || {
            let (_, body) = relay.admin_get("/metrics");
            let ready = relay.admin_get("/readyz").0 == 200;
            let lag = sample(&body, "outbox_relay_lag_seconds");
            async move { (ready && lag == Some(0.0)).then_some(()) }
        },
    )
    .await;
    let seen = wait_all(&broker, &topic, 200).await;
    assert_eq!(seen.len(), 200);
}
