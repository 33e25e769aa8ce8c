//! The fault suite: the relay under process kills, failover, network cuts and stalls,
//! a frozen broker and PostgreSQL restarts, each scenario printing one `chaos:` line of
//! figures (written, delivered, lost, duplicates, recovery time, peak RSS).
//!
//! CI runs a short version; `CHAOS_FULL=1` (what `scripts/chaos.sh` sets) runs the full
//! one: 20 kills in 200,000 events, 5 failovers, 10 cuts each way, a 30 s broker freeze.
//! Recovery is the time from the end of a fault until the slot has passed everything
//! committed by then: back up, and caught up.

mod common;

use std::time::{Duration, Instant};

use common::chaos::{paced_writer, wait_ready, with_source_settings, Figures, Scale, Stage};
use common::kafka::Broker;
use common::pg::{PgCluster, PgOptions};
use common::proxy::FaultProxy;
use common::relay::RelayProcess;
use common::workload::write_seq;
use common::{wait_for, Rng};

fn pg_address(cluster: &PgCluster) -> String {
    format!("127.0.0.1:{}", cluster.port())
}

/// Rows per second so that a stream of `total` rows lasts about `seconds`.
fn rate(total: i64, seconds: u64) -> u64 {
    (total as u64 / seconds.max(1)).max(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let scale = Scale::from_env();
    let (total, kills) = scale.pick((20_000, 3), (200_000, 20));
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "kill").await;
    let config = stage.config("relay.toml", &pg_address(cluster), &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let writer = paced_writer(
        cluster.client(&stage.db).await,
        total,
        rate(total, 3 * kills),
    );

    let mut figures = Figures::default();
    let mut rng = Rng(0x5EED_0001);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.between(200, 2_000))).await;
        figures.sample_rss(&relay);
        relay.kill9();
        relay = stage.start(&config);
        stage.fault_ended(&mut figures).await;
    }
    writer.await.unwrap();
    stage.tally(&mut figures, broker, total).await;
    figures.sample_rss(&relay);
    figures.report("sigkill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_standby_replica_loses_nothing() {
    let scale = Scale::from_env();
    let (total, kills) = scale.pick((20_000, 2), (100_000, 5));
    let cluster = PgCluster::shared();
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "failover").await;
    let configs = [
        stage.config("relay-a.toml", &pg_address(cluster), &broker.bootstrap()),
        stage.config("relay-b.toml", &pg_address(cluster), &broker.bootstrap()),
    ];
    let mut active = stage.start(&configs[0]);
    active.wait_streaming(&stage.admin, &stage.slot).await;
    wait_ready(&active, Duration::from_secs(30)).await;
    let mut standby = stage.start(&configs[1]);
    let mut standby_config = 1;
    wait_standby(&standby).await;
    let writer = paced_writer(
        cluster.client(&stage.db).await,
        total,
        rate(total, 4 * kills),
    );

    let mut figures = Figures::default();
    let mut slowest_takeover = Duration::ZERO;
    let mut rng = Rng(0x5EED_0002);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.between(500, 2_500))).await;
        figures.sample_rss(&active);
        active.kill9();
        let killed_at = Instant::now();
        wait_ready(&standby, Duration::from_secs(30)).await;
        let takeover = killed_at.elapsed();
        slowest_takeover = slowest_takeover.max(takeover);
        assert!(
            takeover < Duration::from_secs(10),
            "takeover took {takeover:?}"
        );
        // The killed replica comes back as the new standby.
        active = std::mem::replace(&mut standby, stage.start(&configs[1 - standby_config]));
        standby_config = 1 - standby_config;
        wait_standby(&standby).await;
        stage.fault_ended_at(&mut figures, killed_at).await;
    }
    writer.await.unwrap();
    stage.tally(&mut figures, broker, total).await;
    figures.sample_rss(&active);
    figures.sample_rss(&standby);
    figures.extra = format!("takeover max {:.1} s", slowest_takeover.as_secs_f64());
    figures.report("failover");
}

