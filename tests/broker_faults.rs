//! Faults of the Kafka broker itself, in the fault suite's style (one `chaos:` line per
//! scenario, short sizes in CI, full sizes with `CHAOS_FULL=1`):
//!
//! * the broker stopped gracefully (SIGTERM) or SIGKILLed mid-stream and started again on
//!   the same log dirs: librdkafka reconnects by itself, nothing is lost and nothing
//!   dead-lettered, duplicates are counted;
//! * the relay's principal losing Write on its topic mid-stream (a broker with ACLs and a
//!   SCRAM listener): the relay holds that topic (readiness 503, the blocked gauge, one
//!   error line naming the fix) instead of dead-lettering every row, the slot stays before
//!   the first refused row, and once Write comes back every row arrives in per-key order;
//! * the relay's topic deleted mid-stream: with `kafka.create_topics = false` the relay
//!   holds it (readiness 503 naming the topic, nothing dead-lettered, the slot behind) until
//!   an operator creates it again, also across an in-process pipeline restart while it is
//!   held; with creation on it creates the topic again itself. In all of them, every row
//!   not yet delivered when the topic went arrives, in per-key order.
//!
//! A real broker restart differs from the proxy cuts of `tests/chaos.rs`: the broker loses
//! its in-memory producer state and partition leadership, so the idempotent producer has
//! to be accepted again by a broker that rebuilt both from its logs.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::chaos::{paced_writer, Figures, Scale, Stage};
use common::kafka::{Broker, BrokerOptions};
use common::pg::PgCluster;
use common::proxy::FaultProxy;
use common::relay::RelayProcess;
use common::workload::seq_of;
use common::{confirmed_flush, wait_for};

fn pg_address(cluster: &PgCluster) -> String {
    format!("127.0.0.1:{}", cluster.port())
}

/// Rows per second so that a stream of `total` rows lasts about `seconds`.
fn rate(total: i64, seconds: u64) -> u64 {
    (total as u64 / seconds.max(1)).max(100)
}

/// How the broker goes down.
#[derive(Debug, Clone, Copy)]
enum Down {
    /// SIGTERM: a controlled shutdown, logs flushed.
    Stop,
    /// SIGKILL: no shutdown at all; what it acknowledged is in the page cache.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_graceful_restarts_mid_stream_lose_nothing() {
    broker_restarts(Down::Stop, "brokerstop", "broker restart (SIGTERM)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkills_and_restarts_mid_stream_lose_nothing() {
    broker_restarts(Down::Kill, "brokerkill", "broker restart (SIGKILL)").await;
}

async fn broker_restarts(down: Down, name: &str, scenario: &str) {
    let scale = Scale::from_env();
    let (total, restarts) = scale.pick((10_000, 1), (100_000, 5));
    let cluster = PgCluster::shared();
    // Its own broker: the shared one must stay up for the other scenarios.
    let broker = tokio::task::block_in_place(Broker::start);
    let stage = Stage::new(cluster, name).await;
    let (mut relay, writer) = stream_paced(&stage, cluster, &broker, total, 6 * restarts).await;

    let mut figures = Figures::default();
    let mut longest_down = Duration::ZERO;
    for _ in 0..restarts {
        // Mid-stream: the relay has delivered part of the stream and has more in flight.
        wait_delivering(&relay).await;
        figures.sample_rss(&relay);
        let went_down = Instant::now();
        tokio::task::block_in_place(|| {
            match down {
                Down::Stop => broker.stop(),
                Down::Kill => broker.kill(),
            }
            broker.restart();
        });
        longest_down = longest_down.max(went_down.elapsed());
        stage.fault_ended(&mut figures).await;
    }
    writer.await.unwrap();
    stage.tally(&mut figures, &broker, total).await;
    figures.sample_rss(&relay);
    assert!(
        relay.is_running(),
        "rode out every restart:\n{}",
        relay.log()
    );
    assert_dead_lettered_nothing(&relay);
    figures.extra = format!("broker down max {:.1} s", longest_down.as_secs_f64());
    figures.report(scenario);
}

/// A broker fenced by its controller answers metadata with no broker at all: it is not
/// alive in its own cluster's eyes. librdkafka 2.12 then forgets every broker, bootstrap
/// ones included, and never asks again (librdkafka#5301). A single-node broker paused past
/// `broker.session.timeout.ms` hits this for a few milliseconds after it resumes, which
/// made the frozen-broker chaos scenario hang now and then. Here the window is held open:
/// the broker's heartbeats to its controller go through a proxy that stalls them, so the
/// controller fences it and keeps it fenced while the relay's records queue up. The relay
/// must give librdkafka its bootstrap servers back (`outbox_relay_kafka_rebootstraps_total`)
/// and deliver everything once the heartbeats flow again; before that fix it hung for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_fenced_by_its_controller_loses_nothing() {
    let scale = Scale::from_env();
    let (total, fencings) = scale.pick((8_000, 1), (40_000, 3));
    let cluster = PgCluster::shared();
    let controller_port = common::kafka::free_port();
    let heartbeats = FaultProxy::to(format!("127.0.0.1:{controller_port}")).await;
    let broker = tokio::task::block_in_place(|| {
        Broker::start_with_options(BrokerOptions {
            // The broker reaches its controller (itself) at the voter's address: the proxy.
            properties: format!(
                "controller.quorum.voters=1@{}\nbroker.session.timeout.ms=6000",
                heartbeats.address()
            ),
            controller_port: Some(controller_port),
            ..BrokerOptions::default()
        })
    });
    let stage = Stage::new(cluster, "brokerfence").await;
    let (mut relay, writer) = stream_paced(&stage, cluster, &broker, total, 20 * fencings).await;

