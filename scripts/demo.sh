#!/usr/bin/env bash
# The demo: the example sagas on loopback, no Docker. Each service has its own PostgreSQL
# database, outbox and outbox-relay sidecar; all share one Apache Kafka broker (KRaft,
# single node).
#
#   scripts/demo.sh                # every saga
#   scripts/demo.sh order          # order → product → delivery (choreography, compensation)
#   scripts/demo.sh payment        # payment → points (Spring Boot), compensation and its failure
#   scripts/demo.sh registration   # user → auth, status polling
#   scripts/demo.sh checkout       # order → stock ∥ coupon (aggregator) → payment, compensations,
#                                  # a deadline; one order's W3C trace id in every service's log
#
# Each saga shows every outcome and follows one saga through every service's log by its
# correlation id (checkout: by its trace id); then everything stops with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh
source scripts/lib/services.sh
source scripts/lib/saga.sh
source scripts/lib/points.sh
source scripts/lib/checkout.sh

SAGAS=("$@")
((${#SAGAS[@]})) || SAGAS=(order payment registration checkout)
for saga in "${SAGAS[@]}"; do
  [[ "$saga" =~ ^(order|payment|registration|checkout)$ ]] \
    || { echo "unknown saga '$saga': choose order, payment, registration or checkout" >&2; exit 2; }
done
wants() { [[ " ${SAGAS[*]} " == *" $1 "* ]]; }

install_debian_packages
install_java_build_tools
install_kafka
install_demo_packages
echo "== building the relay and the services"
cargo build --quiet -p outbox-relay -p order-service -p product-service -p delivery-service \
  -p payment-service -p user-service -p auth-service --bins
# The checkout services are one binary: `checkout-service order|product|coupon|user`.
if wants checkout; then cargo build --quiet -p checkout-services --bins; fi
if wants payment; then POINTS_JAR=$(build_points_service); fi
RELAY=target/debug/outbox-relay
SERVICE_BIN=target/debug
CHECKOUT_SERVICE=target/debug/checkout-service

services_init demo
trap services_cleanup EXIT

pg_start
broker_start

psql_value() {
  "$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -c "$2"
}

# POSTs $3 to $1$2, prints "<label>: <status line>; Location: ...; <body>", and sets
# PLACED to the Location. Extra curl arguments (e.g. headers) follow.
PLACED=
post_json() {
  local label=$1 url=$2 body=$3 headers
  shift 3
  headers=$(curl -fsS -D - -o "$WORK/reply.json" -X POST "$url" \
    -H 'Content-Type: application/json' "$@" -d "$body")
  PLACED=$(tr -d '\r' <<<"$headers" | awk 'tolower($1) == "location:" { print $2 }')
  echo "$label: $(head -1 <<<"$headers" | tr -d '\r'); Location: $PLACED; $(cat "$WORK/reply.json")"
}

# The lines of each named service's log that carry correlation id $1.
follow_saga() {
  local id=$1 name
  shift
  for name in "$@"; do
    # "<time> INFO event{event_type=X ...}: crate::module: message" → "X: message"
    sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/$name-service.log" | grep -F "$id" \
      | sed -E 's/^[^ ]+ +[A-Z]+ +//; s/^event\{event_type=([A-Za-z]+)[^}]*\}/\1/;
                s/^([a-z_]+)\{[^}]*\}/\1/; s/^request:([a-z_]+)\{[^}]*\}/\1/;
                s/: [a-z_]+(::[a-z_]+)+: /: /' \
      | cut -c1-220 | sed "s/^/  $name-service  /"
  done
}

demo_order() {
  echo
  echo "######## order → product → delivery"
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
  declare -A LOCATION
  place() {
    local scenario=$1 body=$2 headers location
    headers=$(curl -fsS -D - -o "$WORK/reply.json" -X POST "$ORDER_URL/orders" \
      -H 'Content-Type: application/json' -d "$body")
    location=$(tr -d '\r' <<<"$headers" | awk 'tolower($1) == "location:" { print $2 }')
    echo "$scenario: $(head -1 <<<"$headers" | tr -d '\r'); Location: $location; $(cat "$WORK/reply.json")"
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
                s/^(request\{[^}]*\}:)?create_order\{[^}]*\}/POST \/orders/; s/: [a-z_]+(::[a-z_]+)+: /: /' \
      | sed "s/^/  $name-service  /"
  done
  echo "== its compensation on Kafka (topic outbox.event.product-command)"
  saga_relay_env deliveries "$RELAY" tail --config "$WORK/delivery-relay.toml" \
    --topic outbox.event.product-command --max 1 --idle-timeout-ms 10000
}

