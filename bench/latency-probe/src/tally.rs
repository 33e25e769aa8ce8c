//! What the probe decides per record, without I/O or clocks of its own: the `ts_us` parser,
//! the warm-up and stale rules, and a bounded latency histogram with its percentiles.
//! `main.rs` feeds it each record's value and the wall clock at which it was received.

/// Width of a histogram bucket. Latencies are rounded to the nearest bucket, which is the
/// resolution of the `x.xx` ms figures the probe prints.
pub const BUCKET_US: u64 = 10;
/// Latencies at or above this land in the last bucket (percentiles there read as this
/// value; the maximum is kept exactly, apart from the histogram).
pub const HISTOGRAM_MAX_US: u64 = 10_000_000;
const BUCKETS: usize = (HISTOGRAM_MAX_US / BUCKET_US) as usize + 1;

/// Finds the commit time the writer put into a record value: the digits after the first
/// `ts_us` key. Tolerates the value being the payload JSON itself (`{"ts_us": 123, ...}`,
/// as the relay publishes a jsonb payload), that JSON quoted as a JSON string with escaped
/// quotes (`"{\"ts_us\":123}"`, as Debezium's EventRouter may publish it with a string
/// converter or an envelope), and the number itself written as a string (`"ts_us":"123"`).
/// Returns `None` when no `ts_us` key is followed by a number.
pub fn parse_ts_us(value: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"ts_us";
    let mut from = 0;
    while let Some(found) = find(&value[from..], KEY) {
        let key_at = from + found;
        let after = key_at + KEY.len();
        from = after;
        // The key must be a whole JSON key: a quote (maybe escaped) on both sides, so that
        // `ts_usec` or `xts_us` are not taken for it.
        if !matches!(key_at.checked_sub(1).map(|i| value[i]), Some(b'"')) {
            continue;
        }
        let rest = &value[after..];
        let mut i = 0;
        while i < rest.len() && rest[i] == b'\\' {
            i += 1;
        }
        if rest.get(i) != Some(&b'"') {
            continue;
        }
        // Between the key and the number: whitespace, one colon, and the quotes and
        // backslashes of a string-encoded number.
        let mut colon = false;
        while let Some(&c) = rest.get(i) {
            match c {
                b':' if !colon => colon = true,
                b'"' | b'\\' | b' ' | b'\t' | b'\r' | b'\n' => {}
                _ => break,
            }
            i += 1;
        }
        if !colon {
            continue;
        }
        let digits = rest[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let mut n: u64 = 0;
        for &d in &rest[i..i + digits] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        return Some(n);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Latencies in fixed buckets of [`BUCKET_US`]: a few MiB whatever the record count.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u32>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }

    pub fn add(&mut self, latency_us: u64) {
        let bucket = ((latency_us.saturating_add(BUCKET_US / 2)) / BUCKET_US) as usize;
        let slot = &mut self.counts[bucket.min(BUCKETS - 1)];
        *slot = slot.saturating_add(1);
        self.total += 1;
        self.max_us = self.max_us.max(latency_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// Nearest-rank percentile (`p` in 0..=100): the smallest recorded latency, to the
    /// bucket, that at least `p`% of the records do not exceed. `None` when empty.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(bucket as u64 * BUCKET_US);
            }
        }
        Some((BUCKETS as u64 - 1) * BUCKET_US)
    }
}

/// How one record was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No `ts_us` in the value (or no value): not written by the latency writer.
    Unparsed,
    /// Written before the probe started: left over from an earlier run.
    Stale,
    /// Within the warm-up (first records, or the first seconds of writing): counted
    /// towards `--expect` but left out of the figures.
    Warmup,
    /// In the figures, with this latency.
    Measured { latency_us: u64 },
}

/// The probe's counters; [`Tally::record`] classifies each record.
#[derive(Debug)]
pub struct Tally {
    started_us: u64,
    warmup_records: u64,
    warmup_us: u64,
    /// `ts_us` of the first parsed record: the writer's start, for `warmup_us`.
    first_ts_us: Option<u64>,
    pub parsed: u64,
    pub unparsed: u64,
    pub stale: u64,
    pub warmup: u64,
    pub latency: Histogram,
    /// Commit → the record's Kafka timestamp (millisecond resolution). With CreateTime,
    /// librdkafka's default as the relay uses it, that is the produce call: the part of the
    /// latency before the client handed the record to its producer. A client may set the
    /// timestamp itself (Debezium's EventRouter can), and then it means that instead.
    pub to_kafka_ts: Histogram,
}

impl Tally {
    /// `started_us`: the probe's start (wall clock); records written before it are stale.
    /// The first `warmup_records` parsed records, and those written less than `warmup_us`
    /// after the first parsed one, are warm-up.
    pub fn new(started_us: u64, warmup_records: u64, warmup_us: u64) -> Self {
        Tally {
            started_us,
            warmup_records,
            warmup_us,
            first_ts_us: None,
            parsed: 0,
            unparsed: 0,
            stale: 0,
            warmup: 0,
            latency: Histogram::new(),
            to_kafka_ts: Histogram::new(),
        }
    }

    /// Counts one record: its value, when it was received and its Kafka timestamp (ms),
    /// both on the wall clock. A receive time before the commit time (a clock step) counts
    /// as zero latency.
    pub fn record(
        &mut self,
        value: Option<&[u8]>,
        received_us: u64,
        kafka_timestamp_ms: Option<i64>,
    ) -> Outcome {
        let Some(ts_us) = value.and_then(parse_ts_us) else {
            self.unparsed += 1;
            return Outcome::Unparsed;
        };
        if ts_us < self.started_us {
            self.stale += 1;
            return Outcome::Stale;
        }
        self.parsed += 1;
        let first = *self.first_ts_us.get_or_insert(ts_us);
        if self.parsed <= self.warmup_records || ts_us < first.saturating_add(self.warmup_us) {
            self.warmup += 1;
            return Outcome::Warmup;
        }
        let latency_us = received_us.saturating_sub(ts_us);
        self.latency.add(latency_us);
        if let Some(ms) = kafka_timestamp_ms.and_then(|ms| u64::try_from(ms).ok()) {
            self.to_kafka_ts
                .add(ms.saturating_mul(1000).saturating_sub(ts_us));
        }
        Outcome::Measured { latency_us }
    }
}

