//! Throwaway PostgreSQL 15 clusters for integration tests.
//!
//! The relay speaks the logical-replication protocol, so its tests need a real
//! server with `wal_level = logical`, replication slots and WAL that really gets
//! recycled — a mock would not tell us anything. Starting a cluster costs about a
//! second, so:
//!
//! * **One cluster per test binary.** [`PgCluster::shared`] starts it on first use
//!   and every test in the binary reuses it.
//! * **One database per test.** Tests isolate themselves with
//!   [`PgCluster::create_database`], which returns a fresh, uniquely named database.
//!   Slots and publications are per database too, so tests do not see each other.
//!   A test that must restart or stop the server, or needs other settings, starts
//!   its own cluster with [`PgCluster::start`] instead of disturbing the shared one.
//! * **A watchdog per cluster.** The shared cluster lives in a `static` and is never
//!   dropped, and a test process can be SIGKILLed. Each cluster therefore gets a
//!   detached `sh` whose stdin is a pipe held only by the test process: the kernel
//!   closes it however the process ends, `cat` sees EOF, and the watchdog stops the
//!   server (`pg_ctl stop -m immediate`) and deletes the data directory. (Polling
//!   `kill -0 <pid>` does not work here: when the tests run as root the watchdog
//!   runs as `postgres`, and `kill -0` on a root process fails with EPERM.)
//!
//! initdb and postgres refuse to run as root, so when the tests run as root (CI)
//! every server binary runs as the `postgres` OS user, which owns the temp dir.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Settings for [`PgCluster::start`]. `extra_conf` values are written quoted, so
/// pass them raw: `("max_slot_wal_keep_size".into(), "64MB".into())`.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub wal_level: String,
    pub wal_sender_timeout: String,
    pub extra_conf: Vec<(String, String)>,
    /// pg_hba.conf lines placed before the default trust rules, so they win.
    pub hba_lines: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "logical".into(),
            wal_sender_timeout: "5s".into(),
            extra_conf: Vec::new(),
            hba_lines: Vec::new(),
        }
    }
}

/// The OS identity server binaries run as; `None` when the tests are not root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running cluster; stopped and deleted on drop (or by its watchdog).
#[derive(Debug)]
pub struct PgCluster {
    root: tempfile::TempDir,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    watchdog: Option<Child>,
}

