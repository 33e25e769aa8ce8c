#!/usr/bin/env bash
# Runs one single-node Apache Kafka broker in KRaft mode (combined broker and controller)
# on loopback, in the foreground, for the tests, the demo and the benchmark.
#
#   scripts/kafka/broker.sh DIR PORT CONTROLLER_PORT [ADVERTISED_PORT]
#
# DIR holds the generated server.properties, the log dirs (data/) and broker.log. The
# storage is formatted with Kafka's own StorageTool the first time and kept afterwards, so
# running the script again on the same DIR is a broker restart with its data. It execs
# `java kafka.Kafka`, so the caller's pid (and signals) are the broker's.
#
# Environment:
#   KAFKA_LIBS        the jar folder (default: what scripts/lib/install.sh installs)
#   KAFKA_CLUSTER_ID  the cluster id to format with (default: random)
#   KAFKA_EXTRA       extra server.properties lines, appended last (listeners, SASL, ACLs)
#   KAFKA_FORMAT_ARGS extra StorageTool format arguments (e.g. --add-scram ...)
#   KAFKA_HEAP_OPTS   JVM heap options (default -Xms256m -Xmx1g)
set -euo pipefail
dir=$1 port=$2 controller_port=$3 advertised_port=${4:-$2}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/version.sh"
libs="${KAFKA_LIBS:-$KAFKA_HOME_DEFAULT/libs}"
[[ -d "$libs" ]] || { echo "Apache Kafka $KAFKA_VERSION not installed in $libs; run scripts/test.sh" >&2; exit 1; }
mkdir -p "$dir/data"

cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$advertised_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Internal topics small, so the first consumer group or transaction starts quickly.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5
share.coordinator.state.topic.num.partitions=5
# A topic created with the broker's defaults has 3 partitions, so per-key placement and
# order are exercised (the relay creates topics with -1/-1 unless configured).
num.partitions=3
# Topics exist only when created (by the relay's admin client or a test), as in production
# clusters that disable auto-creation; the relay's "missing topic" paths depend on it.
auto.create.topics.enable=false
# Tests start consumer groups often: no 3 s wait for more members.
group.initial.rebalance.delay.ms=0
# Small segments and no fsync tuning: this is a test broker; data stays until DIR goes.
log.segment.bytes=67108864
PROPS
if [[ -n "${KAFKA_EXTRA:-}" ]]; then
  printf '%s\n' "$KAFKA_EXTRA" >>"$dir/server.properties"
fi

cat >"$dir/log4j2.properties" <<'LOG'
status = error
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
LOG

java_opts=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.properties")
cp="$libs/*"

if [[ ! -f "$dir/data/meta.properties" ]]; then
  # A Kafka cluster id is 16 random bytes in URL-safe base64 without padding, not starting
  # with '-' (what `StorageTool random-uuid` prints, without a JVM start).
  cluster_id="${KAFKA_CLUSTER_ID:-}"
  while [[ -z "$cluster_id" || "$cluster_id" == -* ]]; do
    cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  done
  # shellcheck disable=SC2086
  java -cp "$cp" "${java_opts[@]}" kafka.tools.StorageTool format --ignore-formatted \
    -t "$cluster_id" -c "$dir/server.properties" ${KAFKA_FORMAT_ARGS:-} >"$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; exit 1; }
fi
exec java -cp "$cp" "${java_opts[@]}" kafka.Kafka "$dir/server.properties"
