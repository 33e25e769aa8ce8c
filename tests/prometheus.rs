//! A real Prometheus (Debian's `/usr/bin/prometheus`) scrapes a running relay, and the
//! monitoring files shipped in `docker/` parse and only name metrics the relay exports.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{unique_topic, Broker};
use common::pg::PgCluster;
use common::relay::{config_text, RelayProcess};
use common::{wait_for, OUTBOX_DDL};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const ROWS: usize = 500;
/// How often the API is polled while waiting for a condition, and for how long at most.
const POLL: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(60);

/// A file of this repository, by its path from the crate root.
fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A Prometheus server scraping given targets every second; killed on drop.
///
/// Like the harness's Kafka broker, it runs under a detached `sh` whose stdin is a pipe
/// held only by the test process: however that process ends, `cat` sees EOF and the
/// watchdog SIGKILLs Prometheus and deletes its directory.
struct Prometheus {
    dir: tempfile::TempDir,
    port: u16,
    pid: u32,
    watchdog: Child,
}

impl Prometheus {
    /// Starts Prometheus with one job, `outbox-relay`, scraping `targets`. Blocking.
    fn start(targets: &[String]) -> Prometheus {
        for _ in 0..5 {
            let prometheus = Prometheus::spawn(targets);
            if prometheus.wait_ready() {
                return prometheus;
            }
            // Another process took the port between picking it and binding: try another.
        }
        panic!("prometheus: no free port after 5 attempts")
    }

    fn spawn(targets: &[String]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("outbox-prometheus-")
            .tempdir()
            .expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.path().join("prometheus.yml");
        let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: outbox-relay\n    \
                 static_configs:\n      - targets: [{}]\n",
                quoted.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let script = r#"dir=$1; shift; "$@" >"$dir/prometheus.log" 2>&1 & echo $!
            cat >/dev/null; kill -9 $! 2>/dev/null; wait; rm -rf "$dir""#;
        let mut watchdog = Command::new("sh")
            .args(["-c", script, "prometheus-watchdog"])
            .arg(dir.path())
            .arg(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at the tests must not kill it first.
            .process_group(0)
            .spawn()
            .expect("spawn prometheus watchdog");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("watchdog stdout"))
            .read_line(&mut line)
            .expect("read prometheus pid");
        let pid = line.trim().parse().expect("prometheus pid");
        Prometheus {
            dir,
            port,
            pid,
            watchdog,
        }
    }