demo_payment() {
  echo
  echo "######## payment → points (compensation, and a compensation that fails)"
  for db in payments points; do psql_run postgres "CREATE DATABASE $db"; done
  echo "== starting the payment service (Rust) and the points service (Spring Boot, $POINTS_JAR)"
  saga_start_service payment payments
  # User 3 is blocked: the points service refuses their rewards, which the payment
  # service compensates with a refund; cards containing "refund-declined" refuse refunds.
  saga_start_points points 3 10000
  saga_start_relay payment payments
  saga_start_relay points points
  echo "== three payments (POST /payments answers 202 + Location at once)"
  local completed refunded attention
  post_json "points rewarded" "$PAYMENT_URL/payments" \
    '{"userId": 1, "reservationId": 101, "amount": 30000, "card": "4111-1111"}' \
    -H 'Idempotency-Key: demo-payment-1'
  completed=$PLACED
  post_json "user blocked → refund" "$PAYMENT_URL/payments" \
    '{"userId": 3, "reservationId": 102, "amount": 20000, "card": "4111-2222"}'
  refunded=$PLACED
  post_json "user blocked → refund declined" "$PAYMENT_URL/payments" \
    '{"userId": 3, "reservationId": 103, "amount": 15000, "card": "4111-refund-declined"}'
  attention=$PLACED
  echo "== the first request again with its Idempotency-Key: the first response, nothing written"
  post_json "repeat" "$PAYMENT_URL/payments" \
    '{"userId": 1, "reservationId": 101, "amount": 30000, "card": "4111-1111"}' \
    -H 'Idempotency-Key: demo-payment-1'
  echo "payments in the payment database: $(psql_value payments "SELECT count(*) FROM payments")"
  echo "== each saga's final state (polling GET /payments/{id})"
  printf '%-32s %s\n' "points rewarded:" "$(saga_wait_final "$PAYMENT_URL$completed" | jq -c '{status, points}')"
  printf '%-32s %s\n' "user blocked → refund:" "$(saga_wait_final "$PAYMENT_URL$refunded" | jq -c '{status, reason}')"
  printf '%-32s %s\n' "user blocked → refund declined:" "$(saga_wait_final "$PAYMENT_URL$attention" | jq -c '{status, reason}')"
  echo "== points balances (GET /points/{userId})"
  echo "user 1: $(curl -fsS "$POINTS_URL/points/1" | jq -c .)   user 3: $(curl -fsS "$POINTS_URL/points/3" | jq -c .)"
  echo "== what an operator must look at (GET /payments?status=NEEDS_ATTENTION)"
  curl -fsS "$PAYMENT_URL/payments?status=NEEDS_ATTENTION" | jq -c '.payments[] | {paymentId, amount, reason}'
  curl -fsS "$PAYMENT_URL/metrics" | grep "^saga_compensation_failed_total"
  local saga_id
  saga_id=$(basename "$attention")
  echo "== the failed compensation's saga, followed by its correlation id $saga_id through every service's log"
  follow_saga "$saga_id" payment points
}

demo_registration() {
  echo
  echo "######## user registration (user → auth, status polling)"
  for db in users auth; do psql_run postgres "CREATE DATABASE $db"; done
  saga_start_service user users
  saga_start_service auth auth
  saga_start_relay user users
  saga_start_relay auth auth
  echo "== two registrations of one login (POST /users answers 202 + Location at once)"
  local first second
  post_json "kim" "$USER_URL/users" '{"login": "kim", "name": "Kim Minji", "password": "correct horse"}'
  first=$PLACED
  saga_wait_final "$USER_URL$first" >/dev/null
  post_json "kim again" "$USER_URL/users" '{"login": "kim", "name": "Kim Jisoo", "password": "battery staple"}'
  second=$PLACED
  echo "== each registration's final state (polling GET /users/{id})"
  printf '%-10s %s\n' "kim:" "$(saga_wait_final "$USER_URL$first" | jq -c '{status, reason}')"
  printf '%-10s %s\n' "kim again:" "$(saga_wait_final "$USER_URL$second" | jq -c '{status, reason}')"
  echo "credentials: $(curl -fsS "$AUTH_URL/credentials/kim" | jq -c .)  (the event carried only a PBKDF2 hash)"
  echo "== the refused registration, followed by its correlation id $(basename "$second") through every service's log"
  follow_saga "$(basename "$second")" user auth
}

