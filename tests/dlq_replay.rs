//! `outbox-relay dlq replay` against a real PostgreSQL and Kafka: rows dead-lettered for
//! a topic that did not exist (creation off) go to that topic once it is created, with
//! their original key, `id` and headers, in order per key, exactly once across runs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kafka::{unique_topic, Broker, ReceivedRecord};
use common::pg::PgCluster;
use common::relay::{config_text, RelayProcess};
use common::LOOSE_OUTBOX;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Rows routed to the missing topic, alternating between two keys.
const MISSING_ROWS: i64 = 6;

fn dlq_replay(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["dlq", "replay", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run outbox-relay dlq replay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines_starting<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn summary(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("summary"))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"))
}

fn header(record: &ReceivedRecord, name: &str) -> String {
    record
        .header_str(name)
        .unwrap_or_else(|| panic!("no header {name} on {record:?}"))
        .to_owned()
}

fn n_of(record: &ReceivedRecord) -> i64 {
    let value: serde_json::Value =
        serde_json::from_slice(record.payload.as_deref().expect("payload")).unwrap();
    value["n"].as_i64().expect("n")
}

/// Records on every partition of `topic` (high watermarks), asked of the broker directly.
fn records_on(topic: &str) -> i64 {
    let consumer: BaseConsumer = Broker::shared()
        .client_config()
        .set("group.id", "dlq-replay-test-watermarks")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = outbox_relay::kafka::partitions_of(&metadata, topic);
    assert!(!partitions.is_empty(), "topic {topic} exists");
    partitions
        .iter()
        .map(|&p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_dead_lettered_for_a_missing_topic_are_replayed_once_in_order() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("replay").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(LOOSE_OUTBOX).await.unwrap();
    let prefix = unique_topic("replay");
    let broker = Broker::shared();
    let dlq = format!("{prefix}.dlq");
    let target = format!("{prefix}.outbox.event.nowhere");
    broker.create_topic(&dlq, 2).await;
    let slot = "replay_slot";
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[outbox.additional_headers]]\ncolumn = \"type\"\nheader = \"eventType\"\n\n[dlq]\ntopic = \"{dlq}\"\n"
    );
    let text = config_text(
        &cluster.url(&db),
        slot,
        &broker.bootstrap(),
        &prefix,
        &extra,
    )
    .replace(
        "[kafka]\n",
        "[kafka]\ncreate_topics = false\nunknown_topic_wait_ms = 1000\n",
    );
    let config: PathBuf = dir.path().join("relay.toml");
    std::fs::write(&config, text).unwrap();
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, slot).await;

    // Rows for a topic that does not exist, then one whose id is NULL (not replayable:
    // the current config still rejects it).
    let mut sql = String::new();
    for n in 1..=MISSING_ROWS {
        let key = if n % 2 == 1 { "k1" } else { "k2" };
        sql += &format!(
            "INSERT INTO outbox VALUES (gen_random_uuid(), 'nowhere', '{key}', 'Shipped', '{{\"n\": {n}}}');"
        );
    }
    sql += "INSERT INTO outbox VALUES (NULL, 'nowhere', 'k1', 'Shipped', '{\"n\": 99}');";
    admin.batch_execute(&sql).await.unwrap();
    let dead = broker
        .consume_count(&[&dlq], MISSING_ROWS as usize + 1, Duration::from_secs(60))
        .await;
    let ids_by_n: HashMap<i64, String> = dead
        .iter()
        .filter(|r| header(r, "outbox.error.class") == "unknown_topic")
        .map(|r| {
            let row: serde_json::Value =
                serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            let payload: serde_json::Value =
                serde_json::from_str(row["payload"].as_str().unwrap()).unwrap();
            (payload["n"].as_i64().unwrap(), header(r, "id"))
        })
        .collect();
    assert_eq!(ids_by_n.len(), MISSING_ROWS as usize, "{dead:?}");
    relay.terminate();

    // The topic still missing: the replay stops at the first record, commits nothing.
    let (code, stdout, stderr) = dlq_replay(&config, &["--idle-timeout-ms", "20000"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "target topic {target} does not exist and kafka.create_topics is false; create it"
        )),
        "{stderr}"
    );
    assert!(
        summary(&stdout).starts_with("summary: replayed=0 ")
            && summary(&stdout).ends_with(" remaining=7"),
        "{stdout}"
    );

    broker.create_topic(&target, 3).await;

    // Dry run: one line per record, nothing published or committed.
    let (code, stdout, stderr) = dlq_replay(&config, &["--dry-run", "--idle-timeout-ms", "20000"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let would = lines_starting(&stdout, "would replay ");
    assert_eq!(would.len(), MISSING_ROWS as usize, "{stdout}");
    for id in ids_by_n.values() {
        let line = would
            .iter()
            .find(|l| l.contains(&format!(" id={id} ")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{stdout}"));
        assert!(
            line.contains(&format!("-> topic={target} key=k"))
                && line.ends_with(" class=unknown_topic"),
            "{line}"
        );
    }
    let skips = lines_starting(&stdout, "skip ");
    assert_eq!(skips.len(), 1, "{stdout}");
    assert!(
        skips[0].contains(
            "id=- class=null_column: the current config still rejects the row: column id is NULL"
        ),
        "{}",
        skips[0]
    );
    assert_eq!(
        summary(&stdout),
        "summary (dry run, nothing published or committed): would_replay=6 skipped=1 remaining=7"
    );
    assert_eq!(records_on(&target), 0, "a dry run publishes nothing");

    // Two records, then the rest: the position is committed after each run.
    let (code, stdout, stderr) = dlq_replay(&config, &["--max", "2", "--idle-timeout-ms", "20000"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(lines_starting(&stdout, "replayed ").len(), 2, "{stdout}");
    assert!(summary(&stdout).ends_with(" remaining=5"), "{stdout}");
    let (code, stdout, stderr) = dlq_replay(&config, &["--idle-timeout-ms", "20000"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(lines_starting(&stdout, "replayed ").len(), 4, "{stdout}");
    assert_eq!(lines_starting(&stdout, "skip ").len(), 1, "{stdout}");
    assert_eq!(
        summary(&stdout),
        "summary: replayed=4 skipped=1 remaining=0",
        "{stdout}"
    );

    // On the original topic: original key, id and headers, in order per key, once each.
    let mut arrived = broker
        .consume_count(&[&target], MISSING_ROWS as usize, Duration::from_secs(60))
        .await;
    arrived.sort_by_key(|r| (r.partition, r.offset));
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in &arrived {
        let n = n_of(record);
        let key = String::from_utf8(record.key.clone().expect("key")).unwrap();
        assert_eq!(key, if n % 2 == 1 { "k1" } else { "k2" }, "original key");
        assert_eq!(
            header(record, "id"),
            ids_by_n[&n],
            "same id as the dead letter"
        );
        assert_eq!(header(record, "eventType"), "Shipped", "additional header");
        assert!(
            record.header("outbox.error.class").is_none(),
            "no dead-letter headers"
        );
        per_key.entry(key).or_default().push(n);
    }
    assert_eq!(per_key["k1"], [1, 3, 5], "k1 in order");
    assert_eq!(per_key["k2"], [2, 4, 6], "k2 in order");

    // A second run replays nothing.
    let (code, stdout, stderr) = dlq_replay(&config, &["--idle-timeout-ms", "20000"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        summary(&stdout),
        "summary: replayed=0 skipped=0 remaining=0",
        "{stdout}"
    );
    assert_eq!(records_on(&target), MISSING_ROWS, "nothing published twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_routing_config_applies_to_the_replay() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("refix").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(LOOSE_OUTBOX).await.unwrap();
    let prefix = unique_topic("refix");
    let broker = Broker::shared();
    let dlq = format!("{prefix}.dlq");
    let slot = "refix_slot";
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[dlq]\ntopic = \"{dlq}\"\n");
    let text = config_text(
        &cluster.url(&db),
        slot,
        &broker.bootstrap(),
        &prefix,
        &extra,
    );
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, &text).unwrap();
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, slot).await;

    // Routed by `aggregatetype`, whose values make no valid topic name: dead-lettered.
    let mut sql = String::new();
    for n in 1..=3 {
        sql += &format!(
            "INSERT INTO outbox VALUES (gen_random_uuid(), 'bad type!', 'k1', 'Fixed', '{{\"n\": {n}}}');"
        );
    }
    admin.batch_execute(&sql).await.unwrap();
    let dead = broker
        .consume_count(&[&dlq], 3, Duration::from_secs(60))
        .await;
    assert!(dead
        .iter()
        .all(|r| header(r, "outbox.error.class") == "invalid_topic"));
    relay.terminate();

    // With the config as it was, the rows are still rejected (dry run: nothing committed).
    let (code, stdout, stderr) = dlq_replay(&config, &["--dry-run", "--idle-timeout-ms", "20000"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let skips = lines_starting(&stdout, "skip ");
    assert_eq!(skips.len(), 3, "{stdout}");
    assert!(
        skips
            .iter()
            .all(|l| l.contains("the current config still rejects the row: topic")),
        "{stdout}"
    );

    // Routed by `type` now: the replay publishes to the topic that names, creating it as
    // the relay would (kafka.create_topics defaults to true).
    let fixed = dir.path().join("fixed.toml");
    std::fs::write(
        &fixed,
        text.replace("[outbox]\n", "[outbox]\nroute_by_field = \"type\"\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = dlq_replay(&fixed, &["--idle-timeout-ms", "20000"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        summary(&stdout),
        "summary: replayed=3 skipped=0 remaining=0",
        "{stdout}"
    );
    let target = format!("{prefix}.outbox.event.Fixed");
    let mut arrived = broker
        .consume_count(&[&target], 3, Duration::from_secs(60))
        .await;
    arrived.sort_by_key(|r| (r.partition, r.offset));
    assert_eq!(arrived.iter().map(n_of).collect::<Vec<_>>(), [1, 2, 3]);
    let dead_ids: Vec<String> = dead.iter().map(|r| header(r, "id")).collect();
    let ids: Vec<String> = arrived.iter().map(|r| header(r, "id")).collect();
    assert_eq!(ids, dead_ids, "same ids, in the dead letters' order");
    assert!(arrived.iter().all(|r| r.key.as_deref() == Some(&b"k1"[..])));
}
