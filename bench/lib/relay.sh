# shellcheck shell=bash
# Running the relay in the benchmark. Sourced after scripts/lib/services.sh; needs DB,
# PG_PORT, BROKER_PORT and WORK.

# relay_config FILE SLOT [KAFKA_LINES]: the relay's TOML for SLOT. KAFKA_LINES go into
# [kafka] (delivery = "exactly_once", or [kafka.properties] overrides). Each slot
# publishes to topics of its own (`<slot>.outbox.event.<type>`), so runs never share
# partitions. RELAY_KAFKA_PROPERTIES (TOML lines, e.g. '"linger.ms" = "0"') go into
# [kafka.properties], for experiments with librdkafka settings. Sets ADMIN_PORT.
relay_config() {
  local file=$1 slot=$2 kafka_lines=${3:-}
  ADMIN_PORT=$(free_port)
  cat >"$file" <<TOML
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
${RELAY_KAFKA_PROPERTIES:+[kafka.properties]
$RELAY_KAFKA_PROPERTIES}

[outbox]
topic = "$slot.outbox.event.\${routedByValue}"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
TOML
}

# Stops the relay PID with SIGTERM and fails unless it exits 0 (LOG is shown then).
relay_stop() {
  local pid=$1 log=$2 rc=0
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  ((rc == 0)) || fail_with_log "$log" "the relay exited with status $rc after SIGTERM"
}
