//! Rows that can never be published go to the dead-letter topic with the reason; healthy
//! rows around them arrive in order; the slot moves past all of them. Or, with
//! `on_error = "stop"`, the relay stops before the row.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::kafka::{unique_topic, Broker, ReceivedRecord};
use common::pg::PgCluster;
use common::relay::{config_text, RelayProcess};
use common::{confirmed_flush, wait_for, LOOSE_OUTBOX};
use outbox_relay::replication::Lsn;

struct Setup {
    slot: String,
    prefix: String,
    dir: tempfile::TempDir,
    admin: tokio_postgres::Client,
    relay: RelayProcess,
}

/// A loose outbox and a relay streaming from it. `outbox_extra` goes into `[outbox]`,
/// `kafka_extra` into `[kafka]`; `topics` (suffixes like `dlq` or `outbox.event.order`) are
/// created before the relay starts.
async fn setup(name: &str, outbox_extra: &str, kafka_extra: &str, topics: &[&str]) -> Setup {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(name).await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(LOOSE_OUTBOX).await.unwrap();
    let prefix = unique_topic(name);
    for topic in topics {
        Broker::shared()
            .create_topic(&format!("{prefix}.{topic}"), 1)
            .await;
    }
    let slot = format!("{name}_slot");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{outbox_extra}\n[dlq]\ntopic = \"{prefix}.dlq\"\n");
    let config = dir.path().join("relay.toml");
    let text = config_text(
        &cluster.url(&db),
        &slot,
        &Broker::shared().bootstrap(),
        &prefix,
        &extra,
    )
    .replace("[kafka]\n", &format!("[kafka]\n{kafka_extra}\n"));
    std::fs::write(&config, text).unwrap();
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, &slot).await;
    Setup {
        slot,
        prefix,
        dir,
        admin,
        relay,
    }
}

impl Setup {
    fn topic(&self, aggregate: &str) -> String {
        format!("{}.outbox.event.{aggregate}", self.prefix)
    }

    fn dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    async fn insert_lsn(&self) -> outbox_relay::replication::Lsn {
        common::insert_lsn(&self.admin).await
    }

    async fn wait_slot_passes(&self, lsn: Lsn) {
        wait_for(
            "the slot to pass every row",
            Duration::from_secs(60),
            || async { (confirmed_flush(&self.admin, &self.slot).await >= lsn).then_some(()) },
        )
        .await;
    }
}

/// A healthy row: topic `order`, key `k`, payload `{"n": n}`.
fn healthy(n: i64) -> String {
    format!(
        "INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'k', 'Created', '{{\"n\": {n}}}')"
    )
}

fn seq(record: &ReceivedRecord) -> i64 {
    let text = String::from_utf8(record.payload.clone().unwrap()).unwrap();
    text.trim_start_matches("{\"n\": ")
        .trim_end_matches('}')
        .parse()
        .unwrap()
}

