//! The replication source against a real PostgreSQL 15: every committed outbox row comes
//! through exactly once, with its values, in commit order; other tables stay out; the slot
//! keeps moving while the outbox is idle; server errors arrive typed.

mod common;

const WRITERS: usize = 4;
const ROWS_PER_WRITER: usize = 2_500;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::pg::PgCluster;
use common::workload::{write_rows, RowText, WrittenTxn};
use common::{column_text, confirmed_flush, relay_config, start_source, wait_for, OUTBOX_DDL};
use outbox_relay::checkpoint::SharedCheckpoint;
use outbox_relay::replication::{Lsn, ReplicationError};
use outbox_relay::source::publication::PublicationError;
use outbox_relay::source::{Change, Source, SourceSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_rows_from_four_writers_arrive_once_with_their_values_in_commit_order() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("stream").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    admin
        .batch_execute("CREATE TABLE other (id serial PRIMARY KEY, note text)")
        .await
        .unwrap();
    let config = relay_config(cluster, &db, "stream_slot");
    let mut source = start_source(&config).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(
                async move { write_rows(PgCluster::shared(), &db, w, ROWS_PER_WRITER).await },
            )
        })
        .collect();

    // Read everything the source hands over, acknowledging as we go, until the sentinel
    // (written after all writers finished) arrives: anything extra would show up before it.
    let checkpoint = source.checkpoint.clone();
    let reader = tokio::spawn(async move {
        let mut received: Vec<(u32, Lsn, RowText)> = Vec::new();
        while let Some(batch) = source.events.recv().await {
            for event in batch {
                let Change::Insert { relation, row } = &event.change else {
                    panic!("unexpected {} event", event.change.operation());
                };
                assert_eq!(
                    relation.qualified_name(),
                    "public.outbox",
                    "other tables must not appear"
                );
                let text = ["id", "aggregatetype", "aggregateid", "type", "payload"]
                    .map(|c| column_text(relation, row, c).expect("no NULLs written"));
                let is_sentinel = text[1] == "sentinel";
                received.push((event.transaction.xid, event.transaction.commit_lsn, text));
                checkpoint.ack(event.seq, 1).unwrap();
                if is_sentinel {
                    return received;
                }
            }
        }
        panic!("source ended: {:?}", source.task.await);
    });

    let mut written_txns = Vec::new();
    let mut written_rows = HashMap::new();
    for writer in writers {
        let (txns, rows) = writer.await.unwrap();
        written_txns.extend(txns);
        written_rows.extend(rows);
    }
    assert_eq!(written_rows.len(), WRITERS * ROWS_PER_WRITER);
    admin
        .batch_execute(
            "INSERT INTO outbox VALUES (gen_random_uuid(), 'sentinel', 's', 'End', '{}')",
        )
        .await
        .unwrap();
    let mut received = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("all rows arrive within 120 s")
        .unwrap();
    let (_, sentinel_commit, _) = received.pop().unwrap();

    // Exactly once, with the values written.
    assert_eq!(received.len(), WRITERS * ROWS_PER_WRITER, "row count");
    let mut seen = HashSet::new();
    for (_, _, text) in &received {
        assert!(
            seen.insert(text[0].clone()),
            "row {} arrived twice",
            text[0]
        );
        assert_eq!(
            Some(text),
            written_rows.get(&text[0]),
            "values of row {}",
            text[0]
        );
    }

    // Commit order: each transaction's rows are contiguous and in insertion order, and
    // transactions follow each other in commit (LSN) order.
    let mut arrived: Vec<(WrittenTxn, Lsn)> = Vec::new();
    for (xid, commit_lsn, text) in received {
        match arrived.last_mut() {
            Some((txn, lsn)) if txn.xid == xid && *lsn == commit_lsn => {
                txn.ids.push(text[0].clone())
            }
            _ => arrived.push((
                WrittenTxn {
                    xid,
                    ids: vec![text[0].clone()],
                },
                commit_lsn,
            )),
        }
    }
    assert!(
        arrived.windows(2).all(|w| w[0].1 < w[1].1),
        "transactions out of commit order"
    );
    let by_xid: HashMap<u32, &WrittenTxn> = written_txns.iter().map(|t| (t.xid, t)).collect();
    assert_eq!(
        arrived.len(),
        written_txns.len(),
        "every transaction arrives once, whole"
    );
    for (txn, _) in &arrived {
        assert_eq!(Some(&txn), by_xid.get(&txn.xid), "rows of xid {}", txn.xid);
    }

    // Everything was acknowledged, so the slot reaches the last commit.
    wait_for(
        "confirmed_flush_lsn to pass the last commit",
        Duration::from_secs(10),
        || async { (confirmed_flush(&admin, "stream_slot").await > sentinel_commit).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_keeps_advancing_while_the_outbox_is_idle_and_another_database_writes() {
    const MIB: i64 = 1024 * 1024;
    let cluster = PgCluster::shared();
    let db = cluster.create_database("idle").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let config = relay_config(cluster, &db, "idle_slot");
    let mut source = start_source(&config).await;
    let checkpoint = source.checkpoint.clone();
    tokio::spawn(async move {
        while let Some(batch) = source.events.recv().await {
            for event in batch {
                checkpoint.ack(event.seq, 1).unwrap();
            }
        }
    });

    let noise_db = cluster.create_database("noise").await;
    let noise = cluster.client(&noise_db).await;
    // Commits flush their WAL (as in production), so the walsender sees it at once.
    noise
        .batch_execute("CREATE TABLE noise (x text); SET synchronous_commit = on")
        .await
        .unwrap();
    let start: String = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let lag_sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                          pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint \
                   FROM pg_replication_slots WHERE slot_name = 'idle_slot'";
    let mut max_lag = 0;
    let mut written = 0;
    while written < 64 * MIB {
        // About 1 MiB of WAL per statement, none of it in the relay's database.
        noise
            .batch_execute(
                "INSERT INTO noise SELECT repeat(md5(i::text), 32) FROM generate_series(1, 900) i",
            )
            .await
            .unwrap();
        let row = admin.query_one(lag_sql, &[&start]).await.unwrap();
        let lag: i64 = row.get(0);
        written = row.get(1);
        max_lag = max_lag.max(lag);
        assert!(
            lag < 16 * MIB,
            "slot holds {lag} bytes of WAL after {written} bytes written"
        );
    }
    println!("idle outbox: {written} bytes of WAL written elsewhere, max slot lag {max_lag} bytes");
    let end: Lsn = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    wait_for(
        "the slot to reach the end of the noise",
        Duration::from_secs(10),
        || async { (confirmed_flush(&admin, "idle_slot").await >= end).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_mid_stream_is_followed() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("schema").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let config = relay_config(cluster, &db, "schema_slot");
    let mut source = start_source(&config).await;
    admin
        .batch_execute(
            "INSERT INTO outbox VALUES (gen_random_uuid(), 'a', '1', 't', '{}');
             ALTER TABLE outbox ADD COLUMN version int NOT NULL DEFAULT 7;
             INSERT INTO outbox VALUES (gen_random_uuid(), 'a', '2', 't', '{}', 8);",
        )
        .await
        .unwrap();
    let mut rows = Vec::new();
    while rows.len() < 2 {
        for event in source.events.recv().await.expect("source running") {
            if let Change::Insert { relation, row } = &event.change {
                rows.push((
                    relation.columns.len(),
                    column_text(relation, row, "aggregateid"),
                ));
                if relation.columns.len() == 6 {
                    assert_eq!(column_text(relation, row, "version").as_deref(), Some("8"));
                }
            }
            source.checkpoint.ack(event.seq, 1).unwrap();
        }
    }
    assert_eq!(rows, [(5, Some("1".into())), (6, Some("2".into()))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_carry_their_sqlstate() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("errors").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let config = relay_config(cluster, &db, "errors_slot");
    let running = start_source(&config).await;

    // A second consumer of the same slot: object_in_use, retryable (a standby waits).
    let settings = SourceSettings::from_config(&config);
    let err = Source::connect(
        &config.postgres_config(),
        settings.clone(),
        &SharedCheckpoint::new(Lsn::ZERO),
    )
    .await
    .err()
    .expect("slot is in use");
    assert_eq!(err.sqlstate(), Some("55006"), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("errors_slot"), "{err}");
    running.task.abort();

    // A publication that does not exist: the relay refuses to stream before it starts
    // (see source::publication), instead of failing once a change is decoded.
    let missing = SourceSettings {
        publication: "no_such_pub".into(),
        ..settings
    };
    let err = wait_for("the slot to be released", Duration::from_secs(10), || {
        let (pg, missing) = (config.postgres_config(), missing.clone());
        async move {
            match Source::connect(&pg, missing, &SharedCheckpoint::new(Lsn::ZERO)).await {
                Err(e) if e.is_slot_in_use() => None,
                Err(e) => Some(e),
                Ok(_) => panic!("streamed from a publication that does not exist"),
            }
        }
    })
    .await;
    assert!(
        matches!(
            &err,
            ReplicationError::Publication(PublicationError::Missing { publication, .. })
                if publication == "no_such_pub"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("CREATE PUBLICATION"), "{err}");
    assert!(!err.is_retryable());
}
