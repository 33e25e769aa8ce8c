//! What every fault scenario shares: a paced outbox stream, the tally of what arrived,
//! recovery timing, and the one-line report `scripts/chaos.sh` collects.
//!
//! A scenario writes `{"seq": n}` rows for `n` in `0..written` while it injects faults,
//! then waits until the slot has passed every row (so every delivery, duplicates
//! included, has happened) and reads the topic back: lost is the seqs that never arrived,
//! duplicates the records beyond one per seq.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::kafka::{unique_topic, Broker};
use super::pg::PgCluster;
use super::relay::{config_text, RelayProcess};
use super::workload::{seq_of, write_seq};
use super::{confirmed_flush, marker, wait_for, OUTBOX_DDL};

/// Short runs by default (CI); the full suite with `CHAOS_FULL=1` (`scripts/chaos.sh`).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub full: bool,
}

impl Scale {
    pub fn from_env() -> Scale {
        Scale {
            full: std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1"),
        }
    }

    /// `short` in CI, `full` in the full suite.
    pub fn pick<T>(self, short: T, full: T) -> T {
        if self.full {
            full
        } else {
            short
        }
    }
}

/// Figures of one scenario.
#[derive(Debug, Default)]
pub struct Figures {
    pub written: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub faults: usize,
    pub recovery_max: Duration,
    pub peak_rss_kib: u64,
    /// Keys whose first deliveries arrived out of commit order.
    pub order_breaks: usize,
    /// Anything else worth a figure, e.g. the slowest takeover.
    pub extra: String,
}

impl Figures {
    pub fn recovered(&mut self, took: Duration) {
        self.recovery_max = self.recovery_max.max(took);
    }

    pub fn sample_rss(&mut self, relay: &RelayProcess) {
        self.peak_rss_kib = self.peak_rss_kib.max(relay.peak_rss_kib());
    }

    /// Prints the scenario's line and asserts the invariants every scenario shares.
    pub fn report(&self, scenario: &str) {
        println!(
            "chaos: {scenario:<32} written {:>7}  delivered {:>7}  lost {}  duplicates {:>6}  faults {:>2}  recovery max {:>5.1} s  relay rss max {:>3} MiB{}",
            self.written,
            self.delivered,
            self.lost,
            self.duplicates,
            self.faults,
            self.recovery_max.as_secs_f64(),
            self.peak_rss_kib / 1024,
            if self.extra.is_empty() { String::new() } else { format!("  {}", self.extra) }
        );
        assert_eq!(self.lost, 0, "{scenario}: events lost");
        assert_eq!(
            self.order_breaks, 0,
            "{scenario}: first deliveries out of per-key order"
        );
        assert!(
            self.peak_rss_kib < 128 * 1024,
            "{scenario}: relay RSS {} KiB is over 128 MiB",
            self.peak_rss_kib
        );
    }
}

/// Writes seqs `0..total` from its own connection at about `per_second` rows/s, in
/// transactions of 100, so faults land in the middle of a stream rather than after it.
pub fn paced_writer(client: tokio_postgres::Client, total: i64, per_second: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        const CHUNK: i64 = 500;
        let pause = Duration::from_secs_f64(CHUNK as f64 / per_second.max(1) as f64);
        let mut next = tokio::time::Instant::now();
        for from in (0..total).step_by(CHUNK as usize) {
            write_seq(&client, from, (from + CHUNK).min(total)).await;
            // Pacing sets the workload's rate; it synchronises nothing.
            next += pause;
            tokio::time::sleep_until(next).await;
        }
    })
}

/// Waits until the relay has acknowledged everything committed so far (see [`marker`]),
/// and returns how long it has been since `fault_end`: the time to recover and catch up.
pub async fn recovery(admin: &tokio_postgres::Client, slot: &str, fault_end: Instant) -> Duration {
    let target = marker(admin).await;
    wait_for(
        "the relay to catch up after a fault",
        Duration::from_secs(180),
        || async { (confirmed_flush(admin, slot).await >= target).then_some(()) },
    )
    .await;
    fault_end.elapsed()
}

/// Once the slot passed every row, reads `topic` until all of `0..written` arrived (or
/// nothing new came for a while) and fills in delivered, lost and duplicates.
pub async fn tally(
    figures: &mut Figures,
    broker: &Broker,
    admin: &tokio_postgres::Client,
    slot: &str,
    topic: &str,
    written: i64,
) {
    let end = marker(admin).await;
    wait_for(
        "the slot to pass every row",
        Duration::from_secs(300),
        || async { (confirmed_flush(admin, slot).await >= end).then_some(()) },
    )
    .await;
    let mut seen = HashSet::new();
    let mut checked = 0;
    let mut last_new = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(120);
    let records = broker
        .consume_until(&[topic], Duration::from_secs(180), |records| {
            if records.len() > checked {
                last_new = Instant::now();
            }
            seen.extend(records[checked..].iter().map(seq_of));
            checked = records.len();
            // Every seq arrived and then nothing new for a while: the duplicates, which sit
            // at later offsets, have been read too. `consume_until` re-evaluates this even
            // when nothing arrives, and a loss ends the wait at `give_up` with figures
            // rather than a panic.
            let settled = last_new.elapsed() > Duration::from_millis(2_500);
            (seen.len() as i64 >= written && settled) || Instant::now() > give_up
        })
        .await;
    figures.written = written as usize;
    figures.delivered = seen.len();
    let lost: Vec<i64> = (0..written).filter(|n| !seen.contains(n)).collect();
    figures.lost = lost.len();
    if !lost.is_empty() {
        let in_table: i64 = admin
            .query_one(
                "SELECT count(*) FROM outbox WHERE (payload->>'seq')::bigint = ANY($1)",
                &[&lost],
            )
            .await
            .expect("look up lost rows")
            .get(0);
        figures.extra += &format!(
            "  lost seqs {:?}..{:?}, {in_table} of them in the outbox table",
            lost.first(),
            lost.last()
        );
    }
    figures.duplicates = records.len() - seen.len();
    // Per key, the first delivery of each seq must come in commit (= seq) order; repeats
    // of already delivered seqs are the at-least-once duplicates, printed below.
    let mut first = HashSet::new();
    let mut last_first: HashMap<Option<Vec<u8>>, i64> = HashMap::new();
    let mut repeated = Vec::new();
    for record in &records {
        let n = seq_of(record);
        if first.insert(n) {
            if let Some(previous) = last_first.insert(record.key.clone(), n) {
                if previous > n {
                    figures.order_breaks += 1;
                }
            }
        } else {
            repeated.push(n);
        }
    }
    if !repeated.is_empty() {
        repeated.sort_unstable();
        let shown: Vec<String> = repeated.iter().take(20).map(i64::to_string).collect();
        println!(
            "duplicates ({}): seqs {}{}",
            repeated.len(),
            shown.join(", "),
            if repeated.len() > 20 { ", ..." } else { "" }
        );
    }
}

