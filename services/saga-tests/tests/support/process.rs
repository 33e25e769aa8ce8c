//! A service replica as its own OS process (`saga-service <kind>`, this package's
//! binary), so a test can SIGKILL it: no shutdown, no leaving the consumer group, no
//! final commit, exactly as a crashed container.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pg::PgCluster;
use super::{free_port, Kind, REFUND_DECLINED, UNDELIVERABLE};

/// How long a replica may take to migrate its database and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of a failed test's replica warnings are printed, newest last.
const WARNINGS_SHOWN: usize = 40;

/// One running replica of a service.
#[derive(Debug)]
pub struct ServiceProcess {
    pub kind: Kind,
    pub group: String,
    pub addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts a replica of `kind` in consumer group `group` and waits until it listens.
    /// Its output goes to `log_dir/service-<group>-<replica>.log`.
    pub async fn start(
        kind: Kind,
        cluster: &PgCluster,
        bootstrap: &str,
        group: &str,
        replica: usize,
        log_dir: &Path,
    ) -> ServiceProcess {
        ServiceProcess::start_with_env(kind, cluster, bootstrap, group, replica, log_dir, &[]).await
    }

    /// [`ServiceProcess::start`] with extra environment `env` (name, value), e.g. the
    /// checkout services' `CHECKOUT_DEADLINE_MS` or `CHECKOUT_JITTER_MS`.
    pub async fn start_with_env(
        kind: Kind,
        cluster: &PgCluster,
        bootstrap: &str,
        group: &str,
        replica: usize,
        log_dir: &Path,
        env: &[(String, String)],
    ) -> ServiceProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = log_dir.join(format!("service-{group}-{replica}.log"));
        let file = std::fs::File::create(&log).expect("service log");
        let level = std::env::var("SERVICE_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new(env!("CARGO_BIN_EXE_saga-service"))
            .arg(kind.name())
            .env("DATABASE_URL", cluster.url(kind.db()))
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("LISTEN_ADDR", addr.to_string())
            .env("CONSUMER_GROUP", group)
            .env("DB_POOL_SIZE", "8")
            .env("UNDELIVERABLE_ADDRESS_CONTAINS", UNDELIVERABLE)
            .env("REFUND_REFUSED_CARD_CONTAINS", REFUND_DECLINED)
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn saga-service");
        let mut process = ServiceProcess {
            kind,
            group: group.to_owned(),
            addr,
            log,
            child: Some(child),
        };
        process.wait_listening().await;
        process
    }

    async fn wait_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let exited = self.child.as_mut().expect("running").try_wait();
            assert!(
                matches!(exited, Ok(None)),
                "{} exited at start: {exited:?}; see {}",
                self.group,
                self.log.display()
            );
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never listened on {}; see {}",
                self.group,
                self.addr,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("replica running");
        child.kill().expect("SIGKILL replica");
        child.wait().expect("reap replica");
    }

    /// SIGTERM, as an orchestrator stops it, and expects a clean exit.
    pub async fn stop(mut self) {
        let mut child = self.child.take().expect("replica running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {}", child.id());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait task")
            .expect("wait for replica");
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; see {}",
            self.group,
            self.log.display()
        );
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // The test failed: the replicas' last words are the best clue.
            // Its warnings too: a stalled partition's diagnostic is one of them.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let warnings: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            eprintln!(
                "--- last warnings of {} ---\n{}\n--- last lines ---\n{}",
                self.log.display(),
                warnings[warnings.len().saturating_sub(WARNINGS_SHOWN)..].join("\n"),
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
    }
}
