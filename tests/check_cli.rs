//! `outbox-relay check` and config errors, through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::pg::{PgCluster, PgOptions};
use common::OUTBOX_DDL;

fn relay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    cmd.args(args).env_remove("PGPASSWORD");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("run outbox-relay")
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn config_text(url: &str, slot: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\ntables = [\"public.outbox\"]\n"
    )
}

fn check(config: &Path) -> (i32, String) {
    let out = relay(&["check", "--config", config.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

fn line_with<'a>(stdout: &'a str, needle: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_ready_database() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("ready").await;
    cluster
        .client(&db)
        .await
        .batch_execute(OUTBOX_DDL)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &config_text(&cluster.url(&db), "ready_slot"));
    let (code, stdout) = check(&config);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("ok ")), "{stdout}");
    for name in [
        "wal_level=logical",
        "free replication slot",
        "free WAL sender",
        "role may replicate",
        "table public.outbox",
        "publication ready_slot",
        "replication slot ready_slot",
    ] {
        line_with(&stdout, name);
    }
    assert!(
        line_with(&stdout, "publication ready_slot").ends_with(
            "CREATE PUBLICATION \"ready_slot\" FOR TABLE \"public\".\"outbox\" WITH (publish = 'insert', publish_via_partition_root = true)"
        ),
        "recommends the publication the relay creates: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_wal_level_and_its_fix() {
    let cluster = PgCluster::start(PgOptions {
        wal_level: "replica".into(),
        ..PgOptions::default()
    });
    cluster.psql("postgres", OUTBOX_DDL);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &config_text(&cluster.url("postgres"), "replica_slot"));
    let (code, stdout) = check(&config);
    assert_eq!(code, 1, "{stdout}");
    let line = line_with(&stdout, "wal_level");
    assert!(
        line.starts_with(
            "FAIL wal_level=logical: wal_level is replica; fix: set wal_level = logical"
        ),
        "{line}"
    );
    assert!(line.contains("restart PostgreSQL"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_role_without_replication_and_its_fix() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("norepl").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    admin
        .batch_execute("CREATE ROLE plain_app LOGIN")
        .await
        .unwrap_or(());
    let url = format!("postgres://plain_app@127.0.0.1:{}/{db}", cluster.port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &config_text(&url, "norepl_slot"));
    let (code, stdout) = check(&config);
    assert_eq!(code, 1, "{stdout}");
    let line = line_with(&stdout, "role may replicate");
    assert_eq!(
        line,
        "FAIL role may replicate: role plain_app has neither REPLICATION nor superuser; fix: ALTER ROLE \"plain_app\" WITH REPLICATION"
    );
    assert!(
        line_with(&stdout, "wal_level").starts_with("ok "),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_tables_columns_and_publication_mismatch() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("mismatch").await;
    let admin = cluster.client(&db).await;
    admin
        .batch_execute(
            "CREATE TABLE public.outbox (id uuid PRIMARY KEY, aggregateid text, payload jsonb);
             CREATE TABLE public.other (id int);
             CREATE PUBLICATION mismatch_slot FOR TABLE public.other;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &config_text(&cluster.url(&db), "mismatch_slot"));
    let (code, stdout) = check(&config);
    assert_eq!(code, 1, "{stdout}");
    let table = line_with(&stdout, "table public.outbox");
    assert!(
        table.starts_with("FAIL table public.outbox: lacks columns aggregatetype"),
        "{table}"
    );
    let publication = line_with(&stdout, "publication mismatch_slot");
    assert_eq!(
        publication,
        "FAIL publication mismatch_slot: publishes public.other, which source.tables does not list; does not publish public.outbox; fix: ALTER PUBLICATION \"mismatch_slot\" SET (publish = 'insert', publish_via_partition_root = true); ALTER PUBLICATION \"mismatch_slot\" SET TABLE \"public\".\"outbox\""
    );
}

#[test]
fn config_errors_are_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = config_text(
        "postgres://relay:${RELAY_TEST_PASSWORD}@127.0.0.1:1/db",
        "s",
    );
    let cases = [
        (
            format!("{base}slott = \"x\"\n"),
            "source.slott: unknown key",
            vec![("RELAY_TEST_PASSWORD", "pw")],
        ),
        (
            base.replace("slot = \"s\"\n", ""),
            "source.slot: required key is missing",
            vec![("RELAY_TEST_PASSWORD", "pw")],
        ),
        (
            base.clone(),
            "source.url: environment variable RELAY_TEST_PASSWORD is not set",
            vec![],
        ),
    ];
    for (text, expected, env) in cases {
        let config = write_config(&dir, &text);
        let out = relay(&["check", "--config", config.to_str().unwrap()], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
}

#[test]
fn version_is_printed() {
    let out = relay(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("outbox-relay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_slot_and_publication_as_text_and_json() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("status").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    for sql in [
        "CREATE PUBLICATION status_slot FOR TABLE public.outbox",
        "SELECT pg_create_logical_replication_slot('status_slot', 'pgoutput')",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &config_text(&cluster.url(&db), "status_slot"));
    let config = config.to_str().unwrap();
    let text = relay(&["status", "--config", config], &[]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "slot: status_slot");
    assert_eq!(lines[1], "active pid: none");
    assert!(lines[2].starts_with("confirmed_flush_lsn: 0/"), "{text}");
    assert!(lines[3].starts_with("retained WAL bytes: "), "{text}");
    assert_eq!(lines[5], "publication status_slot tables: public.outbox");

    let json = relay(&["status", "--config", config, "--json"], &[]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["slot"], "status_slot");
    assert_eq!(value["exists"], true);
    assert_eq!(
        value["publication_tables"],
        serde_json::json!(["public.outbox"])
    );
    assert!(value["retained_wal_bytes"].as_i64().is_some());
}

/// With `[kafka]`, `check` also says whether `acks=all` is durable: on the single-broker
/// test cluster it warns (replication factor 1), names the fix, and still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_acks_all_is_not_durable() {
    let cluster = PgCluster::shared();
    let broker = common::kafka::Broker::shared();
    let db = cluster.create_database("durable").await;
    cluster
        .client(&db)
        .await
        .batch_execute(OUTBOX_DDL)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&cluster.url(&db), "durable_slot")
        + &format!(
            "\n[kafka]\nbootstrap_servers = \"{}\"\n",
            broker.bootstrap()
        );
    let (code, stdout) = check(&write_config(&dir, &text));
    assert_eq!(code, 0, "a warning is not a failure: {stdout}");
    let line = line_with(&stdout, "kafka acks=all durable");
    assert!(
        line.starts_with("warn ")
            && line.contains("1 broker(s), replication factor 1")
            && line.contains("kafka.topic_replication_factor = 3"),
        "{line}"
    );
}
