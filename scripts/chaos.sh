#!/usr/bin/env bash
# The standard fault suite: every nemesis (kill, pause, partition, delay, all, then clock)
# against linearizable, lease and strong reads with the register workload, then the set and
# bank workloads under all; a fresh 5-node cluster each, for SECONDS each (default 60). Prints
# one table; exits non-zero if any run is not valid, except clock × lease: `lease` reads assume
# clock rates differ by less than the lease margin, and the clock nemesis breaks that on
# purpose, so that row is expected to be caught (it is reported, and does not fail the suite).
#
#   scripts/chaos.sh [SECONDS] [--nodes N] [--seed S] [--rate OPS_PER_S] [--concurrency N]
#                    [--check-time-limit-s S] [--secure]
#
# --secure runs every node with TLS on both ports (client certificates required) and every
# client with its certificate (jepsen-lite test --secure).
#
# Nodes snapshot every 200 entries (jepsen-lite's default), so nodes that were killed or cut off
# catch up through snapshot installs under the faults too; the table counts them.
# Results of every run (history, node logs, results.json) stay under run/chaos/
# (MIRRORKV_CHAOS_OUT to change it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
shift || true
nodes=5
seed=$(date +%s)
rate=100
concurrency=5
check_time_limit_s=120
secure=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --check-time-limit-s) check_time_limit_s=$2; shift 2 ;;
    --secure) secure=(--secure); shift ;;
    *) echo "usage: scripts/chaos.sh [SECONDS] [--nodes N] [--seed S] [--rate OPS_PER_S] [--concurrency N] [--check-time-limit-s S] [--secure]" >&2; exit 2 ;;
  esac
done
"$repo/scripts/deps.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
# MIRRORKV_BIN_DIR: run the jepsen-lite and mirrorkv binaries found there instead of building
# (a long run on a copy of them, while the target dir is rebuilt).
if [ -n "${MIRRORKV_BIN_DIR:-}" ]; then
  bin=$MIRRORKV_BIN_DIR
else
  (cd "$repo" && cargo build --release --quiet --workspace)
  bin=$CARGO_TARGET_DIR/release
fi
out=${MIRRORKV_CHAOS_OUT:-$repo/run/chaos}
rm -rf "$out"
mkdir -p "$out"
failed=0
started=$(date +%s)
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
# run WORKLOAD NEMESIS LEVEL
run() {
  local workload=$1 nemesis=$2 level=$3
  local name=$workload-$nemesis-$level
  local dir=$out/$name code=0
  "$bin/jepsen-lite" test --nodes "$nodes" --time-limit "$seconds" \
    --rate "$rate" --concurrency "$concurrency" --check-time-limit-s "$check_time_limit_s" --workload "$workload" \
    --nemesis "$nemesis" --consistency "$level" --seed "$seed" ${secure[@]+"${secure[@]}"} --out "$dir" > "$dir.log" 2>&1 || code=$?
  if [ "$nemesis-$level" = clock-lease ]; then
    # Expected to be caught (see the header); only a harness failure fails the suite.
    if [ "$code" -eq 3 ]; then failed=1; fi
  else
    if [ "$code" -ne 0 ]; then failed=1; fi
  fi
  echo "$workload $nemesis $level $code" >> "$out/runs.txt"
  grep '^reproduce:' "$dir.log" >> "$out/reproduce.txt" || true
}
for nemesis in kill pause partition delay all clock; do
  for level in linearizable lease strong; do
    run register "$nemesis" "$level"
  done
done
run set all linearizable
run bank all linearizable
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
verdicts = {0: "valid", 1: "NOT VALID", 2: "unknown", 3: "harness failed"}
print(f"{'workload':<9} {'nemesis':<10} {'reads':<13} {'verdict':<24} {'ops':>6} {'ok':>6} {'fail':>6} {'info':>6} {'errors %':>9} {'snap installs':>13}")
def installs(run):
    """Snapshots the nodes installed from a leader during the run (from their logs)."""
    logs = os.path.join(out, run, "nodes")
    if not os.path.isdir(logs):
        return 0
    return sum(open(os.path.join(logs, f), errors="replace").read().count("installed snapshot")
               for f in os.listdir(logs) if f.endswith(".log"))
for line in open(os.path.join(out, "runs.txt")):
    workload, nemesis, level, code = line.split()
    name = f"{workload}-{nemesis}-{level}"
    verdict = verdicts.get(int(code), code)
    if nemesis == "clock" and level == "lease" and int(code) != 3:
        verdict += " (expected)" if int(code) == 1 else " (not caught)"
    path = os.path.join(out, name, "results.json")
    if os.path.exists(path):
        o = json.load(open(path))["outcome"]
        total = o["ok"] + o["fail"] + o["info"]
        errors = 100.0 * (o["fail"] + o["info"]) / total if total else 0.0
        print(f"{workload:<9} {nemesis:<10} {level:<13} {verdict:<24} {o['operations']:>6} {o['ok']:>6} {o['fail']:>6} {o['info']:>6} {errors:>9.1f} {installs(name):>13}")
    else:
        print(f"{workload:<9} {nemesis:<10} {level:<13} {verdict:<24} (no results: see {name}.log)")
PY
echo "seed $seed, $nodes nodes, ${seconds} s a run, --rate $rate --concurrency $concurrency${secure[@]+ ${secure[*]}}, commit $commit, $(( $(date +%s) - started )) s in all"
echo "histories, logs and reproduce commands under $out"
exit $failed
