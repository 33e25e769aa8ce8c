//! Smoke test of the Kafka test harness in `tests/common/kafka.rs`, and of the broker
//! behaviour the relay's tests rely on:
//!
//! * CreateTopics accepts partitions/replication factor -1 (broker defaults: 3
//!   partitions) as well as explicit 1/1, and a topic takes produce right away.
//! * A restart (SIGTERM or SIGKILL) on the same log dirs keeps every acknowledged record.
//! * An idempotent producer (`enable.idempotence`, `acks=all`, `message.timeout.ms=0`)
//!   gets a producer id and delivers in order, also across a SIGSTOP/SIGCONT outage.

#[path = "common/kafka.rs"]
mod kafka;
// `kafka` can start a broker behind the proxy; this binary does not use that.
#[allow(dead_code)]
#[path = "common/proxy.rs"]
mod proxy;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka::{unique_topic, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn shared_broker_round_trips_keys_payloads_and_headers() {
    let broker = Broker::shared();
    assert!(
        std::ptr::eq(broker, Broker::shared()),
        "one broker per binary"
    );
    assert!(
        broker.bootstrap().starts_with("127.0.0.1:"),
        "{}",
        broker.bootstrap()
    );
    let topic = unique_topic("smoke");
    broker.create_topic(&topic, 3).await;
    broker.create_topic(&topic, 3).await; // Already exists: fine.

    let producer: FutureProducer = broker.client_config().create().unwrap();
    for i in 0..30 {
        let (id, key, payload) = (
            i.to_string(),
            format!("key-{}", i % 5),
            format!("payload-{i}"),
        );
        let id_header = Header {
            key: "id",
            value: Some(&id),
        };
        let null_header = Header {
            key: "empty",
            value: None::<&str>,
        };
        let headers = OwnedHeaders::new().insert(id_header).insert(null_header);
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        producer.send(record, WAIT).await.unwrap();
    }

    let records = broker.consume_count(&[&topic], 30, WAIT).await;
    assert_eq!(records.len(), 30);
    for key in 0..5 {
        let key = format!("key-{key}").into_bytes();
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_ref() == Some(&key))
            .collect();
        assert_eq!(mine.len(), 6);
        assert!(
            mine.iter().all(|r| r.partition == mine[0].partition),
            "one partition per key"
        );
        let ids: Vec<u32> = mine
            .iter()
            .map(|r| r.header_str("id").unwrap().parse().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "per-key order: {ids:?}"
        );
        assert!(mine.windows(2).all(|w| w[0].offset < w[1].offset));
    }
    let first = &records[0];
    let id = first.header_str("id").unwrap();
    assert_eq!(
        first.payload.as_deref(),
        Some(format!("payload-{id}").as_bytes())
    );
    assert_eq!(
        first.header("empty"),
        Some(&b""[..]),
        "a null header reads as empty"
    );
    assert_eq!(first.header("missing"), None);
    assert!(records.iter().all(|r| r.topic == topic));
}

