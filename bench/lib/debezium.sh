# shellcheck shell=bash
# Debezium for the benchmark: Debezium's embedded engine (PostgreSQL connector, pgoutput,
# outbox EventRouter) draining a replication slot into Kafka with an idempotent, acks=all
# producer, marking records processed only after Kafka acknowledged them. The harness is
# bench/debezium (outboxrelay.bench.DebeziumBench); this file builds and drives it.
# Sourced after scripts/lib/install.sh and scripts/lib/services.sh.
#
#   install_debezium                    build the harness into the cache (once per source hash)
#   debezium_start SLOT PUBLICATION TOPIC_PREFIX PROFILE LOG [EXPECT]
#                                       start it (needs PG_PORT, DB, BROKER_PORT, WORK); sets DBZ_PID
#   debezium_wait_drained LOG EXPECT STALL_SECONDS
#                                       wait for Kafka's EXPECT-th ack; sets DBZ_DRAIN_SECONDS,
#                                       DBZ_DRAINED_AT, DBZ_ACKED
#   debezium_stop                       SIGTERM, wait, expect exit 0; sets DBZ_HWM_KB
#
# Environment: DBZ_JAVA_OPTS (extra JVM options, default none: the JVM's own defaults).

DEBEZIUM_VERSION=3.6.1.Final
DBZ_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../debezium" && pwd)"

_dbz_fail() {
  echo "---- last lines of $1" >&2
  tail -n 40 "$1" >&2 || true
  echo "bench: FAILED: debezium: $2" >&2
  exit 1
}

# Sets _DBZ_ALIVE (1 while PID runs and is not a zombie) and _DBZ_HWM_KB, with builtins only
# (it runs on every ~100 ms poll).
_dbz_proc() {
  local key value rest
  _DBZ_ALIVE=0 _DBZ_HWM_KB=0
  [[ -r /proc/$1/status ]] || return 0
  while read -r key value rest; do
    case $key in
      State:) [[ $value == Z ]] || _DBZ_ALIVE=1 ;;
      VmHWM:) _DBZ_HWM_KB=$value ;;
    esac
  done <"/proc/$1/status" 2>/dev/null || true
}

# The cache folder for the current pom and sources: DBZ_HOME, and DBZ_CLASSPATH in it.
_dbz_home() {
  local hash
  hash=$(cd "$DBZ_SRC" && find pom.xml src -type f -print0 | LC_ALL=C sort -z |
           xargs -0 sha256sum | sha256sum | cut -c1-12)
  DBZ_HOME="${OUTBOX_RELAY_CACHE:-$HOME/.cache/outbox-relay}/debezium-bench-${DEBEZIUM_VERSION%.Final}-$hash"
  DBZ_CLASSPATH="$DBZ_HOME/lib/*"
}

# Builds the harness with Maven (Maven Central only) into the cache folder outside the work
# tree, keyed by a hash of bench/debezium's pom and sources; skipped when that build is there.
install_debezium() {
  _dbz_home
  if [[ -f "$DBZ_HOME/.complete" ]]; then
    echo "== Debezium $DEBEZIUM_VERSION bench harness: cached in $DBZ_HOME"
    return
  fi
  install_java_build_tools
  local started=$SECONDS partial="$DBZ_HOME.partial.$$"
  rm -rf "$partial"
  mkdir -p "$partial"
  # Maven's output goes to a log (shown when the build fails), so this prints one line.
  if ! mvn -q -B -Dstyle.color=never -f "$DBZ_SRC/pom.xml" -Dbench.build.dir="$partial/build" \
         package dependency:copy-dependencies -DincludeScope=runtime \
         -DoutputDirectory="$partial/lib" >"$partial/mvn.log" 2>&1; then
    tail -n 40 "$partial/mvn.log" >&2
    rm -rf "$partial"
    echo "bench: FAILED: the Debezium bench harness did not build" >&2
    exit 1
  fi
  mv "$partial/build/debezium-bench.jar" "$partial/lib/"
  rm -rf "$partial/build" "$partial/mvn.log"
  touch "$partial/.complete"
  rm -rf "$DBZ_HOME"
  mv "$partial" "$DBZ_HOME"
  echo "== Debezium $DEBEZIUM_VERSION bench harness: built in $((SECONDS - started)) s into $DBZ_HOME"
}

