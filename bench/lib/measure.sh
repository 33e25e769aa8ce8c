# shellcheck shell=bash disable=SC2034  # the caller reads the variables set here
# Measuring one client draining a replication slot: polls, CPU and memory readings, and
# the shared failure helpers. Sourced by bench/run.sh and bench/instructions.sh after
# scripts/lib/services.sh; needs DB, START_LSN, END_LSN and STALL_SECONDS set.

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

# The peak resident set of PID in KiB: the larger of the kernel's own peak (VmHWM, which
# catches spikes between samples) and the peak sampled while measuring (PEAK_RSS_KB).
# Reads /proc, so call it before the process exits.
peak_rss_kb() {
  proc_status "$1"
  echo "$((PROC_HWM_KB > PEAK_RSS_KB ? PROC_HWM_KB : PEAK_RSS_KB))"
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
  awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / tck }' <<<"${stat##*) }"
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