    let mut figures = Figures::default();
    for fencing in 1..=fencings {
        wait_delivering(&relay).await;
        heartbeats.stall();
        wait_for(
            "the controller to fence the broker",
            Duration::from_secs(60),
            || async { (fenced(&broker) as u64 >= fencing).then_some(()) },
        )
        .await;
        // The fault's length, not a synchronisation: fenced for a while with records queued.
        tokio::time::sleep(Duration::from_secs(5)).await;
        heartbeats.resume();
        stage.fault_ended(&mut figures).await;
    }
    writer.await.unwrap();
    stage.tally(&mut figures, &broker, total).await;
    figures.sample_rss(&relay);
    assert!(relay.is_running(), "rode out the fencing:\n{}", relay.log());
    assert_dead_lettered_nothing(&relay);
    let rebootstraps = rebootstraps(&relay);
    assert!(
        rebootstraps >= 1,
        "the relay saw the fenced cluster list no broker and re-bootstrapped:\n{}",
        relay.log()
    );
    figures.extra = format!("fenced {fencings}x, client re-bootstraps {rebootstraps}");
    figures.report("broker fenced by its controller");
}

/// How many times the broker's controller fenced it for a lapsed session.
fn fenced(broker: &Broker) -> usize {
    std::fs::read_to_string(broker.dir().join("broker.log"))
        .unwrap_or_default()
        .matches("because its session has timed out")
        .count()
}

