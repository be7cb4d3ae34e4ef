#!/usr/bin/env bash
# The standard fault suite: every nemesis (kill, pause, partition, delay, then all) against
# linearizable, lease and strong reads, on a fresh 5-node cluster each, for SECONDS each
# (default 60). Prints one table; exits non-zero if any run is not valid.
#
#   scripts/chaos.sh [SECONDS] [--nodes N] [--seed S]
#
# Nodes snapshot every 200 entries (jepsen-lite's default), so nodes that were killed or cut off
# catch up through snapshot installs under the faults too; the table counts them.
# Results of every run (history, node logs, results.json) stay under run/chaos/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
shift || true
nodes=5
seed=$(date +%s)
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: scripts/chaos.sh [SECONDS] [--nodes N] [--seed S]" >&2; exit 2 ;;
  esac
done
"$repo/scripts/deps.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
(cd "$repo" && cargo build --release --quiet --workspace)
out=$repo/run/chaos
rm -rf "$out"
mkdir -p "$out"
failed=0
for nemesis in kill pause partition delay all; do
  for level in linearizable lease strong; do
    dir=$out/$nemesis-$level
    code=0
    "$CARGO_TARGET_DIR/release/jepsen-lite" test --nodes "$nodes" --time-limit "$seconds" \
      --nemesis "$nemesis" --consistency "$level" --seed "$seed" --out "$dir" > "$dir.log" 2>&1 || code=$?
    [ "$code" -eq 0 ] || failed=1
    echo "$nemesis $level $code" >> "$out/runs.txt"
    grep '^reproduce:' "$dir.log" >> "$out/reproduce.txt" || true
  done
done
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
verdicts = {0: "valid", 1: "NOT VALID", 2: "unknown", 3: "harness failed"}
print(f"{'nemesis':<10} {'reads':<13} {'verdict':<15} {'ops':>6} {'ok':>6} {'fail':>6} {'info':>6} {'errors %':>9} {'snap installs':>13}")
def installs(run):
    """Snapshots the nodes installed from a leader during the run (from their logs)."""
    logs = os.path.join(out, run, "nodes")
    if not os.path.isdir(logs):
        return 0
    return sum(open(os.path.join(logs, f), errors="replace").read().count("installed snapshot")
               for f in os.listdir(logs) if f.endswith(".log"))
for line in open(os.path.join(out, "runs.txt")):
    nemesis, level, code = line.split()
    path = os.path.join(out, f"{nemesis}-{level}", "results.json")
    if os.path.exists(path):
        o = json.load(open(path))["outcome"]
        total = o["ok"] + o["fail"] + o["info"]
        errors = 100.0 * (o["fail"] + o["info"]) / total if total else 0.0
        print(f"{nemesis:<10} {level:<13} {verdicts.get(int(code), code):<15} {o['operations']:>6} {o['ok']:>6} {o['fail']:>6} {o['info']:>6} {errors:>9.1f} {installs(nemesis + '-' + level):>13}")
    else:
        print(f"{nemesis:<10} {level:<13} {verdicts.get(int(code), code):<15} (no results: see {nemesis}-{level}.log)")
PY
echo "seed $seed; histories, logs and reproduce commands under $out"
exit $failed
