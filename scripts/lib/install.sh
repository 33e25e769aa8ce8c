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

# The test broker: tansu, a Kafka-protocol broker from crates.io. Its build takes about
# 20 minutes on 2 cores, so it is skipped whenever the pinned version is already there.
TANSU_VERSION=0.6.0
install_tansu() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if command -v tansu >/dev/null 2>&1 && [[ "$(tansu --version 2>/dev/null)" == "tansu $TANSU_VERSION" ]]; then
    return
  fi
  echo "== installing tansu $TANSU_VERSION (cargo install; about 20 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
}

install_test_dependencies() {
  install_debian_packages
  install_rust_components
  install_tansu
}
