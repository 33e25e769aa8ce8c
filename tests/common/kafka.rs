//! A real Apache Kafka broker for integration tests: the pinned 4.x release that
//! `scripts/lib/install.sh` installs, single-node KRaft (combined broker and controller),
//! started by `scripts/kafka/broker.sh` (the same script the demo and the benchmark use).
//!
//! * **One broker per test binary** ([`Broker::shared`]), about 6-10 s to start on 2 cores
//!   (a JVM for the storage format, one for the broker); [`Broker::start`] gives a test its
//!   own, e.g. to freeze or restart it without disturbing the others.
//! * **Unique topics per test** ([`unique_topic`]). Auto-creation is off, as in production
//!   clusters: create topics with [`Broker::create_topic`] (or the relay's `create_topics`).
//!   Created with broker defaults, a topic has 3 partitions.
//! * **Outages.** [`Broker::freeze`] (SIGSTOP) and [`Broker::thaw`] (SIGCONT): sockets stay
//!   open but nothing answers, like a hung broker. [`Broker::stop`] (SIGTERM, a controlled
//!   shutdown), [`Broker::kill`] (SIGKILL) and [`Broker::restart`] (the same log dirs and
//!   ports): a real broker restart keeps what it acknowledged.
//! * **Exact reads.** Kafka's offsets and high watermarks are exact, so
//!   [`Broker::consume_until`] assigns every partition from the beginning and reads once.
//! * **A watchdog per broker.** The shared broker is never dropped and a test process can
//!   be SIGKILLed, so the broker runs beside a detached `sh` whose stdin is a pipe held only
//!   by the test process. However the process ends, `cat` then sees EOF and the watchdog
//!   SIGKILLs every JVM started on this broker's directory (restarts included) and deletes
//!   it; dropping a [`Broker`] does the same.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

/// How long [`Broker::start`] waits for the broker to answer, and how often it looks.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const START_POLL: Duration = Duration::from_millis(100);
/// How often [`Broker::consume_until`] re-evaluates its condition while nothing arrives.
const DONE_RECHECK: Duration = Duration::from_millis(200);

/// A running Kafka broker; killed on drop (or by its watchdog).
#[derive(Debug)]
pub struct Broker {
    /// Removed by the watchdog, after it killed the broker.
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    /// The port clients are told to use: ours, or a proxy's in front of us.
    advertised_port: u16,
    /// Unique, so a probe cannot mistake another broker on our port for ours.
    cluster_id: String,
    /// The broker JVM; a restart replaces it.
    pid: AtomicU32,
    /// `server.properties` lines added to the generated ones (listeners, SASL, ACLs).
    extra: BrokerOptions,
    watchdog: Child,
}

