//! The publication is enforced: it carries the outbox tables' inserts and nothing else.
//!
//! A business table in the publication would put customer rows on Kafka or, worse, whole
//! rows on the dead-letter topic; so the relay refuses to stream from such a publication
//! and stops, before the row, when one arrives anyway. A partitioned outbox publishes
//! under its parent's name, and deletes of outbox rows never reach the relay.

mod common;

use std::time::Duration;

use common::chaos::Stage;
use common::kafka::{unique_topic, Broker};
use common::pg::PgCluster;
use common::relay::{config_text, RelayProcess};
use common::{confirmed_flush, insert_lsn, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// A business table that must never leave the database through the relay.
const ORDERS_DDL: &str =
    "CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL, card text NOT NULL)";
/// A value that would give the leak away on any topic.
const SECRET: &str = "4111-1111-1111-1111";

fn outbox_row(n: i64) -> String {
    format!(
        "INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'k', 'Created', '{{\"n\": {n}}}')"
    )
}

/// Writes the relay config for `stage` (its DLQ topic `{prefix}.dlq`, plus `extra`).
fn stage_config(stage: &Stage, extra: &str) -> std::path::PathBuf {
    let prefix = stage.topic.trim_end_matches(".outbox.event.order");
    let text = config_text(
        &PgCluster::shared().url(&stage.db),
        &stage.slot,
        &Broker::shared().bootstrap(),
        prefix,
        &format!("{extra}\n[dlq]\ntopic = \"{prefix}.dlq\"\n"),
    );
    let path = stage.dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Records in every topic whose name starts with `prefix` (high watermarks: exact).
fn records_under(prefix: &str) -> Vec<(String, i64)> {
    let consumer: BaseConsumer = Broker::shared().client_config().create().unwrap();
    let meta = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut found = Vec::new();
    for topic in meta
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
    {
        let mut count = 0;
        for partition in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(10))
                .unwrap();
            count += high - low;
        }
        found.push((topic.name().to_owned(), count));
    }
    found
}