# debezium_start SLOT PUBLICATION TOPIC_PREFIX PROFILE LOG [EXPECT]
# Starts the harness in the background on the existing SLOT and PUBLICATION of database $DB
# (127.0.0.1:$PG_PORT, user postgres) producing to 127.0.0.1:$BROKER_PORT, topics
# TOPIC_PREFIX.outbox.event.{order,payment,customer} (DBZ_AGGREGATE_TYPES, comma list;
# created at start-up, 3 partitions, RF 1), PROFILE default or tuned, offsets in
# $WORK/debezium-SLOT. Sets DBZ_PID (the java process), DBZ_LOG and DBZ_EXPECT, tracks the
# pid for services_cleanup and returns once the harness printed "started" (engine polling,
# a walsender streaming the slot). Fails with the log's tail if it exits first or takes
# more than 120 s.
debezium_start() {
  local slot=$1 publication=$2 prefix=$3 profile=$4 log=$5 expect=${6:-0}
  [[ -f "${DBZ_HOME:-}/.complete" ]] || _dbz_home
  [[ -f "$DBZ_HOME/.complete" ]] || { echo "bench: FAILED: run install_debezium first" >&2; exit 1; }
  DBZ_LOG=$log DBZ_EXPECT=$expect
  mkdir -p "$WORK/debezium-$slot"
  : >"$log" # there before the background job opens it, for the polls below
  # shellcheck disable=SC2086 # DBZ_JAVA_OPTS is a list of JVM options
  java ${DBZ_JAVA_OPTS:-} -cp "$DBZ_CLASSPATH" outboxrelay.bench.DebeziumBench \
    --pg-host 127.0.0.1 --pg-port "$PG_PORT" --db "$DB" --user postgres \
    --slot "$slot" --publication "$publication" \
    --bootstrap "127.0.0.1:$BROKER_PORT" --topic-prefix "$prefix" \
    --aggregate-types "${DBZ_AGGREGATE_TYPES:-order,payment,customer}" --partitions 3 \
    --offsets-dir "$WORK/debezium-$slot" --profile "$profile" --expect "$expect" \
    >>"$log" 2>&1 &
  DBZ_PID=$!
  services_track "$DBZ_PID"
  local deadline=$((SECONDS + 120)) line
  while :; do
    while IFS= read -r line; do
      [[ $line == started ]] && return 0
    done <"$log"
    _dbz_proc "$DBZ_PID"
    ((_DBZ_ALIVE)) || _dbz_fail "$log" "the harness exited before it started streaming slot $slot"
    ((SECONDS < deadline)) || _dbz_fail "$log" "the harness did not start streaming slot $slot within 120 s"
    sleep 0.2
  done
}

# debezium_wait_drained LOG EXPECT STALL_SECONDS
# Polls LOG every ~100 ms (reading only the new lines, with builtins) until the harness
# printed "drained": Kafka acknowledged EXPECT records. Sets DBZ_DRAIN_SECONDS (the
# harness's own figure: seconds from the engine's start to that ack, without the JVM's
# start, about 2-3 s), DBZ_DRAINED_AT (when that ack came, in EPOCHREALTIME's form, to
# measure from the process start like the relay: DBZ_DRAINED_AT minus an EPOCHREALTIME
# taken before debezium_start) and DBZ_ACKED. Fails when the harness exits first or its
# ack count stays put for STALL_SECONDS.
# shellcheck disable=SC2034 # DBZ_ACKED, DBZ_DRAIN_SECONDS, DBZ_DRAINED_AT: read by the caller
debezium_wait_drained() {
  local log=$1 expect=$2 stall=$3
  ((expect == DBZ_EXPECT)) ||
    _dbz_fail "$log" "debezium_start was given EXPECT ${DBZ_EXPECT:-0}, debezium_wait_drained $expect"
  local fd line partial="" word n secs epoch_ms acked=0 last_move=$SECONDS
  exec {fd}<"$log"
  while :; do
    while IFS= read -r line <&"$fd"; do
      line=$partial$line partial=""
      read -r word n secs epoch_ms <<<"$line"
      case $word in
        acked) acked=$n last_move=$SECONDS ;;
        drained)
          DBZ_ACKED=$n DBZ_DRAIN_SECONDS=$secs
          printf -v DBZ_DRAINED_AT '%d.%03d' $((epoch_ms / 1000)) $((epoch_ms % 1000))
          exec {fd}<&-
          return 0 ;;
      esac
    done
    # A line still being written: keep its start for the next round.
    partial+=$line
    _dbz_proc "$DBZ_PID"
    if ((!_DBZ_ALIVE)); then
      exec {fd}<&-
      _dbz_fail "$log" "the harness exited after $acked of $expect acknowledged records"
    fi
    if ((SECONDS - last_move > stall)); then
      exec {fd}<&-
      _dbz_fail "$log" "no Kafka ack for ${stall}s, at $acked of $expect records"
    fi
    sleep 0.1
  done
}

# Stops the harness with SIGTERM (the engine commits the acknowledged offsets, which flushes
# the slot's LSN, then stops), waits up to 120 s and expects exit status 0. Sets DBZ_HWM_KB
# (the JVM's peak resident set, VmHWM, read just before the signal) and DBZ_STOP_SECONDS.
debezium_stop() {
  _dbz_proc "$DBZ_PID"
  # shellcheck disable=SC2034 # read by the caller
  DBZ_HWM_KB=$_DBZ_HWM_KB
  local t0=$SECONDS start=$EPOCHREALTIME rc=0
  kill -TERM "$DBZ_PID" 2>/dev/null || true
  while _dbz_proc "$DBZ_PID"; ((_DBZ_ALIVE)); do
    if ((SECONDS - t0 > 120)); then
      kill -KILL "$DBZ_PID" 2>/dev/null || true
      wait "$DBZ_PID" 2>/dev/null || true
      _dbz_fail "$DBZ_LOG" "the harness did not stop within 120 s of SIGTERM"
    fi
    sleep 0.1
  done
  wait "$DBZ_PID" || rc=$?
  # shellcheck disable=SC2034 # read by the caller
  DBZ_STOP_SECONDS=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  ((rc == 0)) || _dbz_fail "$DBZ_LOG" "the harness exited with status $rc after SIGTERM"
}
