#!/usr/bin/env bash
# Run the whole test suite: installs missing system packages, builds in release (the one build
# of RocksDB is shared with scripts/cluster.sh), runs unit, storage-conformance, property and
# real-cluster tests. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
cd "$repo"
exec cargo test --release --workspace "$@"
