//! The relay puts every key on the partition the Java client puts it on, so a team moving
//! from Debezium (a Java producer) keeps each key's history on one partition at cut-over.
//!
//! The proof is the real thing on both sides: the relay publishes outbox rows, and Kafka's
//! own `ConsoleProducer` (the Java client of the pinned Kafka release, with its default
//! partitioner, as Debezium uses it) produces the same keys to another topic with as many
//! partitions. Each key must be on the same partition number in both. librdkafka's own
//! default (`consistent_random`, CRC32) fails this for about two keys in three.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use common::chaos::Stage;
use common::kafka::{kafka_tool_with_input, unique_topic, Broker, ReceivedRecord};
use common::pg::PgCluster;
use common::Rng;

/// Partitions of both topics: the relay's test config and the broker's default.
const PARTITIONS: i32 = 3;
/// Rows per key: a key's later rows must follow its first.
const ROWS_PER_KEY: usize = 2;

/// Keys of every UTF-8 length from 0 to 40 bytes (murmur2 treats the last 1-3 bytes
/// apart) and beyond, ASCII and not, as outbox aggregate ids come: numbers, names, UUIDs.
/// None contains the console producer's separator (a tab) or a line break.
fn keys() -> Vec<String> {
    let mut rng = Rng(0x5EED_F0CA_CAFE);
    let mut keys: Vec<String> = vec![String::new()];
    let alphabet: Vec<char> = "abcXYZ019-_.:/= äéßжк漢字🙂".chars().collect();
    for len in 1..=40 {
        for _ in 0..2 {
            let key: String = (0..len)
                .map(|_| alphabet[rng.between(0, alphabet.len() as u64 - 1) as usize])
                .collect();
            keys.push(key);
        }
    }
    keys.extend((0..60).map(|i| format!("order-{i}")));
    keys.extend((0..30).map(|i| (i * 7919).to_string()));
    keys.extend((0..30).map(|_| {
        let bytes = rng.next().to_be_bytes().repeat(2);
        uuid::Builder::from_random_bytes(bytes.try_into().unwrap())
            .into_uuid()
            .to_string()
    }));
    keys.extend(
        [
            "клиент-42",
            "顧客-7",
            "Ωmega",
            "key with spaces",
            &"long".repeat(100),
        ]
        .map(String::from),
    );
    let mut seen = HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// The partitions each key of `topic` is on in `records`: one, if it is kept together.
fn placement(records: &[ReceivedRecord], topic: &str) -> BTreeMap<String, BTreeSet<i32>> {
    let mut placed: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for record in records.iter().filter(|r| r.topic == topic) {
        let key = String::from_utf8(record.key.clone().expect("keyed record")).expect("utf-8 key");
        placed.entry(key).or_default().insert(record.partition);
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_partitions_the_java_client_picks() {
    let cluster = PgCluster::shared();
    let broker = tokio::task::block_in_place(Broker::shared);
    let stage = Stage::new(cluster, "partitions").await;
    let keys = keys();

    // The Java client: Kafka's console producer, keys parsed from `key<TAB>value` lines.
    let java_topic = unique_topic("partitions-java");
    broker.create_topic(&java_topic, PARTITIONS).await;
    let mut lines = String::new();
    for n in 0..ROWS_PER_KEY {
        for key in &keys {
            lines += &format!("{key}\t{{\"n\": {n}}}\n");
        }
    }
    let args = [
        "--bootstrap-server",
        &broker.bootstrap(),
        "--topic",
        &java_topic,
        "--property",
        "parse.key=true",
        "--property",
        "key.separator=\t",
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kafka_tool_with_input(
            "org.apache.kafka.tools.ConsoleProducer",
            &args,
            lines.as_bytes(),
        )
    })
    .await
    .expect("console producer");

    // The relay: the same keys as outbox aggregate ids, to a topic it creates with 3
    // partitions (config_text's topic_partitions).
    let config = stage.config(
        "relay.toml",
        &format!("127.0.0.1:{}", cluster.port()),
        &broker.bootstrap(),
    );
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    for n in 0..ROWS_PER_KEY as i32 {
        stage
            .admin
            .execute(
                "INSERT INTO outbox SELECT gen_random_uuid(), 'order', k, 'Created', \
                 jsonb_build_object('n', $2::int) FROM unnest($1::text[]) AS k",
                &[&keys, &n],
            )
            .await
            .expect("insert outbox rows");
    }

    let total = 2 * ROWS_PER_KEY * keys.len();
    let records = broker
        .consume_count(
            &[&stage.topic, &java_topic],
            total,
            Duration::from_secs(120),
        )
        .await;
    let relay_placed = placement(&records, &stage.topic);
    let java_placed = placement(&records, &java_topic);
    assert_eq!(relay_placed.len(), keys.len(), "relay: keys delivered");
    assert_eq!(java_placed.len(), keys.len(), "java: keys delivered");
    let used: HashSet<i32> = java_placed.values().flatten().copied().collect();
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "the keys use every partition"
    );

    // Every key on exactly the one partition the Java client put it on.
    let moved: Vec<(&String, &BTreeSet<i32>, &BTreeSet<i32>)> = keys
        .iter()
        .filter_map(|k| {
            let (relay, java) = (&relay_placed[k], &java_placed[k]);
            (relay != java || java.len() != 1).then_some((k, relay, java))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} keys are not on the one partition the Java client put them on \
         (key, relay's partitions, java's), first 10: {:?}",
        moved.len(),
        keys.len(),
        &moved[..moved.len().min(10)]
    );
    println!(
        "partitions: {} keys, {} records each side, all on the Java client's partitions",
        keys.len(),
        ROWS_PER_KEY * keys.len()
    );
}
