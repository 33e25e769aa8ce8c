//! The relay binary as a child process, run from a `config/*-relay.toml` file as a sidecar.
//!
//! The binary comes from the workspace's target directory (next to this test's own
//! executable): `cargo test --workspace` builds it, since the relay package has
//! integration tests. Run alone, `cargo test -p saga-tests` needs
//! `cargo build --bin outbox-relay` first; a missing binary fails the test with that hint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `target/<profile>/outbox-relay`, found from this test executable's path
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("outbox-relay");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --bin outbox-relay` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// `text` with every `listen = "0.0.0.0:<port>"` (the containers' fixed admin port, which
/// differs between configs) moved to `127.0.0.1:<port>`.
fn loopback_admin(text: &str, port: u16) -> String {
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("listen = \"0.0.0.0:") {
                format!("listen = \"127.0.0.1:{port}\"")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One service's relay: the shipped config with `[admin] listen` moved to a free port.
#[derive(Debug)]
pub struct Relay {
    pub slot: String,
    config: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Relay {
    /// Prepares `config/<service>-relay.toml` for database `db` on `pg_port`.
    pub fn new(service: &str, pg_port: u16, db: &str, bootstrap: &str, log_dir: &Path) -> Relay {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config")
            .join(format!("{service}-relay.toml"));
        let text = std::fs::read_to_string(&shipped)
            .unwrap_or_else(|e| panic!("{}: {e}", shipped.display()));
        let text = loopback_admin(&text, super::free_port());
        let config = log_dir.join(format!("{service}-relay.toml"));
        std::fs::write(&config, text).expect("write relay config");
        let env = [
            ("DB_USER", "postgres".to_owned()),
            ("DB_PASSWORD", String::new()),
            ("DB_ADDR", format!("127.0.0.1:{pg_port}")),
            ("DB_NAME", db.to_owned()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_owned()),
        ];
        Relay {
            // `checkout-order` → slot `checkout_order_outbox` (slot names take no `-`).
            slot: format!("{}_outbox", service.replace('-', "_")),
            config,
            env: env.map(|(k, v)| (k.to_owned(), v)).to_vec(),
            log_dir: log_dir.to_owned(),
            child: None,
            starts: 0,
        }
    }

    /// Starts `outbox-relay run` (logs in the log dir, `relay-<slot>-<n>.log`).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.slot);
        let log = self
            .log_dir
            .join(format!("relay-{}-{}.log", self.slot, self.starts));
        self.starts += 1;
        let file = std::fs::File::create(&log).expect("relay log");
        let level = std::env::var("RELAY_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into());
        let child = Command::new(relay_binary())
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn outbox-relay");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no final acknowledgement.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("relay running");
        child.kill().expect("SIGKILL relay");
        child.wait().expect("reap relay");
    }

    /// Waits until the relay streams from its slot through a walsender.
    pub async fn wait_streaming(&mut self, admin: &tokio_postgres::Client) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let exited = self.child.as_mut().expect("relay running").try_wait();
            assert!(
                matches!(exited, Ok(None)),
                "relay {} exited: {exited:?}; see {}",
                self.slot,
                self.log_dir.display()
            );
            if super::pg::walsender_streams(admin, &self.slot).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay {} never streamed; see {}",
                self.slot,
                self.log_dir.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