/// The last `error: ` line of the relay's log (how `main` reports a stop).
fn error_line(relay: &RelayProcess) -> String {
    relay
        .log()
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_table_added_while_streaming_stops_the_relay_before_its_row() {
    let stage = Stage::new(PgCluster::shared(), "pub_added").await;
    stage.admin.batch_execute(ORDERS_DDL).await.unwrap();
    let prefix = stage
        .topic
        .trim_end_matches(".outbox.event.order")
        .to_owned();
    let config = stage_config(&stage, "");
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    stage.admin.batch_execute(&outbox_row(1)).await.unwrap();
    Broker::shared()
        .consume_count(&[&stage.topic], 1, Duration::from_secs(60))
        .await;

    stage
        .admin
        .batch_execute(&format!(
            "ALTER PUBLICATION {}_pub ADD TABLE public.orders",
            stage.slot
        ))
        .await
        .unwrap();
    stage
        .admin
        .batch_execute(&format!(
            "INSERT INTO orders VALUES (1, 'Alice', '{SECRET}')"
        ))
        .await
        .unwrap();
    stage.admin.batch_execute(&outbox_row(2)).await.unwrap();

    let status = relay.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "exits non-zero:\n{}", relay.log());
    let error = error_line(&relay);
    assert!(error.contains("public.orders"), "names the table: {error}");
    assert!(
        error.contains(&format!(
            "ALTER PUBLICATION \"{}_pub\" DROP TABLE \"public\".\"orders\"",
            stage.slot
        )),
        "gives the fix: {error}"
    );
    // The slot is free again: what it would send next still holds the business row.
    let ahead: i64 = stage
        .admin
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2) \
             WHERE position(convert_to($3, 'UTF8') IN data) > 0",
            &[&stage.slot, &format!("{}_pub", stage.slot), &SECRET],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ahead, 1, "the slot stays before the business row");
    let topics = records_under(&prefix);
    assert_eq!(
        topics,
        vec![(stage.topic.clone(), 1)],
        "only the first outbox row reached Kafka; nothing on the DLQ"
    );
    assert!(
        !relay.log().contains(SECRET),
        "the row is not logged either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_listing_a_business_table_is_refused_at_start() {
    let stage = Stage::new(PgCluster::shared(), "pub_listed").await;
    stage.admin.batch_execute(ORDERS_DDL).await.unwrap();
    stage
        .admin
        .batch_execute(&format!(
            "CREATE PUBLICATION {}_pub FOR TABLE public.outbox, public.orders \
             WITH (publish = 'insert', publish_via_partition_root = true)",
            stage.slot
        ))
        .await
        .unwrap();
    let prefix = stage
        .topic
        .trim_end_matches(".outbox.event.order")
        .to_owned();
    let config = stage_config(&stage, "");
    let mut relay = stage.start(&config);
    let status = relay.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "refuses to start:\n{}", relay.log());
    let error = error_line(&relay);
    assert!(
        error.contains(&format!(
            "publication {}_pub publishes public.orders",
            stage.slot
        )),
        "names the publication and the table: {error}"
    );
    assert!(
        error.contains(&format!(
            "ALTER PUBLICATION \"{}_pub\" DROP TABLE \"public\".\"orders\"",
            stage.slot
        )),
        "gives the fix: {error}"
    );
    assert!(
        !relay.log().contains("starting replication"),
        "never started streaming:\n{}",
        relay.log()
    );
    assert!(records_under(&prefix).is_empty(), "nothing on Kafka");

    // `check` says the same, and recommends the publication the relay would create.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains(&format!("publication {}_pub", stage.slot)))
        .unwrap_or_else(|| panic!("no publication line:\n{stdout}"));
    assert!(
        line.starts_with("FAIL") && line.contains("DROP TABLE \"public\".\"orders\""),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_outbox_publishes_under_its_parent_with_its_overrides() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("pub_parted").await;
    let admin = cluster.client(&db).await;
    admin
        .batch_execute(
            "CREATE TABLE public.outbox (
                 id uuid NOT NULL, aggregatetype text NOT NULL, aggregateid text NOT NULL,
                 type text NOT NULL, payload jsonb NOT NULL, shard int NOT NULL
             ) PARTITION BY LIST (shard);
             CREATE TABLE public.outbox_a PARTITION OF public.outbox FOR VALUES IN (1);
             CREATE TABLE public.outbox_b PARTITION OF public.outbox FOR VALUES IN (2);",
        )
        .await
        .unwrap();
    let prefix = unique_topic("pub_parted");
    let topic = format!("{prefix}.parted.order");
    let slot = "pub_parted_slot";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let extra = format!(
        "[outbox.tables.\"public.outbox\"]\ntopic = \"{prefix}.parted.${{routedByValue}}\"\nadditional_headers = [{{ column = \"shard\" }}]\n"
    );
    std::fs::write(
        &config,
        config_text(
            &cluster.url(&db),
            slot,
            &Broker::shared().bootstrap(),
            &prefix,
            &extra,
        ),
    )
    .unwrap();
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, slot).await;
    admin
        .batch_execute(
            "INSERT INTO outbox VALUES
                 ('00000000-0000-0000-0000-00000000000a', 'order', 'k', 'Created', '{}', 1),
                 ('00000000-0000-0000-0000-00000000000b', 'order', 'k', 'Created', '{}', 2)",
        )
        .await
        .unwrap();
    let records = Broker::shared()
        .consume_count(&[&topic], 2, Duration::from_secs(60))
        .await;
    let mut seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r.header_str("id").unwrap().to_owned(),
                r.header_str("shard").unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("00000000-0000-0000-0000-00000000000a".into(), "1".into()),
            ("00000000-0000-0000-0000-00000000000b".into(), "2".into()),
        ],
        "both partitions' rows, under the parent's overrides"
    );
    assert!(relay.is_running(), "{}", relay.log());
    assert_eq!(
        records_under(&prefix),
        vec![(topic.clone(), 2)],
        "nothing under the default topic or the partitions' names"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_of_outbox_rows_never_reach_the_relay() {
    let stage = Stage::new(PgCluster::shared(), "pub_deletes").await;
    let config = stage_config(&stage, "");
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    stage
        .admin
        .batch_execute(&format!(
            "BEGIN; {}; {}; DELETE FROM outbox; COMMIT;",
            outbox_row(1),
            outbox_row(2)
        ))
        .await
        .unwrap();
    stage.admin.batch_execute(&outbox_row(3)).await.unwrap();
    stage
        .admin
        .batch_execute("UPDATE outbox SET type = 'Updated'")
        .await
        .unwrap();
    // The nightly cleanup.
    stage
        .admin
        .batch_execute("DELETE FROM outbox")
        .await
        .unwrap();
    // A last row after the deletes: once the slot passes it, the relay has seen them all.
    let after_deletes = insert_lsn(&stage.admin).await;
    stage.admin.batch_execute(&outbox_row(4)).await.unwrap();
    wait_for(
        "the slot to pass the last row",
        Duration::from_secs(60),
        || async {
            (confirmed_flush(&stage.admin, &stage.slot).await > after_deletes).then_some(())
        },
    )
    .await;
    // The ignored counters are listed at 0 from the start: none may have moved.
    let (_, metrics) = relay.admin_get("/metrics");
    assert_eq!(
        common::metric_sum(&metrics, "outbox_relay_events_ignored_total"),
        0.0,
        "no update or delete reached the relay:\n{metrics}"
    );
    let records = Broker::shared()
        .consume_count(&[&stage.topic], 4, Duration::from_secs(60))
        .await;
    assert_eq!(records.len(), 4, "the four inserts");
    assert_eq!(
        records_under(&stage.topic),
        vec![(stage.topic.clone(), 4)],
        "nothing but the inserts"
    );
}
