#!/usr/bin/env bash
# The demo: an order → product → delivery saga (choreography, with compensation) across
# three services, each with its own PostgreSQL database, outbox and outbox-relay sidecar,
# over an Apache Kafka broker (KRaft, single node). All on loopback, no Docker. Places three orders
# (one completes, one fails for stock, one fails delivery and gets its stock back), prints
# each saga's outcome and the stock before and after, then stops everything with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh
source scripts/lib/services.sh
source scripts/lib/saga.sh

install_debian_packages
install_kafka
install_demo_packages
echo "== building the relay and the three services"
cargo build --quiet -p outbox-relay -p order-service -p product-service -p delivery-service --bins
RELAY=target/debug/outbox-relay
SERVICE_BIN=target/debug

services_init demo
trap services_cleanup EXIT

pg_start
broker_start
for db in orders products deliveries; do psql_run postgres "CREATE DATABASE $db"; done

echo "== starting the services (each creates its tables, outbox included, at start)"
saga_start_service order orders
saga_start_service product products
saga_start_service delivery deliveries
echo "== outbox-relay check (order database)"
saga_relay_env orders "$RELAY" check --config config/order-relay.toml
echo "== starting one relay per service database (config/<service>-relay.toml)"
saga_start_relay order orders
saga_start_relay product products
saga_start_relay delivery deliveries

echo "== stocking the shop"
curl -fsS -X PUT "$PRODUCT_URL/products/1" -H 'Content-Type: application/json' -d '{"name": "keyboard", "stock": 5}'; echo
curl -fsS -X PUT "$PRODUCT_URL/products/2" -H 'Content-Type: application/json' -d '{"name": "monitor", "stock": 0}'; echo

echo "== placing three orders (POST /orders answers 202 + Location at once)"
declare -A SCENARIO LOCATION
place() {
  local scenario=$1 body=$2 headers location
  headers=$(curl -fsS -D - -o "$WORK/reply.json" -X POST "$ORDER_URL/orders" \
    -H 'Content-Type: application/json' -d "$body")
  location=$(tr -d '\r' <<<"$headers" | awk 'tolower($1) == "location:" { print $2 }')
  echo "$scenario: $(head -1 <<<"$headers" | tr -d '\r'); Location: $location; $(cat "$WORK/reply.json")"
  SCENARIO[$location]=$scenario
  LOCATION[$scenario]=$location
}
place "in stock, deliverable" '{"userId": 1, "productId": 1, "quantity": 2, "price": 30000, "address": "Seoul, Gangnam-gu"}'
place "out of stock" '{"userId": 2, "productId": 2, "quantity": 1, "price": 250000, "address": "Busan, Haeundae-gu"}'
place "undeliverable address" '{"userId": 3, "productId": 1, "quantity": 3, "price": 45000, "address": "1 Nowhere Lane"}'
echo "== a bad request is refused with a JSON error and writes nothing"
curl -sS -X POST "$ORDER_URL/orders" -H 'Content-Type: application/json' \
  -d '{"userId": 4, "productId": 1, "quantity": -1, "price": 100, "address": "Seoul"}' -w ' (HTTP %{http_code})\n'
echo "orders in the order database: $("$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d orders -c "SELECT count(*) FROM orders")"

echo "== each saga's final state (polling GET /orders/{id})"
for scenario in "in stock, deliverable" "out of stock" "undeliverable address"; do
  printf '%-22s %s\n' "$scenario:" "$(saga_wait_final "$ORDER_URL${LOCATION[$scenario]}" | jq -c '{status, reason}')"
done

# The compensation (IncreaseProductCommand) reaches the product service after the order
# is already CANCELLED: wait until every command the delivery service wrote was applied.
deadline=$((SECONDS + 60))
until [[ "$("$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d deliveries \
         -c "SELECT count(*) FROM outbox WHERE type = 'IncreaseProductCommand'")" == \
         "$("$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d products \
         -c "SELECT count(*) FROM reservations WHERE released")" ]]; do
  if ((SECONDS > deadline)); then echo "compensation not applied within 60 s" >&2; exit 1; fi
  sleep 0.2
done
echo "== stock: before → after"
echo "keyboard (product 1): 5 → $(curl -fsS "$PRODUCT_URL/products/1" | jq .stock)  (2 delivered; the undeliverable order's 3 were taken, then given back)"
echo "monitor  (product 2): 0 → $(curl -fsS "$PRODUCT_URL/products/2" | jq .stock)  (nothing to take)"

saga_id=$(basename "${LOCATION["undeliverable address"]}")
echo "== the undeliverable order's saga, followed by its correlation id $saga_id through every service's log"
for name in order product delivery; do
  # "<time> INFO event{event_type=X ...}: crate::module: message" → "X: message"
  sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/$name-service.log" | grep -F "$saga_id" \
    | sed -E 's/^[^ ]+ +[A-Z]+ +//; s/^event\{event_type=([A-Za-z]+)[^}]*\}/\1/;
              s/^create_order\{[^}]*\}/POST \/orders/; s/: [a-z_]+::[a-z_]+: /: /' \
    | sed "s/^/  $name-service  /"
done
echo "== its compensation on Kafka (topic outbox.event.product-command)"
saga_relay_env deliveries "$RELAY" tail --config "$WORK/delivery-relay.toml" \
  --topic outbox.event.product-command --max 1 --idle-timeout-ms 10000

echo "== stopping the services, then the relays (SIGTERM)"
saga_stop
echo "== demo finished"