fn header(record: &ReceivedRecord, name: &str) -> String {
    record
        .header_str(name)
        .unwrap_or_else(|| panic!("no header {name}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_problem_is_dead_lettered_between_healthy_rows() {
    let s = setup(
        "poison",
        "payload_json = true\nmax_record_bytes = 1048576",
        "",
        &[],
    )
    .await;
    let big = format!("\"{}\"", "x".repeat(2 * 1024 * 1024));
    let poison = [
        (
            "null_column",
            "INSERT INTO outbox VALUES (NULL, 'order', 'k', 'Created', '{}')".to_owned(),
        ),
        (
            "null_column",
            "INSERT INTO outbox VALUES (gen_random_uuid(), NULL, 'k', 'Created', '{}')".to_owned(),
        ),
        (
            "invalid_json",
            "INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'k', 'Created', '{not json')"
                .to_owned(),
        ),
        (
            "invalid_topic",
            "INSERT INTO outbox VALUES (gen_random_uuid(), 'bad type!', 'k', 'Created', '{}')"
                .to_owned(),
        ),
        (
            "too_large",
            format!(
                "INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'k', 'Created', '{big}')"
            ),
        ),
    ];
    let mut n = 0;
    let mut next = || {
        n += 1;
        healthy(n)
    };
    for (_, row) in &poison {
        // The poison row inside a transaction of healthy rows, then alone in the next
        // transaction, then a healthy transaction.
        let sql = format!(
            "BEGIN; {}; {row}; {}; COMMIT; {row}; {};",
            next(),
            next(),
            next()
        );
        s.admin.batch_execute(&sql).await.unwrap();
    }
    let end = s.insert_lsn().await;
    let healthy_count = n;

    let broker = Broker::shared();
    let topic = s.topic("order");
    let mut arrived = broker
        .consume_count(&[&topic], healthy_count as usize, Duration::from_secs(60))
        .await;
    arrived.sort_by_key(|r| (r.partition, r.offset));
    let order: Vec<i64> = arrived.iter().map(seq).collect();
    assert_eq!(
        order,
        (1..=healthy_count).collect::<Vec<_>>(),
        "healthy rows, once each, in order"
    );

    let dlq = s.dlq();
    let dead = broker
        .consume_count(&[&dlq], 2 * poison.len(), Duration::from_secs(60))
        .await;
    let mut classes: HashMap<String, usize> = HashMap::new();
    for record in &dead {
        *classes
            .entry(header(record, "outbox.error.class"))
            .or_default() += 1;
        assert_eq!(header(record, "outbox.source.table"), "public.outbox");
        assert!(header(record, "outbox.source.lsn").parse::<Lsn>().is_ok());
        assert!(header(record, "outbox.source.xid").parse::<u32>().is_ok());
        assert!(header(record, "outbox.source.commit_ts")
            .parse::<u64>()
            .is_ok());
        assert!(!header(record, "outbox.error.message").is_empty());
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]), "original key kept");
        let row: serde_json::Value =
            serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
        for column in ["id", "aggregatetype", "aggregateid", "type", "payload"] {
            assert!(
                row.get(column).is_some(),
                "DLQ value lacks column {column}: {row}"
            );
        }
        if !row["id"].is_null() {
            assert_eq!(
                header(record, "id"),
                row["id"].as_str().unwrap(),
                "id header is the event id"
            );
        }
    }
    let expected: HashMap<String, usize> = [
        ("null_column", 4),
        ("invalid_json", 2),
        ("invalid_topic", 2),
        ("too_large", 2),
    ]
    .into_iter()
    .map(|(c, n)| (c.to_owned(), n))
    .collect();
    assert_eq!(classes, expected);
    s.wait_slot_passes(end).await;

    // The operator's view of the same records.
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["dlq", "inspect", "--config"])
        .arg(s.dir.path().join("relay.toml"))
        .args(["--max", "10", "--idle-timeout-ms", "20000"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(printed.lines().count(), 10, "{printed}");
    for line in printed.lines() {
        assert!(line.starts_with("table=public.outbox id="), "{line}");
        assert!(
            line.contains(" class=") && line.contains(" reason="),
            "{line}"
        );
    }
    assert_eq!(printed.matches("class=too_large").count(), 2, "{printed}");
    let log = s.relay.log();
    assert_eq!(
        log.matches("dead-lettering row").count(),
        10,
        "one warning per row:\n{log}"
    );
    drop(s.dir);
}

const CREATION_OFF: &str = "create_topics = false\nunknown_topic_wait_ms = 1000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_for_a_missing_topic_is_dead_lettered_when_creation_is_off() {
    let s = setup("missing", "", CREATION_OFF, &["outbox.event.order", "dlq"]).await;
    s.admin
        .batch_execute(&format!(
            "{}; INSERT INTO outbox VALUES (gen_random_uuid(), 'nowhere', 'k', 'Created', '{{}}'); {};",
            healthy(1),
            healthy(2)
        ))
        .await
        .unwrap();
    let broker = Broker::shared();
    let arrived = broker
        .consume_count(&[&s.topic("order")], 2, Duration::from_secs(60))
        .await;
    assert_eq!(arrived.iter().map(seq).collect::<Vec<_>>(), [1, 2]);
    let dead = broker
        .consume_count(&[&s.dlq()], 1, Duration::from_secs(60))
        .await;
    assert_eq!(header(&dead[0], "outbox.error.class"), "unknown_topic");
    assert!(header(&dead[0], "outbox.error.message").contains("nowhere"));
}

