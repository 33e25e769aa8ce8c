//! The relay binary end to end: real PostgreSQL, real Apache Kafka broker, real consumer.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::kafka::{unique_topic, Broker, ReceivedRecord};
use common::pg::PgCluster;
use common::relay::{config_text, RelayProcess};
use common::workload::{seq_of, write_rows, write_seq, RowText, WrittenTxn};
use common::{wait_for, OUTBOX_DDL};

/// A database with the outbox, a relay config for it and a directory for logs.
struct Setup {
    db: String,
    slot: String,
    prefix: String,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    admin: tokio_postgres::Client,
}

async fn setup(name: &str, extra: &str) -> Setup {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(name).await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    admin
        .batch_execute("CREATE TABLE other (id serial PRIMARY KEY, note text)")
        .await
        .unwrap();
    let prefix = unique_topic(name);
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("relay-{name}-"))
        .tempdir()
        .unwrap();
    if std::env::var_os("KEEP_RELAY_LOGS").is_some() {
        dir.disable_cleanup(true);
        println!("relay logs in {}", dir.path().display());
    }
    let config = dir.path().join("relay.toml");
    let slot = format!("{name}_slot");
    let text = config_text(
        &cluster.url(&db),
        &slot,
        &Broker::shared().bootstrap(),
        &prefix,
        extra,
    );
    std::fs::write(&config, text).unwrap();
    Setup {
        db,
        slot,
        prefix,
        dir,
        config,
        admin,
    }
}

impl Setup {
    fn topic(&self, aggregate: &str) -> String {
        format!("{}.outbox.event.{aggregate}", self.prefix)
    }

    fn start_relay(&self) -> RelayProcess {
        RelayProcess::start(&self.config, self.dir.path())
    }

    /// Waits until the relay streams from its slot, so rows written next are in its stream.
    async fn wait_streaming(&self, relay: &mut RelayProcess) {
        relay.wait_streaming(&self.admin, &self.slot).await;
    }

    async fn confirmed_flush(&self) -> outbox_relay::replication::Lsn {
        common::confirmed_flush(&self.admin, &self.slot).await
    }

    async fn insert_lsn(&self) -> outbox_relay::replication::Lsn {
        common::insert_lsn(&self.admin).await
    }
}

/// A `consume_until` condition: at least `n` distinct values of `value_of` have arrived.
/// Incremental, so a long stream costs O(records), not O(records²).
fn distinct_at_least<T: std::hash::Hash + Eq>(
    n: usize,
    value_of: impl Fn(&ReceivedRecord) -> T,
) -> impl FnMut(&[ReceivedRecord]) -> bool {
    let mut seen = HashSet::new();
    let mut checked = 0;
    move |records| {
        seen.extend(records[checked..].iter().map(&value_of));
        checked = records.len();
        seen.len() >= n
    }
}

