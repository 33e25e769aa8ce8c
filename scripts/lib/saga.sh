# The example sagas on loopback (scripts/demo.sh): the services and their relays, each
# relay from its shipped config/<service>-relay.toml. Needs services.sh (PG_PORT,
# BROKER_PORT, WORK, free_port, services_track) and RELAY / SERVICE_BIN set.

# The demo talks HTTP with curl and reads JSON with jq; installed only when missing.
install_demo_packages() {
  local missing=() pkg
  for pkg in curl jq; do
    command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "== installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

SAGA_NAMES=()
SAGA_PIDS=()

saga_track() {
  services_track "$2"
  SAGA_NAMES+=("$1")
  SAGA_PIDS+=("$2")
}

# SIGTERM to each service and relay in start order (services before their relays), each
# awaited, with its exit status printed. services_cleanup then stops the broker and
# PostgreSQL.
saga_stop() {
  local i status
  for i in "${!SAGA_PIDS[@]}"; do
    kill -TERM "${SAGA_PIDS[$i]}" 2>/dev/null || true
    status=0
    wait "${SAGA_PIDS[$i]}" || status=$?
    # A JVM stopped by SIGTERM exits 143 after Spring's graceful shutdown.
    if [[ "${SAGA_NAMES[$i]}" == points-service && $status -eq 143 ]]; then
      echo "${SAGA_NAMES[$i]} exited 143 (the JVM's exit status after SIGTERM)"
    else
      echo "${SAGA_NAMES[$i]} exited $status"
    fi
  done
}

# Starts <service> (order|product|delivery|payment|user|auth) on database $2 on a free loopback port; sets
# <SERVICE>_URL (e.g. ORDER_URL=http://127.0.0.1:port) once /healthz answers.
saga_start_service() {
  local name=$1 db=$2 port pid var
  port=$(free_port)
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$db" \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" LISTEN_ADDR="127.0.0.1:$port" \
    UNDELIVERABLE_ADDRESS_CONTAINS="${UNDELIVERABLE_ADDRESS_CONTAINS:-nowhere}" \
    REFUND_REFUSED_CARD_CONTAINS="${REFUND_REFUSED_CARD_CONTAINS:-refund-declined}" \
    "$SERVICE_BIN/$name-service" >"$WORK/$name-service.log" 2>&1 &
  pid=$!
  saga_track "$name-service" "$pid"
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "$name-service exited; see $WORK/$name-service.log" >&2; exit 1; }
    if ((SECONDS > deadline)); then echo "$name-service did not answer" >&2; exit 1; fi
    sleep 0.2
  done
  var="$(tr '[:lower:]' '[:upper:]' <<<"$name")_URL"
  printf -v "$var" 'http://127.0.0.1:%s' "$port"
  echo "$name-service on 127.0.0.1:$port (log: $WORK/$name-service.log)"
}

# Starts the Spring Boot points service ($POINTS_JAR, see points.sh) on database $1,
# refusing rewards to the comma-separated users $2 and above $3 points; sets POINTS_URL
# once /healthz answers. Its log is $WORK/points-service.log.
saga_start_points() {
  local db=$1 blocked=$2 max_reward=$3 port pid
  port=$(free_port)
  SPRING_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$PG_PORT/$db" \
    SPRING_DATASOURCE_USERNAME=postgres SPRING_DATASOURCE_PASSWORD= \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" SERVER_PORT="$port" \
    POINTS_BLOCKED_USERS="$blocked" POINTS_MAX_REWARD="$max_reward" \
    java -XX:TieredStopAtLevel=1 -jar "$POINTS_JAR" >"$WORK/points-service.log" 2>&1 &
  pid=$!
  saga_track "points-service" "$pid"
  local deadline=$((SECONDS + 120))
  until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "points-service exited; see $WORK/points-service.log" >&2; exit 1; }
    if ((SECONDS > deadline)); then echo "points-service did not answer" >&2; exit 1; fi
    sleep 0.5
  done
  POINTS_URL="http://127.0.0.1:$port"
  echo "points-service (Spring Boot) on 127.0.0.1:$port (log: $WORK/points-service.log)"
}

# Runs `outbox-relay <args>` with the environment config/<service>-relay.toml reads.
saga_relay_env() {
  local db=$1
  shift
  DB_USER=postgres DB_PASSWORD= DB_ADDR="127.0.0.1:$PG_PORT" DB_NAME="$db" \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" "$@"
}

# Starts <service>'s relay for database $2 from config/<service>-relay.toml, with the
# admin endpoint moved to a free loopback port (three relays share this host), and waits
# until it streams from its slot.
saga_start_relay() {
  local name=$1 db=$2 port pid
  port=$(free_port)
  sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "config/$name-relay.toml" >"$WORK/$name-relay.toml"
  # Not through saga_relay_env: a backgrounded function is a subshell, and $! must be
  # the relay itself for SIGTERM to reach it.
  DB_USER=postgres DB_PASSWORD= DB_ADDR="127.0.0.1:$PG_PORT" DB_NAME="$db" \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" \
    "$RELAY" run --config "$WORK/$name-relay.toml" >"$WORK/$name-relay.log" 2>&1 &
  pid=$!
  saga_track "$name relay" "$pid"
  wait_for_slot_active "${name}_outbox" "$db" "$pid"
  echo "$name relay streaming from slot ${name}_outbox (metrics: http://127.0.0.1:$port/metrics)"
}

# Polls GET $1 until its JSON .status is not PENDING (60 s at most); prints the body.
saga_wait_final() {
  local body deadline=$((SECONDS + 60))
  while body=$(curl -fsS "$1") && [[ "$(jq -r .status <<<"$body")" == PENDING ]]; do
    if ((SECONDS > deadline)); then echo "still PENDING after 60 s: $1" >&2; exit 1; fi
    sleep 0.2
  done
  echo "$body"
}