/// `config` with `key = value` lines added under `[source]`.
pub fn with_source_settings(config: &Path, lines: &str) -> PathBuf {
    let text = std::fs::read_to_string(config).expect("relay config");
    let text = text.replacen("[source]\n", &format!("[source]\n{lines}\n"), 1);
    std::fs::write(config, text).expect("relay config");
    config.to_owned()
}

/// `config` with `key = value` lines added under `[kafka]` (`extra` of [`config_text`]
/// lands after `[outbox]`, so keys of `[kafka]` must go here).
pub fn with_kafka_settings(config: &Path, lines: &str) -> PathBuf {
    let text = std::fs::read_to_string(config).expect("relay config");
    let text = text.replacen("[kafka]\n", &format!("[kafka]\n{lines}\n"), 1);
    std::fs::write(config, text).expect("relay config");
    config.to_owned()
}

/// The relay's log lines that tell what it did about a fault: warnings, errors, each
/// (re)connection, each resume from committed progress. A run of lines that differ only
/// in their timestamp (a delivery error per record purged by an abort) shows as its first
/// line and a count. For the report of a scenario that went wrong: the relay's log is
/// long, and the story of a fault is in these.
pub fn eventful_lines(log: &str) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    let text_of = |line: &str| line.split_once(' ').map_or(line, |(_, t)| t).to_owned();
    for line in log.lines().filter(|l| {
        l.contains("WARN")
            || l.contains("ERROR")
            || l.contains("starting replication")
            || l.contains("committed progress")
    }) {
        match out.last_mut() {
            Some((first, n)) if text_of(first) == text_of(line) => *n += 1,
            _ => out.push((line.to_owned(), 1)),
        }
    }
    out.iter()
        .map(|(line, n)| match n {
            1 => line.clone(),
            n => format!("{line}  (and {} more like it)", n - 1),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `relay` answers `/readyz` with 200.
pub async fn wait_ready(relay: &RelayProcess, timeout: Duration) {
    wait_for("the relay to be ready", timeout, || {
        let ready = relay
            .try_admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200);
        async move { ready.then_some(()) }
    })
    .await;
}

/// One scenario's database, slot, topic and relay config.
pub struct Stage {
    pub admin: tokio_postgres::Client,
    pub db: String,
    pub slot: String,
    pub topic: String,
    pub dir: tempfile::TempDir,
}

impl Stage {
    pub async fn new(cluster: &PgCluster, name: &str) -> Stage {
        let db = cluster.create_database(name).await;
        let admin = cluster.client(&db).await;
        admin.batch_execute(OUTBOX_DDL).await.unwrap();
        let prefix = unique_topic(name);
        Stage {
            admin,
            slot: format!("{name}_slot"),
            topic: format!("{prefix}.outbox.event.order"),
            db,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `file` for a relay reaching PostgreSQL at `pg_address` and the broker at
    /// `bootstrap` (each a proxy, or the real thing).
    pub fn config(&self, file: &str, pg_address: &str, bootstrap: &str) -> PathBuf {
        let url = format!("postgres://postgres@{pg_address}/{}", self.db);
        let prefix = self.topic.trim_end_matches(".outbox.event.order");
        let path = self.dir.path().join(file);
        std::fs::write(&path, config_text(&url, &self.slot, bootstrap, prefix, "")).unwrap();
        path
    }

    pub fn start(&self, config: &std::path::Path) -> RelayProcess {
        RelayProcess::start(config, self.dir.path())
    }

    /// Ends the walsender that streams this stage's slot (`pg_terminate_backend`).
    pub async fn terminate_walsender(&self) {
        self.admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap();
    }

    /// Counts a fault that just ended and waits until the relay has recovered from it.
    pub async fn fault_ended(&self, figures: &mut Figures) {
        self.fault_ended_at(figures, Instant::now()).await;
    }

    /// [`Stage::fault_ended`] for a fault that ended at `ended`.
    pub async fn fault_ended_at(&self, figures: &mut Figures, ended: Instant) {
        figures.faults += 1;
        figures.recovered(recovery(&self.admin, &self.slot, ended).await);
    }

    pub async fn tally(&self, figures: &mut Figures, broker: &Broker, written: i64) {
        tally(
            figures,
            broker,
            &self.admin,
            &self.slot,
            &self.topic,
            written,
        )
        .await;
    }
}
