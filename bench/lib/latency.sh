# shellcheck shell=bash
# Latency mode of the benchmark: a steady writer (pgbench at a fixed rate, one outbox row
# per transaction) and bench/latency-probe, a Kafka consumer that measures, per record,
# receive time minus the commit time the writer put into the payload. It measures any
# client that streams the database into Kafka: the relay, or Debezium.
#
# Sourced by bench/run.sh after scripts/lib/install.sh and scripts/lib/services.sh. Uses
# their PG_BINDIR, PG_PORT, BROKER_PORT, WORK and services_track, and the caller's DB (the
# database the client under test streams; it must hold public.outbox).
#
# Knobs, from the environment:
#   LAT_CLIENTS, LAT_THREADS  pgbench -c / -j (default 16 / 2). Each client waits for its
#                             commit's WAL flush; with 4 clients pgbench alone keeps 5000
#                             tx/s on 2 cores, but beside the client under test and Kafka it
#                             fell 20-450 ms behind schedule; 16 kept it under 2 ms.
#   LAT_WARMUP_SECONDS        the first seconds of writing, left out of the figures
#                             (connections, topic creation, the probe finding the topics;
#                             default 2)
#   LAT_IDLE_TIMEOUT          seconds without a record before the probe gives up (default 30)
#   LAT_SYNCHRONOUS_COMMIT    the writer's synchronous_commit (default on; see latency_run)
#   LAT_PROBE_ARGS            more latency-probe arguments, e.g. "-X fetch.wait.max.ms=100"
#
# A Kafka broker just started spends tens of CPU-seconds compiling (JIT) during its first
# run of small requests, on the same 2 cores: run one latency_run first as a warm-up and
# discard its figures.

LATENCY_PROBE=${LATENCY_PROBE:-target/release/latency-probe}
LAT_CLIENTS=${LAT_CLIENTS:-16}
LAT_THREADS=${LAT_THREADS:-2}
LAT_WARMUP_SECONDS=${LAT_WARMUP_SECONDS:-2}
LAT_IDLE_TIMEOUT=${LAT_IDLE_TIMEOUT:-30}
LAT_SYNCHRONOUS_COMMIT=${LAT_SYNCHRONOUS_COMMIT:-on}
LAT_RUNS=0

latency_die() {
  echo "latency: FAILED: $*" >&2
  exit 1
}

latency_build() {
  echo "== building latency-probe (release)"
  cargo build --release --quiet -p latency-probe
  [[ -x $LATENCY_PROBE ]] || latency_die "cargo build did not produce $LATENCY_PROBE"
}

# Prints the value of KEY in a `key=value ...` line (nothing when absent).
latency_field() {
  if [[ " $1 " =~ \ $2=([^ ]*)\  ]]; then echo "${BASH_REMATCH[1]}"; fi
}