fn id_of(record: &ReceivedRecord) -> String {
    record
        .header_str("id")
        .expect("every record has an id header")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_rows_become_ten_thousand_records_with_key_headers_and_order() {
    const WRITERS: usize = 4;
    const ROWS_PER_WRITER: usize = 2_500;
    let s = setup("e2e", "").await;
    let mut relay = s.start_relay();
    s.wait_streaming(&mut relay).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = s.db.clone();
            tokio::spawn(
                async move { write_rows(PgCluster::shared(), &db, w, ROWS_PER_WRITER).await },
            )
        })
        .collect();
    let mut per_writer: Vec<Vec<WrittenTxn>> = Vec::new();
    let mut rows: HashMap<String, RowText> = HashMap::new();
    for writer in writers {
        let (txns, written) = writer.await.unwrap();
        per_writer.push(txns);
        rows.extend(written);
    }
    let end_of_writes = s.insert_lsn().await;

    let topics: Vec<String> = ["order", "customer", "payment"]
        .iter()
        .map(|a| s.topic(a))
        .collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let records = Broker::shared()
        .consume_until(
            &topic_refs,
            Duration::from_secs(180),
            distinct_at_least(rows.len(), id_of),
        )
        .await;

    assert_eq!(
        records.len(),
        WRITERS * ROWS_PER_WRITER,
        "exactly one record per row"
    );
    // Kafka's order is offset order within a partition (see read_topics on arrival order).
    let mut records = records;
    records
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    // Per-key order is a per-topic guarantee; a writer's key appears in several topics.
    let mut per_key: HashMap<(String, String), Vec<String>> = HashMap::new();
    for record in &records {
        let id = id_of(record);
        let row = rows
            .get(&id)
            .unwrap_or_else(|| panic!("record for unknown id {id}"));
        assert_eq!(record.topic, s.topic(&row[1]), "topic of {id}");
        assert_eq!(
            record.key.as_deref(),
            Some(row[2].as_bytes()),
            "key of {id}"
        );
        assert_eq!(
            record.payload.as_deref(),
            Some(row[4].as_bytes()),
            "value of {id}"
        );
        per_key
            .entry((row[1].clone(), row[2].clone()))
            .or_default()
            .push(id);
    }
    // Keys are per writer and each writer commits in sequence, so per-key commit order is
    // the writer's insertion order.
    let mut expected: HashMap<(String, String), Vec<String>> = HashMap::new();
    for txns in &per_writer {
        for id in txns.iter().flat_map(|t| &t.ids) {
            let row = &rows[id];
            expected
                .entry((row[1].clone(), row[2].clone()))
                .or_default()
                .push(id.clone());
        }
    }
    assert_eq!(per_key.len(), expected.len(), "keys");
    for (key, ids) in &expected {
        let got = &per_key[key];
        if let Some(i) = (0..ids.len()).find(|&i| got.get(i) != ids.get(i)) {
            panic!(
                "key {key:?}: per-key order differs from commit order at position {i} of {}: expected {} got {:?}",
                ids.len(),
                ids[i],
                got.get(i)
            );
        }
    }

    wait_for(
        "confirmed_flush_lsn to reach the last commit",
        Duration::from_secs(30),
        || async { (s.confirmed_flush().await >= end_of_writes).then_some(()) },
    )
    .await;
    assert!(relay.is_running());
    let status = relay.terminate();
    assert!(status.success(), "graceful stop exits 0: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_keep_their_id() {
    const ROWS: i64 = 50_000;
    let s = setup("crash", "").await;
    let mut relay = s.start_relay();
    s.wait_streaming(&mut relay).await;

    let db = s.db.clone();
    let writer =
        tokio::spawn(
            async move { write_seq(&PgCluster::shared().client(&db).await, 0, ROWS).await },
        );
    let topic = s.topic("order");
    let before = Broker::shared()
        .consume_until(&[&topic], Duration::from_secs(120), |r| r.len() >= 10_000)
        .await;
    relay.kill9();
    println!(
        "killed the relay after {} records were on Kafka",
        before.len()
    );
    writer.await.unwrap();

    let mut relay = s.start_relay();
    let records = Broker::shared()
        .consume_until(
            &[&topic],
            Duration::from_secs(180),
            distinct_at_least(ROWS as usize, seq_of),
        )
        .await;
    let mut ids_by_seq: HashMap<i64, HashSet<String>> = HashMap::new();
    for record in &records {
        ids_by_seq
            .entry(seq_of(record))
            .or_default()
            .insert(id_of(record));
    }
    assert_eq!(
        ids_by_seq.len() as i64,
        ROWS,
        "every row arrived at least once"
    );
    for (seq, ids) in &ids_by_seq {
        assert_eq!(
            ids.len(),
            1,
            "row {seq} arrived with different ids: {ids:?}"
        );
    }
    let duplicates = records.len() as i64 - ROWS;
    println!(
        "crash test: {ROWS} rows, {} records, {duplicates} duplicates (same id header)",
        records.len()
    );
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_deletes_and_truncates_publish_nothing_but_insert_then_delete_does() {
    let s = setup("ignored", "").await;
    let mut relay = s.start_relay();
    s.wait_streaming(&mut relay).await;
    let insert = |name: &str| {
        format!("INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'same-key', 'Created', '{{\"name\": \"{name}\"}}')")
    };
    s.admin
        .batch_execute(&format!(
            "{a}; {b};
             UPDATE outbox SET type = 'Changed';
             DELETE FROM outbox WHERE payload->>'name' = 'b';
             BEGIN; {c}; DELETE FROM outbox WHERE payload->>'name' = 'c'; COMMIT;
             TRUNCATE outbox;
             {d};",
            a = insert("a"),
            b = insert("b"),
            c = insert("c"),
            d = insert("d"),
        ))
        .await
        .unwrap();
    let topic = s.topic("order");
    let records = Broker::shared()
        .consume_until(&[&topic], Duration::from_secs(60), |r| {
            r.iter()
                .any(|r| r.payload.as_deref() == Some(&br#"{"name": "d"}"#[..]))
        })
        .await;
    let mut records = records;
    records.sort_by_key(|r| (r.partition, r.offset));
    let names: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            r#"{"name": "a"}"#,
            r#"{"name": "b"}"#,
            r#"{"name": "c"}"#,
            r#"{"name": "d"}"#
        ],
        "only the inserts, in commit order"
    );
    assert!(records.iter().all(|r| r.header_str("id").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_is_delivered_with_bounded_memory() {
    const ROWS: usize = 1_000_000;
    let s = setup("large", "").await;
    let mut relay = s.start_relay();
    s.wait_streaming(&mut relay).await;
    s.admin
        .batch_execute(&format!(
            "INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || (i % 100), 'Created', \
             jsonb_build_object('n', i) FROM generate_series(1, {ROWS}) AS i"
        ))
        .await
        .unwrap();
    let end = s.insert_lsn().await;
    let topic = s.topic("order");
    let records = Broker::shared()
        .consume_count(&[&topic], ROWS, Duration::from_secs(600))
        .await;
    let distinct: HashSet<String> = records.iter().map(id_of).collect();
    assert_eq!(distinct.len(), ROWS, "every row of the transaction arrived");
    wait_for(
        "the slot to pass the transaction",
        Duration::from_secs(60),
        || async { (s.confirmed_flush().await >= end).then_some(()) },
    )
    .await;
    let peak_kib = relay.peak_rss_kib();
    println!(
        "large transaction: {ROWS} rows delivered; relay peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib > 0, "RSS was read from /proc");
    assert!(
        peak_kib < 128 * 1024,
        "a 1,000,000-row transaction must stream in bounded memory: peak RSS {} MiB is over 128 MiB",
        peak_kib / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_stream_exits_0_and_nothing_acknowledged_is_sent_again() {
    const ROWS: i64 = 100_000;
    let s = setup("sigterm", "").await;
    let mut relay = s.start_relay();
    s.wait_streaming(&mut relay).await;

    // Each transaction of 100 rows, with an upper bound of its commit LSN.
    let db = s.db.clone();
    let writer =
        tokio::spawn(
            async move { write_seq(&PgCluster::shared().client(&db).await, 0, ROWS).await },
        );
    let topic = s.topic("order");
    Broker::shared()
        .consume_until(&[&topic], Duration::from_secs(120), |r| r.len() >= 20_000)
        .await;
    let status = relay.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}\n");
    let acknowledged = s.confirmed_flush().await;
    let committed = writer.await.unwrap();

    let _relay = s.start_relay();
    let records = Broker::shared()
        .consume_until(
            &[&topic],
            Duration::from_secs(180),
            distinct_at_least(ROWS as usize, seq_of),
        )
        .await;
    // Events are told apart by their `id` header, as consumers dedupe them.
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut seq_by_id: HashMap<String, i64> = HashMap::new();
    for record in &records {
        *copies.entry(id_of(record)).or_default() += 1;
        seq_by_id.insert(id_of(record), seq_of(record));
    }
    assert_eq!(copies.len() as i64, ROWS, "nothing lost");
    let duplicated: HashSet<i64> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| seq_by_id[id])
        .collect();
    let mut duplicated_after_ack = 0;
    for (start, commit_upper_bound) in &committed {
        if *commit_upper_bound <= acknowledged {
            duplicated_after_ack += (*start..start + 100)
                .filter(|seq| duplicated.contains(seq))
                .count();
        }
    }
    let duplicates = records.len() as i64 - ROWS;
    println!("sigterm: slot at {acknowledged} after exit; {duplicates} duplicates in all, {duplicated_after_ack} of acknowledged events");
    assert_eq!(
        duplicated_after_ack, 0,
        "an acknowledged event was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_report_what_was_delivered() {
    let s = setup("metrics", "").await;
    let mut relay = s.start_relay();
    s.wait_streaming(&mut relay).await;
    assert_eq!(relay.admin_get("/healthz").0, 200);
    s.admin
        .batch_execute(
            "INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || i, 'Created', '{}' \
             FROM generate_series(1, 100) AS i",
        )
        .await
        .unwrap();
    let topic = s.topic("order");
    Broker::shared()
        .consume_count(&[&topic], 100, Duration::from_secs(60))
        .await;
    let metric_line = |body: &str, prefix: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let events = format!("outbox_relay_events_total{{table=\"public.outbox\",topic=\"{topic}\"}}");
    let body = wait_for(
        "the metrics to count every event",
        Duration::from_secs(30),
        || {
            let (_, body) = relay.admin_get("/metrics");
            let counted = metric_line(&body, &events) == Some(100.0);
            async move { counted.then_some(body) }
        },
    )
    .await;
    assert_eq!(
        metric_line(&body, "outbox_relay_delivery_latency_seconds_count"),
        Some(100.0),
        "{body}"
    );
    assert!(
        metric_line(&body, "outbox_relay_transactions_total").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "outbox_relay_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(body.contains("# HELP outbox_relay_lag_seconds"), "{body}");
    wait_for("readiness", Duration::from_secs(30), || {
        let ready = relay.admin_get("/readyz");
        async move { (ready.0 == 200).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_or_error_contains_the_password() {
    const PASSWORD: &str = "TopSecretPw77";
    let s = setup("secrets", "").await;
    let url_with_password =
        |url: &str| url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let text = std::fs::read_to_string(&s.config).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("url = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    std::fs::write(&s.config, text.replace(&url, &url_with_password(&url))).unwrap();

    // A normal run at debug level, with events flowing and a graceful stop.
    let mut relay = RelayProcess::start_logging(&s.config, s.dir.path(), "debug");
    s.wait_streaming(&mut relay).await;
    s.admin
        .batch_execute("INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k', 't', '{}' FROM generate_series(1, 10)")
        .await
        .unwrap();
    Broker::shared()
        .consume_count(&[&s.topic("order")], 10, Duration::from_secs(60))
        .await;
    let log = relay.log();
    assert!(relay.terminate().success());
    let mut outputs = vec![log];

    // Errors: a database that does not exist, and an invalid URL.
    let run = |config: &str| {
        let path = s.dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
            .args(["check", "--config"])
            .arg(&path)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let text = std::fs::read_to_string(&s.config).unwrap();
    let missing_db = text.replace(&format!("/{}\"", s.db), "/no_such_database\"");
    let bad_port = text.replace("@127.0.0.1:", "@127.0.0.1:notaport");
    for config in [missing_db, bad_port] {
        let output = run(&config);
        assert!(!output.is_empty());
        outputs.push(output);
    }
    assert!(
        outputs[1].contains("no_such_database"),
        "the error is still useful: {}",
        outputs[1]
    );
    for output in &outputs {
        assert!(!output.contains(PASSWORD), "password leaked:\n{output}");
    }
}
