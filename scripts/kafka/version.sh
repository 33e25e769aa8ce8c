# The pinned Apache Kafka for tests, demo and benchmark, and where its jars are cached
# (outside the work tree, so a clean clone and every worktree share them). Sourced.
# Keep KAFKA_VERSION in step with <kafka.version> in scripts/kafka/pom.xml.
KAFKA_VERSION=4.1.1
KAFKA_HOME_DEFAULT="${OUTBOX_RELAY_CACHE:-$HOME/.cache/outbox-relay}/kafka-$KAFKA_VERSION"
