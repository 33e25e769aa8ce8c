//! A real Kafka-protocol broker for integration tests: tansu 0.6.0, in-memory storage.
//!
//! The relay's guarantees (order, no loss across outages, idempotent retries) only mean
//! something against a broker that speaks the real protocol to librdkafka; tansu does,
//! starts in milliseconds and needs no JVM. So:
//!
//! * **One broker per test binary** ([`Broker::shared`]); [`Broker::start`] gives a test
//!   its own, e.g. to freeze it without disturbing the others.
//! * **Unique topics per test** ([`unique_topic`]). tansu does not create topics on
//!   produce: create them with [`Broker::create_topic`] (or the relay's `create_topics`).
//! * **Freeze for outages.** Memory storage is empty after a restart, so an outage is a
//!   SIGSTOP ([`Broker::freeze`]) and SIGCONT ([`Broker::thaw`]): sockets stay open but
//!   nothing answers, like a hung broker.
//! * **Read until done.** tansu's high watermarks are not exact, so
//!   [`Broker::consume_until`] reads until the caller's condition holds.
//! * **A watchdog per broker.** The shared broker is never dropped and a test process can
//!   be SIGKILLed, so tansu runs under a detached `sh` whose stdin is a pipe held only by
//!   the test process. However the process ends, `cat` then sees EOF and the watchdog
//!   SIGKILLs and reaps tansu and deletes its temp dir; dropping a [`Broker`] does the same.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

/// How long [`Broker::start`] waits for tansu to answer, and how often it looks.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_POLL: Duration = Duration::from_millis(100);

/// A running tansu broker; killed on drop (or by its watchdog).
#[derive(Debug)]
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    /// Unique, so a probe cannot mistake another broker on our port for ours.
    cluster_id: String,
    pid: u32,
    watchdog: Child,
}

/// One record as a consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// In wire order; a null header value reads as empty.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReceivedRecord {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let (_, value) = self.headers.iter().find(|(key, _)| key == name)?;
        Some(value)
    }

    /// [`ReceivedRecord::header`] as UTF-8; panics if it is not.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        let value = self.header(name)?;
        Some(std::str::from_utf8(value).unwrap_or_else(|e| panic!("header {name}: {e}")))
    }
}

/// `{prefix}-{counter}-{random}`: a topic name no other test (or run) uses.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{n}-{}", &random[..8])
}

impl Broker {
    /// The broker shared by every test in this binary.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    /// Starts a new broker on a free loopback port. Blocking; needs no tokio runtime.
    pub fn start() -> Broker {
        Broker::start_with(None)
    }

    /// Starts a broker behind `proxy`: it tells clients to reach it at the proxy's port,
    /// so every connection after the bootstrap goes through the proxy too.
    pub fn start_behind(proxy: &super::proxy::FaultProxy) -> Broker {
        Broker::start_with(Some(proxy))
    }

    fn start_with(proxy: Option<&super::proxy::FaultProxy>) -> Broker {
        let bin = tansu_bin();
        for _ in 0..5 {
            let broker = Broker::spawn(&bin, proxy.map(|p| p.port()));
            if let Some(proxy) = proxy {
                proxy.retarget(broker.bootstrap());
            }
            if broker.wait_ready() {
                return broker;
            }
            // The port was taken: dropping `broker` reaps it; try another.
        }
        panic!("tansu: no free port after 5 attempts")
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGSTOP: connections stay open but the broker stops answering.
    pub fn freeze(&self) {
        self.signal("-STOP", |state| state == 'T');
    }

    /// SIGCONT after [`Broker::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT", |state| state != 'T');
    }

