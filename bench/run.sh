#!/usr/bin/env bash
# Throughput benchmark: the relay against pg_recvlogical on the same backlog, in one run.
#
# Both replication slots are created before the backlog is written, so both see exactly
# the same ROWS outbox rows. The relay drains its slot first (durable end to end: a slot
# position is confirmed only once Kafka acknowledged every event before it), then
# pg_recvlogical drains the other slot into a file; the two never compete for the CPUs.
# Prints a side-by-side table. Reports only: a missed target does not fail the script,
# a failed step does. Everything is stopped and removed on exit. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# EPOCHREALTIME and awk must agree on the decimal point.
export LC_ALL=C
# shellcheck source=scripts/lib/install.sh
source scripts/lib/install.sh
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh

ROWS=${ROWS:-1000000}
BATCH=${BATCH:-1000}                   # rows per backlog transaction
STALL_SECONDS=${STALL_SECONDS:-120}    # give up when a slot stops advancing this long
RSS_TARGET_MIB=64
RATIO_TARGET=0.90
EOS_RATIO_TARGET=0.80                  # exactly-once rows/s over at-least-once rows/s
DB=bench
RELAY=target/release/outbox-relay

die() {
  echo "bench: FAILED: $*" >&2
  exit 1
}

# One value (or one |-separated row) from a query.
psql_value() {
  "$PG_BINDIR/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -d "$1" -c "$2"
}

# Seconds since T0 (an EPOCHREALTIME value).
since() {
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
}

# Reads /proc/PID/status with builtins only (it runs on every poll, and forks would cost
# CPU the measured processes need): sets PROC_ALIVE (0/1: running and not a zombie),
# PROC_RSS_KB and PROC_HWM_KB (0 when the process is gone).
proc_status() {
  local key value rest
  PROC_ALIVE=0 PROC_RSS_KB=0 PROC_HWM_KB=0
  [[ -r /proc/$1/status ]] || return 0
  while read -r key value rest; do
    case $key in
      State:) [[ $value == Z ]] || PROC_ALIVE=1 ;;
      VmRSS:) PROC_RSS_KB=$value ;;
      VmHWM:) PROC_HWM_KB=$value ;;
    esac
  done <"/proc/$1/status" 2>/dev/null || true
}

# One long-lived psql session for the ~100 ms polls: a new psql and backend per poll would
# cost more CPU than the query, taken from the processes being measured.
poll_session_start() {
  coproc POLL { "$PG_BINDIR/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
                  -U postgres -d "$DB" 2>&1; }
  services_track "$POLL_PID"
}

# Runs one single-row query in the poll session; sets POLL_ROW (|-separated columns).
poll_query() {
  printf '%s;\n' "$1" >&"${POLL[1]}"
  read -r -t 30 POLL_ROW <&"${POLL[0]}" || die "the polling psql session stopped answering"
  [[ $POLL_ROW != *ERROR:* ]] || die "poll query failed: $POLL_ROW"
}

# CPU seconds (user + system) PID has used so far; 0 when it is gone.
cpu_seconds() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  # Fields after the ")" closing the command name start at field 3 (state);
  # utime and stime are fields 14 and 15, so the 12th and 13th from there.
  awk -v tck="$(getconf CLK_TCK)" '{ printf "%.1f", ($12 + $13) / tck }' <<<"${stat##*) }"
}

