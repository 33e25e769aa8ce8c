//! The relay puts every key on the partition the Java client puts it on, so a team moving
//! from Debezium (a Java producer) keeps each key's history on one partition at cut-over.
//!
//! The proof is the real thing on both sides: the relay publishes outbox rows, and Kafka's
//! own `ConsoleProducer` (the Java client of the pinned Kafka release, with its default
//! partitioner, as Debezium uses it) produces the same keys to another topic with as many
//! partitions. Each key must be on the same partition number in both. librdkafka's own
//! default (`consistent_random`, CRC32) fails this for about two keys in three.
//!
//! The second test holds the relay to a reference computation instead: Kafka's murmur2
//! partitioner written out here (checked against the published vectors of Kafka's
//! `UtilsTest.testMurmur2`), for 1,000 keys on a 6-partition topic.

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

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), the reference the
/// relay's placement is held to.
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in chunks.by_ref() {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's partition for `key`: `toPositive(murmur2(key)) % partitions`.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn the_reference_murmur2_matches_kafkas_published_vectors() {
    let vectors: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];
    for (input, expected) in vectors {
        assert_eq!(
            murmur2(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

/// 1,000 keys of every shape an aggregate id takes.
fn thousand_keys() -> Vec<String> {
    let mut keys = keys();
    let mut rng = Rng(0x1000_6EED);
    let mut n = 0;
    while keys.len() < 1_000 {
        keys.push(match n % 3 {
            0 => format!("customer-{}", rng.next() % 1_000_000),
            1 => uuid::Builder::from_random_bytes(
                rng.next().to_le_bytes().repeat(2).try_into().unwrap(),
            )
            .into_uuid()
            .to_string(),
            _ => format!("{}:{}", rng.next() % 97, "x".repeat((n % 13) as usize)),
        });
        n += 1;
        let mut seen = HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_on_six_partitions_follow_the_java_murmur2_reference() {
    const SIX: i32 = 6;
    let cluster = PgCluster::shared();
    let broker = tokio::task::block_in_place(Broker::shared);
    let stage = Stage::new(cluster, "partitions6").await;
    broker.create_topic(&stage.topic, SIX).await;
    let keys = thousand_keys();
    assert_eq!(keys.len(), 1_000);
    let config = stage.config(
        "relay.toml",
        &format!("127.0.0.1:{}", cluster.port()),
        &broker.bootstrap(),
    );
    let mut relay = stage.start(&config);
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    stage
        .admin
        .execute(
            "INSERT INTO outbox SELECT gen_random_uuid(), 'order', k, 'Created', '{}' \
             FROM unnest($1::text[]) AS k",
            &[&keys],
        )
        .await
        .expect("insert outbox rows");
    let records = broker
        .consume_count(&[&stage.topic], keys.len(), Duration::from_secs(120))
        .await;
    let placed = placement(&records, &stage.topic);
    let wrong: Vec<(&String, &BTreeSet<i32>, i32)> = placed
        .iter()
        .map(|(key, on)| (key, on, java_partition(key.as_bytes(), SIX)))
        .filter(|(_, on, expected)| on.len() != 1 || !on.contains(expected))
        .collect();
    assert_eq!(placed.len(), keys.len());
    assert!(
        wrong.is_empty(),
        "{} of {} keys are not on the partition murmur2 gives: {:?}",
        wrong.len(),
        keys.len(),
        &wrong[..wrong.len().min(10)]
    );
    let used: BTreeSet<i32> = placed.values().flatten().copied().collect();
    assert_eq!(
        used.len(),
        SIX as usize,
        "keys spread over all six partitions"
    );
}
