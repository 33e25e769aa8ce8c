//! The Spring Boot points service (`services/points`) as a child process: built by
//! `scripts/lib/points.sh` (Maven, once, when its sources changed) and run with
//! `java -jar`, configured through its environment exactly as a container would be.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::free_port;
use super::pg::PgCluster;

/// How long the JVM may take to start, create its schema and listen.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The jar, built at most once per test process.
pub fn jar() -> &'static Path {
    static JAR: OnceLock<PathBuf> = OnceLock::new();
    JAR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source scripts/lib/points.sh && build_points_service")
            .current_dir(&repo)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/lib/points.sh");
        assert!(out.status.success(), "building the points service failed");
        let path = String::from_utf8(out.stdout).expect("utf-8 path");
        let jar = PathBuf::from(path.trim());
        assert!(jar.is_file(), "{} was not built", jar.display());
        jar
    })
}

/// One running points service.
#[derive(Debug)]
pub struct PointsProcess {
    pub addr: SocketAddr,
    pub group: String,
    log: PathBuf,
    child: Option<Child>,
}

impl PointsProcess {
    /// Starts it on database `db` in consumer group `group`, refusing rewards to
    /// `blocked` users and above `max_reward`, and waits until it listens.
    pub async fn start(
        cluster: &PgCluster,
        db: &str,
        bootstrap: &str,
        group: &str,
        blocked: &[i64],
        max_reward: i64,
        log_dir: &Path,
    ) -> PointsProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = log_dir.join(format!("points-{group}.log"));
        let file = std::fs::File::create(&log).expect("points log");
        let blocked: Vec<String> = blocked.iter().map(i64::to_string).collect();
        let child = Command::new("java")
            .args(["-XX:TieredStopAtLevel=1", "-Xss512k", "-jar"])
            .arg(jar())
            .env(
                "SPRING_DATASOURCE_URL",
                format!("jdbc:postgresql://127.0.0.1:{}/{db}", cluster.port()),
            )
            .env("SPRING_DATASOURCE_USERNAME", "postgres")
            .env("SPRING_DATASOURCE_PASSWORD", "")
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("SERVER_PORT", port.to_string())
            .env("CONSUMER_GROUP", group)
            .env("POINTS_BLOCKED_USERS", blocked.join(","))
            .env("POINTS_MAX_REWARD", max_reward.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn java");
        let mut process = PointsProcess {
            addr,
            group: group.to_owned(),
            log,
            child: Some(child),
        };
        process.wait_healthy().await;
        process
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let exited = self.child.as_mut().expect("running").try_wait();
            assert!(
                matches!(exited, Ok(None)),
                "points service exited at start: {exited:?}; see {}",
                self.log.display()
            );
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && super::http::request(self.addr, "GET", "/healthz", None)
                    .await
                    .status
                    == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "points service never became healthy on {}; see {}",
                self.addr,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM (Spring's graceful shutdown), and waits for the exit.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

impl Drop for PointsProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
