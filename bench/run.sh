#!/usr/bin/env bash
# The benchmark: the relay beside pg_recvlogical and Debezium, in one run, on one machine.
#
# Drain: every client drains the same backlog from a slot of its own (all slots are made
# before the backlog is written), one client at a time, so they never compete for the
# CPUs. Two shapes: ROWS rows in transactions of 1000, and SINGLE_ROWS single-row
# transactions (the usual outbox shape, one event per business transaction).
# Latency: pgbench writes single-row transactions at 2,000 and 5,000 a second while a
# Kafka consumer measures commit -> receive, for the relay and for Debezium.
# Prints one table. Reports only: a missed target does not fail the script, a failed step
# does. Everything is stopped and removed on exit. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# EPOCHREALTIME and awk must agree on the decimal point.
export LC_ALL=C
# shellcheck source=scripts/lib/install.sh
source scripts/lib/install.sh
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh
# shellcheck source=bench/lib/measure.sh
source bench/lib/measure.sh
# shellcheck source=bench/lib/backlog.sh
source bench/lib/backlog.sh
# shellcheck source=bench/lib/relay.sh
source bench/lib/relay.sh
# shellcheck source=bench/lib/debezium.sh
source bench/lib/debezium.sh
# shellcheck source=bench/lib/latency.sh
source bench/lib/latency.sh

ROWS=${ROWS:-1000000}                  # backlog rows in transactions of 1000
SINGLE_ROWS=${SINGLE_ROWS:-200000}     # backlog rows in single-row transactions
LATENCY_SECONDS=${LATENCY_SECONDS:-30} # how long pgbench writes at each rate
LATENCY_RATES=${LATENCY_RATES-"2000 5000"}   # empty: no latency runs
STALL_SECONDS=${STALL_SECONDS:-120}    # give up when a slot stops advancing this long
# Which clients run: relay, eos (the relay in exactly-once mode), recv, debezium.
CLIENTS=${CLIENTS:-"relay eos recv debezium"}
DB=bench
# RELAY=path measures another build (e.g. an earlier commit's, for a before/after table).
RELAY=${RELAY:-target/release/outbox-relay}

# Targets: reported, never enforced.
RSS_TARGET_MIB=64
LATENCY_P99_TARGET_MS=10
CPU_TARGET_BATCHED=2   # CPU-seconds per million events, transactions of 1000
CPU_TARGET_SINGLE=5    # the same, single-row transactions
DRAIN_RATIO_TARGET=1.0 # relay rows/s over pg_recvlogical rows/s

# Result lines, printed at the end: "shape|client|rows/s|seconds|cpu-s per M|peak MiB".
DRAIN_RESULTS=()
# "client|rate|achieved|p50|p99|max|count".
LATENCY_RESULTS=()
# Free-form CPU breakdowns, printed under the table.
CPU_NOTES=()
# Where the relay's latency goes, per rate: "rate|read p50|produce p50|ack p50|receive p50".
STAGE_RESULTS=()

wants() {
  [[ " $CLIENTS " == *" $1 "* ]]
}

install_and_build() {
  install_debian_packages
  install_kafka
  if [[ $RELAY == target/release/outbox-relay ]]; then
    echo "== building the relay (release; the first build compiles librdkafka and takes minutes)"
    cargo build --release --quiet --bin outbox-relay
  fi
  [[ -x $RELAY ]] || die "no relay binary at $RELAY"
  latency_build
  if wants debezium; then
    install_debezium
  fi
}