impl PgCluster {
    /// The cluster shared by every test in this binary (default options).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| PgCluster::start(PgOptions::default()))
    }

    /// initdb + start a new cluster. Blocking; needs no tokio runtime.
    pub fn start(opts: PgOptions) -> PgCluster {
        let bindir = PathBuf::from(
            std::env::var_os("PG_BINDIR").unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into()),
        );
        if !bindir.join("initdb").is_file() {
            panic!(
                "PostgreSQL 15 server binaries not found at {}; run scripts/test.sh, \
                 which installs postgresql-15",
                bindir.display()
            );
        }
        let run_as = (effective_uid() == 0).then(|| lookup_user("postgres"));
        let root = tempfile::Builder::new()
            .prefix("outbox-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700))
            .expect("chmod temp dir");
        if let Some(u) = run_as {
            std::os::unix::fs::chown(root.path(), Some(u.uid), Some(u.gid))
                .expect("chown temp dir");
        }
        let data = root.path().join("data");
        let mut cluster = PgCluster {
            root,
            data,
            bindir,
            port: 0,
            run_as,
            watchdog: None,
        };
        // Armed before anything can start a server, so even a half-started one is reaped.
        cluster.watchdog = Some(cluster.spawn_watchdog());

        let out = cluster
            .server_cmd("initdb")
            .args(
                "-A trust -U postgres --no-sync --no-instructions -E UTF8 --locale=C -D".split(' '),
            )
            .arg(&cluster.data)
            .output()
            .expect("spawn initdb");
        check(&out, "initdb", "");

        let mut hba = opts.hba_lines.join("\n");
        hba += "\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n";
        hba += "host replication all 127.0.0.1/32 trust\n";
        fs::write(cluster.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");

        let conf_path = cluster.data.join("postgresql.conf");
        let initdb_conf = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        for attempt in 1..=5 {
            cluster.port = free_port();
            let conf = initdb_conf.clone() + &cluster.settings(&opts);
            fs::write(&conf_path, conf).expect("write postgresql.conf");
            let _ = fs::remove_file(cluster.log_path());
            let out = cluster.run_pg_ctl(&["-l", &cluster.log_path(), "start"]);
            if out.status.success() {
                return cluster;
            }
            let log = cluster.log_tail();
            if !(log.contains("could not bind") && attempt < 5) {
                check(&out, "pg_ctl start", &log);
            }
            // Another process took the port between free_port() and the bind: pick another.
        }
        unreachable!("the last attempt either returns or panics")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// URL for another role; `password` is used verbatim (keep it alphanumeric).
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// A connected client; its connection task runs on the current tokio runtime.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let url = self.url(db);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("pg harness: connection to {url} ended: {e}");
            }
        });
        client
    }

    /// Creates `{prefix}_{counter}_{random}` (lowercase) and returns its name.
    pub async fn create_database(&self, prefix: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix: String = prefix
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        let random = uuid::Uuid::new_v4().simple().to_string();
        let name = format!(
            "{prefix}_{}_{}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &random[..8]
        );
        self.client("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        name
    }

    /// Runs `sql` with psql (ON_ERROR_STOP, unaligned, tuples only); returns trimmed stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bindir.join("psql"))
            .args("-X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p".split(' '))
            .arg(&port)
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("spawn psql");
        check(&out, &format!("psql -d {db} -c {sql:?}"), "");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `pg_ctl restart -m <mode>` ("smart", "fast" or "immediate"); keeps the port.
    pub fn restart(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "-l", &self.log_path(), "restart"]);
    }

    /// Fast shutdown, for outage tests; bring it back with [`PgCluster::start_again`].
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    /// Starts a stopped cluster again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl(&["-l", &self.log_path(), "start"]);
    }

    /// The last 60 lines of the server log.
    pub fn log_tail(&self) -> String {
        let log =
            fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no server log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn log_path(&self) -> String {
        format!("{}/postgres.log", self.data.display())
    }

    fn settings(&self, opts: &PgOptions) -> String {
        let socket_dir = self.root.path().display().to_string();
        let fixed = [
            ("listen_addresses", "127.0.0.1".to_string()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", socket_dir),
            ("wal_level", opts.wal_level.clone()),
            ("max_wal_senders", "40".into()),
            ("max_replication_slots", "40".into()),
            ("max_connections", "200".into()),
            ("wal_sender_timeout", opts.wal_sender_timeout.clone()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("shared_buffers", "128MB".into()),
            ("max_wal_size", "256MB".into()),
            ("checkpoint_timeout", "30s".into()),
            ("log_min_messages", "warning".into()),
        ];
        let extra = opts.extra_conf.iter().map(|(k, v)| (k.as_str(), v.clone()));
        let mut conf = String::from("\n# --- outbox-relay test harness ---\n");
        for (key, value) in fixed.into_iter().chain(extra) {
            conf += &format!("{key} = '{}'\n", value.replace('\'', "''"));
        }
        conf
    }

    /// A server binary, run as the `postgres` user when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        // The postgres user may not be able to enter the test's working directory.
        cmd.current_dir(self.root.path()).stdin(Stdio::null());
        if let Some(u) = self.run_as {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// `pg_ctl -w -D <data> <args...>`, panicking with the server log on failure.
    fn pg_ctl(&self, args: &[&str]) {
        let out = self.run_pg_ctl(args);
        check(
            &out,
            &format!("pg_ctl {}", args.join(" ")),
            &self.log_tail(),
        );
    }

    fn run_pg_ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-w").arg("-D").arg(&self.data).args(args);
        cmd.output().expect("spawn pg_ctl")
    }

    fn spawn_watchdog(&self) -> Child {
        let script =
            r#"cat >/dev/null; "$1/pg_ctl" -D "$2" -m immediate stop >/dev/null 2>&1; rm -rf "$3""#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script, "pg-watchdog"])
            .arg(&self.bindir)
            .arg(&self.data)
            .arg(self.root.path())
            .current_dir(self.root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at the tests must not kill the watchdog first.
            .process_group(0);
        if let Some(u) = self.run_as {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd.spawn().expect("spawn pg watchdog")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run_pg_ctl(&["-m", "immediate", "stop"]);
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take()); // EOF: it removes the data dir and exits.
            let _ = watchdog.wait();
        }
    }
}

fn check(out: &Output, what: &str, log: &str) {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}\n--- server log tail ---\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether a walsender streams from `slot`. (The slot's `active` flag alone is also true
/// while a SQL call is still creating it, before anything streams.)
pub async fn walsender_streams(admin: &tokio_postgres::Client, slot: &str) -> bool {
    admin
        .query_opt(
            "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1 AND a.backend_type = 'walsender'",
            &[&slot],
        )
        .await
        .expect("query pg_replication_slots")
        .is_some()
}

fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid: line");
    uids.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("effective uid")
}

fn lookup_user(name: &str) -> RunAs {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .map(|f| RunAs {
            uid: f[2].parse().expect("uid"),
            gid: f[3].parse().expect("gid"),
        })
        .unwrap_or_else(|| {
            panic!(
                "running as root, but there is no `{name}` OS user to run PostgreSQL as; \
                 run scripts/test.sh, which installs postgresql-15"
            )
        })
}
