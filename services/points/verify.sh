#!/usr/bin/env bash
# Runs the points service end to end on loopback: PostgreSQL 15, one Kafka broker, the
# service (services/points) and its outbox-relay sidecar (config/points-relay.toml). It
# produces payment events to outbox.event.payment as the payment service's relay would
# (headers id, eventType, correlationId), then shows the balances, the events on
# outbox.event.points, the dead letters on outbox.event.payment.DLT, and that a replay of
# the topic by a new consumer group changes nothing. Stops everything it started.
#
#   services/points/verify.sh          (RELAY=path/to/outbox-relay to skip cargo build)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/install.sh
source scripts/lib/services.sh
source scripts/lib/saga.sh
source scripts/lib/points.sh

install_debian_packages
install_kafka
install_demo_packages
if [[ -z "${RELAY:-}" ]]; then
  cargo build --quiet -p outbox-relay --bin outbox-relay
  RELAY=target/debug/outbox-relay
fi
JAR=$(build_points_service)

services_init points
trap services_cleanup EXIT
# A signal (timeout, Ctrl-C) exits through the EXIT trap too, so nothing is left running.
trap 'exit 1' INT TERM
pg_start
broker_start
psql_run postgres "CREATE DATABASE points"
sql() { "$PG_BINDIR/psql" -X -A -t -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d points -c "$1"; }

# Starts the service with consumer group $1; sets POINTS_URL, POINTS_PID and POINTS_LOG.
start_points() {
  local group=$1 port
  POINTS_LOG="$WORK/points-$group.log"
  port=$(free_port)
  SPRING_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$PG_PORT/points" SPRING_DATASOURCE_USERNAME=postgres \
    SPRING_DATASOURCE_PASSWORD= KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" SERVER_PORT="$port" \
    CONSUMER_GROUP="$group" POINTS_BLOCKED_USERS=13 POINTS_MAX_REWARD=5000 \
    java -Xmx256m -XX:TieredStopAtLevel=1 -jar "$JAR" >"$POINTS_LOG" 2>&1 &
  POINTS_PID=$!
  services_track "$POINTS_PID"
  local deadline=$((SECONDS + 120))
  until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    kill -0 "$POINTS_PID" 2>/dev/null || { tail -30 "$WORK/points-$group.log" >&2; echo "points service exited" >&2; exit 1; }
    if ((SECONDS > deadline)); then echo "points service did not answer" >&2; exit 1; fi
    sleep 0.5
  done
  POINTS_URL="http://127.0.0.1:$port"
  echo "points service (group $group) on $POINTS_URL, log $WORK/points-$group.log"
}

# Polls until `sql $1` prints $2 (60 s at most).
wait_sql() {
  local deadline=$((SECONDS + 60))
  until [[ "$(sql "$1")" == "$2" ]]; do
    if ((SECONDS > deadline)); then
      echo "timed out: $1 gave $(sql "$1"), not $2; the service's log:" >&2; tail -40 "$POINTS_LOG" >&2
      grep -E -m 20 'ERROR|Caused by' "$POINTS_LOG" >&2 || true; exit 1
    fi
    sleep 0.5
  done
}

# Polls until file $1 has $2 lines matching $3 (60 s at most).
wait_log() {
  local deadline=$((SECONDS + 60))
  until (($(grep -c -- "$3" "$1" || true) >= $2)); do
    if ((SECONDS > deadline)); then echo "timed out waiting for $2 × '$3' in $1:" >&2; tail -40 "$1" >&2; exit 1; fi
    sleep 0.5
  done
}

# The broker does not create topics on first use: the payment service's relay would have.
java -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$BROKER_PORT" \
  --create --topic outbox.event.payment --partitions 3 --replication-factor 1

echo "== starting the points service (creates its tables) and its relay"
start_points points-service
saga_start_relay points points

