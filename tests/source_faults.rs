//! Faults that hit the source at its worst moments, each of which once broke the
//! acknowledgement promise or its availability (issue #12):
//!
//! - the replication connection ends (walsender terminated, TCP cut, stalled past
//!   `wal_sender_timeout`) while the relay is blocked on a frozen broker with a full
//!   pipeline: the relay must reconnect by itself once the broker is back, deliver every
//!   row and move the slot to the end (it used to hang forever). In exactly-once mode the
//!   same faults meet a Kafka transaction whose commit waits on the frozen broker (or,
//!   with long transactions, one still open that holds a full producer queue); the relay
//!   restarts its whole pipeline, and a read_committed consumer must also see no row
//!   twice;
//! - the database is restored from a copy taken earlier while the relay runs: every row
//!   written after the restore must be published (they used to be skipped silently);
//! - two replicas, the active one paused until its walsender ends, the other takes over,
//!   publishes and dies: the first must resume, not stop;
//! - `source.url` reaching another database system (a rebuilt cluster behind the same
//!   address): the relay stops with the fix, or follows it when `on_new_system = "follow"`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::chaos::{eventful_lines, wait_ready, Figures, Stage};
use common::kafka::{Broker, ReceivedRecord};
use common::pg::{PgCluster, PgOptions};
use common::proxy::FaultProxy;
use common::relay::{append_config, signal, RelayProcess};
use common::workload::write_seq;
use common::{metric_sum, wait_for};

const BACKLOG: i64 = 100_000;
/// A small producer queue, so a 100,000-row backlog surely fills the whole pipeline.
const SMALL_QUEUE: &str = "\n[kafka.properties]\n\"queue.buffering.max.messages\" = \"10000\"\n";

fn pg_address(cluster: &PgCluster) -> String {
    format!("127.0.0.1:{}", cluster.port())
}

/// The value of the first sample of `name` in a Prometheus text page.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until the relay is blocked on the frozen broker with its pipeline full: the
/// number of events in flight has stopped growing (the broker acknowledges nothing, the
/// relay takes nothing more). Returns the events in flight and the producer queue's length
/// then.
///
/// At least once, the sink sends until the producer queue is full, and then the channel
/// fills: more than 10,000 events in flight, the queue full. Exactly once, with the
/// default transaction settings the sink stops much earlier: the first Kafka transaction
/// of the backlog is due after 100 ms with its first rows only (the producer queue held
/// 21 records in every run), its commit waits on the frozen broker (up to 60 s), and the
/// sink takes nothing more from the channel; how many events are in flight then depends
/// on how the source batched the rows that came while the backlog was being written (some
/// thousand, seen from 4,900 to 12,100). `full_queue` waits for the queue full, as at
/// least once, or as exactly once with long transactions.
async fn wait_blocked(relay: &RelayProcess, full_queue: bool) -> (f64, f64) {
    let (min_in_flight, min_queued) = if full_queue {
        (10_000.0, 10_000.0)
    } else {
        (0.0, 0.0)
    };
    let mut last = -1.0;
    let mut steady_since = Instant::now();
    wait_for(
        "the relay to block on the frozen broker",
        Duration::from_secs(120),
        || {
            let (_, body) = relay.admin_get("/metrics");
            let in_flight = sample(&body, "outbox_relay_in_flight_events").unwrap_or(0.0);
            let queued = sample(&body, "outbox_relay_kafka_queue_messages").unwrap_or(0.0);
            if in_flight != last {
                last = in_flight;
                steady_since = Instant::now();
            }
            let blocked = queued >= min_queued
                && in_flight > min_in_flight
                && steady_since.elapsed() > Duration::from_secs(2);
            async move { blocked.then_some((in_flight, queued)) }
        },
    )
    .await
}

