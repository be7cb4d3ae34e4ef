#!/usr/bin/env bash
# Run the whole test suite: installs missing system packages, builds in release (the one build
# of RocksDB is shared with scripts/cluster.sh), runs unit, storage-conformance, property and
# real-cluster tests, and ends with one summary line. Extra arguments go to `cargo test` (e.g. a
# test name filter).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
cd "$repo"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
# One line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
