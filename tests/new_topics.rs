//! The first records sent to a topic the relay has only just created all arrive.
//!
//! Each of many rows routes to a topic that does not exist yet, so every topic is created
//! by the relay and its first records are sent at once: the moment a new partition's
//! leader and log are still being set up on the broker.
//!
//! The second test sends each new topic its rows in bursts, so that several produce
//! requests per partition are in flight while the broker still answers "not leader" for
//! the first ones. Until the partition has taken one batch of the producer, the broker
//! accepts any sequence number from it, and librdkafka then counts the refused first
//! batches as delivered ("implicitly acked by subsequent batch success"): before the
//! relay caught that, those rows were acknowledged and never reached Kafka.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::chaos::Stage;
use common::kafka::Broker;
use common::pg::PgCluster;
use common::{confirmed_flush, marker, wait_for};
use futures_util::future::join_all;

const TOPICS: i64 = 60;
const PER_TOPIC: i64 = 10;

/// Once the slot has passed every row, reads topics `<prefix>.outbox.event.<routed><t>`
/// (`t` below `topics`) until seqs `0..total` are all there (at most `timeout_secs`): the seqs acknowledged but
/// not in Kafka, and how many records were read.
async fn missing_once_acknowledged(
    stage: &Stage,
    broker: &Broker,
    routed: &str,
    topics: i64,
    total: i64,
    timeout_secs: u64,
) -> (Vec<i64>, usize) {
    let end = marker(&stage.admin).await;
    wait_for(
        "the slot to pass every row",
        Duration::from_secs(180),
        || async { (confirmed_flush(&stage.admin, &stage.slot).await >= end).then_some(()) },
    )
    .await;
    let prefix = stage.topic.trim_end_matches(".outbox.event.order");
    let topics: Vec<String> = (0..topics)
        .map(|t| format!("{prefix}.outbox.event.{routed}{t}"))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let records = broker
        .consume_until(&names, Duration::from_secs(timeout_secs), |records| {
            seen.extend(records.iter().map(common::workload::seq_of));
            seen.len() as i64 >= total
        })
        .await;
    let missing = (0..total).filter(|n| !seen.contains(n)).collect();
    (missing, records.len())
}

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
    let (missing, read) = missing_once_acknowledged(&stage, broker, "n", TOPICS, total, 120).await;
    let missing: BTreeMap<i64, i64> = missing.into_iter().map(|n| (n % TOPICS, n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka ({} of {total}, {} records read): {missing:?}\n{}",
        missing.len(),
        read,
        relay.log()
    );
}

/// New topics for the burst test, rows per topic, and rows per burst.
const BURST_TOPICS: i64 = 20;
const BURST_ROWS: i64 = 60;
const BURST: i64 = 6;
/// Pace of the bursts: they spread each topic's rows over the ~half second a new
/// partition may take to become writable on a loaded broker.
const BURST_EVERY: Duration = Duration::from_millis(40);
/// Partitions of the topic created beside each new topic of the relay.
const DECOY_PARTITIONS: i32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_in_bursts_into_new_topics_all_arrive() {
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "newbursts").await;
    let address = format!("127.0.0.1:{}", cluster.port());
    let config = stage.config("relay.toml", &address, &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let total = BURST_TOPICS * BURST_ROWS;
    let mut pace = tokio::time::interval(BURST_EVERY);
    let mut decoys = Vec::new();
    for first in (0..total).step_by(BURST as usize) {
        pace.tick().await;
        if first % BURST_ROWS == 0 {
            // Another client creates a large topic at the same moment: the broker lists the
            // relay's new partitions in its metadata before it has made them, and answers
            // "not leader" to their first produce requests for longer.
            let decoy = format!("{}.decoy{first}", stage.db);
            decoys.push(tokio::spawn(async move {
                broker.create_topic(&decoy, DECOY_PARTITIONS).await
            }));
        }
        // One transaction per row; a burst's rows are pipelined on one connection.
        let rows: Vec<i64> = (first..first + BURST).collect();
        let admin = &stage.admin;
        join_all(rows.iter().map(|i| async move {
            admin
                .execute(
                    "INSERT INTO outbox VALUES (gen_random_uuid(), 'b' || ($1::bigint / $2::bigint), \
                     'k' || $1::bigint, 'Created', jsonb_build_object('seq', $1::bigint))",
                    &[i, &BURST_ROWS],
                )
                .await
        }))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    }
    for decoy in decoys {
        decoy.await.unwrap();
    }
    let (missing, read) =
        missing_once_acknowledged(&stage, broker, "b", BURST_TOPICS, total, 60).await;
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka ({} of {total}, {} records read): {missing:?}\n{}",
        missing.len(),
        read,
        relay.log()
    );
}

/// Topics the relay creates take `kafka.topic_config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_topics_take_the_configured_topic_config() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "topicconfig").await;
    let address = format!("127.0.0.1:{}", cluster.port());
    let config = stage.config("relay.toml", &address, &broker.bootstrap());
    let text = std::fs::read_to_string(&config).unwrap()
        + "\n[kafka.topic_config]\n\"retention.ms\" = \"3600000\"\n\"cleanup.policy\" = \"delete\"\n";
    std::fs::write(&config, text).unwrap();
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    common::workload::write_seq(&stage.admin, 0, 1).await;
    broker
        .consume_count(&[&stage.topic], 1, Duration::from_secs(60))
        .await;
    let admin: AdminClient<DefaultClientContext> =
        broker.client_config().create().expect("admin client");
    let described = admin
        .describe_configs(
            [&ResourceSpecifier::Topic(&stage.topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("describe configs");
    let resource = described[0].as_ref().expect("topic configs");
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("3600000"));
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));
}
