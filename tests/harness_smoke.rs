//! Smoke test of the PostgreSQL test harness in `tests/common/pg.rs`.

#[path = "common/pg.rs"]
mod pg;

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
    assert!(!alive(postmaster), "postmaster {postmaster} survived drop");
}

/// Runs `watchdog_child` in a child process, SIGKILLs it, and expects the
/// watchdog to stop its cluster and delete the data directory.
#[test]
fn watchdog_reaps_cluster_of_killed_process() {
    let handoff = tempfile::tempdir().unwrap();
    let data_file = handoff.path().join("data_dir");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "watchdog_child", "--ignored", "--test-threads=1"])
        .env("PG_HARNESS_WATCHDOG_CHILD", &data_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let data = loop {
        if let Ok(dir) = std::fs::read_to_string(&data_file) {
            break PathBuf::from(dir);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("watchdog_child exited early: {status}");
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("watchdog_child did not start a cluster in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let postmaster = postmaster_pid(&data);
    child.kill().unwrap(); // SIGKILL: no destructors run.
    child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while data.exists() || alive(postmaster) {
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
    let Some(data_file) = std::env::var_os("PG_HARNESS_WATCHDOG_CHILD") else {
        return;
    };
    let pg = PgCluster::shared();
    let tmp = PathBuf::from(&data_file).with_extension("tmp");
    std::fs::write(&tmp, pg.data_dir().to_str().unwrap()).unwrap();
    std::fs::rename(&tmp, &data_file).unwrap(); // Atomic: the parent never reads half a path.
    loop {
        std::thread::park(); // Wait to be killed.
    }
}

fn postmaster_pid(data: &Path) -> u32 {
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    pid_file.lines().next().unwrap().trim().parse().unwrap()
}

/// Whether `pid` is a live process. Zombies count as dead: in some containers
/// PID 1 never reaps the orphaned postmaster.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(") ").next().and_then(|s| s.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}