demo_checkout() {
  echo
  echo "######## checkout: order → stock ∥ coupon (joined by the order's aggregator) → payment"
  local db name
  for name in order product coupon user; do psql_run postgres "CREATE DATABASE checkout_${name}s"; done
  echo "== starting the four services (the order service with a 5 s deadline for both branches) and their relays"
  checkout_start_service order CHECKOUT_DEADLINE_MS=5000
  checkout_start_service product
  checkout_start_service coupon
  checkout_start_service user
  for name in order product coupon user; do checkout_start_relay "$name"; done

  echo "== the shop: stock, single-use coupons, balances"
  curl -fsS -X PUT "$CHECKOUT_PRODUCT_URL/products/1" -H 'Content-Type: application/json' -d '{"stock": 5}'; echo "  (keyboard)"
  curl -fsS -X PUT "$CHECKOUT_PRODUCT_URL/products/2" -H 'Content-Type: application/json' -d '{"stock": 0}'; echo "  (monitor)"
  for coupon in WELCOME:5000 SPRING:3000 AUTUMN:1000; do
    curl -fsS -X PUT "$CHECKOUT_COUPON_URL/coupons/${coupon%%:*}" -H 'Content-Type: application/json' \
      -d "{\"discount\": ${coupon#*:}}"; echo
  done
  curl -fsS -X PUT "$CHECKOUT_USER_URL/users/1/balance" -H 'Content-Type: application/json' -d '{"balance": 100000}'; echo
  curl -fsS -X PUT "$CHECKOUT_USER_URL/users/2/balance" -H 'Content-Type: application/json' -d '{"balance": 1000}'; echo

  local success no_stock used refused timeout id
  echo "== orders (POST /orders answers 202 + Location at once)"
  post_json "success" "$CHECKOUT_ORDER_URL/orders" \
    '{"userId": 1, "productId": 1, "quantity": 2, "unitPrice": 30000, "couponCode": "WELCOME"}'
  success=$PLACED
  post_json "out of stock" "$CHECKOUT_ORDER_URL/orders" \
    '{"userId": 1, "productId": 2, "quantity": 1, "unitPrice": 250000, "couponCode": null}'
  no_stock=$PLACED
  post_json "payment refused" "$CHECKOUT_ORDER_URL/orders" \
    '{"userId": 2, "productId": 1, "quantity": 1, "unitPrice": 30000, "couponCode": "SPRING"}'
  refused=$PLACED
  # WELCOME is used once the first order has claimed it.
  checkout_wait_final "$CHECKOUT_ORDER_URL$success" >/dev/null
  post_json "coupon already used" "$CHECKOUT_ORDER_URL/orders" \
    '{"userId": 1, "productId": 1, "quantity": 1, "unitPrice": 30000, "couponCode": "WELCOME"}'
  used=$PLACED

  echo "== each order's final state (polling GET /orders/{id})"
  printf '%-20s %s\n' "success:" "$(checkout_wait_final "$CHECKOUT_ORDER_URL$success" | jq -c '{status, amount, discount}')"
  for label in "out of stock" "coupon already used" "payment refused"; do
    case $label in
      "out of stock") id=$no_stock ;; "coupon already used") id=$used ;; *) id=$refused ;;
    esac
    printf '%-20s %s\n' "$label:" "$(checkout_wait_final "$CHECKOUT_ORDER_URL$id" | jq -c '{status, reason}')"
  done

  # The compensations run after the order is CANCELLED (the branches hear of it from
  # order.payment.fail and order.processing.fail): wait for them in the databases.
  id=$(basename "$refused")
  checkout_wait_value checkout_products "SELECT state FROM stock_reservations WHERE order_id = '$id'" RESTORED
  checkout_wait_value checkout_coupons "SELECT state FROM coupon_claims WHERE order_id = '$id'" RELEASED
  id=$(basename "$used")
  checkout_wait_value checkout_products "SELECT state FROM stock_reservations WHERE order_id = '$id'" RESTORED
  echo "== the payment refusal's compensations, from the databases (order $(basename "$refused"))"
  echo "  checkout_users.charges:              $(psql_value checkout_users "SELECT state || ', ' || amount FROM charges WHERE order_id = '$(basename "$refused")'")"
  echo "  checkout_products.stock_reservations: $(psql_value checkout_products "SELECT state FROM stock_reservations WHERE order_id = '$(basename "$refused")'")  (stock given back)"
  echo "  checkout_coupons.coupon_claims:       $(psql_value checkout_coupons "SELECT code || ' ' || state FROM coupon_claims WHERE order_id = '$(basename "$refused")'")  (coupon released)"
  echo "  GET /coupons/SPRING: $(curl -fsS "$CHECKOUT_COUPON_URL/coupons/SPRING" | jq -c .)"
  echo "== every reservation and claim (one row per order and branch)"
  psql_value checkout_products "SELECT order_id || ' ' || state FROM stock_reservations ORDER BY state" | sed 's/^/  stock  /'
  psql_value checkout_coupons "SELECT order_id || ' ' || coalesce(code, '-') || ' ' || state FROM coupon_claims ORDER BY state" | sed 's/^/  coupon /'
  echo "== stock and balances: keyboard 5 → $(curl -fsS "$CHECKOUT_PRODUCT_URL/products/1" | jq .stock) (2 sold), monitor 0 → $(curl -fsS "$CHECKOUT_PRODUCT_URL/products/2" | jq .stock); user 1: 100000 → $(curl -fsS "$CHECKOUT_USER_URL/users/1" | jq .balance) (2 × 30000 − 5000), user 2: 1000 → $(curl -fsS "$CHECKOUT_USER_URL/users/2" | jq .balance)"

  echo "== a timeout: the coupon service is stopped, an order waits for its coupon branch"
  checkout_stop_service "$CHECKOUT_COUPON_PID"
  post_json "timeout" "$CHECKOUT_ORDER_URL/orders" \
    '{"userId": 1, "productId": 1, "quantity": 1, "unitPrice": 30000, "couponCode": "AUTUMN"}'
  timeout=$PLACED
  id=$(basename "$timeout")
  printf '%-20s %s\n' "timeout:" "$(checkout_wait_final "$CHECKOUT_ORDER_URL$timeout" | jq -c '{status, reason}')"
  checkout_wait_value checkout_products "SELECT state FROM stock_reservations WHERE order_id = '$id'" RESTORED
  echo "  stock reservation: $(psql_value checkout_products "SELECT state FROM stock_reservations WHERE order_id = '$id'") (the product branch answered, then compensated on the deadline's OrderProcessingFailed)"
  echo "  coupon claim while the coupon service is down: '$(psql_value checkout_coupons "SELECT state FROM coupon_claims WHERE order_id = '$id'")' (none)"
  echo "== restarting the coupon service: it reads order.processing and the deadline's order.processing.fail"
  checkout_start_service coupon
  checkout_wait_value checkout_coupons \
    "SELECT count(*) FROM inbox WHERE correlation_id = '$id' AND event_type = 'OrderProcessingFailed'" 1
  echo "  coupon claim: $(psql_value checkout_coupons "SELECT code || ' ' || state FROM coupon_claims WHERE order_id = '$id'")  (claimed late and released, or VOID if the failure came first)"
  echo "  GET /coupons/AUTUMN: $(curl -fsS "$CHECKOUT_COUPON_URL/coupons/AUTUMN" | jq -c .)"

  local trace
  trace=$(curl -fsS "$CHECKOUT_ORDER_URL$success" | jq -r '.traceId // empty')
  if [[ -z "$trace" ]]; then
    echo "the successful order has no traceId: trace context is not in this build" >&2
    exit 1
  fi
  echo "== the successful order's W3C trace $trace (GET /orders/{id} traceId), through every service's log"
  follow_saga "$trace" checkout-order checkout-product checkout-coupon checkout-user
  for name in order product coupon user; do
    grep -qF "$trace" "$WORK/checkout-$name-service.log" \
      || { echo "trace $trace is not in the log of checkout-$name-service" >&2; exit 1; }
  done
  echo "== its record on Kafka with header traceparent (topic outbox.event.order.payment)"
  saga_relay_env checkout_orders "$RELAY" tail --config "$WORK/checkout-order-relay.toml" \
    --topic outbox.event.order.payment --max 2 --idle-timeout-ms 10000 | grep -F "$trace"
}

for saga in "${SAGAS[@]}"; do "demo_$saga"; done

echo
echo "== stopping the services, then the relays (SIGTERM)"
saga_stop
echo "== demo finished"
