//! What an outage looks like from outside: while the broker is frozen, lag rises and
//! `/readyz` drops, then both recover. (Losing nothing through outages, restarts, cuts and
//! kills is the fault suite's job: `tests/chaos.rs`.)

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::kafka::{unique_topic, Broker};
use common::pg::PgCluster;
use common::relay::{config_text, RelayProcess};
use common::workload::{seq_of, write_seq};
use common::{wait_for, OUTBOX_DDL};

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
