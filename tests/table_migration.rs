//! A migration renames the routing column of the outbox table mid-stream.
//!
//! Every row after the rename lacks the column the config names, so dead-lettering them
//! (what the relay did before: all of them went to the DLQ with `missing_column`) would
//! empty the stream into the DLQ and break per-key order for good. The relay holds the
//! stream instead: readiness 503 and an error line naming the table and the column,
//! nothing dead-lettered, the slot before the first such row. Once the config names the
//! new column and the relay is restarted, every row written after the rename arrives, in
//! order.

mod common;

use std::time::Duration;

use common::chaos::{Figures, Stage};
use common::kafka::Broker;
use common::pg::PgCluster;
use common::workload::write_seq;
use common::{confirmed_flush, insert_lsn, marker, wait_for};

const BEFORE: i64 = 200;
const AFTER: i64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_routing_column_holds_the_stream_until_the_config_follows() {
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "renamecol").await;
    let address = format!("127.0.0.1:{}", cluster.port());
    let config = stage.config("relay.toml", &address, &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    write_seq(&stage.admin, 0, BEFORE).await;
    let before = marker(&stage.admin).await;
    wait_for(
        "the rows before the migration to be acknowledged",
        Duration::from_secs(60),
        || async { (confirmed_flush(&stage.admin, &stage.slot).await >= before).then_some(()) },
    )
    .await;

    stage
        .admin
        .batch_execute("ALTER TABLE outbox RENAME COLUMN aggregatetype TO aggregate_type")
        .await
        .unwrap();
    write_seq(&stage.admin, BEFORE, BEFORE + AFTER).await;
    let written = insert_lsn(&stage.admin).await;

    let gauge = "outbox_relay_table_blocked{table=\"public.outbox\"} 1";
    let (_, reason) = wait_for(
        "the relay to hold the stream, naming table and column",
        Duration::from_secs(60),
        || {
            let ready = relay.try_admin_get("/readyz");
            let metrics = relay.try_admin_get("/metrics");
            let held = match (ready, metrics) {
                (Ok((503, body)), Ok((_, m)))
                    if body.contains("public.outbox")
                        && body.contains("aggregatetype")
                        && m.contains(gauge) =>
                {
                    Some((503, body))
                }
                _ => None,
            };
            async move { held }
        },
    )
    .await;
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("public.outbox")
            && l.contains("aggregatetype")),
        "an error line names table and column:\n{log}"
    );
    let (_, metrics) = relay.admin_get("/metrics");
    assert_eq!(
        common::metric_sum(&metrics, "outbox_relay_events_dead_lettered_total"),
        0.0,
        "a renamed column dead-letters nothing:\n{metrics}"
    );
    assert!(!log.contains("dead-lettering row"), "{log}");
    let confirmed = confirmed_flush(&stage.admin, &stage.slot).await;
    assert!(
        confirmed < written,
        "the slot ({confirmed}) passed rows it never published ({written}); {reason}"
    );

    // The operator points the config at the new column and restarts the relay.
    let status = relay.terminate();
    assert!(status.success(), "a held relay stops cleanly: {status:?}");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[outbox]\n",
        "[outbox]\nroute_by_field = \"aggregate_type\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let mut figures = Figures::default();
    stage.tally(&mut figures, broker, BEFORE + AFTER).await;
    assert_eq!(
        (figures.lost, figures.order_breaks),
        (0, 0),
        "every row arrives, in per-key order:\n{}",
        relay.log()
    );
    assert!(
        !relay.log().contains("dead-lettering row"),
        "{}",
        relay.log()
    );
}
