#!/usr/bin/env bash
# The demo: PostgreSQL + a Kafka-protocol broker (tansu) + the relay, all on loopback, no
# Docker. Writes a few outbox events in one transaction with a business row and shows them
# arriving on Kafka, then the slot's confirmed position. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh
source scripts/lib/services.sh

install_debian_packages
install_tansu
echo "== building the relay"
cargo build --quiet --bin outbox-relay
RELAY=target/debug/outbox-relay

services_init demo
trap services_cleanup EXIT

pg_start
broker_start
psql_run postgres "CREATE DATABASE orders"
psql_run orders "$(cat migrations/0001_outbox.sql)
CREATE TABLE orders (id uuid PRIMARY KEY, customer text NOT NULL, total_cents int NOT NULL);"

CONFIG="$WORK/relay.toml"
ADMIN_PORT=$(free_port)
cat > "$CONFIG" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:${PG_PORT}/orders"
slot = "outbox_relay"
publication = "outbox_relay"
tables = ["public.outbox"]

[admin]
listen = "127.0.0.1:${ADMIN_PORT}"

[kafka]
bootstrap_servers = "127.0.0.1:${BROKER_PORT}"
topic_partitions = 1
topic_replication_factor = 1

[outbox]
route_by_field = "aggregatetype"
topic = "outbox.event.\${routedByValue}"
[[outbox.additional_headers]]
column = "type"
header = "eventType"
TOML

echo "== outbox-relay check"
"$RELAY" check --config "$CONFIG"
echo "== starting the relay (log: $WORK/relay.log; metrics: http://127.0.0.1:$ADMIN_PORT/metrics)"
"$RELAY" run --config "$CONFIG" >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
services_track "$RELAY_PID"
# Rows committed before the slot exists are not in its stream: wait until the relay holds it.
wait_for_slot_active outbox_relay orders "$RELAY_PID"

echo "== a service writes three orders, each with its outbox event, in one transaction"
psql_run orders "BEGIN;
WITH o AS (INSERT INTO orders SELECT gen_random_uuid(), 'customer-' || i, 1000 * i FROM generate_series(1, 3) i RETURNING *)
INSERT INTO outbox SELECT gen_random_uuid(), 'order', o.id::text, 'OrderCreated',
       jsonb_build_object('orderId', o.id, 'customer', o.customer, 'totalCents', o.total_cents) FROM o;
COMMIT;"

echo "== records on Kafka topic outbox.event.order"
"$RELAY" tail --config "$CONFIG" --topic outbox.event.order --max 3 --idle-timeout-ms 30000

echo "== stopping the relay gracefully (SIGTERM)"
kill -TERM "$RELAY_PID"
wait "$RELAY_PID" && echo "relay exited 0"
echo "== slot after the relay stopped"
psql_run orders "SELECT slot_name, confirmed_flush_lsn, pg_current_wal_lsn() AS server_wal FROM pg_replication_slots"
echo "== demo finished"