# record_drain SHAPE CLIENT ROWS SECONDS CPU_SECONDS PEAK_KB
record_drain() {
  DRAIN_RESULTS+=("$(awk -v shape="$1" -v client="$2" -v rows="$3" -v s="$4" -v cpu="$5" -v kb="$6" '
    BEGIN { printf "%s|%s|%d|%.1f|%.2f|%.0f", shape, client, rows / s, s, cpu * 1e6 / rows, kb / 1024 }')")
}

# relay_drain SHAPE SLOT ROWS [KAFKA_LINES]: drains SLOT with the relay and records it.
relay_drain() {
  local shape=$1 slot=$2 rows=$3 kafka_lines=${4:-}
  local config="$WORK/$slot.toml" log="$WORK/$slot.log" client=relay
  [[ $kafka_lines == *exactly_once* ]] && client="relay, exactly-once"
  relay_config "$config" "$slot" "$kafka_lines"
  echo "== $client: draining slot $slot (log: $log)"
  local jiffies0 broker_cpu0 t0 pid walsender cpu
  read -r -a jiffies0 < <(machine_jiffies)
  broker_cpu0=$(cpu_seconds "$BROKER_PID")
  t0=$EPOCHREALTIME
  NO_COLOR=1 "$RELAY" run --config "$config" >"$log" 2>&1 &
  pid=$!
  services_track "$pid"
  measure_until_confirmed "$slot" "$pid" "$log" "$t0"
  cpu=$(cpu_seconds "$pid")
  record_drain "$shape" "$client" "$rows" "$ELAPSED" "$cpu" "$(peak_rss_kb "$pid")"
  walsender=$(walsender_pid "$slot")
  CPU_NOTES+=("$shape, $client (walsender had sent all after $SENT_ELAPSED s): $(cpu_report "${jiffies0[@]}" relay "$cpu" \
    walsender "$(cpu_seconds "$walsender")" \
    kafka "$(awk -v a="$broker_cpu0" -v b="$(cpu_seconds "$BROKER_PID")" 'BEGIN { print b - a }')")")
  if [[ $kafka_lines == *exactly_once* ]]; then
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" |
      awk '/^outbox_relay_kafka_transaction(s|_commit_seconds)_(sum|count|committed_total|aborted_total)/ { printf "   %s %s\n", $1, $2 }'
  fi
  relay_stop "$pid" "$log"
  slot_drop "$slot"
}

# recv_drain SHAPE SLOT ROWS: pg_recvlogical writes SLOT's stream to a file.
recv_drain() {
  local shape=$1 slot=$2 rows=$3
  local log="$WORK/$slot.log"
  echo "== pg_recvlogical: draining slot $slot to $WORK/$slot.out (log: $log)"
  local jiffies0 t0 pid walsender cpu
  read -r -a jiffies0 < <(machine_jiffies)
  t0=$EPOCHREALTIME
  # -s 1 / -F 1: fsync and report every second (the defaults are 10 s). Its confirmed
  # position still trails what it has written by up to ~2 s (next fsync, then next report).
  "$PG_BINDIR/pg_recvlogical" -d "host=127.0.0.1 port=$PG_PORT dbname=$DB user=postgres" \
    --slot "$slot" --start -o proto_version=1 -o publication_names=bench_pub \
    -f "$WORK/$slot.out" --no-loop -s 1 -F 1 >"$log" 2>&1 &
  pid=$!
  services_track "$pid"
  measure_until_confirmed "$slot" "$pid" "$log" "$t0"
  cpu=$(cpu_seconds "$pid")
  record_drain "$shape" pg_recvlogical "$rows" "$ELAPSED" "$cpu" "$(peak_rss_kb "$pid")"
  walsender=$(walsender_pid "$slot")
  CPU_NOTES+=("$shape, pg_recvlogical (walsender had sent all after $SENT_ELAPSED s): $(cpu_report "${jiffies0[@]}" pg_recvlogical "$cpu" \
    walsender "$(cpu_seconds "$walsender")")")
  local rc=0
  kill -INT "$pid"
  wait "$pid" || rc=$?
  ((rc == 0)) || fail_with_log "$log" "pg_recvlogical exited with status $rc after SIGINT"
  rm -f "$WORK/$slot.out"
  slot_drop "$slot"
}

# debezium_drain SHAPE SLOT ROWS PROFILE: Debezium embedded with its Outbox EventRouter
# and a Kafka producer drains SLOT; done when Kafka acknowledged all ROWS records.
debezium_drain() {
  local shape=$1 slot=$2 rows=$3 profile=$4
  local log="$WORK/$slot.log" client="Debezium $DEBEZIUM_VERSION ($profile)"
  echo "== $client: draining slot $slot (log: $log)"
  local jiffies0 broker_cpu0 t0 cpu
  read -r -a jiffies0 < <(machine_jiffies)
  broker_cpu0=$(cpu_seconds "$BROKER_PID")
  t0=$EPOCHREALTIME
  debezium_start "$slot" bench_pub "$slot" "$profile" "$log" "$rows"
  debezium_wait_drained "$log" "$rows" "$STALL_SECONDS"
  # Timed from the process start, like the relay (the harness's own figure starts at the
  # engine, after the JVM's start-up). Its slot stays one transaction behind until a later
  # record or a heartbeat, so the slot cannot time it: Kafka's last acknowledgement does.
  local elapsed
  elapsed=$(awk -v a="$t0" -v b="$DBZ_DRAINED_AT" 'BEGIN { printf "%.3f", b - a }')
  cpu=$(cpu_seconds "$DBZ_PID")
  CPU_NOTES+=("$shape, $client: $(cpu_report "${jiffies0[@]}" debezium "$cpu" \
    kafka "$(awk -v a="$broker_cpu0" -v b="$(cpu_seconds "$BROKER_PID")" 'BEGIN { print b - a }')")")
  debezium_stop
  record_drain "$shape" "$client" "$rows" "$elapsed" "$cpu" "$DBZ_HWM_KB"
  slot_drop "$slot"
}

# drain_shape SHAPE ROWS BATCH PREFIX: one backlog, drained by every client in turn.
drain_shape() {
  local shape=$1 rows=$2 batch=$3 p=$4
  local slots=()
  wants eos && slots+=("${p}_eos")
  wants relay && slots+=("${p}_relay")
  wants recv && slots+=("${p}_recv")
  wants debezium && slots+=("${p}_dbz" "${p}_dbzt")
  backlog_write "$rows" "$batch" "${slots[@]}"
  if wants eos; then relay_drain "$shape" "${p}_eos" "$rows" 'delivery = "exactly_once"'; fi
  if wants relay; then relay_drain "$shape" "${p}_relay" "$rows"; fi
  if wants recv; then recv_drain "$shape" "${p}_recv" "$rows"; fi
  if wants debezium; then
    debezium_drain "$shape" "${p}_dbz" "$rows" default
    debezium_drain "$shape" "${p}_dbzt" "$rows" tuned
  fi
}

# latency_for CLIENT SLOT: makes SLOT, starts the client (relay, or "Debezium ... (PROFILE)") on it, runs
# every rate of LATENCY_RATES, stops the client and drops the slot.
latency_for() {
  local client=$1 slot=$2 rate
  psql_value "$DB" "SELECT pg_create_logical_replication_slot('$slot', 'pgoutput')" >/dev/null
  local pid=""
  case $client in
    relay)
      relay_config "$WORK/$slot.toml" "$slot"
      NO_COLOR=1 "$RELAY" run --config "$WORK/$slot.toml" >"$WORK/$slot.log" 2>&1 &
      pid=$!
      services_track "$pid"
      wait_for_slot_active "$slot" "$DB" "$pid"
      ;;
    Debezium*)
      local profile=${client##*(}
      debezium_start "$slot" bench_pub "$slot" "${profile%)}" "$WORK/$slot.log"
      ;;
  esac
  for rate in $LATENCY_RATES; do
    [[ -n $pid ]] && scrape "$WORK/$slot.$rate.before"
    latency_run "$client" "$slot" "$rate" "$LATENCY_SECONDS"
    LATENCY_RESULTS+=("$client|$rate|$LAT_RATE|$LAT_P50|$LAT_P99|$LAT_MAX|$LAT_COUNT")
    if [[ -n $pid ]]; then
      scrape "$WORK/$slot.$rate.after"
      STAGE_RESULTS+=("$rate|$(histogram_p50 "$WORK/$slot.$rate" outbox_relay_read_latency_seconds)|$LAT_KAFKA_TS_P50|$(histogram_p50 "$WORK/$slot.$rate" outbox_relay_delivery_latency_seconds)|$LAT_P50")
    fi
  done
  if [[ -n $pid ]]; then relay_stop "$pid" "$WORK/$slot.log"; else debezium_stop; fi
  slot_drop "$slot"
}

