# Starting PostgreSQL and an Apache Kafka broker on loopback for scripts (demo, benchmark).
# Everything lives under one temp dir and is stopped by services_cleanup.

PG_BINDIR="${PG_BINDIR:-/usr/lib/postgresql/15/bin}"
TRACKED_PIDS=()

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs a PostgreSQL server binary, as the postgres OS user when we are root.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

services_init() {
  WORK=$(mktemp -d "/tmp/outbox-$1-XXXXXX")
  chmod 755 "$WORK"
  mkdir -p "$WORK/pg"
  [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$WORK/pg"
  export WORK
}

services_track() {
  TRACKED_PIDS+=("$1")
}

services_cleanup() {
  local pid
  for pid in "${TRACKED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${TRACKED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -f "$WORK/pg/data/postmaster.pid" ]]; then
    as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}

# PostgreSQL with wal_level=logical on a free port; sets PG_PORT.
pg_start() {
  PG_PORT=$(free_port)
  as_pg "$PG_BINDIR/initdb" -A trust -U postgres --no-sync -E UTF8 --locale=C -D "$WORK/pg/data" >/dev/null
  # The demo runs eleven relays at once (one slot and one walsender each), four sagas.
  cat >> "$WORK/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/pg'
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
shared_buffers = 256MB
max_wal_size = 2GB
synchronous_commit = off
CONF
  as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w start >/dev/null
  echo "PostgreSQL on 127.0.0.1:$PG_PORT"
}

psql_run() {
  "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -c "$2"
}

# A single-node Apache Kafka broker (KRaft, scripts/kafka/broker.sh) on free ports, its
# data and log under $WORK/kafka; sets BROKER_PORT and BROKER_PID. Waits until the broker
# logs that it started (it then answers metadata requests). About 6-10 s on 2 cores.
broker_start() {
  BROKER_PORT=$(free_port)
  local controller_port
  controller_port=$(free_port)
  mkdir -p "$WORK/kafka"
  scripts/kafka/broker.sh "$WORK/kafka" "$BROKER_PORT" "$controller_port" >"$WORK/broker.log" 2>&1 &
  BROKER_PID=$!
  services_track "$BROKER_PID"
  local deadline=$((SECONDS + 90))
  until grep -q "Kafka Server started" "$WORK/broker.log" 2>/dev/null; do
    kill -0 "$BROKER_PID" 2>/dev/null || { tail -20 "$WORK/broker.log" >&2; echo "the broker exited; see $WORK/broker.log" >&2; exit 1; }
    if ((SECONDS > deadline)); then echo "broker did not start; see $WORK/broker.log" >&2; exit 1; fi
    sleep 0.2
  done
  echo "Apache Kafka $KAFKA_VERSION on 127.0.0.1:$BROKER_PORT"
}

# Waits until replication slot $1 in database $2 is held by a walsender (the relay with
# pid $3 is streaming), failing if that relay exits first. The slot's `active` flag alone
# is also true while a SQL call is still creating it, before it streams anything.
wait_for_slot_active() {
  local deadline=$((SECONDS + 60))
  until [[ "$("$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$2" \
           -c "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
               WHERE s.slot_name = '$1' AND a.backend_type = 'walsender'")" == "1" ]]; do
    kill -0 "$3" 2>/dev/null || { echo "the relay exited; see $WORK/relay.log" >&2; exit 1; }
    if ((SECONDS > deadline)); then echo "slot $1 never became active" >&2; exit 1; fi
    sleep 0.2
  done
}