# Busy and total jiffies of the whole machine (all cores), for a utilisation figure.
machine_jiffies() {
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# "NAME S s, ... everything else S s; machine NN% busy on N cores" from NAME SECONDS pairs
# and the busy/total jiffies at the start of the run (BUSY0 TOTAL0 first). "Everything
# else" (the poll queries, other postgres processes, other jobs on this machine) competed
# with the run for the same cores.
cpu_report() {
  local b0=$1 t0=$2 now
  shift 2
  read -r -a now < <(machine_jiffies)
  awk -v b0="$b0" -v t0="$t0" -v b1="${now[0]}" -v t1="${now[1]}" -v n="$(nproc)" \
      -v tck="$(getconf CLK_TCK)" '
    BEGIN {
      for (i = 1; i < ARGC; i += 2) {
        printf "%s %.1f s, ", ARGV[i], ARGV[i + 1]
        ours += ARGV[i + 1]
      }
      other = (b1 - b0) / tck - ours
      printf "everything else %.1f s; machine %.0f%% busy on %d cores",
        other, 100 * (b1 - b0) / (t1 - t0), n
      # More than a tenth of the machine went elsewhere (polls cost ~1%): not a clean figure.
      if (other * tck > 0.1 * (t1 - t0)) printf " -- OTHER LOAD, rerun on a quiet machine"
    }' "$@"
}

# The walsender serving SLOT (its pid, while a client streams from it).
walsender_pid() {
  psql_value "$DB" "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = '$1'"
}

install_and_build() {
  install_debian_packages
  install_kafka
  echo "== building the relay (release; the first build compiles librdkafka and takes minutes)"
  cargo build --release --quiet --bin outbox-relay
  [[ -x $RELAY ]] || die "cargo build did not produce $RELAY"
}

# Database, publication, both slots, then the backlog. Sets START_LSN and END_LSN.
write_backlog() {
  psql_run postgres "CREATE DATABASE $DB"
  psql_run "$DB" "$(cat migrations/0001_outbox.sql)"
  # Autovacuum of the fresh million-row table would otherwise land in one of the two
  # measured runs (2 cores) and skew the comparison.
  psql_run "$DB" "ALTER TABLE public.outbox SET (autovacuum_enabled = false)"
  # The publication before the slots: pgoutput reads it through the slot's historic
  # snapshot, in which a publication created after the slot does not exist.
  psql_run "$DB" "CREATE PUBLICATION bench_pub FOR TABLE public.outbox"
  # Both slots before any backlog row, so both streams hold exactly the same rows.
  START_LSN=$(psql_value "$DB" \
    "SELECT lsn FROM pg_create_logical_replication_slot('bench_relay', 'pgoutput')")
  psql_value "$DB" "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')" >/dev/null
  psql_value "$DB" "SELECT pg_create_logical_replication_slot('bench_eos', 'pgoutput')" >/dev/null

  # One transaction per BATCH rows, committed inside a procedure (PG 11+), so a million rows
  # take one round trip instead of a thousand psql runs.
  psql_run "$DB" "
CREATE PROCEDURE bench_fill(total bigint, batch int, INOUT end_lsn pg_lsn DEFAULT NULL)
LANGUAGE plpgsql AS \$\$
DECLARE
  done bigint := 0;
  n bigint;
BEGIN
  WHILE done < total LOOP
    n := least(batch, total - done);
    INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)
    SELECT gen_random_uuid(), k.aggregatetype, k.aggregateid, k.type,
           jsonb_build_object(
             'aggregateId', k.aggregateid,
             'sequence', i,
             'amountCents', (i * 7919) % 100000,
             'currency', 'EUR',
             'occurredAt', clock_timestamp(),
             'reference', md5(i::text))
    FROM generate_series(done + 1, done + n) AS i
    CROSS JOIN LATERAL (
      SELECT (ARRAY['order', 'payment', 'customer'])[1 + i % 3] AS aggregatetype,
             (ARRAY['OrderPlaced', 'PaymentCaptured', 'CustomerUpdated'])[1 + i % 3] AS type,
             md5(((i * 7919) % 1000)::text)::uuid::text AS aggregateid
    ) AS k;
    done := done + n;
    IF done >= total THEN
      -- The end mark is taken inside the last transaction, after its last row and before
      -- its COMMIT: any slot position at or past it means that COMMIT was confirmed.
      -- (The insert position after the COMMIT can lie past anything a client confirms:
      -- pg_recvlogical confirms only the end of the last message it received, and
      -- unrelated WAL such as a checkpoint may follow the COMMIT.)
      end_lsn := pg_current_wal_insert_lsn();
    END IF;
    COMMIT;
  END LOOP;
END
\$\$"
  echo "== writing the backlog: $ROWS outbox rows in transactions of $BATCH"
  local t0=$EPOCHREALTIME
  END_LSN=$(psql_value "$DB" "CALL bench_fill($ROWS, $BATCH)")
  [[ -n $END_LSN ]] || die "the backlog procedure returned no end LSN"
  local count wal_mb payload
  count=$(psql_value "$DB" "SELECT count(*) FROM public.outbox")
  ((count == ROWS)) || die "expected $ROWS outbox rows, found $count"
  wal_mb=$(psql_value "$DB" "SELECT round(('$END_LSN'::pg_lsn - '$START_LSN'::pg_lsn) / 1048576.0)")
  payload=$(psql_value "$DB" "SELECT round(avg(length(payload::text)))
                              FROM (SELECT payload FROM public.outbox LIMIT 1000) AS sample")
  printf 'backlog written in %.1f s: %s MiB of WAL (%s .. %s), avg payload %s bytes\n' \
    "$(since "$t0")" "$wal_mb" "$START_LSN" "$END_LSN" "$payload"
  # Flush dirty buffers now rather than in the middle of a measured run.
  psql_run "$DB" "CHECKPOINT"
}

# Prints the tail of a consumer's log and fails.
fail_with_log() {
  echo "---- last lines of $1" >&2
  tail -n 40 "$1" >&2 || true
  die "$2"
}

# Polls every ~100 ms until SLOT's confirmed_flush_lsn reaches END_LSN while the consumer
# PID runs. Sets ELAPSED (seconds since T0), PEAK_RSS_KB (largest VmRSS sampled) and
# SENT_ELAPSED: when the walsender had sent everything up to END_LSN (pg_stat_replication
# sent_lsn). The gap between the two is the client's own share: for the relay, Kafka and
# its pipeline; for pg_recvlogical, mostly waiting for its next fsync and status report.
measure_until_confirmed() {
  local slot=$1 pid=$2 log=$3 t0=$4
  local confirmed reached pct sent last="" last_move=$SECONDS next_note=$((SECONDS + 10))
  PEAK_RSS_KB=0
  SENT_ELAPSED=""
  while :; do
    proc_status "$pid"
    ((PROC_ALIVE)) ||
      fail_with_log "$log" "the consumer of slot $slot exited before reaching $END_LSN"
    ((PROC_RSS_KB > PEAK_RSS_KB)) && PEAK_RSS_KB=$PROC_RSS_KB
    poll_query "
      SELECT s.confirmed_flush_lsn, s.confirmed_flush_lsn >= '$END_LSN',
             round(100 * (s.confirmed_flush_lsn - '$START_LSN')
                   / ('$END_LSN'::pg_lsn - '$START_LSN')),
             coalesce(r.sent_lsn >= '$END_LSN', false)
      FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
      WHERE s.slot_name = '$slot'"
    IFS='|' read -r confirmed reached pct sent <<<"$POLL_ROW"
    if [[ -z $SENT_ELAPSED && ($sent == t || $reached == t) ]]; then
      SENT_ELAPSED=$(since "$t0")
    fi
    [[ $reached == t ]] && break
    if [[ $confirmed != "$last" ]]; then
      last=$confirmed
      last_move=$SECONDS
    elif ((SECONDS - last_move > STALL_SECONDS)); then
      fail_with_log "$log" "slot $slot stuck at $confirmed for ${STALL_SECONDS}s (end $END_LSN)"
    fi
    if ((SECONDS >= next_note)); then
      echo "   ... $slot at $confirmed ($pct% of the backlog's WAL)"
      next_note=$((SECONDS + 10))
    fi
    sleep 0.1
  done
  ELAPSED=$(since "$t0")
}

# relay_run SLOT [KAFKA_LINES]: drains SLOT with the relay; KAFKA_LINES go into [kafka]
# (delivery = "exactly_once" for the exactly-once run). Each run publishes to topics of
# its own (a prefix per slot), so the two runs never share partitions.
relay_run() {
  local slot=$1 kafka_lines=${2:-}
  local config="$WORK/$slot.toml" log="$WORK/$slot.log"
  ADMIN_PORT=$(free_port)
  cat >"$config" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:${PG_PORT}/${DB}"
slot = "$slot"
publication = "bench_pub"
tables = ["public.outbox"]
create_slot = false
create_publication = false

[kafka]
bootstrap_servers = "127.0.0.1:${BROKER_PORT}"
topic_partitions = 3
topic_replication_factor = 1
$kafka_lines

[outbox]
topic = "$slot.outbox.event.\${routedByValue}"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
TOML
  echo "== relay run: draining slot $slot to Kafka${kafka_lines:+ ($kafka_lines)} (log: $log)"
  local jiffies0 broker_cpu0 t0 pid walsender
  read -r -a jiffies0 < <(machine_jiffies)
  broker_cpu0=$(cpu_seconds "$BROKER_PID")
  t0=$EPOCHREALTIME
  NO_COLOR=1 "$RELAY" run --config "$config" >"$log" 2>&1 &
  pid=$!
  services_track "$pid"
  measure_until_confirmed "$slot" "$pid" "$log" "$t0"
  RELAY_SECONDS=$ELAPSED
  RELAY_SENT=$SENT_ELAPSED
  # VmHWM is the kernel's own peak, catching spikes between our samples.
  proc_status "$pid"
  RELAY_PEAK_KB=$((PROC_HWM_KB > PEAK_RSS_KB ? PROC_HWM_KB : PEAK_RSS_KB))
  walsender=$(walsender_pid "$slot")
  RELAY_CPU=$(cpu_report "${jiffies0[@]}" relay "$(cpu_seconds "$pid")" \
    walsender "$(cpu_seconds "$walsender")" \
    kafka "$(awk -v a="$broker_cpu0" -v b="$(cpu_seconds "$BROKER_PID")" 'BEGIN { print b - a }')")
  if [[ $kafka_lines == *exactly_once* ]]; then
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" |
      awk '/^outbox_relay_kafka_transaction(s|_commit_seconds)_(sum|count|committed_total|aborted_total)/ { printf "   %s %s\n", $1, $2 }'
  fi
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  ((rc == 0)) || fail_with_log "$log" "the relay exited with status $rc after SIGTERM"
}

recv_run() {
  local log="$WORK/recv.log"
  echo "== pg_recvlogical run: draining slot bench_recv to $WORK/recv.out (log: $log)"
  local jiffies0 t0 pid walsender
  read -r -a jiffies0 < <(machine_jiffies)
  t0=$EPOCHREALTIME
  # -s 1 / -F 1: fsync and report every second (the defaults are 10 s). Its confirmed
  # position still trails what it has written by up to ~2 s (next fsync, then next report).
  "$PG_BINDIR/pg_recvlogical" -d "host=127.0.0.1 port=$PG_PORT dbname=$DB user=postgres" \
    --slot bench_recv --start -o proto_version=1 -o publication_names=bench_pub \
    -f "$WORK/recv.out" --no-loop -s 1 -F 1 >"$log" 2>&1 &
  pid=$!
  services_track "$pid"
  measure_until_confirmed bench_recv "$pid" "$log" "$t0"
  RECV_SECONDS=$ELAPSED
  RECV_SENT=$SENT_ELAPSED
  walsender=$(walsender_pid bench_recv)
  RECV_CPU=$(cpu_report "${jiffies0[@]}" pg_recvlogical "$(cpu_seconds "$pid")" \
    walsender "$(cpu_seconds "$walsender")")
  kill -INT "$pid"
  local rc=0
  wait "$pid" || rc=$?
  ((rc == 0)) || fail_with_log "$log" "pg_recvlogical exited with status $rc after SIGINT"
}

print_report() {
  awk -v rows="$ROWS" -v rs="$RELAY_SECONDS" -v cs="$RECV_SECONDS" -v kb="$RELAY_PEAK_KB" \
      -v es="$EOS_SECONDS" -v ekb="$EOS_PEAK_KB" -v eos_target="$EOS_RATIO_TARGET" \
      -v rss_target="$RSS_TARGET_MIB" -v ratio_target="$RATIO_TARGET" '
    BEGIN {
      relay = rows / rs; recv = rows / cs; mib = kb / 1024
      eos = rows / es; emib = ekb / 1024
      printf "\n"
      printf "%-27s %d\n", "backlog rows", rows
      printf "%-27s %-7d (%.1f s)   peak RSS %.0f MiB\n", "relay rows/s (at-least-once)", relay, rs, mib
      printf "%-27s %-7d (%.1f s)   peak RSS %.0f MiB\n", "relay rows/s (exactly-once)", eos, es, emib
      printf "%-27s %-7d (%.1f s)\n", "pg_recvlogical rows/s", recv, cs
      printf "%-27s %-7.2f (target >= %.2f)\n", "ratio relay/recv", relay / recv, ratio_target
      printf "%-27s %-7.2f (target >= %.2f)\n", "ratio exactly/at-least-once", eos / relay, eos_target
      printf "%-27s < %d MiB: %s\n", "peak RSS target", rss_target,
        (mib < rss_target && emib < rss_target) ? "PASS" : "FAIL"
    }'
  echo
  printf 'walsender had sent the whole backlog after: relay run %.1f s, ' "$RELAY_SENT"
  printf 'exactly-once run %.1f s, pg_recvlogical run %.1f s\n' "$EOS_SENT" "$RECV_SENT"
  echo "CPU during the relay run:          $RELAY_CPU"
  echo "CPU during the exactly-once run:   $EOS_CPU"
  echo "CPU during the pg_recvlogical run: $RECV_CPU"
}

main() {
  [[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, got '$ROWS'"
  [[ $BATCH =~ ^[1-9][0-9]*$ ]] || die "BATCH must be a positive integer, got '$BATCH'"
  install_and_build

  services_init bench
  trap services_cleanup EXIT
  pg_start
  broker_start # Sets BROKER_PID, read for the broker's CPU time.

  write_backlog
  poll_session_start
  relay_run bench_eos 'delivery = "exactly_once"'
  EOS_SECONDS=$RELAY_SECONDS EOS_SENT=$RELAY_SENT EOS_PEAK_KB=$RELAY_PEAK_KB EOS_CPU=$RELAY_CPU
  relay_run bench_relay
  recv_run
  print_report
}

main "$@"
