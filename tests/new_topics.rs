//! The first records sent to a topic the relay has only just created all arrive.
//!
//! Each of many rows routes to a topic that does not exist yet, so every topic is created
//! by the relay and its first records are sent at once: the moment a new partition's
//! leader and log are still being set up on the broker.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::chaos::Stage;
use common::kafka::Broker;
use common::pg::PgCluster;
use common::{confirmed_flush, marker, wait_for};

const TOPICS: i64 = 60;
const PER_TOPIC: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_records_of_every_new_topic_arrive() {
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "newtopics").await;
    let address = format!("127.0.0.1:{}", cluster.port());
    let config = stage.config("relay.toml", &address, &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let total = TOPICS * PER_TOPIC;
    // One transaction per row, round-robin over the topics: each topic's first record
    // comes while the others are being created.
    for i in 0..total {
        stage
            .admin
            .execute(
                "INSERT INTO outbox VALUES (gen_random_uuid(), 'n' || ($1::bigint % $2::bigint), \
                 'k' || $1::bigint, 'Created', jsonb_build_object('seq', $1::bigint))",
                &[&i, &TOPICS],
            )
            .await
            .unwrap();
    }
    let end = marker(&stage.admin).await;
    wait_for(
        "the slot to pass every row",
        Duration::from_secs(180),
        || async { (confirmed_flush(&stage.admin, &stage.slot).await >= end).then_some(()) },
    )
    .await;
    let prefix = stage.topic.trim_end_matches(".outbox.event.order");
    let topics: Vec<String> = (0..TOPICS)
        .map(|t| format!("{prefix}.outbox.event.n{t}"))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let records = broker
        .consume_until(&names, Duration::from_secs(120), |records| {
            seen.extend(records.iter().map(common::workload::seq_of));
            seen.len() as i64 >= total
        })
        .await;
    let missing: BTreeMap<i64, i64> = (0..total)
        .filter(|n| !seen.contains(n))
        .map(|n| (n % TOPICS, n))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka ({} of {total}, {} records read): {missing:?}\n{}",
        missing.len(),
        records.len(),
        relay.log()
    );
}