/// A row over its topic's `max.message.bytes` (but under `outbox.max_record_bytes`) is the
/// row's fault: dead-lettered by the relay's own check, which reads the topic's limit. The
/// broker's refusal would have held the topic (as it did before), and every later row
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_its_topics_size_limit_is_dead_lettered_and_the_topic_flows() {
    let properties = "\n[kafka.properties]\n\"batch.size\" = \"10000\"\n";
    let s = setup("toolargetopic", properties, "", &["dlq"]).await;
    Broker::shared()
        .create_topic_with(&s.topic("order"), 1, &[("max.message.bytes", "20000")])
        .await;
    s.admin
        .batch_execute(&format!(
            "{}; INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'k', 'Created', \
             '{{\"n\": 99, \"pad\": \"' || repeat('x', 30000) || '\"}}'); {};",
            healthy(1),
            healthy(2)
        ))
        .await
        .unwrap();
    let broker = Broker::shared();
    let arrived = broker
        .consume_count(&[&s.topic("order")], 2, Duration::from_secs(60))
        .await;
    assert_eq!(arrived.iter().map(seq).collect::<Vec<_>>(), [1, 2]);
    let dead = broker
        .consume_count(&[&s.dlq()], 1, Duration::from_secs(60))
        .await;
    assert_eq!(header(&dead[0], "outbox.error.class"), "too_large");
    assert!(
        header(&dead[0], "outbox.error.message").contains("max.message.bytes"),
        "{}",
        header(&dead[0], "outbox.error.message")
    );
    assert!(
        !s.relay.log().contains("kafka refuses the topic"),
        "the topic was never held:\n{}",
        s.relay.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_passes_a_poison_row_while_the_dlq_cannot_be_written() {
    // Creation off and no DLQ topic: the poison row cannot be dead-lettered yet.
    let s = setup("unwritable", "", CREATION_OFF, &["outbox.event.order"]).await;
    s.admin.batch_execute(&healthy(1)).await.unwrap();
    let broker = Broker::shared();
    broker
        .consume_count(&[&s.topic("order")], 1, Duration::from_secs(60))
        .await;
    s.admin
        .batch_execute("INSERT INTO outbox VALUES (NULL, 'order', 'k', 'Created', '{}')")
        .await
        .unwrap();
    let after_poison = s.insert_lsn().await;
    s.admin.batch_execute(&healthy(2)).await.unwrap();
    let end = s.insert_lsn().await;

    // The relay keeps retrying the DLQ; for a while the slot must stay before the poison
    // row (this is the one place a test watches for something NOT to happen).
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < watch_until {
        let confirmed = confirmed_flush(&s.admin, &s.slot).await;
        assert!(
            confirmed < after_poison,
            "slot passed the undelivered poison row: {confirmed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s
        .relay
        .log()
        .contains("cannot write the dead-letter topic; retrying"));

    broker.create_topic(&s.dlq(), 1).await;
    let dead = broker
        .consume_count(&[&s.dlq()], 1, Duration::from_secs(60))
        .await;
    assert_eq!(header(&dead[0], "outbox.error.class"), "null_column");
    let mut arrived = broker
        .consume_count(&[&s.topic("order")], 2, Duration::from_secs(60))
        .await;
    arrived.sort_by_key(|r| r.offset);
    assert_eq!(
        arrived.iter().map(seq).collect::<Vec<_>>(),
        [1, 2],
        "the stream goes on"
    );
    s.wait_slot_passes(end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_stop_exits_naming_the_row_and_keeps_the_slot_before_it() {
    let mut s = setup("stopper", "on_error = \"stop\"", "", &[]).await;
    s.admin.batch_execute(&healthy(1)).await.unwrap();
    let poison_id = "6b1c6254-074d-443f-ae73-34b3e75d5c2c";
    s.admin
        .batch_execute(&format!(
            "INSERT INTO outbox VALUES ('{poison_id}', 'bad type!', 'k', 'Created', '{{}}')"
        ))
        .await
        .unwrap();
    let after_poison = s.insert_lsn().await;
    s.admin.batch_execute(&healthy(2)).await.unwrap();

    let status = s.relay.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "exits non-zero");
    let log = s.relay.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains(poison_id) && last.contains("invalid_topic"),
        "last line names the row: {last}"
    );
    assert!(
        confirmed_flush(&s.admin, &s.slot).await < after_poison,
        "slot stays before the row"
    );
    let arrived = Broker::shared()
        .consume_count(&[&s.topic("order")], 1, Duration::from_secs(30))
        .await;
    assert_eq!(seq(&arrived[0]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_stops_the_relay_and_is_not_recreated() {
    let mut s = setup("dropped", "", "", &[]).await;
    // Terminate the walsender and drop the slot before the relay reconnects.
    wait_for(
        "the slot to be dropped",
        Duration::from_secs(30),
        || async {
            s.admin
                .batch_execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = 'dropped_slot' AND active_pid IS NOT NULL;
                 SELECT pg_drop_replication_slot('dropped_slot');",
                )
                .await
                .ok()
        },
    )
    .await;
    let status = s.relay.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    let log = s.relay.log();
    let error = log
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("\"dropped_slot\" does not exist"),
        "names the slot: {error}"
    );
    assert!(
        error.contains("does not recreate it silently"),
        "says what to do: {error}"
    );
    let slots = s
        .admin
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'dropped_slot'",
            &[],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "nothing recreated the slot");
}
