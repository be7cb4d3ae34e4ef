#!/usr/bin/env bash
# Check the deployment files with the tools that read them:
#   deploy/prometheus: `promtool check rules` and `promtool test rules` (alerts_test.yml)
#   deploy/systemd:    `systemd-analyze verify` (the unit as it would be installed, with the
#                      binary built here and its man page on MANPATH), and
#                      `systemd-analyze security --offline` with an exposure of at most 2.0
#   deploy/kubernetes: `kubernetes-validate --strict` against the Kubernetes schemas
#   deploy/grafana:    the dashboard is JSON, and every panel has a query
# The metrics the dashboard and alerts name, the flags the manifests and the unit pass, and the
# config example are checked against the binary by node/tests/t130_deploy.rs (scripts/test.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${MIRRORKV_TOOLS_VENV:-$HOME/.cache/mirrorkv-tools-venv}
target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
bin=$target_dir/release/mirrorkv
"$repo/scripts/tools.sh"
[ -x "$bin" ] || (cd "$repo" && CARGO_TARGET_DIR=$target_dir cargo build --release --quiet --workspace)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "deploy-check: prometheus rules"
(cd "$repo/deploy/prometheus" && promtool check rules alerts.yml && promtool test rules alerts_test.yml)

echo "deploy-check: systemd unit"
mkdir -p "$work/man/man1"
"$bin" man > "$work/man/man1/mirrorkv.1"
# As installed, but running the binary built here; an instance, as systemd would start it.
sed "s|/usr/local/bin/mirrorkv|$bin|" "$repo/deploy/systemd/mirrorkv@.service" > "$work/mirrorkv@1.service"
MANPATH=$work/man systemd-analyze verify "$work/mirrorkv@1.service"
systemd-analyze security --offline=true --threshold=20 "$work/mirrorkv@1.service" |
  grep "Overall exposure"

echo "deploy-check: kubernetes objects"
"$venv/bin/kubernetes-validate" --strict --quiet "$repo"/deploy/kubernetes/*.yaml

echo "deploy-check: grafana dashboard"
python3 - "$repo/deploy/grafana/mirrorkv.json" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
panels = [p for p in dashboard["panels"] if p["type"] != "row"]
empty = [p["title"] for p in panels if not any(t.get("expr") for t in p.get("targets", []))]
assert panels and not empty, f"panels without a query: {empty}"
print(f"{len(panels)} panels, each with a query")
PY
echo "deploy-check: passed"