/// Writes seqs `from..to` like [`write_seq`], in transactions of 5 rows committed by one
/// DO block: with commits everywhere in the stream, whatever the fault meets holds
/// committed (registered) events.
async fn write_small_transactions(client: &tokio_postgres::Client, from: i64, to: i64) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN FOR s IN {from}..{last} BY 5 LOOP \
               INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || (i % 50), 'Created', \
                 jsonb_build_object('seq', i) FROM generate_series(s, least(s + 4, {last})) AS i; \
               COMMIT; \
             END LOOP; END $$",
            last = to - 1
        ))
        .await
        .expect("write the backlog");
}

/// How the replication connection is broken while the relay is blocked.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `pg_terminate_backend` on the walsender.
    Terminate,
    /// The TCP connection reset on both sides.
    Cut,
    /// No byte moves for longer than `wal_sender_timeout` (5 s): the server gives up.
    Stall,
}

/// Kafka transactions of a relay in exactly-once mode, as `/metrics` counts them.
const COMMITTED: &str = "outbox_relay_kafka_transactions_committed_total";
const ABORTED: &str = "outbox_relay_kafka_transactions_aborted_total";

/// How the relay under test delivers, for [`backpressure_then`].
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// `[kafka]` lines: the delivery mode and its settings.
    kafka_settings: &'static str,
    /// Whether the relay fills its producer queue before it blocks (see [`wait_blocked`]).
    full_queue: bool,
    /// How the scenario's figures line names the mode ("" for the default).
    label: &'static str,
    /// How long the broker stays frozen after the fault.
    thaw_after: Duration,
}

/// At least once (the default): the producer queue fills.
const AT_LEAST_ONCE: Mode = Mode {
    kafka_settings: "",
    full_queue: true,
    label: "",
    thaw_after: Duration::from_secs(2),
};

/// Exactly once with the default transaction settings: the fault meets a commit that
/// waits on the frozen broker.
const EXACTLY_ONCE: Mode = Mode {
    kafka_settings: "delivery = \"exactly_once\"",
    full_queue: false,
    label: ", exactly once",
    thaw_after: Duration::from_secs(2),
};

/// Exactly once with transactions of up to 10 s (100 s while a backlog streams): the
/// fault meets an open Kafka transaction that holds a full producer queue and has not
/// begun to commit.
const EXACTLY_ONCE_LONG_TRANSACTIONS: Mode = Mode {
    kafka_settings: "delivery = \"exactly_once\"\ntransaction_max_ms = 10000",
    full_queue: true,
    label: ", exactly once, open transaction",
    // Longer than the broker's `broker.session.timeout.ms` (9 s): the single-node cluster
    // fences its own broker, and librdkafka drops it while the transaction coordinator
    // still holds it. The relay used to hang there for good, its queue full; now the
    // stalled transactional producer is given up after 30 s and the pipeline restarts.
    thaw_after: Duration::from_secs(14),
};