    /// The last 60 lines of the broker's output.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("tansu.log"))
            .unwrap_or_else(|e| format!("(no broker log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// A client config with `bootstrap.servers` set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// Creates `name` with `partitions` partitions (replication factor 1); an existing
    /// topic is fine.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics([&topic], &options).await;
        match results.as_deref() {
            Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => {}
            other => panic!("create topic {name}: {other:?}\n{}", self.log_tail()),
        }
    }

    /// Reads `topics` from the beginning, in arrival order, until `done(&records)`;
    /// panics after `timeout` (real time). A fresh consumer waits for topics that do not
    /// exist yet, then assigns itself all their partitions (no group rebalance to wait for).
    pub async fn consume_until(
        &self,
        topics: &[&str],
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedRecord]) -> bool,
    ) -> Vec<ReceivedRecord> {
        let deadline = Instant::now() + timeout;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = self.client_config();
        let owned: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let reader = tokio::task::spawn_blocking(move || read_topics(config, &owned, &tx));
        let mut records = Vec::new();
        let mut status = String::from("starting");
        while !done(&records) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "consume_until: timed out after {timeout:?} on {topics:?} with {} records \
                 (last: {:?}); consumer: {status}\n--- broker log tail ---\n{}",
                records.len(),
                records.last().map(|r| (&r.topic, r.partition, r.offset)),
                self.log_tail()
            );
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(Ok(record))) => records.push(record),
                Ok(Some(Err(message))) => status = message,
                Ok(None) => panic!("consumer of {topics:?} ended: {:?}", reader.await),
                Err(_) => {} // The deadline passed; the assert reports it.
            }
        }
        drop(rx); // The reader notices within one poll and closes its consumer.
        reader.await.expect("consumer thread");
        records
    }

    /// Reads until at least `n` records have arrived.
    pub async fn consume_count(
        &self,
        topics: &[&str],
        n: usize,
        timeout: Duration,
    ) -> Vec<ReceivedRecord> {
        self.consume_until(topics, timeout, |records| records.len() >= n)
            .await
    }

    fn spawn(bin: &std::path::Path, advertised_port: Option<u16>) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised_port.unwrap_or(port));
        let cluster_id = format!("outbox-test-{}", uuid::Uuid::new_v4().simple());
        let log_filter = std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into());
        let script = r#"dir=$1 url=$3; "$2" broker --listener-url "$url" \
            --advertised-listener-url "$5" --storage-engine memory://tansu/ --cluster-id "$4" \
            >"$dir/tansu.log" 2>&1 & echo $!
            cat >/dev/null; kill -9 $! 2>/dev/null; wait; rm -rf "$dir""#;
        let mut watchdog = Command::new("sh")
            .args(["-c", script, "tansu-watchdog"])
            .arg(dir.path())
            .arg(bin)
            .args([&url, &cluster_id, &advertised])
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at the tests must not kill it first.
            .process_group(0)
            .spawn()
            .expect("spawn tansu watchdog");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("watchdog stdout"))
            .read_line(&mut line)
            .expect("read tansu pid");
        let pid = line.trim().parse().expect("tansu pid");
        Broker {
            dir,
            port,
            cluster_id,
            pid,
            watchdog,
        }
    }

    /// Waits until tansu answers a metadata request (through rdkafka) on our port;
    /// `false` if the port turned out to be taken.
    fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        let probe: BaseConsumer = self
            .client_config()
            .set("reconnect.backoff.ms", "10")
            .set("reconnect.backoff.max.ms", "100")
            .create()
            .expect("probe client");
        loop {
            if matches!(self.state(), None | Some('Z')) {
                let log = self.log_tail();
                if log.contains("AddrInUse") {
                    return false;
                }
                panic!("tansu exited during startup:\n{log}");
            }
            match probe.client().fetch_cluster_id(START_POLL) {
                Some(id) if id != self.cluster_id => return false, // Not ours.
                Some(_) if probe.fetch_metadata(None, START_POLL).is_ok() => return true,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.bootstrap(),
                self.log_tail()
            );
        }
    }

    /// Sends `kill <signal>` and waits until `/proc/<pid>/stat` shows `state_ok`.
    fn signal(&self, signal: &str, state_ok: fn(char) -> bool) {
        let status = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .expect("spawn kill");
        assert!(status.success(), "kill {signal} {}: {status}", self.pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.state().is_some_and(state_ok) {
            assert!(Instant::now() < deadline, "tansu ignored {signal}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process state letter from `/proc/<pid>/stat` (`None` once it is reaped).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(self.watchdog.stdin.take()); // EOF: it SIGKILLs and reaps tansu, then exits.
        let _ = self.watchdog.wait();
    }
}

/// Assigns every partition of `topics` once they exist and forwards records (`Ok`)
/// and status or errors (`Err`) until the receiver is dropped.
///
/// If no new record has come for [`REREAD_AFTER_IDLE`], the reader starts a fresh consumer
/// from the beginning and forwards only records (by topic, partition, offset) it has not
/// forwarded yet: a belt-and-braces guard so one stuck consumer cannot hang a test. Records
/// arrive interleaved across partitions and topics: tests that check order sort by offset
/// within a partition, which is Kafka's order.
fn read_topics(
    config: ClientConfig,
    topics: &[String],
    tx: &mpsc::UnboundedSender<Result<ReceivedRecord, String>>,
) {
    let mut seen: HashSet<(String, i32, i64)> = HashSet::new();
    let mut pass = 0;
    while !tx.is_closed() {
        pass += 1;
        let Some(consumer) = assigned_consumer(config.clone(), topics, tx) else {
            return;
        };
        let _ = tx.send(Err(format!("pass {pass}: {} records so far", seen.len())));
        let mut last_new = std::time::Instant::now();
        while !tx.is_closed() && last_new.elapsed() < REREAD_AFTER_IDLE {
            let record = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(e)) => Err(format!("consumer error: {e}")),
                Some(Ok(m)) => {
                    if !seen.insert((m.topic().to_string(), m.partition(), m.offset())) {
                        continue;
                    }
                    last_new = std::time::Instant::now();
                    Ok(received(&m))
                }
            };
            let _ = tx.send(record);
        }
    }
}

