//! Smoke test of the PostgreSQL test harness in `tests/common/pg.rs`.

#[path = "common/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg::{PgCluster, PgOptions};

#[tokio::test(flavor = "multi_thread")]
async fn shared_cluster_serves_isolated_databases() {
    let pg = PgCluster::shared();
    assert!(
        std::ptr::eq(pg, PgCluster::shared()),
        "one cluster per binary"
    );

    let a = pg.create_database("Smoke").await;
    let b = pg.create_database("Smoke").await;
    assert_ne!(a, b);
    assert!(a.starts_with("smoke_"), "{a}");

    let client = pg.client(&a).await;
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");

    pg.psql(&a, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    assert_eq!(pg.psql(&a, "SELECT x FROM t"), "42");
    assert_eq!(
        pg.psql(&b, "SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );
    assert_eq!(pg.psql(&b, "SHOW max_replication_slots"), "40");
    assert_eq!(pg.psql(&b, "SHOW wal_sender_timeout"), "5s");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_cluster_honours_options_and_restarts() {
    let pg = PgCluster::start(PgOptions {
        wal_level: "replica".into(),
        extra_conf: vec![("max_slot_wal_keep_size".into(), "64MB".into())],
        hba_lines: vec!["host all blocked 127.0.0.1/32 reject".into()],
        ..PgOptions::default()
    });
    assert_eq!(pg.psql("postgres", "SHOW wal_level"), "replica");
    assert_eq!(pg.psql("postgres", "SHOW max_slot_wal_keep_size"), "64MB");

    // Prepended hba lines win over the default trust rules.
    pg.psql("postgres", "CREATE ROLE blocked LOGIN PASSWORD 'pw1'");
    let refused = tokio_postgres::connect(
        &pg.url_as("blocked", "pw1", "postgres"),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(refused.is_err(), "pg_hba reject line was ignored");

    let port = pg.port();
    pg.restart("fast");
    assert_eq!(pg.port(), port);
    let client = pg.client("postgres").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    pg.restart("immediate");
    assert_eq!(pg.psql("postgres", "SELECT 2"), "2");

    pg.stop();
    assert!(
        tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    pg.start_again();
    assert_eq!(pg.psql("postgres", "SELECT 3"), "3");
    assert!(
        pg.log_tail().contains("database system is ready"),
        "{}",
        pg.log_tail()
    );

    let data = pg.data_dir().to_path_buf();
    let postmaster = postmaster_pid(&data);
    drop(pg);
    assert!(!data.exists(), "data dir left behind");
    assert!(
        !Path::new(&format!("/proc/{postmaster}")).exists(),
        "postmaster {postmaster} survived drop"
    );
}

/// Runs `watchdog_child` in a child process, SIGKILLs it, and expects the
/// watchdog to stop its cluster and delete the data directory.
#[test]
fn watchdog_reaps_cluster_of_killed_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "watchdog_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PG_HARNESS_WATCHDOG_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let data = stdout
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("DATA_DIR=").map(PathBuf::from))
        .expect("child printed no DATA_DIR");
    let postmaster = postmaster_pid(&data);
    child.kill().unwrap(); // SIGKILL: no destructors run.
    child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while data.exists() || Path::new(&format!("/proc/{postmaster}")).exists() {
        assert!(
            Instant::now() < deadline,
            "watchdog did not reap {}",
            data.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "run by watchdog_reaps_cluster_of_killed_process"]
fn watchdog_child() {
    if std::env::var_os("PG_HARNESS_WATCHDOG_CHILD").is_none() {
        return;
    }
    let pg = PgCluster::shared();
    println!("DATA_DIR={}", pg.data_dir().display());
    loop {
        std::thread::park(); // Wait to be killed.
    }
}

fn postmaster_pid(data: &Path) -> u32 {
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    pid_file.lines().next().unwrap().trim().parse().unwrap()
}
