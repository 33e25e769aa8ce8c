//! latency-probe: a Kafka consumer that measures, per outbox record, the wall clock at
//! which it was received minus the commit time its writer put into the payload (`ts_us`,
//! microseconds since the epoch). Used by `bench/lib/latency.sh` for the relay and for
//! Debezium alike: it reads only Kafka, never the database.
//!
//! # Why no record is missed, and none of an earlier run is taken
//!
//! The probe assigns partitions itself instead of joining a consumer group, so no group
//! rebalance pauses it mid-run when a topic appears. Before it prints `ready`, it reads
//! the high watermark of every matching partition that exists and starts each there:
//! records of earlier runs are behind it, and the writer, started after `ready`, can only
//! add records past it. A thread then looks for new matching topics and partitions every
//! `--discover-ms` (the client under test creates its topics on first use, after the probe
//! started) and those are read from their beginning. As a second guard, a record whose
//! `ts_us` is older than the probe's start is counted `stale` and left out.
//!
//! # Output
//!
//! `ready` on stdout once the partitions that exist are assigned; then, at the end, one
//! line `latency count=N p50_ms=X p99_ms=X max_ms=X unparsed=N missing=N warmup=N stale=N
//! kafka_ts_p50_ms=X kafka_ts_p99_ms=X`. `count` and the figures leave out the warm-up;
//! `missing` is expected minus received (warm-up included); `kafka_ts_*` are commit → the
//! record's Kafka timestamp (the produce call, for a client that leaves CreateTime to its
//! producer). A figure with no record is `nan`. Diagnostics go to stderr.
//!
//! Exit status: 0 when every expected record arrived, 1 when some did not (after
//! `--idle-timeout`), 2 when the probe could not start.

mod tally;

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use tally::{ms, Tally};

/// Measures commit → receive latency of outbox records in Kafka.
///
/// The writer puts its commit time into each row's payload as `"ts_us": <microseconds
/// since the epoch>`; the probe reads every topic of the outbox, subtracts, and prints
/// percentiles once it has the expected number of records (or gave up waiting).
#[derive(Parser, Debug)]
#[command(name = "latency-probe", version)]
#[command(group(clap::ArgGroup::new("topics").required(true).args(["prefix", "topic_starts_with"])))]
struct Args {
    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092.
    #[arg(long)]
    brokers: String,
    /// Read the topics named `<PREFIX>.outbox.event.<type>`; an empty prefix reads
    /// `outbox.event.<type>`.
    #[arg(long)]
    prefix: Option<String>,
    /// Read every topic whose name starts with this text (instead of --prefix).
    #[arg(long)]
    topic_starts_with: Option<String>,
    /// Stop once this many records with a `ts_us` (warm-up included) arrived. Without it the
    /// probe reads the number from its standard input (a line `expect N` or `N`), which a
    /// driver sends once its writer finished; until then it waits without an idle timeout.
    #[arg(long)]
    expect: Option<u64>,
    /// Give up this many seconds after the last record (counted once the expected number is
    /// known); then report what arrived and exit 1 if records are missing.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// Leave the first N records out of the figures (they still count towards --expect).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Leave out the records written in the first S seconds after the first record's
    /// `ts_us` (connections and topic creation happen then).
    #[arg(long, default_value_t = 0.0)]
    skip_first_seconds: f64,
    /// How often to look for new matching topics and partitions.
    #[arg(long, default_value_t = 100)]
    discover_ms: u64,
    /// Extra librdkafka consumer property, KEY=VALUE; may repeat.
    #[arg(short = 'X', long = "property", value_parser = key_value)]
    properties: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The expected count while it is not known yet.
const UNKNOWN: u64 = u64::MAX;
/// How long one poll may block, so the expectation and the idle timeout are checked often.
const POLL: Duration = Duration::from_millis(50);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("latency-probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn client_config(args: &Args, group_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", "latency-probe")
        // A group of its own, never committed to: offsets come from the probe alone.
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Latency over throughput: the broker answers a fetch as soon as one byte is there,
        // or after 5 ms, and a fetch error (a partition whose leader is not known yet, just
        // after its topic was created) is retried after 20 ms, not 500 ms.
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "20")
        // Bounded prefetch queue.
        .set("queued.max.messages.kbytes", "16384");
    for (k, v) in &args.properties {
        config.set(k, v);
    }
    config
}