/// The broker takes -1/-1 (3 partitions) and 1/1, and produce works at once after.
#[tokio::test(flavor = "multi_thread")]
async fn create_topics_takes_broker_defaults_and_produce_works_at_once() {
    let broker = Broker::shared();
    let admin: AdminClient<DefaultClientContext> = broker.client_config().create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(WAIT));
    let producer: FutureProducer = broker
        .client_config()
        .set("message.timeout.ms", "5000") // Fails if the new topic is not usable quickly.
        .create()
        .unwrap();
    for (partitions, replication, expected) in [(-1, -1, 3), (1, 1, 1)] {
        let topic = unique_topic("defaults");
        let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(replication));
        let created = admin.create_topics([&new], &options).await.unwrap();
        assert_eq!(created, [Ok(topic.clone())]);
        assert_eq!(
            partition_count(broker, &topic),
            expected,
            "{partitions}/{replication}"
        );

        let started = Instant::now();
        for p in 0..expected as i32 {
            let record = FutureRecord::to(&topic).partition(p).key("k").payload("v");
            producer.send(record, Duration::ZERO).await.unwrap();
        }
        eprintln!(
            "{partitions}/{replication}: delivered {:?} after create",
            started.elapsed()
        );
        let records = broker.consume_count(&[&topic], expected, WAIT).await;
        assert_eq!(records.len(), expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producer_delivers_in_order() {
    let broker = Broker::shared();
    let topic = unique_topic("idempotent");
    broker.create_topic(&topic, 1).await;
    let producer = idempotent_producer(broker);
    let deliveries = send_numbered(&producer, &topic, 0..200);
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let delivered = delivery.await.unwrap().unwrap();
        assert_eq!(delivered.offset, i as i64);
    }
    assert_numbered(&broker.consume_count(&[&topic], 200, WAIT).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producer_rides_out_a_5s_freeze() {
    rides_out_freeze(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: 20 s; run with --ignored"]
async fn idempotent_producer_rides_out_a_20s_freeze() {
    rides_out_freeze(Duration::from_secs(20)).await;
}

/// Records sent before, during and after a SIGSTOP all arrive, once and in order.
async fn rides_out_freeze(outage: Duration) {
    let broker = Broker::start(); // Private: freezing the shared one would stall others.
    let topic = unique_topic("freeze");
    broker.create_topic(&topic, 1).await;
    let producer = idempotent_producer(&broker);
    let mut deliveries = send_numbered(&producer, &topic, 0..10);
    deliveries.remove(0).await.unwrap().unwrap(); // The producer id is in place.

    broker.freeze();
    let probe: BaseConsumer = broker.client_config().create().unwrap();
    assert!(
        probe
            .fetch_metadata(None, Duration::from_millis(500))
            .is_err(),
        "frozen"
    );
    deliveries.extend(send_numbered(&producer, &topic, 10..60));
    tokio::time::sleep(outage).await; // The outage itself.
    broker.thaw();

    deliveries.extend(send_numbered(&producer, &topic, 60..70));
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
    assert_numbered(&broker.consume_count(&[&topic], 70, WAIT).await, 70);
}

/// Acknowledged records survive a controlled shutdown and a SIGKILL of the broker, and the
/// same idempotent producer goes on delivering, in order, after each restart.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_records_survive_broker_restarts() {
    let broker = tokio::task::block_in_place(Broker::start);
    let topic = unique_topic("restart");
    broker.create_topic(&topic, 1).await;
    let producer = idempotent_producer(&broker);
    for delivery in send_numbered(&producer, &topic, 0..20) {
        delivery.await.unwrap().unwrap();
    }
    tokio::task::block_in_place(|| {
        broker.stop();
        broker.restart();
    });
    for delivery in send_numbered(&producer, &topic, 20..40) {
        delivery.await.unwrap().unwrap();
    }
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    for delivery in send_numbered(&producer, &topic, 40..60) {
        delivery.await.unwrap().unwrap();
    }
    assert_numbered(&broker.consume_count(&[&topic], 60, WAIT).await, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn consume_waits_for_topics_created_later() {
    let broker = Broker::shared();
    let (early, late) = (unique_topic("early"), unique_topic("late"));
    broker.create_topic(&early, 1).await;
    let producer: FutureProducer = broker.client_config().create().unwrap();
    let produce = async {
        // Let the consumer find `late` missing first; correctness does not depend on it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.create_topic(&late, 2).await;
        for topic in [&early, &late] {
            let record = FutureRecord::to(topic).key("k").payload(topic.as_str());
            producer.send(record, WAIT).await.unwrap();
        }
    };
    let topics = [early.as_str(), late.as_str()];
    let (records, ()) = tokio::join!(broker.consume_count(&topics, 2, WAIT), produce);
    let mut seen: Vec<_> = records.iter().map(|r| r.topic.as_str()).collect();
    seen.sort_unstable();
    let mut expected = topics.to_vec();
    expected.sort_unstable();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "timed out after 1s")]
async fn consume_until_reports_a_timeout() {
    let broker = Broker::shared();
    let topic = unique_topic("empty");
    broker.create_topic(&topic, 1).await;
    broker
        .consume_count(&[&topic], 1, Duration::from_secs(1))
        .await;
}

#[test]
fn drop_kills_even_a_frozen_broker() {
    let broker = Broker::start();
    let pid = broker.pid();
    broker.freeze();
    drop(broker);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "broker {pid} survived drop"
    );
}

/// Runs `watchdog_child` in a child process, SIGKILLs it, and expects the watchdog to
/// kill its broker and delete its temp dir.
#[test]
fn watchdog_kills_broker_of_killed_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "watchdog_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KAFKA_HARNESS_WATCHDOG_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let pid: u32 = stdout
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.split_once("KAFKA_PID=").map(|(_, p)| p.parse().unwrap()))
        .expect("child printed no KAFKA_PID");
    let log = std::fs::read_link(format!("/proc/{pid}/fd/1")).expect("broker is running");
    let dir = log.parent().unwrap().to_path_buf();
    child.kill().unwrap(); // SIGKILL: no destructors run.
    child.wait().unwrap();

    let deadline = Instant::now() + WAIT;
    while Path::new(&format!("/proc/{pid}")).exists() || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "watchdog did not kill broker {pid} or remove {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "run by watchdog_kills_broker_of_killed_process"]
fn watchdog_child() {
    if std::env::var_os("KAFKA_HARNESS_WATCHDOG_CHILD").is_none() {
        return;
    }
    println!("KAFKA_PID={}", Broker::shared().pid());
    loop {
        std::thread::park(); // Wait to be killed.
    }
}

fn partition_count(broker: &Broker, topic: &str) -> usize {
    let client: BaseConsumer = broker.client_config().create().unwrap();
    let metadata = client.fetch_metadata(Some(topic), WAIT).unwrap();
    metadata.topics()[0].partitions().len()
}

fn idempotent_producer(broker: &Broker) -> FutureProducer {
    broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .create()
        .unwrap()
}

/// Enqueues payloads `"{i}"` for `range` without waiting; returns their deliveries.
fn send_numbered(
    producer: &FutureProducer,
    topic: &str,
    range: std::ops::Range<u32>,
) -> Vec<rdkafka::producer::DeliveryFuture> {
    range
        .map(|i| {
            let payload = i.to_string();
            let record = FutureRecord::to(topic).key("k").payload(&payload);
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect()
}

/// Exactly payloads `0..n`, in order, at offsets `0..n`.
fn assert_numbered(records: &[kafka::ReceivedRecord], n: usize) {
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap()).unwrap())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..n as i64).collect::<Vec<_>>());
}