/// Waits until `relay` reports itself a standby: alive, `/readyz` 503 "standby".
async fn wait_standby(relay: &RelayProcess) {
    wait_for(
        "the second replica to stand by",
        Duration::from_secs(30),
        || {
            let standby = relay
                .try_admin_get("/readyz")
                .is_ok_and(|(status, body)| status == 503 && body.contains("standby"));
            async move { standby.then_some(()) }
        },
    )
    .await;
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        metrics.contains("outbox_relay_standby 1"),
        "standby gauge:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_cuts_and_a_stall_past_wal_sender_timeout_lose_nothing() {
    let scale = Scale::from_env();
    let (total, cuts) = scale.pick((20_000, 3), (100_000, 10));
    let cluster = PgCluster::shared(); // wal_sender_timeout = 5s
    let broker = Broker::shared();
    let stage = Stage::new(cluster, "pgcut").await;
    let proxy = FaultProxy::to(pg_address(cluster)).await;
    let config = stage.config("relay.toml", &proxy.address(), &broker.bootstrap());
    with_source_settings(&config, "wal_receiver_timeout_ms = 4000");
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let writer = paced_writer(
        cluster.client(&stage.db).await,
        total,
        rate(total, 3 * cuts),
    );

    let mut figures = Figures::default();
    let mut rng = Rng(0x5EED_0003);
    for _ in 0..cuts {
        tokio::time::sleep(Duration::from_millis(rng.between(200, 2_000))).await;
        proxy.cut();
        stage.fault_ended(&mut figures).await;
    }
    // A slow network: 50 ms each way on every chunk, while the stream goes on.
    proxy.set_latency(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_latency(Duration::ZERO);
    stage.fault_ended(&mut figures).await;
    // A stall longer than the server's wal_sender_timeout (5 s): both sides must give up on
    // the silent connection and the relay must come back once the network does.
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.resume();
    stage.fault_ended(&mut figures).await;
    writer.await.unwrap();
    stage.tally(&mut figures, broker, total).await;
    figures.sample_rss(&relay);
    assert!(relay.is_running(), "rode out every fault:\n{}", relay.log());
    assert!(
        relay.log().contains("wal_receiver_timeout"),
        "the stall was noticed:\n{}",
        relay.log()
    );
    figures.report("postgres cuts + latency + stall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_cuts_and_a_frozen_broker_lose_nothing_and_dead_letter_nothing() {
    let scale = Scale::from_env();
    let (total, cuts, freeze) = scale.pick((20_000, 3, 10), (100_000, 10, 30));
    let cluster = PgCluster::shared();
    // Its own broker, behind the proxy: it advertises the proxy's port, so every
    // connection after the bootstrap goes through the proxy too.
    let proxy = FaultProxy::to("127.0.0.1:1").await; // Retargeted at the broker.
    let broker = tokio::task::block_in_place(|| Broker::start_behind(&proxy));
    let stage = Stage::new(cluster, "brokercut").await;
    let config = stage.config("relay.toml", &pg_address(cluster), &proxy.address());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let writer = paced_writer(
        cluster.client(&stage.db).await,
        total,
        rate(total, 3 * cuts + freeze),
    );

    let mut figures = Figures::default();
    let mut rng = Rng(0x5EED_0004);
    for _ in 0..cuts {
        tokio::time::sleep(Duration::from_millis(rng.between(200, 2_000))).await;
        proxy.cut();
        stage.fault_ended(&mut figures).await;
    }
    broker.freeze();
    tokio::time::sleep(Duration::from_secs(freeze)).await;
    broker.thaw();
    stage.fault_ended(&mut figures).await;
    writer.await.unwrap();
    stage.tally(&mut figures, &broker, total).await;
    figures.sample_rss(&relay);
    assert!(relay.is_running(), "rode out every fault:\n{}", relay.log());
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        common::metric_sum(&metrics, "outbox_relay_events_dead_lettered_total") == 0.0,
        "transient faults dead-letter nothing:\n{metrics}"
    );
    assert!(
        proxy.accepted() as u64 > cuts,
        "the relay reconnected through the proxy"
    );
    figures.extra = format!("broker frozen {freeze} s");
    figures.report("broker cuts + freeze");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_and_immediate_restarts_lose_nothing() {
    // Its own cluster: restarting the shared one would break the other scenarios.
    let cluster = PgCluster::start(PgOptions::default());
    let broker = Broker::shared();
    let mut stage = Stage::new(&cluster, "restart").await;
    let config = stage.config("relay.toml", &pg_address(&cluster), &broker.bootstrap());
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;

    let mut figures = Figures::default();
    let per_phase = 5_000;
    write_seq(&stage.admin, 0, per_phase).await;
    for (phase, mode) in [(1, "fast"), (2, "immediate")] {
        figures.sample_rss(&relay);
        // Immediate: no shutdown checkpoint, so the restart is a crash recovery.
        cluster.restart(mode);
        let restarted = Instant::now();
        stage.admin = cluster.client(&stage.db).await;
        write_seq(&stage.admin, phase * per_phase, (phase + 1) * per_phase).await;
        stage.fault_ended_at(&mut figures, restarted).await;
    }
    stage.tally(&mut figures, broker, 3 * per_phase).await;
    figures.sample_rss(&relay);
    assert!(
        relay.is_running(),
        "reconnected by itself:\n{}",
        relay.log()
    );
    figures.report("postgres restarts");
}

#[tokio::test]
async fn the_proxy_cuts_stalls_and_blocks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server behind the proxy.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_address = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = FaultProxy::to(echo_address).await;
    let mut client = tokio::net::TcpStream::connect(proxy.address())
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    client.write_all(b"ping").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    proxy.stall();
    client.write_all(b"late").await.unwrap();
    let stalled = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await;
    assert!(stalled.is_err(), "nothing passes while stalled");
    proxy.resume();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"late", "held bytes pass after resume");

    proxy.set_latency(Duration::from_millis(100));
    let sent = Instant::now();
    client.write_all(b"slow").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"slow");
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "latency applies each way"
    );
    proxy.set_latency(Duration::ZERO);

    proxy.cut();
    let after_cut = client.read(&mut buf).await;
    assert!(
        matches!(after_cut, Ok(0) | Err(_)),
        "a cut closes the connection: {after_cut:?}"
    );

    proxy.block();
    let mut blocked = tokio::net::TcpStream::connect(proxy.address())
        .await
        .unwrap();
    let _ = blocked.write_all(b"ping").await;
    assert!(
        matches!(blocked.read(&mut buf).await, Ok(0) | Err(_)),
        "blocked"
    );
    proxy.unblock();
    let mut again = tokio::net::TcpStream::connect(proxy.address())
        .await
        .unwrap();
    again.write_all(b"pong").await.unwrap();
    again.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// The faults of the suite on an unpaced stream: a backlog written while the relay is away,
