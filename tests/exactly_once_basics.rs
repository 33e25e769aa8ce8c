//! Exactly-once delivery on its ordinary paths (issue #14): rows arrive once to a
//! read_committed consumer, each Kafka transaction commits a progress record beside them,
//! and a clean restart skips what Kafka already holds. The faults (SIGKILL, a large
//! transaction cut in half, a frozen replica) are in `tests/exactly_once.rs`.

mod common;

use std::time::Duration;

use common::chaos::{wait_ready, Figures, Stage};
use common::kafka::Broker;
use common::metric_sum;
use common::pg::PgCluster;
use common::workload::write_seq;

const EXACTLY_ONCE: &str = "delivery = \"exactly_once\"\n";

fn exactly_once_config(
    stage: &Stage,
    cluster: &PgCluster,
    broker: &Broker,
    file: &str,
) -> std::path::PathBuf {
    let path = stage.config(
        file,
        &format!("127.0.0.1:{}", cluster.port()),
        &broker.bootstrap(),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[kafka]\n", &format!("[kafka]\n{EXACTLY_ONCE}"), 1);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arrive_once_and_a_restart_skips_what_kafka_holds() {
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "eos_basics").await;
    let config = exactly_once_config(&stage, cluster, broker, "relay.toml");
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    wait_ready(&relay, Duration::from_secs(60)).await;
    let mut figures = Figures::default();

    write_seq(&stage.admin, 0, 3_000).await;
    stage.fault_ended(&mut figures).await;
    let (_, page) = relay.admin_get("/metrics");
    let committed = metric_sum(&page, "outbox_relay_kafka_transactions_committed_total");
    assert!(committed >= 1.0, "transactions committed:\n{page}");
    assert_eq!(
        metric_sum(&page, "outbox_relay_kafka_transactions_aborted_total"),
        0.0,
        "nothing aborted:\n{page}"
    );
    assert_eq!(relay.terminate().code(), Some(0));

    // A restart: the slot is at the end, so nothing is sent again; then more rows.
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    write_seq(&stage.admin, 3_000, 4_000).await;
    stage.fault_ended(&mut figures).await;
    stage.tally(&mut figures, broker, 4_000).await;
    let log = relay.log();
    assert!(
        log.contains("resuming after the committed progress"),
        "the restart read its progress:\n{log}"
    );
    assert_eq!(figures.lost, 0, "{figures:?}");
    assert_eq!(figures.duplicates, 0, "{figures:?}");

    // The progress record names the slot and a commit position.
    let key_prefix = format!("{}@", stage.slot);
    let records = broker
        .consume_until(
            &["outbox-relay.progress"],
            Duration::from_secs(60),
            |records| {
                records.iter().any(|r| {
                    r.key
                        .as_deref()
                        .is_some_and(|k| k.starts_with(key_prefix.as_bytes()))
                })
            },
        )
        .await;
    let ours = records
        .iter()
        .rev()
        .find(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(key_prefix.as_bytes()))
        })
        .unwrap();
    let value: serde_json::Value =
        serde_json::from_slice(ours.payload.as_deref().unwrap()).unwrap();
    assert_eq!(value["slot"], stage.slot.as_str(), "{value}");
    assert!(
        value["commit_end_lsn"]
            .as_str()
            .is_some_and(|l| l.contains('/')),
        "{value}"
    );
    figures.sample_rss(&relay);
    if std::env::var_os("SHOW_RELAY_LOG").is_some() {
        println!("{log}");
    }
    figures.report("exactly-once basics");
}
