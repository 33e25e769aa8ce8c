#!/usr/bin/env bash
# The full fault suite (CI runs a short version of it with the other tests): SIGKILLs,
# failover between two replicas, PostgreSQL and broker connection cuts and stalls, a
# frozen broker, a broker fenced by its controller, PostgreSQL restarts, broker restarts
# (SIGTERM and SIGKILL), Write revoked on a topic (ACLs), an unpaced backlog drained
# through every fault, source faults under backpressure, another system behind the same
# URL (tests/source_faults.rs), SASL_SSL with SCRAM, and unsafe slots. Prints one line
# per scenario; the tally also checks per-key order of first deliveries and prints
# duplicates.
#
#   scripts/chaos.sh           # full sizes: 20 kills in 200,000 events, 5 failovers, ...
#   scripts/chaos.sh --short   # the CI sizes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/install.sh

install_test_dependencies
export CHAOS_FULL=1
[[ "${1:-}" == "--short" ]] && export CHAOS_FULL=0

LOG=$(mktemp -t outbox-relay-chaos.XXXXXX)
echo "== fault suite (CHAOS_FULL=$CHAOS_FULL); full output: $LOG"
status=0
# Release build: the figures are meant to be read as production-like. The scenarios run
# one at a time so their faults and figures do not disturb each other.
cargo test --release --locked --test chaos --test broker_faults --test source_faults --test kafka_sasl_ssl \
  --test memory_flat --test exactly_once --test exactly_once_basics \
  --test slot_safety -- --include-ignored --nocapture --test-threads=1 \
  >"$LOG" 2>&1 || status=$?
echo
# With --nocapture a scenario's line can follow "test name ... " on the same line.
grep -oE 'chaos: .*' "$LOG" | sed 's/^chaos: //' || true
grep -oE 'memory: .*' "$LOG" || true
grep -oE 'duplicates \([0-9]+\): .*' "$LOG" | sed 's/^/  /' || true
grep -E 'test result:|panicked' "$LOG" | sed 's/^/  /' || true
grep -oE 'relay rss max +[0-9]+ MiB' "$LOG" | grep -oE '[0-9]+' | sort -n | tail -1 \
  | sed 's/^/== relay RSS, maximum over every scenario: /; s/$/ MiB (limit 128 MiB)/' || true
if ((status != 0)); then
  echo "== the fault suite FAILED (exit $status); see $LOG" >&2
  exit "$status"
fi
echo "== every scenario passed: lost 0 everywhere"
