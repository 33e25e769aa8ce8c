# shellcheck shell=bash
# The checkout saga's services and relays for scripts/demo.sh: each service runs as
# `checkout-service <name>` (services/checkout/src/bin/checkout-service.rs), each relay
# from config/checkout-<name>-relay.toml.
# Needs services.sh and saga.sh (PG_PORT, BROKER_PORT, WORK, free_port, saga_track,
# wait_for_slot_active) and CHECKOUT_SERVICE (the binary) and RELAY set.

# Starts checkout service <name> (order|product|coupon|user) on database checkout_<name>s
# on a free loopback port, appending to $WORK/checkout-<name>-service.log; extra
# environment (e.g. CHECKOUT_DEADLINE_MS=5000) follows as NAME=value arguments. Sets
# CHECKOUT_<NAME>_URL once /healthz answers and CHECKOUT_<NAME>_PID.
checkout_start_service() {
  local name=$1 port pid var
  shift
  port=$(free_port)
  env DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/checkout_${name}s" \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" LISTEN_ADDR="127.0.0.1:$port" \
    NO_COLOR=1 "$@" \
    "$CHECKOUT_SERVICE" "$name" >>"$WORK/checkout-$name-service.log" 2>&1 &
  pid=$!
  saga_track "checkout-$name-service" "$pid"
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "checkout-$name-service exited; see $WORK/checkout-$name-service.log" >&2; exit 1; }
    if ((SECONDS > deadline)); then echo "checkout-$name-service did not answer" >&2; exit 1; fi
    sleep 0.2
  done
  var="CHECKOUT_$(tr '[:lower:]' '[:upper:]' <<<"$name")"
  printf -v "${var}_URL" 'http://127.0.0.1:%s' "$port"
  printf -v "${var}_PID" '%s' "$pid"
  echo "checkout-$name-service on 127.0.0.1:$port (log: $WORK/checkout-$name-service.log)"
}

# SIGTERMs the checkout service with pid $1, waits for it and forgets it (saga_stop then
# skips it).
checkout_stop_service() {
  local pid=$1 i status=0
  kill -TERM "$pid"
  wait "$pid" || status=$?
  for i in "${!SAGA_PIDS[@]}"; do
    if [[ "${SAGA_PIDS[$i]}" == "$pid" ]]; then
      echo "${SAGA_NAMES[$i]} exited $status"
      unset 'SAGA_PIDS[i]' 'SAGA_NAMES[i]'
    fi
  done
}

# Starts the relay of checkout service <name> from config/checkout-<name>-relay.toml
# (admin endpoint on a free port) and waits until it streams from slot
# checkout_<name>_outbox.
checkout_start_relay() {
  local name=$1 port pid
  port=$(free_port)
  sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "config/checkout-$name-relay.toml" \
    >"$WORK/checkout-$name-relay.toml"
  DB_USER=postgres DB_PASSWORD='' DB_ADDR="127.0.0.1:$PG_PORT" DB_NAME="checkout_${name}s" \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" \
    "$RELAY" run --config "$WORK/checkout-$name-relay.toml" >"$WORK/checkout-$name-relay.log" 2>&1 &
  pid=$!
  saga_track "checkout-$name relay" "$pid"
  wait_for_slot_active "checkout_${name}_outbox" "checkout_${name}s" "$pid"
  echo "checkout-$name relay streaming from slot checkout_${name}_outbox (metrics: http://127.0.0.1:$port/metrics)"
}

# Polls GET $1 until its JSON .status is COMPLETED or CANCELLED (60 s at most); prints
# the body.
checkout_wait_final() {
  local body deadline=$((SECONDS + 60))
  while body=$(curl -fsS "$1") && [[ ! "$(jq -r .status <<<"$body")" =~ ^(COMPLETED|CANCELLED)$ ]]; do
    if ((SECONDS > deadline)); then echo "not final after 60 s: $1 $body" >&2; exit 1; fi
    sleep 0.2
  done
  echo "$body"
}

# Polls until the SQL query $2 on database $1 prints $3 (60 s at most), e.g. a
# compensation that is applied after the order is already CANCELLED.
checkout_wait_value() {
  local db=$1 query=$2 want=$3 got deadline=$((SECONDS + 60))
  until got=$(psql_value "$db" "$query") && [[ "$got" == "$want" ]]; do
    if ((SECONDS > deadline)); then echo "$db: '$query' is '$got', not '$want', after 60 s" >&2; exit 1; fi
    sleep 0.2
  done
}
