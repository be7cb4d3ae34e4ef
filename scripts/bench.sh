#!/usr/bin/env bash
# The standard benchmark: mirrorkv against etcd, 3 nodes each on 127.0.0.1, started and
# measured in the same run (cell by cell, alternating), 1, 16 and 64 clients × put,
# linearizable get, lease get, stale get. Prints one table (mirrorkv, etcd, ratio) and each
# node's CPU seconds and memory; writes the details to run/bench/results.json.
#
#   scripts/bench.sh [SECONDS_PER_CELL] [-- extra mirrorkv-bench flags]
#
# e.g. `scripts/bench.sh 10 -- --keys 10000,1000000` for the scale run (a pair of clusters per
# key space, measured in turn; it ends with each store's 1M figure as a share of its 10k one),
# `--value-bytes 4096`.
# etcd comes from Debian's etcd-server package, installed here when missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-10}
shift || true
[ "${1:-}" = "--" ] && shift
"$repo/scripts/deps.sh"
if ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench.sh: etcd is missing; run: sudo apt-get install -y etcd-server" >&2
    exit 1
  fi
  echo "bench.sh: installing etcd-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  # The package may start a system etcd on the default ports; the bench starts its own.
  (systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true) >/dev/null 2>&1
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
(cd "$repo" && cargo build --release --quiet --workspace)
out=$repo/run/bench
mkdir -p "$out"
echo "etcd: $(etcd --version 2>/dev/null | head -1); machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
"$CARGO_TARGET_DIR/release/mirrorkv-bench" --matrix --duration-s "$seconds" \
  --json "$out/results.json" "$@"