/// `outbox_relay_kafka_rebootstraps_total`, 0 when never counted.
fn rebootstraps(relay: &RelayProcess) -> u64 {
    let (_, metrics) = relay.admin_get("/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("outbox_relay_kafka_rebootstraps_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Starts the stage's relay on `broker`, waits until it streams, and writes `total` rows
/// paced over about `seconds`.
async fn stream_paced(
    stage: &Stage,
    cluster: &PgCluster,
    broker: &Broker,
    total: i64,
    seconds: u64,
) -> (RelayProcess, tokio::task::JoinHandle<()>) {
    let config = stage.config("relay.toml", &pg_address(cluster), &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let writer = paced_writer(cluster.client(&stage.db).await, total, rate(total, seconds));
    (relay, writer)
}

/// Waits until the relay has delivered part of the stream (so a fault lands mid-stream).
async fn wait_delivering(relay: &RelayProcess) {
    wait_for(
        "the relay to deliver part of the stream",
        Duration::from_secs(60),
        || async { (delivered(relay) > 0).then_some(()) },
    )
    .await;
}

/// `outbox_relay_events_total` summed over its series.
fn delivered(relay: &RelayProcess) -> u64 {
    let Ok((200, metrics)) = relay.try_admin_get("/metrics") else {
        return 0;
    };
    metrics
        .lines()
        .filter(|l| l.starts_with("outbox_relay_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn assert_dead_lettered_nothing(relay: &RelayProcess) {
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        common::metric_sum(&metrics, "outbox_relay_events_dead_lettered_total") == 0.0,
        "broker faults dead-letter nothing:\n{metrics}"
    );
    assert!(
        !relay.log().contains("dead-lettering row"),
        "broker faults dead-letter nothing:\n{}",
        relay.log()
    );
}

/// SCRAM passwords, set when the broker's storage is formatted.
const ADMIN_PASSWORD: &str = "admin-secret";
const RELAY_PASSWORD: &str = "relay-secret";

/// A broker that authorizes: `StandardAuthorizer`, a `SASL_PLAINTEXT` listener with
/// SCRAM-SHA-512 users `admin` (a super user) and `relay` (only its ACLs). The PLAINTEXT
/// listener carries the controller and inter-broker traffic, and the harness's own
/// clients, as `User:ANONYMOUS`, so that principal is a super user too; the relay only
/// ever uses the SASL listener.
fn acl_broker_options() -> BrokerOptions {
    BrokerOptions {
        properties: [
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:admin;User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
             org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ]
        .join("\n"),
        format_args: format!(
            "--add-scram SCRAM-SHA-512=[name=admin,password={ADMIN_PASSWORD}] \
             --add-scram SCRAM-SHA-512=[name=relay,password={RELAY_PASSWORD}]"
        ),
        listeners: vec!["SASL_PLAINTEXT://127.0.0.1:{port}".into()],
        ..BrokerOptions::default()
    }
}

/// Changes ACLs with Kafka's `AclCommand` as the `admin` super user over SASL (rdkafka has
/// no ACL API).
struct Acls {
    bootstrap: String,
    command_config: std::path::PathBuf,
}

impl Acls {
    fn new(broker: &Broker, dir: &Path) -> Acls {
        let command_config = dir.join("admin.properties");
        std::fs::write(
            &command_config,
            format!(
                "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
                 sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
                 required username=\"admin\" password=\"{ADMIN_PASSWORD}\";\n"
            ),
        )
        .unwrap();
        Acls {
            bootstrap: format!("127.0.0.1:{}", broker.listener_port(0)),
            command_config,
        }
    }

    fn run(&self, args: &[&str]) {
        let config = self.command_config.display().to_string();
        let mut all = vec![
            "--bootstrap-server",
            &self.bootstrap,
            "--command-config",
            &config,
        ];
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| {
            common::kafka::kafka_tool("org.apache.kafka.tools.AclCommand", &all)
        });
    }
}

/// Writes seqs `0..total` like [`paced_writer`], recording each transaction's first seq and
/// an upper bound of its commit LSN, so the test can tell which rows the slot has passed.
fn recorded_writer(
    client: tokio_postgres::Client,
    total: i64,
    per_second: u64,
    written: std::sync::Arc<std::sync::Mutex<Vec<(i64, outbox_relay::replication::Lsn)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        const CHUNK: i64 = 500;
        let pause = Duration::from_secs_f64(CHUNK as f64 / per_second.max(1) as f64);
        let mut next = tokio::time::Instant::now();
        for from in (0..total).step_by(CHUNK as usize) {
            let txns = common::workload::write_seq(&client, from, (from + CHUNK).min(total)).await;
            written.lock().unwrap().extend(txns);
            // Pacing sets the workload's rate; it synchronises nothing.
            next += pause;
            tokio::time::sleep_until(next).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_write_holds_the_topic_and_dead_letters_nothing() {
    let scale = Scale::from_env();
    // Full: blocked for over a minute, so the error line repeats once.
    let (total, blocked_secs) = scale.pick((8_000, 8), (60_000, 75));
    let cluster = PgCluster::shared();
    let broker = tokio::task::block_in_place(|| Broker::start_with_options(acl_broker_options()));
    let stage = Stage::new(cluster, "aclhold").await;
    let topic = stage.topic.clone();
    let prefix = format!("{}.", topic.trim_end_matches(".outbox.event.order"));
    let acls = Acls::new(&broker, stage.dir.path());
    // The relay may create, describe and write every topic of this scenario (its topic,
    // the marker topic, the DLQ).
    acls.run(&[
        "--add",
        "--allow-principal",
        "User:relay",
        "--operation",
        "Write",
        "--operation",
        "Describe",
        "--operation",
        "Create",
        "--topic",
        &prefix,
        "--resource-pattern-type",
        "prefixed",
    ]);
    let sasl_bootstrap = format!("127.0.0.1:{}", broker.listener_port(0));
    let config = stage.config("relay.toml", &pg_address(cluster), &sasl_bootstrap);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "\n[dlq]\ntopic = \"{prefix}dlq\"\n\n[kafka.properties]\n\
         \"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"relay\"\n\"sasl.password\" = \"${{KAFKA_PASSWORD}}\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let mut relay = RelayProcess::start_with_env(
        &config,
        stage.dir.path(),
        "info,rdkafka=warn",
        &[("KAFKA_PASSWORD", RELAY_PASSWORD)],
    );
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = recorded_writer(
        cluster.client(&stage.db).await,
        total,
        rate(total, 2 * blocked_secs + 10),
        written.clone(),
    );
    wait_for(
        "the relay to deliver part of the stream",
        Duration::from_secs(60),
        || async { (delivered(&relay) > 0).then_some(()) },
    )
    .await;

    // Mid-stream, the relay's principal loses Write on its topic (a deny beats the allow).
    let deny = [
        "--deny-principal",
        "User:relay",
        "--operation",
        "Write",
        "--topic",
        topic.as_str(),
    ];
    acls.run(&[&["--add"][..], &deny].concat());
    let revoked = Instant::now();
    let fix = format!("grant Write on topic {topic} to principal User:relay");
    let gauge = format!("outbox_relay_topic_blocked{{topic=\"{topic}\"}}");
    wait_for(
        "the relay to report the topic blocked",
        Duration::from_secs(60),
        || {
            let ready = relay.try_admin_get("/readyz");
            let metrics = relay.try_admin_get("/metrics");
            let blocked = ready.is_ok_and(|(status, body)| status == 503 && body.contains(&fix))
                && metrics.is_ok_and(|(_, m)| m.contains(&format!("{gauge} 1")));
            async move { blocked.then_some(()) }
        },
    )
    .await;
    // The fault lasts a while, with rows still being written (its length is the fault,
    // not a synchronisation).
    tokio::time::sleep(Duration::from_secs(blocked_secs).saturating_sub(revoked.elapsed())).await;

    // The slot has not passed a row Kafka does not have: every transaction at or below the
    // confirmed LSN is on the topic. (Nothing reaches the topic meanwhile, so reading it
    // after taking the LSN is exact.)
    let confirmed = confirmed_flush(&stage.admin, &stage.slot).await;
    let txns = written.lock().unwrap().clone();
    let passed: std::collections::HashSet<i64> = txns
        .iter()
        .filter(|(_, lsn)| *lsn <= confirmed)
        .flat_map(|(start, _)| *start..(*start + 100).min(total))
        .collect();
    assert!(
        txns.iter().any(|(_, lsn)| *lsn > confirmed),
        "the slot stopped before rows written during the block (confirmed {confirmed})"
    );
    let mut missing = passed.clone();
    let mut checked = 0;
    let give_up = Instant::now() + Duration::from_secs(30);
    broker
        .consume_until(&[&topic], Duration::from_secs(60), |records| {
            for record in &records[checked..] {
                missing.remove(&seq_of(record));
            }
            checked = records.len();
            missing.is_empty() || Instant::now() > give_up
        })
        .await;
    assert!(
        missing.is_empty(),
        "the slot (confirmed {confirmed}) passed {} rows that are not on the topic",
        missing.len()
    );
    assert_dead_lettered_nothing(&relay);

    // Write comes back: the held rows and everything after them flow, in order.
    acls.run(&[&["--remove", "--force"][..], &deny].concat());
    let granted = Instant::now();
    wait_for(
        "the relay to take the topic up again",
        Duration::from_secs(60),
        || {
            let ready = relay.try_admin_get("/readyz").is_ok_and(|(s, _)| s == 200);
            let metrics = relay.try_admin_get("/metrics");
            let flowing = ready && metrics.is_ok_and(|(_, m)| m.contains(&format!("{gauge} 0")));
            async move { flowing.then_some(()) }
        },
    )
    .await;
    let mut figures = Figures::default();
    stage.fault_ended_at(&mut figures, granted).await;
    writer.await.unwrap();
    stage.tally(&mut figures, &broker, total).await;
    figures.sample_rss(&relay);
    assert!(relay.is_running(), "held, never stopped:\n{}", relay.log());
    assert_dead_lettered_nothing(&relay);
    assert_per_key_order(&broker, &topic, 0..total).await;

    // One error line per minute while blocked, naming the fix.
    let log = relay.log();
    let alerts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("kafka refuses the topic"))
        .collect();
    let blocked_for = granted.duration_since(revoked);
    let most = 1 + blocked_for.as_secs() as usize / 60;
    assert!(
        (1..=most).contains(&alerts.len()) && alerts.iter().all(|l| l.contains(&fix)),
        "expected 1..={most} error lines naming the fix over {blocked_for:?}:\n{log}"
    );
    figures.extra = format!(
        "Write revoked {:.0} s, {} error lines",
        blocked_for.as_secs_f64(),
        alerts.len()
    );
    figures.report("topic Write revoked + granted");
}

/// Per key, the records of `topic` in Kafka's order (by offset within a partition) carry
/// increasing seqs; a duplicate may repeat an earlier one but never overtake. Waits until
/// every seq of `wanted` is there; returns how many distinct seqs and how many records it
/// read.
async fn assert_per_key_order(
    broker: &Broker,
    topic: &str,
    wanted: std::ops::Range<i64>,
) -> (usize, usize) {
    let mut missing: std::collections::HashSet<i64> = wanted.collect();
    let mut checked = 0;
    let mut records = broker
        .consume_until(&[topic], Duration::from_secs(120), |records| {
            for record in &records[checked..] {
                missing.remove(&seq_of(record));
            }
            checked = records.len();
            missing.is_empty()
        })
        .await;
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    for record in &records {
        let seq = seq_of(record);
        let key = record.key.clone().expect("key");
        let previous = last.entry(key.clone()).or_insert(-1);
        if seq > *previous {
            *previous = seq;
        } else {
            // Only a resend of something already delivered may come later.
            assert!(
                records.iter().any(|r| r.key.as_ref() == Some(&key)
                    && seq_of(r) == seq
                    && r.offset < record.offset),
                "key {}: seq {seq} after seq {previous} at offset {}",
                String::from_utf8_lossy(&key),
                record.offset
            );
        }
    }
    let distinct: std::collections::HashSet<i64> = records.iter().map(seq_of).collect();
    (distinct.len(), records.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_is_held_until_an_operator_creates_it_again() {
    topic_deleted_mid_stream(false, false, "topicgone", "topic deleted, creation off").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_stays_held_across_a_pipeline_restart() {
    topic_deleted_mid_stream(
        false,
        true,
        "topicheld",
        "topic deleted, creation off, pipeline restarted while held",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_is_created_again_by_the_relay() {
    topic_deleted_mid_stream(true, false, "topicback", "topic deleted, creation on").await;
}

/// While the topic is held, the replication connection is ended: the source cannot
/// reconnect before the held rows are acknowledged, so the pipeline restarts in-process
/// (after the supervisor's drain limit) and the slot sends the held rows again. The new
/// pipeline must hold them too: the topic existed, so they are no fault of their own.
async fn restart_pipeline_while_held(stage: &Stage, relay: &RelayProcess) {
    stage.terminate_walsender().await;
    // What the pipeline logged since its last restart: the held rows either hold the topic
    // again (its first alert) or are dead-lettered.
    let since_restart = |log: &str| {
        log.rfind("restarting it in-process")
            .map(|at| log[at..].to_owned())
    };
    let restarted = wait_for(
        "the pipeline to restart and meet the deleted topic again",
        Duration::from_secs(150),
        || {
            let met = since_restart(&relay.log()).filter(|after| {
                after.contains("kafka refuses the topic") || after.contains("dead-lettering row")
            });
            async move { met }
        },
    )
    .await;
    let restarted = restarted.lines().next().unwrap_or_default().to_owned();
    println!("pipeline restarted while held: {restarted}");
}

/// Rows flow; the relay's topic is deleted; more rows are written while it is gone; the
/// topic comes back (created by the test, or by the relay itself with `create_topics`).
/// Rows delivered before the deletion went with the topic: every row written after it, and
/// every row still queued when it went, must arrive, in per-key order, and nothing may be
/// dead-lettered.
async fn topic_deleted_mid_stream(
    create_topics: bool,
    restart_while_held: bool,
    name: &str,
    scenario: &str,
) {
    let scale = Scale::from_env();
    let (before, gone, after) = scale.pick((3_000, 3_000, 2_000), (30_000, 30_000, 20_000));
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, name).await;
    let topic = stage.topic.clone();
    let prefix = topic.trim_end_matches(".outbox.event.order");
    let (marker_topic, dlq) = (
        format!("{prefix}.outbox.event.marker"),
        format!("{prefix}.dlq"),
    );
    for existing in [&topic, &marker_topic, &dlq] {
        broker.create_topic(existing, 3).await;
    }
    let config = stage.config("relay.toml", &pg_address(cluster), &broker.bootstrap());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[kafka]\n",
        &format!("[kafka]\ncreate_topics = {create_topics}\nunknown_topic_wait_ms = 2000\n"),
    ) + &format!("\n[dlq]\ntopic = \"{dlq}\"\n");
    std::fs::write(&config, text).unwrap();
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let writer = cluster.client(&stage.db).await;
    let paced = |from: i64, to: i64| {
        let client = &writer;
        async move {
            // 500 rows a chunk, ten chunks a second: the deletion lands mid-stream.
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            for chunk in (from..to).step_by(500) {
                pace.tick().await;
                common::workload::write_seq(client, chunk, (chunk + 500).min(to)).await;
            }
        }
    };
    paced(0, before).await;
    wait_for(
        "the relay to deliver part of the stream",
        Duration::from_secs(60),
        || async { (delivered(&relay) > 0).then_some(()) },
    )
    .await;

    broker.delete_topic(&topic).await;
    let deleted = Instant::now();
    paced(before, before + gone).await;
    let gauge = format!("outbox_relay_topic_blocked{{topic=\"{topic}\"}}");
    if !create_topics {
        // Held, not dead-lettered: readiness says which topic and why, the slot stays
        // before the rows written since.
        wait_for(
            "the relay to report the deleted topic",
            Duration::from_secs(90),
            || {
                let ready = relay.try_admin_get("/readyz");
                let metrics = relay.try_admin_get("/metrics");
                let blocked = ready
                    .is_ok_and(|(status, body)| status == 503 && body.contains(&topic))
                    && metrics.is_ok_and(|(_, m)| m.contains(&format!("{gauge} 1")));
                async move { blocked.then_some(()) }
            },
        )
        .await;
        let confirmed = confirmed_flush(&stage.admin, &stage.slot).await;
        let written = common::insert_lsn(&stage.admin).await;
        assert!(
            confirmed < written,
            "the slot passed rows of a deleted topic"
        );
        assert_dead_lettered_nothing(&relay);
        if restart_while_held {
            restart_pipeline_while_held(&stage, &relay).await;
            assert_dead_lettered_nothing(&relay);
        }
        broker.create_topic(&topic, 3).await;
    }
    let back = Instant::now();
    paced(before + gone, before + gone + after).await;
    let mut figures = Figures::default();
    stage.fault_ended_at(&mut figures, back).await;
    assert!(relay.is_running(), "held, never stopped:\n{}", relay.log());
    assert_dead_lettered_nothing(&relay);
    let wanted = before..before + gone + after;
    let (distinct, read) = assert_per_key_order(broker, &topic, wanted.clone()).await;
    figures.sample_rss(&relay);
    figures.written = wanted.count();
    // Every row written since the deletion is there (the wait above), plus the rows still
    // queued when the topic went.
    figures.delivered = figures.written;
    figures.duplicates = read - distinct;
    let queued = distinct.saturating_sub(figures.written);
    figures.extra = format!(
        "topic gone {:.1} s; {queued} rows queued at the deletion arrived too (those delivered \
         before it went with the topic)",
        back.duration_since(deleted).as_secs_f64()
    );
    figures.report(scenario);
}