# Busy and total jiffies of the whole machine, for the share of it busy during a run.
latency_jiffies() {
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

latency_rows() {
  "$PG_BINDIR/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -d "$DB" -c "SELECT count(*) FROM public.outbox WHERE type = 'LatencyProbe'"
}

# latency_run LABEL TOPIC_PREFIX RATE SECONDS
#
# A client is already streaming $DB into the topics TOPIC_PREFIX.outbox.event.<type> (an
# empty TOPIC_PREFIX: outbox.event.<type>), created by it on first use or left by an
# earlier run. Starts the probe, waits for its `ready`, writes RATE rows/s for SECONDS with
# pgbench, then tells the probe how many rows committed and waits until it has them all.
#
# Sets LAT_P50 LAT_P99 LAT_MAX (ms, warm-up excluded), LAT_COUNT (records in those figures),
# LAT_EXPECTED (rows committed, warm-up included), LAT_RATE (pgbench's achieved tx/s),
# LAT_LAG_AVG LAT_LAG_MAX (pgbench's schedule lag, ms), LAT_KAFKA_TS_P50 (ms from commit
# to the records' Kafka timestamp, 1 ms resolution: the relay's produce call) and
# LAT_BUSY (% of the machine busy while pgbench ran). Prints one summary line, ending in
# "-- PGBENCH BELOW RATE" (under 95% of RATE) or "-- PGBENCH LAGGING" (its average schedule
# lag larger than the p50 it measured) when the writer did not keep its schedule. Fails
# when pgbench or the probe fails, or a record never arrives.
latency_run() {
  local label=$1 prefix=$2 rate=$3 seconds=$4
  [[ $rate =~ ^[1-9][0-9]*$ && $seconds =~ ^[1-9][0-9]*$ ]] ||
    latency_die "latency_run: RATE and SECONDS must be positive integers, got '$rate' '$seconds'"
  [[ -x $LATENCY_PROBE ]] || latency_die "$LATENCY_PROBE is missing (latency_build)"
  LAT_RUNS=$((LAT_RUNS + 1))
  local base="$WORK/latency.$LAT_RUNS.$label"
  local script="$base.sql" fifo="$base.in" out="$base.probe.out" log="$base.probe.log"
  local bench_out="$base.pgbench.out" topics="${prefix:+$prefix.}outbox.event.*"

  # One row per transaction (pgbench runs each statement in its own transaction), so the
  # row's clock_timestamp() is taken just before its COMMIT: the insert time stands for the
  # commit time (the commit's WAL flush, ~0.5 ms here, then counts as latency). Types and
  # aggregate ids as in the throughput benchmark.
  cat >"$script" <<'SQL'
\set kind random(1, 3)
\set agg random(1, 1000)
INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)
SELECT gen_random_uuid(), k.aggregatetype, md5(k.agg)::uuid::text, 'LatencyProbe',
       jsonb_build_object(
         'ts_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
         'aggregateId', md5(k.agg)::uuid::text,
         'amountCents', (random() * 100000)::int,
         'currency', 'EUR',
         'reference', md5(random()::text))
FROM (SELECT (ARRAY['order', 'payment', 'customer'])[CAST(:kind AS int)] AS aggregatetype,
             CAST(:agg AS text) AS agg) AS k;
SQL

  # The probe reads the expected count from a FIFO, written once pgbench has finished.
  rm -f "$fifo"
  mkfifo "$fifo"
  local pid fd extra
  read -r -a extra <<<"${LAT_PROBE_ARGS:-}"
  "$LATENCY_PROBE" --brokers "127.0.0.1:$BROKER_PORT" --prefix "$prefix" \
    --skip-first-seconds "$LAT_WARMUP_SECONDS" --idle-timeout "$LAT_IDLE_TIMEOUT" \
    "${extra[@]}" <"$fifo" >"$out" 2>"$log" &
  pid=$!
  services_track "$pid"
  exec {fd}>"$fifo"
  local deadline=$((SECONDS + 60))
  until grep -qx ready "$out" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
      exec {fd}>&-
      tail -n 20 "$log" >&2
      latency_die "latency-probe did not get ready (log: $log)"
    fi
    sleep 0.1
  done

  echo "== latency run $label: $rate rows/s for $seconds s, read from $topics (probe log: $log)"
  local before after rc=0 jiffies0 jiffies1
  before=$(latency_rows)
  read -r -a jiffies0 < <(latency_jiffies)
  # synchronous_commit = on for the writer's sessions, whatever the server's default: a
  # walsender sends only flushed WAL, and with it off (pg_start sets it off for the
  # throughput benchmark) a commit waits for the WAL writer's next round, up to
  # wal_writer_delay (200 ms), before any client can see it; that is what would be measured.
  PGOPTIONS="-c synchronous_commit=$LAT_SYNCHRONOUS_COMMIT" "$PG_BINDIR/pgbench" \
    -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared \
    -c "$LAT_CLIENTS" -j "$LAT_THREADS" -R "$rate" -T "$seconds" -f "$script" "$DB" \
    >"$bench_out" 2>&1 || rc=$?
  read -r -a jiffies1 < <(latency_jiffies)
  after=$(latency_rows)
  LAT_BUSY=$(awk -v b0="${jiffies0[0]}" -v t0="${jiffies0[1]}" -v b1="${jiffies1[0]}" \
    -v t1="${jiffies1[1]}" 'BEGIN { printf "%.0f", 100 * (b1 - b0) / (t1 - t0) }')
  LAT_EXPECTED=$((after - before))
  # A subshell ignoring SIGPIPE: a probe that already exited must not kill this shell.
  (trap '' PIPE; printf 'expect %d\n' "$LAT_EXPECTED" >&"$fd") 2>/dev/null || true
  exec {fd}>&-
  if ((rc != 0)); then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    tail -n 20 "$bench_out" >&2
    latency_die "pgbench failed with status $rc (output: $bench_out)"
  fi

  local processed
  processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$bench_out")
  LAT_RATE=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$bench_out")
  LAT_LAG_AVG=$(sed -n 's/^rate limit schedule lag: avg \([0-9.]*\) .*/\1/p' "$bench_out")
  LAT_LAG_MAX=$(sed -n 's/^rate limit schedule lag: .*(max \([0-9.]*\)).*/\1/p' "$bench_out")
  [[ -n $processed && -n $LAT_RATE && -n $LAT_LAG_AVG && -n $LAT_LAG_MAX ]] ||
    latency_die "cannot read pgbench's figures from $bench_out"
  ((processed == LAT_EXPECTED)) ||
    echo "   note: pgbench counted $processed transactions, the table gained $LAT_EXPECTED rows; expecting the rows"

  rc=0
  wait "$pid" || rc=$?
  local line
  line=$(grep '^latency ' "$out" || true)
  [[ -n $line ]] || {
    tail -n 20 "$log" >&2
    latency_die "latency-probe printed no result (status $rc, log: $log)"
  }
  LAT_COUNT=$(latency_field "$line" count)
  LAT_P50=$(latency_field "$line" p50_ms)
  LAT_P99=$(latency_field "$line" p99_ms)
  LAT_MAX=$(latency_field "$line" max_ms)
  LAT_KAFKA_TS_P50=$(latency_field "$line" kafka_ts_p50_ms)
  local missing unparsed warmup warning
  missing=$(latency_field "$line" missing)
  unparsed=$(latency_field "$line" unparsed)
  warmup=$(latency_field "$line" warmup)

  # A writer that cannot keep its schedule on these cores sends in bursts: the figure is
  # then for another load than RATE.
  warning=$(awk -v r="$rate" -v a="$LAT_RATE" -v lag="$LAT_LAG_AVG" -v p50="$LAT_P50" 'BEGIN {
    if (a < 0.95 * r) printf " -- PGBENCH BELOW RATE"
    if (p50 != "nan" && lag > p50 + 0) printf " -- PGBENCH LAGGING" }')
  printf 'latency %s: rate %s/s for %s s: pgbench %.0f tx/s (schedule lag avg %s ms, max %s ms); ' \
    "$label" "$rate" "$seconds" "$LAT_RATE" "$LAT_LAG_AVG" "$LAT_LAG_MAX"
  printf '%s records (+%s warm-up): p50 %s ms, p99 %s ms, max %s ms; ' \
    "$LAT_COUNT" "$warmup" "$LAT_P50" "$LAT_P99" "$LAT_MAX"
  printf 'commit to Kafka timestamp p50 %s ms; machine %s%% busy on %s cores%s\n' \
    "$LAT_KAFKA_TS_P50" "$LAT_BUSY" "$(nproc)" "$warning"
  ((unparsed == 0)) || echo "   note: $unparsed records without ts_us in $topics"
  if ((rc != 0 || missing != 0)); then
    tail -n 20 "$log" >&2
    latency_die "latency run $label: $missing of $LAT_EXPECTED records never arrived (probe status $rc, log: $log)"
  fi
}