/// How long without a new record before reading everything again.
const REREAD_AFTER_IDLE: Duration = Duration::from_secs(3);

/// A consumer assigned to every partition of `topics` from the beginning, once they exist;
/// `None` when nobody is waiting any more.
fn assigned_consumer(
    mut config: ClientConfig,
    topics: &[String],
    tx: &mpsc::UnboundedSender<Result<ReceivedRecord, String>>,
) -> Option<BaseConsumer> {
    let consumer: BaseConsumer = config
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .expect("test consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let partitions = loop {
            match topic_partitions(&consumer, topic) {
                Ok(ids) => break ids,
                Err(status) => {
                    tx.send(Err(status)).ok()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        for id in partitions {
            assignment
                .add_partition_offset(topic, id, Offset::Beginning)
                .expect("add partition");
        }
    }
    consumer.assign(&assignment).expect("assign partitions");
    Some(consumer)
}

fn received(m: &rdkafka::message::BorrowedMessage<'_>) -> ReceivedRecord {
    ReceivedRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m.headers().map_or_else(Vec::new, |hs| {
            let value = |v: Option<&[u8]>| v.unwrap_or_default().to_vec();
            hs.iter()
                .map(|h| (h.key.to_string(), value(h.value)))
                .collect()
        }),
    }
}

/// The partition ids of `topic`, or why it is not there (yet).
fn topic_partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, String> {
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(1))
        .map_err(|e| format!("metadata for {topic}: {e}"))?;
    match meta.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        }
        t => Err(format!(
            "waiting for topic {topic}: {:?}",
            t.and_then(|t| t.error())
        )),
    }
}

/// `TANSU_BIN`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
fn tansu_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let from_env = std::env::var_os("TANSU_BIN").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(std::env::split_paths(&path).map(|dir| dir.join("tansu")))
        .chain([home.join(".cargo/bin/tansu")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("tansu 0.6.0 not found; run scripts/test.sh, which installs it"))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