/// What a broker runs with beyond the plain PLAINTEXT listener.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Appended to `server.properties` (`KAFKA_EXTRA` of `broker.sh`); may use `{dir}`.
    pub properties: String,
    /// Extra `StorageTool format` arguments (`KAFKA_FORMAT_ARGS`), e.g. SCRAM users.
    pub format_args: String,
    /// Extra listeners as `NAME://127.0.0.1:{port}` entries, each given a free port.
    pub listeners: Vec<String>,
    /// Client properties for the harness's own admin client and probes (e.g. SASL),
    /// when PLAINTEXT is not open to them.
    pub admin_client: Vec<(String, String)>,
    /// The controller listener's port, when the test must know it before the broker
    /// starts (to put a proxy in front of it); a free one otherwise.
    pub controller_port: Option<u16>,
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

    /// Starts a broker with more listeners or settings (SASL, TLS, an authorizer).
    pub fn start_with_options(options: BrokerOptions) -> Broker {
        Broker::start_inner(None, options)
    }

    fn start_with(proxy: Option<&super::proxy::FaultProxy>) -> Broker {
        Broker::start_inner(proxy, BrokerOptions::default())
    }

    fn start_inner(proxy: Option<&super::proxy::FaultProxy>, options: BrokerOptions) -> Broker {
        let script = broker_script();
        for _ in 0..5 {
            let broker = Broker::spawn(&script, proxy.map(|p| p.port()), options.clone());
            if let Some(proxy) = proxy {
                proxy.retarget(broker.bootstrap());
            }
            if broker.wait_ready() {
                return broker;
            }
            // A port was taken: dropping `broker` reaps it; try others.
        }
        panic!("kafka: no free ports after 5 attempts")
    }

    /// The broker's directory: `server.properties`, `data/` (its log dirs), `broker.log`.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The port of extra listener `index` of [`BrokerOptions::listeners`].
    pub fn listener_port(&self, index: usize) -> u16 {
        let text = std::fs::read_to_string(self.dir.join("listener-ports")).expect("ports");
        text.split_whitespace()
            .nth(index)
            .expect("listener index")
            .parse()
            .unwrap()
    }

    /// SIGTERM (a controlled shutdown) and wait until the JVM is gone.
    pub fn stop(&self) {
        self.end("-TERM", Duration::from_secs(60));
    }

    /// SIGKILL and wait until the JVM is gone: what it had not flushed is the page cache's.
    pub fn kill(&self) {
        self.end("-KILL", Duration::from_secs(10));
    }

    /// Starts the broker again on the same log dirs and ports, after [`Broker::stop`] or
    /// [`Broker::kill`], and waits until it answers metadata requests.
    pub fn restart(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.launch(&broker_script());
            if self.wait_ready() {
                return;
            }
            // Our old port still lingered; the broker exited: start it again.
            assert!(
                Instant::now() < deadline,
                "broker did not restart:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn end(&self, signal: &str, timeout: Duration) {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while self.state().is_some_and(|s| s != 'Z') {
            assert!(
                Instant::now() < deadline,
                "broker {pid} ignored kill {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
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
        let log = std::fs::read_to_string(self.dir.join("broker.log"))
            .unwrap_or_else(|e| format!("(no broker log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// A client config with `bootstrap.servers` set (and the admin client's properties of
    /// [`BrokerOptions::admin_client`]).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        for (key, value) in &self.extra.admin_client {
            config.set(key, value);
        }
        config
    }

    /// Creates `name` with `partitions` partitions (replication factor 1); an existing
    /// topic is fine.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with(name, partitions, &[]).await;
    }

    /// [`Broker::create_topic`] with topic configs (`max.message.bytes`, ...).
    pub async fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in configs {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics([&topic], &options).await;
        match results.as_deref() {
            Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => {}
            other => panic!("create topic {name}: {other:?}\n{}", self.log_tail()),
        }
    }

    /// Deletes `name` and returns once the controller has committed the deletion.
    pub async fn delete_topic(&self, name: &str) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.delete_topics(&[name], &options).await;
        match results.as_deref() {
            Ok([Ok(_)]) => {}
            other => panic!("delete topic {name}: {other:?}\n{}", self.log_tail()),
        }
    }

    /// Reads `topics` from the beginning, in arrival order, until `done(&records)`
    /// (evaluated on every record and at least every 200 ms); panics after `timeout`
    /// (real time). A fresh consumer waits for topics that do not
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
            // Wake at least every DONE_RECHECK, so a condition that depends on time
            // (nothing new for a while) is seen without waiting for the next record.
            match tokio::time::timeout(left.min(DONE_RECHECK), rx.recv()).await {
                Ok(Some(Ok(record))) => records.push(record),
                Ok(Some(Err(message))) => status = message,
                Ok(None) => panic!("consumer of {topics:?} ended: {:?}", reader.await),
                Err(_) => {} // Re-evaluate `done`; past the deadline the assert reports it.
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

    fn spawn(
        script: &std::path::Path,
        advertised_port: Option<u16>,
        extra: BrokerOptions,
    ) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let port = free_port();
        let controller_port = extra.controller_port.unwrap_or_else(free_port);
        // Unique per broker; in Kafka's form (16 bytes, URL-safe base64 without padding).
        let cluster_id = loop {
            let id = base64_url(uuid::Uuid::new_v4().as_bytes());
            if !id.starts_with('-') {
                break id;
            }
        };
        // The watchdog: SIGKILLs every JVM of this broker's directory (the storage format
        // and every (re)start name `{dir}/server.properties`) once stdin closes, then
        // deletes the directory. Its own command line holds the directory only unexpanded.
        let watchdog_script = r#"dir=$1; cat >/dev/null
            while pkill -9 -f "$dir/server.properties" 2>/dev/null; do sleep 0.05; done
            rm -rf "$dir""#;
        let watchdog = Command::new("sh")
            .args(["-c", watchdog_script, "kafka-watchdog"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at the tests must not kill it first.
            .process_group(0)
            .spawn()
            .expect("spawn kafka watchdog");
        let broker = Broker {
            dir,
            port,
            controller_port,
            advertised_port: advertised_port.unwrap_or(port),
            cluster_id,
            pid: AtomicU32::new(0),
            extra,
            watchdog,
        };
        broker.launch(script);
        broker
    }

    /// Runs `broker.sh` detached (reparented to init, so no zombie), output appended to
    /// `broker.log`, and records the JVM's pid (the script execs it).
    fn launch(&self, script: &std::path::Path) {
        let mut listeners = String::new();
        if !self.extra.listeners.is_empty() {
            let known = std::fs::read_to_string(self.dir.join("listener-ports")).ok();
            let ports: Vec<u16> = match known {
                Some(text) => text
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect(),
                None => self.extra.listeners.iter().map(|_| free_port()).collect(),
            };
            let text: Vec<String> = ports.iter().map(u16::to_string).collect();
            std::fs::write(self.dir.join("listener-ports"), text.join(" ")).unwrap();
            let entries: Vec<String> = self
                .extra
                .listeners
                .iter()
                .zip(&ports)
                .map(|(l, p)| l.replace("{port}", &p.to_string()))
                .collect();
            listeners = format!(
                "listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{},{}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{},{}\n",
                self.port,
                self.controller_port,
                entries.join(","),
                self.advertised_port,
                entries.join(",")
            );
        }
        let dir = self.dir.display().to_string();
        let properties = format!(
            "{listeners}{}",
            self.extra.properties.replace("{dir}", &dir)
        );
        let launcher = r#""$1" "$2" "$3" "$4" "$5" >>"$2/broker.log" 2>&1 & echo $!"#;
        let output = Command::new("sh")
            .args(["-c", launcher, "kafka-launch"])
            .arg(script)
            .arg(&self.dir)
            .args([self.port, self.controller_port, self.advertised_port].map(|p| p.to_string()))
            .env("KAFKA_CLUSTER_ID", &self.cluster_id)
            .env("KAFKA_EXTRA", properties)
            .env("KAFKA_FORMAT_ARGS", &self.extra.format_args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .output()
            .expect("launch broker.sh");
        let pid = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("broker pid");
        self.pid.store(pid, Ordering::SeqCst);
    }

    /// Waits until the broker answers a metadata request (through rdkafka) on our port;
    /// `false` if a port turned out to be taken.
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
                if log.contains("Address already in use") {
                    return false;
                }
                panic!("the Kafka broker exited during startup:\n{log}");
            }
            match probe.client().fetch_cluster_id(START_POLL) {
                Some(id) if id != self.cluster_id => return false, // Not ours.
                Some(_) if probe.fetch_metadata(None, START_POLL).is_ok() => return true,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.bootstrap(),
                self.log_tail()
            );
        }
    }

    /// Sends `kill <signal>` and waits until `/proc/<pid>/stat` shows `state_ok`.
    fn signal(&self, signal: &str, state_ok: fn(char) -> bool) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("spawn kill");
        assert!(status.success(), "kill {signal} {}: {status}", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.state().is_some_and(state_ok) {
            assert!(Instant::now() < deadline, "the broker ignored {signal}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process state letter from `/proc/<pid>/stat` (`None` once it is reaped).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(self.watchdog.stdin.take()); // EOF: it SIGKILLs the broker, then exits.
        let _ = self.watchdog.wait();
        // The JVM is init's child (detached at launch): wait until init has reaped it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Assigns every partition of `topics` once they exist and forwards records (`Ok`)
/// and status or errors (`Err`) until the receiver is dropped. Records arrive interleaved
/// across partitions and topics: tests that check order sort by offset within a
/// partition, which is Kafka's order.
fn read_topics(
    config: ClientConfig,
    topics: &[String],
    tx: &mpsc::UnboundedSender<Result<ReceivedRecord, String>>,
) {
    let Some(consumer) = assigned_consumer(config, topics, tx) else {
        return;
    };
    let _ = tx.send(Err("assigned; reading".to_string()));
    while !tx.is_closed() {
        let record = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => Err(format!("consumer error: {e}")),
            Some(Ok(m)) => Ok(received(&m)),
        };
        let _ = tx.send(record);
    }
}

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

/// Runs one of Kafka's command-line tools (`org.apache.kafka.tools.AclCommand`, ...) from
/// the installed jars and returns its output; panics if it fails. For what rdkafka has no
/// API for, such as ACLs.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    kafka_tool_with_input(class, args, b"")
}

/// [`kafka_tool`] with `input` on its stdin (closed after it), e.g. the records for
/// `org.apache.kafka.tools.ConsoleProducer`: the Java client itself, not a reimplementation.
pub fn kafka_tool_with_input(class: &str, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let script = broker_script();
    let libs = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1"; echo "${KAFKA_LIBS:-$KAFKA_HOME_DEFAULT/libs}""#)
        .arg("kafka-libs")
        .arg(script.with_file_name("version.sh"))
        .output()
        .expect("read scripts/kafka/version.sh");
    let libs = String::from_utf8_lossy(&libs.stdout).trim().to_owned();
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(format!("{libs}/*"))
        .arg(class)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run java");
    let mut stdin = child.stdin.take().expect("java stdin");
    // Written from another thread: a tool that prints while it reads cannot block us.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait for java");
    writer
        .join()
        .expect("stdin writer")
        .expect("write java stdin");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{class} {args:?}: {}
{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `scripts/kafka/broker.sh` of this repository (the crate may be a workspace member).
fn broker_script() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let script = dir.join("scripts/kafka/broker.sh");
        if script.is_file() {
            return script;
        }
        assert!(
            dir.pop(),
            "scripts/kafka/broker.sh not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// URL-safe base64 without padding, as Kafka writes a cluster id.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
