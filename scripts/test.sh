#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian 12 machine (skipping
# whatever is already there), then runs formatting, lint and every test.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --no-lint  # tests only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh

install_test_dependencies

if [[ "${1:-}" != "--no-lint" ]]; then
  echo "== cargo fmt --check"
  cargo fmt --all --check
  echo "== cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
echo "== cargo test"
cargo test --workspace --locked