/// The matching partitions in the cluster's metadata.
fn matching_partitions(
    consumer: &BaseConsumer,
    starts_with: &str,
) -> rdkafka::error::KafkaResult<Vec<(String, i32)>> {
    let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
    let mut found = Vec::new();
    for topic in metadata.topics() {
        if topic.error().is_some() || !topic.name().starts_with(starts_with) {
            continue;
        }
        for partition in topic.partitions() {
            found.push((topic.name().to_string(), partition.id()));
        }
    }
    Ok(found)
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let starts_with = match (&args.prefix, &args.topic_starts_with) {
        (_, Some(s)) => s.clone(),
        (Some(p), None) if p.is_empty() => "outbox.event.".to_string(),
        (Some(p), None) => format!("{p}.outbox.event."),
        (None, None) => unreachable!("clap requires one of them"),
    };
    if !(args.skip_first_seconds >= 0.0 && args.skip_first_seconds.is_finite()) {
        return Err("--skip-first-seconds must be a number of seconds >= 0".into());
    }
    let started_us = now_us();
    let group_id = format!("latency-probe-{}-{started_us}", std::process::id());
    let config = client_config(args, &group_id);
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;

    // Partitions that exist now start at their high watermark (see the module doc).
    let existing = matching_partitions(&consumer, &starts_with)
        .map_err(|e| format!("cannot read the topic metadata from {}: {e}", args.brokers))?;
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in &existing {
        let (_, high) = consumer
            .fetch_watermarks(topic, *partition, METADATA_TIMEOUT)
            .map_err(|e| format!("cannot read the watermarks of {topic}[{partition}]: {e}"))?;
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(high))
            .map_err(|e| e.to_string())?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("cannot assign partitions: {e}"))?;
    eprintln!(
        "latency-probe: reading topics {starts_with}*; {} existing partitions from their end",
        existing.len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    // Bounded: the discovery thread waits when the consumer loop is behind.
    let (new_partitions, discovered) = mpsc::sync_channel::<(String, i32)>(256);
    {
        let known: BTreeSet<(String, i32)> = existing.into_iter().collect();
        let discovery: BaseConsumer = config
            .create()
            .map_err(|e| format!("cannot create the discovery client: {e}"))?;
        let stop = stop.clone();
        let every = Duration::from_millis(args.discover_ms.max(10));
        let starts_with = starts_with.clone();
        thread::spawn(move || {
            discover(discovery, &starts_with, known, every, new_partitions, &stop)
        });
    }

    let expect = Arc::new(AtomicU64::new(args.expect.unwrap_or(UNKNOWN)));
    let stdin_closed = Arc::new(AtomicBool::new(false));
    if args.expect.is_none() {
        let expect = expect.clone();
        let stdin_closed = stdin_closed.clone();
        thread::spawn(move || read_expectation(&expect, &stdin_closed));
    }

    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    let warmup_us = (args.skip_first_seconds * 1e6) as u64;
    let mut tally = Tally::new(started_us, args.warmup, warmup_us);
    let idle_timeout = Duration::from_secs(args.idle_timeout);
    // The idle clock runs from the last record, or from when the expectation became known.
    let mut idle_since = Instant::now();
    let mut expectation_known = args.expect.is_some();
    let mut errors = 0u64;
    let mut timed_out = false;
    loop {
        while let Ok((topic, partition)) = discovered.try_recv() {
            let mut added = TopicPartitionList::new();
            added
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            consumer
                .incremental_assign(&added)
                .map_err(|e| format!("cannot assign {topic}[{partition}]: {e}"))?;
            eprintln!("latency-probe: new partition {topic}[{partition}], read from its start");
        }
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let received_us = now_us();
                tally.record(
                    message.payload(),
                    received_us,
                    message.timestamp().to_millis(),
                );
                idle_since = Instant::now();
            }
            Some(Err(e)) => {
                errors += 1;
                if errors <= 10 {
                    eprintln!("latency-probe: consumer error (retried by librdkafka): {e}");
                }
            }
            None => {}
        }
        let expected = expect.load(Ordering::Relaxed);
        if !expectation_known && (expected != UNKNOWN || stdin_closed.load(Ordering::Relaxed)) {
            expectation_known = true;
            idle_since = Instant::now();
        }
        if expected != UNKNOWN && tally.parsed >= expected {
            break;
        }
        if expectation_known && idle_since.elapsed() >= idle_timeout {
            timed_out = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);

    let expected = expect.load(Ordering::Relaxed);
    let missing = if expected == UNKNOWN {
        0
    } else {
        expected.saturating_sub(tally.parsed)
    };
    let pct = |h: &tally::Histogram, p: f64| h.percentile_us(p).map_or("nan".into(), ms);
    let max_ms = if tally.latency.count() == 0 {
        "nan".to_string()
    } else {
        ms(tally.latency.max_us())
    };
    if timed_out {
        eprintln!(
            "latency-probe: no record for {} s; giving up with {} of {} records",
            args.idle_timeout,
            tally.parsed,
            if expected == UNKNOWN {
                "?".to_string()
            } else {
                expected.to_string()
            }
        );
    }
    println!(
        "latency count={} p50_ms={} p99_ms={} max_ms={} unparsed={} missing={} warmup={} stale={} \
         kafka_ts_p50_ms={} kafka_ts_p99_ms={}",
        tally.latency.count(),
        pct(&tally.latency, 50.0),
        pct(&tally.latency, 99.0),
        max_ms,
        tally.unparsed,
        missing,
        tally.warmup,
        tally.stale,
        pct(&tally.to_kafka_ts, 50.0),
        pct(&tally.to_kafka_ts, 99.0),
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let ok = missing == 0 && (expected != UNKNOWN || tally.parsed > 0);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Looks for new matching partitions every `every` and hands them to the consumer loop.
fn discover(
    client: BaseConsumer,
    starts_with: &str,
    mut known: BTreeSet<(String, i32)>,
    every: Duration,
    found: mpsc::SyncSender<(String, i32)>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(every);
        let Ok(partitions) = matching_partitions(&client, starts_with) else {
            continue; // Transient: the next round asks again.
        };
        for tp in partitions {
            if !known.contains(&tp) {
                known.insert(tp.clone());
                if found.send(tp).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads `expect N` (or `N`) from stdin; EOF without one means "no expectation".
fn read_expectation(expect: &AtomicU64, closed: &AtomicBool) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let word = line.trim().trim_start_matches("expect").trim();
        match word.parse::<u64>() {
            Ok(n) if n != UNKNOWN => {
                expect.store(n, Ordering::Relaxed);
                return;
            }
            _ if word.is_empty() => {}
            _ => eprintln!("latency-probe: ignoring stdin line {line:?} (want `expect N`)"),
        }
    }
    closed.store(true, Ordering::Relaxed);
}
