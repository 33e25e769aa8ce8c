//! The relay binary as a child process: started with a config, killed with SIGKILL or
//! stopped with SIGTERM, as an orchestrator would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// A relay config for `db` on `pg_url`'s cluster, publishing to `bootstrap` with topics
/// named `{prefix}.outbox.event.<aggregatetype>`. `extra` is appended verbatim.
pub fn config_text(pg_url: &str, slot: &str, bootstrap: &str, prefix: &str, extra: &str) -> String {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!(
        r#"[source]
url = "{pg_url}"
slot = "{slot}"
publication = "{slot}_pub"
tables = ["public.outbox"]
status_interval_ms = 200
shutdown_timeout_ms = 10000

[admin]
listen = "127.0.0.1:{admin_port}"

[kafka]
bootstrap_servers = "{bootstrap}"
topic_partitions = 3
topic_replication_factor = 1

[outbox]
topic = "{prefix}.outbox.event.${{routedByValue}}"
{extra}"#
    )
}

/// A running `outbox-relay run`.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    log: PathBuf,
    config: PathBuf,
}

impl RelayProcess {
    /// Starts the relay on `config` (a file), logging to `log_dir/relay-<n>.log` at the
    /// level in `RELAY_LOG` (default info).
    pub fn start(config: &Path, log_dir: &Path) -> RelayProcess {
        let level = std::env::var("RELAY_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into());
        RelayProcess::start_logging(config, log_dir, &level)
    }

    /// [`RelayProcess::start`] with an explicit `RUST_LOG` filter.
    pub fn start_logging(config: &Path, log_dir: &Path, level: &str) -> RelayProcess {
        RelayProcess::start_with_env(config, log_dir, level, &[])
    }

    /// [`RelayProcess::start_logging`] with more environment variables (secrets the
    /// config reads as `${NAME}`).
    pub fn start_with_env(
        config: &Path,
        log_dir: &Path,
        level: &str,
        env: &[(&str, &str)],
    ) -> RelayProcess {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = log_dir.join(format!("relay-{n}.log"));
        let file = std::fs::File::create(&log).expect("relay log file");
        let child = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", level)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn outbox-relay");
        RelayProcess {
            child,
            log,
            config: config.to_owned(),
        }
    }

    /// The admin endpoint's `host:port`, from the config it was started with.
    pub fn admin_address(&self) -> String {
        let text = std::fs::read_to_string(&self.config).expect("relay config");
        let line = text
            .lines()
            .find(|l| l.starts_with("listen = "))
            .expect("[admin] listen in the config");
        line.trim_start_matches("listen = ")
            .trim_matches('"')
            .to_owned()
    }

    /// `GET path` on the admin endpoint: status code and body (HTTP/1.0, no client crate).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.try_admin_get(path)
            .unwrap_or_else(|e| panic!("admin endpoint: {e}\n{}", self.log()))
    }

    /// [`RelayProcess::admin_get`], or the error while the endpoint is not up (yet).
    pub fn try_admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.admin_address())?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no final status update.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL relay");
        self.child.wait().expect("reap relay");
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.pid(), "-TERM");
        self.child.wait().expect("reap relay")
    }

    /// Waits (up to `timeout`) for the relay to exit by itself.
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll relay") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay did not exit within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll relay").is_none()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the relay streams from `slot` through a walsender.
    pub async fn wait_streaming(&mut self, admin: &tokio_postgres::Client, slot: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            assert!(self.is_running(), "relay exited:\n{}", self.log());
            if super::pg::walsender_streams(admin, slot).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay never streamed from {slot}:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: its relays' last words are the best clue.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// Appends `extra` (e.g. a `[kafka.properties]` table) to the relay config at `path`.
pub fn append_config(path: &Path, extra: &str) {
    let text = std::fs::read_to_string(path).expect("relay config") + extra;
    std::fs::write(path, text).expect("relay config");
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, ...) to `pid` with `kill`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}
