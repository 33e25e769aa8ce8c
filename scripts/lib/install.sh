# Installs the relay's build and test dependencies on Debian 12, each only when missing,
# so a warm machine pays nothing and a fresh one gets everything. Sourced by scripts/*.sh.

PG_BINDIR="${PG_BINDIR:-/usr/lib/postgresql/15/bin}"
export PG_BINDIR

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Debian packages: PostgreSQL 15 server and client, and what librdkafka's build needs.
install_debian_packages() {
  local wanted=(postgresql-15 postgresql-client-15 build-essential cmake pkg-config
                libssl-dev zlib1g-dev libcurl4-openssl-dev openssl python3 prometheus)
  local missing=()
  local pkg
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "== installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  [[ -x "$PG_BINDIR/initdb" ]] || { echo "initdb not found in $PG_BINDIR" >&2; exit 1; }
}

# rustfmt and clippy ship as rustup components; a minimal toolchain may lack them.
install_rust_components() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "== installing rustfmt and clippy"
    rustup component add rustfmt clippy
  fi
}

# valgrind, for bench/instructions.sh (callgrind counts the relay's instructions per event).
install_valgrind() {
  command -v valgrind >/dev/null 2>&1 && return
  echo "== installing Debian packages: valgrind"
  as_root apt-get update -q
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends valgrind
}

# A JDK and Maven: they fetch Kafka's jars and build the Spring points service
# (services/points, see scripts/lib/points.sh).
install_java_build_tools() {
  local missing=()
  command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if ((${#missing[@]})); then
    echo "== installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# The test broker: Apache Kafka, as jars from Maven Central (scripts/kafka/pom.xml)
# copied into a cache folder outside the work tree; skipped when the pinned version is
# there. Needs a JDK and Maven (install_java_build_tools).
install_kafka() {
  source "$(dirname "${BASH_SOURCE[0]}")/../kafka/version.sh"
  export KAFKA_LIBS="$KAFKA_HOME_DEFAULT/libs"
  if [[ -f "$KAFKA_HOME_DEFAULT/.complete" ]]; then
    return
  fi
  install_java_build_tools
  echo "== installing Apache Kafka $KAFKA_VERSION into $KAFKA_HOME_DEFAULT (Maven Central)"
  local started=$SECONDS
  rm -rf "$KAFKA_HOME_DEFAULT"
  mkdir -p "$KAFKA_HOME_DEFAULT"
  mvn -q -B -Dstyle.color=never -f "$(dirname "${BASH_SOURCE[0]}")/../kafka/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
  touch "$KAFKA_HOME_DEFAULT/.complete"
  echo "== Apache Kafka $KAFKA_VERSION installed in $((SECONDS - started)) s"
}

# The Kubernetes manifest validator (services/saga-tests/tests/kubernetes.rs validates
# deploy/kubernetes with it): kubernetes-validate from PyPI, which bundles the Kubernetes
# JSON schemas and so works offline, in a venv in the cache folder outside the work tree;
# skipped when the pinned version is there. Needs Python's venv module (python3-venv).
KUBERNETES_VALIDATE_VERSION=1.37.0
install_kubernetes_validate() {
  local venv="${OUTBOX_RELAY_CACHE:-$HOME/.cache/outbox-relay}/venv"
  export KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"
  if [[ "$("$KUBERNETES_VALIDATE" --version 2>/dev/null)" == "$KUBERNETES_VALIDATE_VERSION" ]]; then
    return
  fi
  echo "== installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv (PyPI)"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 has no ensurepip without python3-venv.
    echo "== installing Debian packages: python3-venv"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  [[ "$("$KUBERNETES_VALIDATE" --version)" == "$KUBERNETES_VALIDATE_VERSION" ]] \
    || { echo "kubernetes-validate $KUBERNETES_VALIDATE_VERSION did not install in $venv" >&2; exit 1; }
}

install_test_dependencies() {
  install_debian_packages
  install_rust_components
  install_java_build_tools
  install_kafka
  install_kubernetes_validate
}