    /// Waits until `/-/ready` answers 200; `false` if the port turned out to be taken.
    fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if matches!(self.state(), None | Some('Z')) {
                let log = self.log_tail();
                if log.contains("address already in use") {
                    return false;
                }
                panic!("prometheus exited during startup:\n{log}");
            }
            if let Some((200, _)) = http_get(&self.address(), "/-/ready") {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {DEADLINE:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process state letter from `/proc/<pid>/stat`; `None` once reaped.
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    /// The last 40 lines of Prometheus's output.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("prometheus.log"))
            .unwrap_or_else(|e| format!("(no prometheus log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// An instant query; panics unless the API reports success. Returns `data.result`.
    fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(&self.address(), &path)
            .unwrap_or_else(|| panic!("prometheus unreachable:\n{}", self.log_tail()));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {promql}: HTTP {status}, not JSON ({e}): {body}"));
        assert_eq!(
            json["status"], "success",
            "query {promql}: HTTP {status}: {body}"
        );
        json["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: no result vector: {body}"))
            .clone()
    }

    /// The value of a query that yields exactly one sample, e.g. `sum(...)`; `None` while
    /// it yields nothing.
    fn single_value(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [] => None,
            [sample] => Some(sample_value(sample)),
            many => panic!("query {promql}: expected one sample, got {many:?}"),
        }
    }

    /// Polls `promql` every [`POLL`] until its single value is `want`; panics after
    /// [`DEADLINE`] with the last value seen.
    async fn wait_value(&self, promql: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = self.single_value(promql);
            if got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{promql} is {got:?} after {DEADLINE:?}, want {want}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `promql` every [`POLL`] until it yields at least one series; panics after
    /// [`DEADLINE`].
    async fn wait_series(&self, promql: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let series = self.query(promql);
            if !series.is_empty() {
                return series;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{promql} yielded nothing for {DEADLINE:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // EOF on the watchdog's stdin: it kills Prometheus, reaps it and removes the dir.
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// The numeric value of one instant-vector sample, `{"metric": .., "value": [ts, "v"]}`.
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a sample: {sample}"))
}

/// `GET path` over HTTP/1.0 (no client crate): status code and body, `None` if nothing
/// listens on `address`.
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The dashboard's panels as `(title, [expr])`, with the `$instance` variable at "All".
fn dashboard_queries() -> Vec<(String, Vec<String>)> {
    let path = repo_file("docker/grafana/outbox-relay.json");
    let text = std::fs::read_to_string(&path).expect("read the Grafana dashboard");
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    panels
        .iter()
        .map(|panel| {
            let title = panel["title"].as_str().expect("panel title").to_owned();
            let exprs = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title} has no targets"))
                .iter()
                .map(|t| {
                    let expr = t["expr"].as_str().expect("target expr");
                    expr.replace("$instance", ".*")
                })
                .collect();
            (title, exprs)
        })
        .collect()
}

/// Every `outbox_relay_*` name in `expr`, without a histogram's series suffix.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices("outbox_relay_")
        .map(|(start, _)| {
            let rest = &expr[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_delivered_event() {
    common::init_logging();
    let cluster = PgCluster::shared();
    let db = cluster.create_database("prometheus").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let prefix = unique_topic("prom");
    let topic = format!("{prefix}.outbox.event.order");
    let dir = tempfile::Builder::new()
        .prefix("relay-prometheus-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("relay.toml");
    let slot = "prom_slot";
    let text = config_text(
        &cluster.url(&db),
        slot,
        &Broker::shared().bootstrap(),
        &prefix,
        "",
    );
    std::fs::write(&config, text).unwrap();
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, slot).await;

    let prometheus = Prometheus::start(&[relay.admin_address()]);
    println!(
        "prometheus on {} scraping the relay on {}",
        prometheus.address(),
        relay.admin_address()
    );
    prometheus
        .wait_value(r#"up{job="outbox-relay"}"#, 1.0)
        .await;

    admin
        .batch_execute(&format!(
            "INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || i, 'Created', '{{}}' \
             FROM generate_series(1, {ROWS}) AS i"
        ))
        .await
        .unwrap();
    Broker::shared()
        .consume_count(&[&topic], ROWS, DEADLINE)
        .await;

    let rows = ROWS as f64;
    prometheus
        .wait_value("sum(outbox_relay_events_total)", rows)
        .await;
    let latency_count = prometheus.single_value("sum(outbox_relay_delivery_latency_seconds_count)");
    assert_eq!(latency_count, Some(rows));
    let buckets = prometheus.query("outbox_relay_delivery_latency_seconds_bucket");
    assert!(!buckets.is_empty(), "no latency histogram buckets");
    let inf =
        prometheus.single_value(r#"sum(outbox_relay_delivery_latency_seconds_bucket{le="+Inf"})"#);
    assert_eq!(inf, Some(rows));
    let up = prometheus.single_value(r#"up{job="outbox-relay"}"#);
    assert_eq!(up, Some(1.0));
    let p99 = prometheus.single_value(
        "histogram_quantile(0.99, sum(rate(outbox_relay_delivery_latency_seconds_bucket[1m])) by (le))",
    );
    let lag = prometheus.single_value("max(outbox_relay_lag_seconds)");
    println!(
        "sum(outbox_relay_events_total) = {rows}; latency count = {latency_count:?}; \
         {} latency buckets (+Inf = {inf:?}); p99 over 1m = {p99:?} s; lag = {lag:?} s; \
         up = {up:?}",
        buckets.len()
    );

    // Every dashboard query is valid PromQL against the relay's real series, and those of
    // metrics this run exercised return data. (A labelled counter appears at its first
    // increment, so a rate over it needs one more scrape: polled, not assumed.)
    let quiet = [
        outbox_relay::metrics::EVENTS_DEAD_LETTERED,
        outbox_relay::metrics::RECONNECTS,
    ];
    for (title, exprs) in dashboard_queries() {
        for expr in exprs {
            let expect_data = !metric_names(&expr).iter().any(|n| quiet.contains(n));
            let series = if expect_data {
                prometheus.wait_series(&expr).await
            } else {
                prometheus.query(&expr)
            };
            println!("dashboard {title:?}: {} series from {expr}", series.len());
        }
    }
}

/// The samples of `/metrics` text named `name` whose labels include all of `labels`.
fn samples(page: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let found: Vec<(&str, &str)> = series_labels
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (series_name == name && labels.iter().all(|l| found.contains(l)))
                .then(|| value.parse().expect("sample value"))
        })
        .collect()
}

/// The relay's `/metrics` page; `None` while its endpoint is not up.
fn scrape(relay: &RelayProcess) -> Option<String> {
    match relay.try_admin_get("/metrics") {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Backlog for the lag check: one transaction, large enough that the relay is behind for
/// several of its status updates (decoding it alone takes the walsender a while).
const BACKLOG_ROWS: usize = 50_000;
/// Rows of a table outside the publication, written before the backlog: WAL the walsender
/// decodes without sending anything, while the relay holds nothing.
const FILLER_ROWS: usize = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_listed_at_zero_before_any_event_and_lag_shows_a_backlog() {
    use outbox_relay::metrics as m;
    common::init_logging();
    let cluster = PgCluster::shared();
    let db = cluster.create_database("prom_zero").await;
    let admin = cluster.client(&db).await;
    admin.batch_execute(OUTBOX_DDL).await.unwrap();
    let prefix = unique_topic("promzero");
    let dir = tempfile::Builder::new()
        .prefix("relay-prom-zero-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("relay.toml");
    let slot = "prom_zero_slot";
    let dlq = format!("{prefix}.dlq");
    let text = config_text(
        &cluster.url(&db),
        slot,
        &Broker::shared().bootstrap(),
        &prefix,
        &format!("[dlq]\ntopic = \"{dlq}\"\n"),
    );
    std::fs::write(&config, text).unwrap();
    let mut relay = RelayProcess::start(&config, dir.path());
    relay.wait_streaming(&admin, slot).await;

    // Before any row: every counter the config determines is listed, at 0.
    let page = wait_for("the relay's /metrics", DEADLINE, || async {
        scrape(&relay)
    })
    .await;
    let table = ("table", "public.outbox");
    let zero = |name: &str, labels: &[(&str, &str)]| {
        let found = samples(&page, name, labels);
        assert_eq!(found, vec![0.0], "{name}{labels:?} in:\n{page}");
    };
    // The topic is routed per row: the table alone, and its dead-letter topic.
    let table_only: Vec<f64> = page
        .lines()
        .filter(|l| l.starts_with(&format!("{}{{table=\"public.outbox\"}} ", m::EVENTS)))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(
        table_only,
        vec![0.0],
        "{} by table alone:\n{page}",
        m::EVENTS
    );
    zero(m::EVENTS, &[table, ("topic", &dlq)]);
    for class in m::initial::DEAD_LETTER_CLASSES {
        zero(m::EVENTS_DEAD_LETTERED, &[table, ("class", class)]);
    }
    for op in ["update", "delete", "truncate"] {
        zero(m::EVENTS_IGNORED, &[table, ("op", op)]);
    }
    for target in ["postgres", "kafka"] {
        zero(m::RECONNECTS, &[("target", target)]);
    }
    for name in [
        m::TRANSACTIONS,
        m::KAFKA_REBOOTSTRAPS,
        m::KAFKA_UNCONFIRMED_DELIVERIES,
        m::HISTORY_REWINDS,
        m::SLOT_ADVANCED_ELSEWHERE,
        m::TRANSACTION_RESTARTS,
        m::PIPELINE_RESTARTS,
    ] {
        zero(name, &[]);
    }
    assert_eq!(samples(&page, m::SLOT_INFO, &[("slot", slot)]), vec![1.0]);
    assert_eq!(samples(&page, m::STANDBY, &[]), vec![0.0]);
    println!("before any row: every pre-registered series listed at 0");

    // Idle and caught up, the lag settles at 0 (no false alert on a quiet database).
    let lag_of = |page: &str| samples(page, m::LAG_SECONDS, &[]).first().copied();
    wait_for("lag_seconds 0 while idle", DEADLINE, || async {
        scrape(&relay).and_then(|p| (lag_of(&p) == Some(0.0)).then_some(()))
    })
    .await;

    // A backlog written while the relay is down, behind a million rows of a table outside
    // the publication: from its restart until it delivered the last row, every value of
    // the lag gauge is above 0, including while the walsender decodes the filler and the
    // relay holds nothing (the old gauge said 0 there, with 100 MB of WAL retained);
    // it settles at 0 once the relay caught up. The commit is flushed before the relay
    // starts (the test cluster runs with synchronous_commit = off, and the walsender sends
    // only flushed WAL: a commit still in the WAL writer's buffer is not yet the server's).
    relay.terminate();
    admin
        .batch_execute(&format!(
            "SET synchronous_commit = on; \
             CREATE TABLE filler AS SELECT i, md5(i::text) AS pad FROM generate_series(1, {FILLER_ROWS}) AS i; \
             INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || i, 'Created', '{{}}' \
             FROM generate_series(1, {BACKLOG_ROWS}) AS i"
        ))
        .await
        .unwrap();
    let relay = RelayProcess::start(&config, dir.path());
    let rows = BACKLOG_ROWS as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let (mut behind, mut max_lag) = (0usize, 0.0f64);
    loop {
        if let Some(page) = scrape(&relay) {
            let delivered: f64 = samples(&page, m::EVENTS, &[table]).iter().sum();
            if delivered >= rows {
                break;
            }
            if let Some(lag) = lag_of(&page) {
                assert!(
                    lag > 0.0,
                    "lag_seconds is 0 with {delivered} of {rows} rows delivered \
                     (replication_lag_bytes {:?}):\n{}",
                    samples(&page, m::REPLICATION_LAG_BYTES, &[]),
                    relay.log()
                );
                behind += 1;
                max_lag = max_lag.max(lag);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog was not delivered in time:\n{}",
            relay.log()
        );
        // Spaces the scrapes; the loop ends on the delivered count, not on time.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        behind > 0,
        "no lag value was seen while the relay was behind"
    );
    println!(
        "backlog of {BACKLOG_ROWS}: all {behind} scrapes before the last delivery with \
         lag > 0 (max {max_lag:.3} s)"
    );
    wait_for(
        "lag_seconds back to 0 after the backlog",
        DEADLINE,
        || async { scrape(&relay).and_then(|p| (lag_of(&p) == Some(0.0)).then_some(())) },
    )
    .await;
}

#[test]
fn monitoring_files_parse_and_name_exported_metrics() {
    let known = [
        outbox_relay::metrics::EVENTS,
        outbox_relay::metrics::EVENTS_DEAD_LETTERED,
        outbox_relay::metrics::EVENTS_IGNORED,
        outbox_relay::metrics::TRANSACTIONS,
        outbox_relay::metrics::DELIVERY_LATENCY,
        outbox_relay::metrics::LAG_SECONDS,
        outbox_relay::metrics::REPLICATION_LAG_BYTES,
        outbox_relay::metrics::CONFIRMED_FLUSH_LSN,
        outbox_relay::metrics::IN_FLIGHT_EVENTS,
        outbox_relay::metrics::KAFKA_QUEUE_MESSAGES,
        outbox_relay::metrics::CONNECTED,
        outbox_relay::metrics::RECONNECTS,
        outbox_relay::metrics::BUILD_INFO,
        outbox_relay::metrics::KAFKA_BROKER_RTT,
        outbox_relay::metrics::KAFKA_BROKER_TX_ERRORS,
    ];
    let panels = dashboard_queries();
    assert!(!panels.is_empty(), "the dashboard has no panels");
    for (title, exprs) in &panels {
        assert!(!exprs.is_empty(), "panel {title:?} has no queries");
        for expr in exprs {
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {title:?}: no relay metric in {expr}"
            );
            for name in names {
                assert!(
                    known.contains(&name),
                    "panel {title:?}: {name} is not a metric of src/metrics.rs"
                );
            }
        }
    }

    let config = repo_file("docker/prometheus.yml");
    if !Path::new(PROMTOOL).is_file() {
        eprintln!("{PROMTOOL} not installed: docker/prometheus.yml not checked");
        return;
    }
    let out = Command::new(PROMTOOL)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