# The relay's /metrics into FILE.
scrape() {
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$1" || die "cannot scrape the relay's metrics"
}

# histogram_p50 PREFIX METRIC: the median, in ms, of what METRIC (a Prometheus histogram
# in seconds) recorded between the scrapes PREFIX.before and PREFIX.after, interpolated
# within its bucket as Prometheus' histogram_quantile does.
histogram_p50() {
  awk -v metric="${2}_bucket" '
    function le(line) { match(line, /le="[^"]*"/); return substr(line, RSTART + 4, RLENGTH - 5) }
    $1 ~ "^" metric "\\{" {
      bound = le($1)
      if (FILENAME ~ /before$/) before[bound] = $2
      else { after[bound] = $2; if (!(bound in seen)) { seen[bound] = 1; order[n++] = bound } }
    }
    END {
      total = after["+Inf"] - before["+Inf"]
      if (total <= 0) { print "-"; exit }
      lower = 0; below = 0
      for (i = 0; i < n; i++) {
        b = order[i]; count = after[b] - before[b]
        if (count >= total / 2) {
          if (b == "+Inf") { printf ">%.1f", lower * 1000; exit }
          printf "%.2f", (lower + (b - lower) * (total / 2 - below) / (count - below)) * 1000
          exit
        }
        lower = b; below = count
      }
    }' "$1.before" "$1.after"
}

print_report() {
  echo
  echo "== Drain (durable end to end except pg_recvlogical, which writes a file)"
  printf '%-28s %-32s %9s %8s %14s %9s\n' shape client rows/s seconds "CPU-s/M events" "peak RSS"
  local line shape client rate seconds cpu mib
  for line in "${DRAIN_RESULTS[@]}"; do
    IFS='|' read -r shape client rate seconds cpu mib <<<"$line"
    printf '%-28s %-32s %9s %8s %14s %5s MiB\n' "$shape" "$client" "$rate" "$seconds" "$cpu" "$mib"
  done
  if ((${#LATENCY_RESULTS[@]})); then
    echo
    echo "== Latency: commit -> consumer receive, single-row transactions (pgbench -R, synchronous_commit = on)"
    printf '%-32s %9s %9s %8s %8s %8s %8s\n' client "rate/s" achieved "p50 ms" "p99 ms" "max ms" records
    local achieved p50 p99 max count
    for line in "${LATENCY_RESULTS[@]}"; do
      IFS='|' read -r client rate achieved p50 p99 max count <<<"$line"
      printf '%-32s %9s %9.0f %8s %8s %8s %8s\n' "$client" "$rate" "$achieved" "$p50" "$p99" "$max" "$count"
    done
  fi
  if ((${#STAGE_RESULTS[@]})); then
    echo
    echo "== Where the relay's latency goes: medians from the commit, in ms (see bench/README.md)"
    printf '%9s %16s %18s %16s %18s\n' "rate/s" "relay has read" "relay produced" "Kafka acked" "consumer received"
    local read produced acked received
    for line in "${STAGE_RESULTS[@]}"; do
      IFS='|' read -r rate read produced acked received <<<"$line"
      printf '%9s %16s %18s %16s %18s\n' "$rate" "$read" "$produced" "$acked" "$received"
    done
  fi
  echo
  echo "== Targets (reported, not enforced)"
  report_targets
  echo
  echo "== Where the CPU went"
  for line in "${CPU_NOTES[@]}"; do
    echo "$line"
  done
}

# One verdict line per target, from the results above.
report_targets() {
  printf '%s\n' "${DRAIN_RESULTS[@]}" "--" "${LATENCY_RESULTS[@]}" | awk -F'|' \
    -v rss="$RSS_TARGET_MIB" -v p99t="$LATENCY_P99_TARGET_MS" -v cb="$CPU_TARGET_BATCHED" \
    -v cs="$CPU_TARGET_SINGLE" -v ratio="$DRAIN_RATIO_TARGET" '
    function verdict(ok) { return ok ? "PASS" : "FAIL" }
    $0 == "--" { latency = 1; next }
    !latency {
      shapes[$1] = 1
      if ($2 == "relay") { relay[$1] = $3; cpu[$1] = $5; peak[$1] = $6 }
      if ($2 == "pg_recvlogical") recv[$1] = $3
      if ($2 ~ /^relay/ && $6 > maxpeak) maxpeak = $6
    }
    latency && $1 == "relay" && $2 == 5000 { p99 = $5; seen = 1 }
    END {
      if (seen) printf "relay latency p99 at 5,000/s < %d ms:      %s (%s ms)\n", p99t, verdict(p99 < p99t), p99
      for (s in shapes) {
        target = (s ~ /single/) ? cs : cb
        if (s in cpu) printf "relay CPU, %s <= %d CPU-s/M: %s (%s)\n", s, target, verdict(cpu[s] <= target), cpu[s]
        if ((s in relay) && (s in recv))
          printf "relay drain, %s >= %.1fx pg_recvlogical: %s (%.2fx)\n", s, ratio,
            verdict(relay[s] / recv[s] >= ratio), relay[s] / recv[s]
      }
      printf "relay peak RSS < %d MiB:                  %s (%d MiB)\n", rss, verdict(maxpeak < rss), maxpeak
    }'
}

main() {
  [[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, got '$ROWS'"
  [[ $SINGLE_ROWS =~ ^[0-9]+$ ]] || die "SINGLE_ROWS must be a number, got '$SINGLE_ROWS'"
  install_and_build

  services_init bench
  trap services_cleanup EXIT
  pg_start
  broker_start # Sets BROKER_PID, read for the broker's CPU time.
  backlog_prepare
  poll_session_start

  drain_shape "1000-row transactions" "$ROWS" 1000 a
  if ((SINGLE_ROWS > 0)); then
    drain_shape "single-row transactions" "$SINGLE_ROWS" 1 b
  fi
  if [[ -n $LATENCY_RATES ]]; then
    wants relay && latency_for relay l_relay
    if wants debezium; then
      latency_for "Debezium $DEBEZIUM_VERSION (tuned)" l_dbzt
      latency_for "Debezium $DEBEZIUM_VERSION (default)" l_dbz
    fi
  fi
  print_report
}

main "$@"