/// then drained at full speed while each fault hits in turn (SIGKILL, PostgreSQL cut,
/// walsender terminated, broker frozen), each without waiting for the relay to catch up
/// first, so every one meets a full pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaced_backlog_drained_at_full_speed_through_every_fault_loses_nothing() {
    let scale = Scale::from_env();
    let total = scale.pick(100_000, 300_000);
    let cluster = PgCluster::shared();
    // Its own broker: it is frozen.
    let broker = tokio::task::block_in_place(Broker::start);
    let stage = Stage::new(cluster, "unpaced").await;
    let proxy = FaultProxy::to(pg_address(cluster)).await;
    let config = stage.config("relay.toml", &proxy.address(), &broker.bootstrap());
    // The slot first, then the backlog while no relay runs.
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    assert!(relay.terminate().success());
    write_seq(&stage.admin, 0, total).await;

    let mut figures = Figures::default();
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let mut rng = Rng(0x5EED_0005);
    let mut in_flight_at = Vec::new();
    for fault in [
        "sigkill",
        "postgres cut",
        "walsender terminated",
        "broker frozen",
    ] {
        // Faults follow each other quickly, so each meets the drain in full flow.
        tokio::time::sleep(Duration::from_millis(rng.between(300, 900))).await;
        let (_, metrics) = relay.admin_get("/metrics");
        in_flight_at.push(
            metrics
                .lines()
                .find(|l| l.starts_with("outbox_relay_in_flight_events "))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("?")
                .to_owned(),
        );
        figures.sample_rss(&relay);
        match fault {
            "sigkill" => {
                relay.kill9();
                relay = stage.start(&config);
                relay.wait_streaming(&stage.admin, &stage.slot).await;
            }
            "postgres cut" => proxy.cut(),
            "walsender terminated" => {
                stage.terminate_walsender().await;
            }
            _ => {
                broker.freeze();
                tokio::time::sleep(Duration::from_secs(5)).await;
                broker.thaw();
            }
        }
        figures.faults += 1;
    }
    let ended = Instant::now();
    stage.fault_ended_at(&mut figures, ended).await;
    figures.faults -= 1; // fault_ended_at counted the last one again.
    stage.tally(&mut figures, &broker, total).await;
    figures.sample_rss(&relay);
    assert!(relay.is_running(), "rode out every fault:\n{}", relay.log());
    figures.extra = format!("in flight at each fault: {}", in_flight_at.join(", "));
    figures.report("unpaced backlog, every fault");
}