/// The broker frozen, the pipeline full, then `fault` on the replication connection; the
/// broker thawed `mode.thaw_after` later. Returns the figures (reported: nothing lost) and the relay's
/// log, for the caller to check duplicates against.
async fn backpressure_then(fault: Fault, name: &str, mode: Mode) -> (Figures, String) {
    let scenario = format!("backpressure + {fault:?}{}", mode.label);
    let cluster = PgCluster::shared(); // wal_sender_timeout = 5s
                                       // Its own broker: it is frozen.
    let broker = tokio::task::block_in_place(Broker::start);
    let stage = Stage::new(cluster, name).await;
    let proxy = FaultProxy::to(pg_address(cluster)).await;
    // A terminated walsender must reach the relay as its own reset, not as a proxy that
    // keeps the relay's side open while it cannot deliver what it holds.
    let pg = match fault {
        Fault::Terminate => pg_address(cluster),
        Fault::Cut | Fault::Stall => proxy.address(),
    };
    let config = stage.config("relay.toml", &pg, &broker.bootstrap());
    common::chaos::with_kafka_settings(&config, mode.kafka_settings);
    append_config(&config, SMALL_QUEUE);
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    wait_ready(&relay, Duration::from_secs(60)).await;
    let mut figures = Figures::default();
    // The topics exist and the producer knows them before the freeze.
    write_seq(&stage.admin, 0, 1_000).await;
    stage.fault_ended(&mut figures).await;

    broker.freeze();
    write_small_transactions(&stage.admin, 1_000, BACKLOG).await;
    let (in_flight, queued) = wait_blocked(&relay, mode.full_queue).await;
    let faulted = Instant::now();
    match fault {
        Fault::Terminate => {
            stage.terminate_walsender().await;
        }
        Fault::Cut => proxy.cut(),
        Fault::Stall => {
            proxy.stall();
            // The server gives up on the silent connection (wal_sender_timeout = 5 s).
            wait_for(
                "the server to end the stalled walsender",
                Duration::from_secs(60),
                || async {
                    (!common::pg::walsender_streams(&stage.admin, &stage.slot).await).then_some(())
                },
            )
            .await;
            proxy.resume();
        }
    }
    // The relay may learn of the end only once it reads again, after the thaw (the
    // server's last bytes wait behind the backlog it stopped reading), or at once by a
    // reset: either way an error then meets a batch it has registered and not sent.
    // More than two status intervals (200 ms) with the broker still frozen.
    tokio::time::sleep(mode.thaw_after).await;
    broker.thaw();
    let thawed = Instant::now();
    // It must come back by itself: before the fix it waited forever for events it had
    // dropped, with the process alive and the slot pinned.
    wait_for(
        "the relay to stream again after the broker thawed",
        // A thawed single-node broker can take a while to lead its partitions again.
        Duration::from_secs(240),
        || async {
            let streams = common::pg::walsender_streams(&stage.admin, &stage.slot).await;
            let reconnected = relay.log().matches("starting replication").count() >= 2;
            (streams && reconnected).then_some(())
        },
    )
    .await;
    stage.fault_ended_at(&mut figures, thawed).await;
    stage.tally(&mut figures, &broker, BACKLOG).await;
    figures.sample_rss(&relay);
    assert!(relay.is_running(), "rode out the fault:\n{}", relay.log());
    let (_, metrics) = relay.admin_get("/metrics");
    let transactions = if metric_sum(&metrics, COMMITTED) + metric_sum(&metrics, ABORTED) > 0.0 {
        format!(
            "; kafka transactions committed {} aborted {}",
            metric_sum(&metrics, COMMITTED),
            metric_sum(&metrics, ABORTED)
        )
    } else {
        String::new()
    };
    figures.extra = format!(
        "{in_flight:.0} events in flight ({queued:.0} in the producer queue) when {fault:?} hit; \
         {:.1} s fault to thaw{transactions}",
        faulted.elapsed().as_secs_f64() - thawed.elapsed().as_secs_f64()
    );
    figures.report(&scenario);
    (figures, relay.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walsender_terminated_while_blocked_on_a_frozen_broker_loses_nothing_and_never_hangs() {
    backpressure_then(Fault::Terminate, "bp_terminate", AT_LEAST_ONCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_while_blocked_on_a_frozen_broker_loses_nothing_and_never_hangs() {
    backpressure_then(Fault::Cut, "bp_cut", AT_LEAST_ONCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stalled_while_blocked_on_a_frozen_broker_loses_nothing_and_never_hangs() {
    backpressure_then(Fault::Stall, "bp_stall", AT_LEAST_ONCE).await;
}

/// [`backpressure_then`] in exactly-once mode, where the fault meets a Kafka transaction
/// the frozen broker holds up (its commit waiting, or its records queued): the lost
/// connection restarts the whole pipeline, which aborts that transaction (the abort and
/// the next `init_transactions` each wait up to 60 s for the broker) or, when the broker
/// answers in time, commits what is whole, before the slot sends its rows again. Nothing
/// may hang or be lost, and a read_committed consumer must see no row twice: an aborted
/// transaction stays invisible, and what committed before the restart is skipped by the
/// committed progress when the slot sends it again.
async fn backpressure_then_exactly_once(fault: Fault, name: &str, mode: Mode) {
    let (figures, log) = backpressure_then(fault, name, mode).await;
    let scenario = format!("backpressure + {fault:?}{}", mode.label);
    println!(
        "{scenario}: the relay's eventful log lines:\n{}",
        eventful_lines(&log)
    );
    assert_eq!(
        figures.duplicates, 0,
        "{scenario}: a read_committed consumer saw rows twice (the seqs and the relay's \
         eventful log lines are printed above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walsender_terminated_while_blocked_on_a_frozen_broker_loses_nothing_and_never_hangs_in_exactly_once_mode(
) {
    backpressure_then_exactly_once(Fault::Terminate, "bp_terminate_eos", EXACTLY_ONCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_while_blocked_on_a_frozen_broker_loses_nothing_and_never_hangs_in_exactly_once_mode(
) {
    backpressure_then_exactly_once(Fault::Cut, "bp_cut_eos", EXACTLY_ONCE).await;
}

/// The slowest of them: the broker stays frozen until the server ends the stalled
/// walsender (about 13 s, past the broker's `broker.session.timeout.ms`), and in three of
/// five runs the commit waiting since the freeze delivered nothing after the thaw until its
/// 60 s bound ran out (recovery about 65 s, the test about 100 s; 8 to 17 s otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stalled_while_blocked_on_a_frozen_broker_loses_nothing_and_never_hangs_in_exactly_once_mode(
) {
    backpressure_then_exactly_once(Fault::Stall, "bp_stall_eos", EXACTLY_ONCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walsender_terminated_inside_an_open_transaction_on_a_frozen_broker_in_exactly_once_mode()
{
    backpressure_then_exactly_once(
        Fault::Terminate,
        "bp_terminate_eos_open",
        EXACTLY_ONCE_LONG_TRANSACTIONS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_inside_an_open_transaction_on_a_frozen_broker_in_exactly_once_mode() {
    backpressure_then_exactly_once(
        Fault::Cut,
        "bp_cut_eos_open",
        EXACTLY_ONCE_LONG_TRANSACTIONS,
    )
    .await;
}

/// `cp -a from to` (keeps the postgres owner and modes).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Rows 0..2,000 published, a cold copy taken, rows 2,000..5,000 published, the copy
/// restored under the running relay, rows 5,000..6,000 written on the new history: every
/// row must arrive. `kafka_settings` are `[kafka]` lines (the delivery mode). Returns the
/// figures (reported) and every record of the topic, as a read_committed consumer sees it.
async fn restore_from_an_earlier_copy(
    name: &str,
    kafka_settings: &str,
    scenario: &str,
) -> (Figures, Vec<ReceivedRecord>) {
    // Its own cluster: it is stopped and replaced.
    let cluster = PgCluster::start(PgOptions::default());
    let broker = Broker::shared();
    let mut stage = Stage::new(&cluster, name).await;
    let config = stage.config("relay.toml", &pg_address(&cluster), &broker.bootstrap());
    common::chaos::with_kafka_settings(&config, kafka_settings);
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let mut figures = Figures::default();

    write_seq(&stage.admin, 0, 2_000).await;
    stage.fault_ended(&mut figures).await; // Everything so far acknowledged.

    // A cold copy: the cluster stopped, its data directory copied.
    let data = cluster.data_dir().to_owned();
    let copy = data.with_file_name("data-copy");
    cluster.stop();
    copy_dir(&data, &copy);
    cluster.start_again();
    stage.admin = cluster.client(&stage.db).await;
    // Life goes on after the copy: the relay publishes these and moves far past the copy.
    write_seq(&stage.admin, 2_000, 5_000).await;
    stage.fault_ended(&mut figures).await;

    // The restore: the relay keeps running while the cluster goes back in time.
    cluster.stop();
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    cluster.start_again();
    let restored = Instant::now();
    stage.admin = cluster.client(&stage.db).await;
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    // Rows on the new history. Their commit LSNs are below where the relay had been.
    write_seq(&stage.admin, 5_000, 6_000).await;
    stage.fault_ended_at(&mut figures, restored).await;
    stage.tally(&mut figures, broker, 6_000).await;
    figures.sample_rss(&relay);

    let log = relay.log();
    let line = log
        .lines()
        .find(|l| l.contains("history went back"))
        .unwrap_or_else(|| panic!("one error line about the rewind:\n{log}"));
    assert!(
        line.contains("ERROR") && line.contains("restored") && line.contains("slot_confirmed"),
        "names both positions and the probable cause: {line}"
    );
    let (_, metrics) = relay.admin_get("/metrics");
    assert_eq!(
        sample(&metrics, "outbox_relay_history_rewinds_total"),
        Some(1.0),
        "counted once:\n{metrics}"
    );
    assert!(relay.is_running(), "rode out the restore:\n{log}");
    figures.extra = "1 history rewind".into();
    figures.report(scenario);
    // The tally read them all: the same number again, for the caller to look into.
    let records = broker
        .consume_count(
            &[&stage.topic],
            figures.delivered + figures.duplicates,
            Duration::from_secs(60),
        )
        .await;
    (figures, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_an_earlier_copy_publishes_every_row_written_after_it() {
    restore_from_an_earlier_copy("restore", "", "restore from an earlier copy").await;
}

/// The restore in exactly-once mode: the progress topic then holds a position of the old
/// history, past the restored server's WAL, which must not be used to skip rows of the
/// new one. Rows of the old history after the slot's position may be published again
/// (they are printed); rows written after the restore must arrive exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_exactly_once_mode_publishes_every_row_written_after_it() {
    let (_, records) = restore_from_an_earlier_copy(
        "restore_eos",
        "delivery = \"exactly_once\"",
        "restore from a copy, exactly once",
    )
    .await;
    let mut per_seq: std::collections::BTreeMap<i64, usize> = Default::default();
    for record in &records {
        *per_seq.entry(common::workload::seq_of(record)).or_default() += 1;
    }
    let repeated = |range: std::ops::Range<i64>| -> Vec<i64> {
        per_seq
            .iter()
            .filter(|(seq, n)| range.contains(seq) && **n > 1)
            .map(|(seq, _)| *seq)
            .collect()
    };
    let (before, after) = (repeated(0..5_000), repeated(5_000..6_000));
    println!(
        "restore, exactly once: {} rows of the old history repeated (allowed){}; {} rows written after the restore repeated",
        before.len(),
        before
            .first()
            .map_or(String::new(), |f| format!(", seqs {f}..{}", before.last().unwrap())),
        after.len()
    );
    assert!(
        after.is_empty(),
        "rows written after the restore published more than once: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_resumes_after_the_other_took_over_and_died() {
    let cluster = PgCluster::shared(); // wal_sender_timeout = 5s
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "falsestop").await;
    let configs = [
        stage.config("relay-a.toml", &pg_address(cluster), &broker.bootstrap()),
        stage.config("relay-b.toml", &pg_address(cluster), &broker.bootstrap()),
    ];
    let mut a = stage.start(&configs[0]);
    a.wait_streaming(&stage.admin, &stage.slot).await;
    wait_ready(&a, Duration::from_secs(60)).await;
    let b = stage.start(&configs[1]);
    let mut figures = Figures::default();
    write_seq(&stage.admin, 0, 1_000).await;
    stage.fault_ended(&mut figures).await; // A published these.

    // A pauses; the server ends its silent walsender; B takes over and publishes.
    signal(a.pid(), "-STOP");
    wait_ready(&b, Duration::from_secs(60)).await;
    write_seq(&stage.admin, 1_000, 2_000).await;
    stage.fault_ended(&mut figures).await; // B published these, the slot moved on.
    b.kill9();
    signal(a.pid(), "-CONT");
    let resumed = Instant::now();

    // A must take the slot again and publish, not stop with "advanced elsewhere".
    write_seq(&stage.admin, 2_000, 3_000).await;
    stage.fault_ended_at(&mut figures, resumed).await;
    stage.tally(&mut figures, broker, 3_000).await;
    assert!(a.is_running(), "A resumed:\n{}", a.log());
    assert!(
        a.log().contains("another replica streamed from it"),
        "A says what it found:\n{}",
        a.log()
    );
    figures.sample_rss(&a);
    figures.report("two replicas, paused one resumes");
}

/// A second cluster (another system identifier) with the stage's database, outbox table,
/// publication and slot, as an operator would prepare a rebuilt cluster.
async fn another_system_like(stage: &Stage) -> PgCluster {
    let other = tokio::task::block_in_place(|| PgCluster::start(PgOptions::default()));
    other.psql("postgres", &format!("CREATE DATABASE {}", stage.db));
    let admin = other.client(&stage.db).await;
    admin.batch_execute(common::OUTBOX_DDL).await.unwrap();
    let slot = &stage.slot;
    admin
        .batch_execute(&format!(
            "CREATE PUBLICATION {slot}_pub FOR TABLE public.outbox"
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[slot],
        )
        .await
        .unwrap();
    other
}

/// The relay streams through a proxy from one cluster; the proxy is then pointed at
/// another cluster (a rebuilt or replaced database behind the same `source.url`) and the
/// connection cut. Returns the relay, the stage (its admin client on the other cluster),
/// the other cluster and the proxy, which must outlive the relay's use of it.
async fn switch_systems(
    name: &str,
    source_settings: &str,
) -> (RelayProcess, Stage, PgCluster, FaultProxy) {
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let mut stage = Stage::new(cluster, name).await;
    let proxy = FaultProxy::to(pg_address(cluster)).await;
    let config = stage.config("relay.toml", &proxy.address(), &broker.bootstrap());
    let config = common::chaos::with_source_settings(&config, source_settings);
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let mut figures = Figures::default();
    write_seq(&stage.admin, 0, 1_000).await;
    stage.fault_ended(&mut figures).await; // Published from the first system.

    let other = another_system_like(&stage).await;
    proxy.retarget(pg_address(&other));
    proxy.cut();
    stage.admin = other.client(&stage.db).await;
    (relay, stage, other, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_system_behind_the_same_url_stops_the_relay_with_the_fix() {
    let (mut relay, stage, _other, _proxy) = switch_systems("newsys_stop", "").await;
    write_seq(&stage.admin, 1_000, 1_100).await;
    let status = relay.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(1), "stops:\n{}", relay.log());
    let log = relay.log();
    assert!(
        log.contains("another database system") && log.contains("source.on_new_system"),
        "the exit names the change and the setting that allows it:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_system_followed_when_configured_publishes_its_rows() {
    let (mut relay, stage, _other, _proxy) =
        switch_systems("newsys_follow", "on_new_system = \"follow\"").await;
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let mut figures = Figures::default();
    let followed = Instant::now();
    write_seq(&stage.admin, 1_000, 2_000).await;
    stage.fault_ended_at(&mut figures, followed).await;
    stage.tally(&mut figures, Broker::shared(), 2_000).await;
    assert!(relay.is_running(), "follows:\n{}", relay.log());
    assert!(
        relay.log().contains("followed as source.on_new_system"),
        "says it follows another system:\n{}",
        relay.log()
    );
    let (_, metrics) = relay.admin_get("/metrics");
    assert_eq!(
        sample(&metrics, "outbox_relay_history_rewinds_total"),
        Some(1.0),
        "counted:\n{metrics}"
    );
    figures.sample_rss(&relay);
    figures.extra = "followed another system".into();
    figures.report("another system, followed");
}