/// Microseconds as milliseconds with two decimals (rounded to the nearest 10 µs).
pub fn ms(us: u64) -> String {
    let hundredths = us.saturating_add(5) / 10;
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_us_is_found_in_plain_escaped_and_string_forms() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (
                br#"{"ts_us": 1700000000123456, "seq": 1}"#,
                Some(1_700_000_000_123_456),
            ),
            (br#"{"seq":1,"ts_us":123}"#, Some(123)),
            (br#""{\"ts_us\":123,\"seq\":1}""#, Some(123)),
            (br#"{"ts_us":"123"}"#, Some(123)),
            (br#"{\"ts_us\": \"456\"}"#, Some(456)),
            (br#"{"schema":{},"payload":"{\"ts_us\": 42}"}"#, Some(42)),
            (b"{\"ts_us\"\n:\t7}", Some(7)),
            // A value "ts_us" before the real key is skipped.
            (br#"{"name":"ts_us","ts_us":9}"#, Some(9)),
        ];
        for (value, want) in cases {
            assert_eq!(
                parse_ts_us(value),
                *want,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn values_without_a_ts_us_number_are_unparsed() {
        let cases: &[&[u8]] = &[
            b"",
            b"ts_us",
            br#"{"ts_usec": 5}"#,
            br#"{"xts_us": 5}"#,
            br#"{"ts_us": null}"#,
            br#"{"ts_us": -5}"#,
            br#"{"ts_us" 5}"#,
            br#"{"ts_us"::5}"#,
            br#"{"ts_us": 99999999999999999999999}"#,
            b"\xff\xfe binary",
        ];
        for value in cases {
            assert_eq!(
                parse_ts_us(value),
                None,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile_us(50.0), None);
        // 1 ms .. 100 ms, shuffled order does not matter to a histogram.
        for ms in (1..=100u64).rev() {
            h.add(ms * 1000);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile_us(50.0), Some(50_000));
        assert_eq!(h.percentile_us(99.0), Some(99_000));
        assert_eq!(h.percentile_us(99.5), Some(100_000));
        assert_eq!(h.percentile_us(100.0), Some(100_000));
        assert_eq!(h.percentile_us(0.0), Some(1_000));
        assert_eq!(h.max_us(), 100_000);

        let mut one = Histogram::new();
        one.add(1234);
        assert_eq!(one.percentile_us(50.0), Some(1230), "rounded to 10 µs");
        assert_eq!(one.percentile_us(99.0), Some(1230));
        assert_eq!(one.max_us(), 1234, "the maximum is exact");
    }

    #[test]
    fn latencies_past_the_histogram_read_as_its_top() {
        let mut h = Histogram::new();
        h.add(0);
        h.add(20_000_000);
        assert_eq!(h.percentile_us(50.0), Some(0));
        assert_eq!(h.percentile_us(99.0), Some(HISTOGRAM_MAX_US));
        assert_eq!(h.max_us(), 20_000_000);
    }

    #[test]
    fn milliseconds_print_with_two_decimals() {
        assert_eq!(ms(0), "0.00");
        assert_eq!(ms(4), "0.00");
        assert_eq!(ms(5), "0.01");
        assert_eq!(ms(1234), "1.23");
        assert_eq!(ms(1235), "1.24");
        assert_eq!(ms(999_995), "1000.00");
        assert_eq!(ms(12_000_000), "12000.00");
    }

    fn value(ts_us: u64) -> Vec<u8> {
        format!(r#"{{"ts_us": {ts_us}}}"#).into_bytes()
    }

    #[test]
    fn stale_warmup_and_measured_records_are_told_apart() {
        // Started at 1000 µs; the first 2 records and the first 500 µs of writing are warm-up.
        let mut t = Tally::new(1000, 2, 500);
        assert_eq!(t.record(None, 5000, None), Outcome::Unparsed);
        assert_eq!(t.record(Some(b"{}"), 5000, None), Outcome::Unparsed);
        assert_eq!(t.record(Some(&value(999)), 5000, None), Outcome::Stale);
        assert_eq!(t.record(Some(&value(2000)), 9000, None), Outcome::Warmup);
        assert_eq!(
            t.record(Some(&value(2600)), 9000, None),
            Outcome::Warmup,
            "2nd record"
        );
        assert_eq!(
            t.record(Some(&value(2400)), 9000, None),
            Outcome::Warmup,
            "in 500 µs"
        );
        assert_eq!(
            t.record(Some(&value(2500)), 3700, Some(3)),
            Outcome::Measured { latency_us: 1200 }
        );
        assert_eq!(
            t.record(Some(&value(4000)), 3900, None),
            Outcome::Measured { latency_us: 0 },
            "a clock step reads as zero"
        );
        assert_eq!((t.parsed, t.unparsed, t.stale, t.warmup), (5, 2, 1, 3));
        assert_eq!(t.latency.count(), 2);
        assert_eq!(t.latency.max_us(), 1200);
        assert_eq!(t.to_kafka_ts.count(), 1);
        assert_eq!(t.to_kafka_ts.max_us(), 500, "Kafka timestamp 3 ms - 2.5 ms");
    }
}