echo "== producing payment events to outbox.event.payment (headers TAB key TAB value)"
P1=11111111-1111-4111-8111-111111111111 P2=22222222-2222-4222-8222-222222222222
P3=33333333-3333-4333-8333-333333333333 P4=44444444-4444-4444-8444-444444444444
P5=55555555-5555-4555-8555-555555555555 P6=66666666-6666-4666-8666-666666666666
P7=77777777-7777-4777-8777-777777777777
E1=e0000000-0000-4000-8000-000000000001
completed() { # event id, payment id, user id, paid amount
  printf 'id:%s,eventType:ReservationCompleted,correlationId:%s\t%s\t{"paymentId": "%s", "reservationId": 7, "userId": %s, "paidAmount": %s}\n' \
    "$1" "$2" "$2" "$2" "$3" "$4"
}
produce() {
  java -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.ConsoleProducer --bootstrap-server "127.0.0.1:$BROKER_PORT" \
    --topic outbox.event.payment --property parse.key=true --property parse.headers=true 2>&1 | tr -d '\r' | { grep -v '^$' || true; }
}
{
  completed "$E1" "$P1" 11 25000                                        # 2500 points
  completed e0000000-0000-4000-8000-000000000002 "$P2" 11 12345         # 1200 points
  completed "$E1" "$P1" 11 25000                                        # duplicate of the first
  completed e0000000-0000-4000-8000-000000000003 "$P3" 13 30000         # user 13 is blocked
  completed e0000000-0000-4000-8000-000000000004 "$P4" 12 100000        # 10000 > cap 5000
  printf 'id:e0000000-0000-4000-8000-000000000005,eventType:PaymentRefunded,correlationId:%s\t%s\t{"paymentId": "%s"}\n' "$P1" "$P1" "$P1"
  printf 'id:e0000000-0000-4000-8000-000000000006,eventType:ReservationCompleted,correlationId:%s\t%s\tnot json at all\n' "$P5" "$P5"
  printf 'id:e0000000-0000-4000-8000-000000000007,eventType:ReservationCompleted,correlationId:%s\t%s\t{"paymentId": "%s", "userId": 14}\n' "$P6" "$P6" "$P6"
  printf 'eventType:ReservationCompleted,correlationId:%s\t%s\t{"paymentId": "%s", "reservationId": 7, "userId": 15, "paidAmount": 1000}\n' "$P7" "$P7" "$P7"
} | produce

# 9 records: 7 distinct ids and 1 without → 8 inbox rows (7 + the id-less record's origin);
# outbox: 2 PointsRewarded, 2 PointsRewardFailed, 3 dead letters.
wait_sql "SELECT count(*) FROM inbox" 8
wait_sql "SELECT count(*) FROM outbox" 7
echo "== balances (GET /points/{userId})"
for user in 11 12 13 99; do curl -fsS "$POINTS_URL/points/$user"; echo; done
echo "== a JSON error: GET /points/abc"
curl -sS "$POINTS_URL/points/abc" -w ' (HTTP %{http_code})\n'
echo "== the outbox"
sql "SELECT aggregatetype, aggregateid, type, payload::text, coalesce(dlt_reason, '-'), coalesce(dlt_origin, '-'),
            pg_typeof(payload) FROM outbox ORDER BY aggregatetype, dlt_origin, payload->>'userId'"
echo "== the duplicate and the ignored event in the service's log"
grep -E 'already handled|not for points' "$WORK/points-points-service.log" | sed 's/^.*INFO/INFO/'

sed "s/^listen = .*/listen = \"127.0.0.1:$(free_port)\"/" config/points-relay.toml >"$WORK/tail.toml"
tail_topic() {
  saga_relay_env points "$RELAY" tail --config "$WORK/tail.toml" --topic "$1" --idle-timeout-ms 3000
}
echo "== outbox.event.points, as published by the relay"
tail_topic outbox.event.points
echo "== outbox.event.payment.DLT, as published by the relay"
tail_topic outbox.event.payment.DLT

echo "== replay: a new consumer group reads outbox.event.payment from the beginning"
before=$(sql "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM inbox), (SELECT string_agg(user_id || '=' || balance, ',' ORDER BY user_id) FROM point_balances)")
kill -TERM "$POINTS_PID"; wait "$POINTS_PID" || true
start_points points-replay
wait_log "$WORK/points-points-replay.log" 9 'already handled'
after=$(sql "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM inbox), (SELECT string_agg(user_id || '=' || balance, ',' ORDER BY user_id) FROM point_balances)")
echo "outbox rows|inbox rows|balances before: $before, after: $after"
[[ "$before" == "$after" ]] || { echo "the replay changed something" >&2; exit 1; }
echo "== a transient failure: PostgreSQL stopped, an event arrives, PostgreSQL back"
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null
P8=88888888-8888-4888-8888-888888888888
completed e0000000-0000-4000-8000-000000000008 "$P8" 16 5000 | produce
wait_log "$POINTS_LOG" 1 "$P8.*retrying"
grep -m 1 "$P8.*retrying" "$POINTS_LOG" | sed 's/^.*WARN/WARN/'
as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w start >/dev/null
wait_sql "SELECT balance FROM point_balances WHERE user_id = 16" 500
echo "after the restart: $(curl -fsS "$POINTS_URL/points/16"); outbox rows: $(sql "SELECT count(*) FROM outbox")"
deadline=$((SECONDS + 90))
until published=$(tail_topic outbox.event.points | grep "key=$P8"); do
  if ((SECONDS > deadline)); then echo "the relay did not publish $P8's reward; see $WORK/points-relay.log" >&2; exit 1; fi
done
echo "published by the relay (it reconnected by itself): $published"
echo "== correlation ids in the service's log lines (MDC)"
grep -m 3 "$P1" "$WORK/points-points-service.log" | sed 's/^.*INFO/INFO/'
echo "verify: all checks passed"
