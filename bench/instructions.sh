#!/usr/bin/env bash
# Instructions per event: the relay's CPU cost, counted by valgrind's callgrind so that
# the figure repeats on a noisy machine (it counts instructions, not seconds; `perf stat`
# is not supported on every machine here).
#
# For each shape (transactions of 1000 rows, and single-row transactions) the relay drains
# two backlogs, SMALL and 3x SMALL rows, under callgrind. Start-up, connection set-up and
# shutdown cost the same in both, so (large - small) / (2 x SMALL) is what one more event
# costs: decoding, routing, producing, delivery reports, acknowledgement and status.
# librdkafka's threads are counted too. RELAY=path measures another build (e.g. an older
# commit's binary, for a before/after figure). KEEP_PROFILES=dir keeps the callgrind
# profiles there, for callgrind_annotate. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
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

SMALL=${SMALL:-20000}
STALL_SECONDS=${STALL_SECONDS:-300}
DB=bench
RELAY=${RELAY:-target/release/outbox-relay}

# callgrind_drain SLOT ROWS BATCH: writes the backlog for a fresh SLOT, drains it with
# the relay under callgrind, and sets INSTRUCTIONS (the total the run executed).
callgrind_drain() {
  local slot=$1 rows=$2 batch=$3
  backlog_write "$rows" "$batch" "$slot"
  local config="$WORK/$slot.toml" log="$WORK/$slot.log" out="$WORK/$slot.callgrind"
  # librdkafka's statistics are time-driven (every second, a few million instructions
  # each), and callgrind slows the clock-driven parts of the run 20-50 times: left on,
  # they would count per second of callgrind, not per event. So they run once a minute.
  relay_config "$config" "$slot" '[kafka.properties]
"statistics.interval.ms" = "60000"'
  NO_COLOR=1 valgrind --tool=callgrind --callgrind-out-file="$out" --log-file="$log.valgrind" \
    "$RELAY" run --config "$config" >"$log" 2>&1 &
  local pid=$!
  services_track "$pid"
  measure_until_confirmed "$slot" "$pid" "$log" "$EPOCHREALTIME"
  relay_stop "$pid" "$log"
  INSTRUCTIONS=$(awk '/Collected :/ { print $NF }' "$log.valgrind")
  [[ -n $INSTRUCTIONS ]] || fail_with_log "$log.valgrind" "callgrind reported no instruction count"
  printf '   %s: %d rows in %d-row transactions, %s instructions (%.1f s under callgrind)\n' \
    "$slot" "$rows" "$batch" "$INSTRUCTIONS" "$ELAPSED"
  if [[ -n ${KEEP_PROFILES:-} ]]; then
    mkdir -p "$KEEP_PROFILES" && cp "$out" "$KEEP_PROFILES/$slot.callgrind"
  fi
  slot_drop "$slot"
}

# per_event NAME BATCH: the two drains of one shape; prints and sets PER_EVENT.
per_event() {
  local name=$1 batch=$2 small large
  callgrind_drain "ins_${name}_small" "$SMALL" "$batch"
  small=$INSTRUCTIONS
  callgrind_drain "ins_${name}_large" "$((3 * SMALL))" "$batch"
  large=$INSTRUCTIONS
  PER_EVENT=$(awk -v s="$small" -v l="$large" -v n="$SMALL" 'BEGIN { printf "%.0f", (l - s) / (2 * n) }')
}

main() {
  [[ $SMALL =~ ^[1-9][0-9]*$ ]] || die "SMALL must be a positive integer, got '$SMALL'"
  install_debian_packages
  install_kafka
  install_valgrind
  if [[ $RELAY == target/release/outbox-relay ]]; then
    echo "== building the relay (release)"
    cargo build --release --quiet --bin outbox-relay
  fi
  [[ -x $RELAY ]] || die "no relay binary at $RELAY"
  services_init instructions
  trap services_cleanup EXIT
  pg_start
  broker_start
  backlog_prepare
  poll_session_start
  per_event batch1000 1000
  local batched=$PER_EVENT
  per_event single 1
  local single=$PER_EVENT
  echo
  printf '%-44s %s\n' "relay binary" "$RELAY"
  printf '%-44s %s\n' "instructions per event, 1000-row transactions" "$batched"
  printf '%-44s %s\n' "instructions per event, single-row transactions" "$single"
}

main "$@"
