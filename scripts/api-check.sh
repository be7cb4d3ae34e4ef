#!/usr/bin/env bash
# Check the HTTP API against its own OpenAPI document (GET /v1/openapi.json) with Schemathesis:
# a live 3-node cluster with TLS on both ports and --auth, every route but the watch stream
# (it never ends, and Schemathesis reads whole bodies: api-check/watchcheck.py checks its
# lines against the document instead), every check Schemathesis has (no 5xx,
# statuses, content types, headers and bodies as documented, bad input refused, requests
# without a token refused), then every acknowledged write read back on every node
# (api-check/readback.py: the fuzzer's own, and fresh keys written beside it meanwhile), and
# every node still running.
#
#   scripts/api-check.sh [EXAMPLES]    examples per operation (default 25; $MIRRORKV_API_CHECK_SEED)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
examples=${1:-25}
seed=${MIRRORKV_API_CHECK_SEED:-$RANDOM}
venv=${MIRRORKV_TOOLS_VENV:-$HOME/.cache/mirrorkv-tools-venv}
"$repo/scripts/tools.sh"

run_dir=$(mktemp -d)
export MIRRORKV_RUN_DIR=$run_dir/cluster
# Blocking reads wait at most 1 s, so a generated wait= cannot hold a request for an hour.
export MIRRORKV_NODE_FLAGS="--max-wait-s 1"
cleanup() { "$repo/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT
"$repo/scripts/cluster.sh" up 3 --secure >/dev/null
certs=$MIRRORKV_RUN_DIR/certs
endpoints=()
for id in 1 2 3; do endpoints+=("$(sed -n "s/^api_$id=//p" "$MIRRORKV_RUN_DIR/cluster.env")"); done
token=$(cat "$certs/bootstrap-token")
curl_tls=(--cacert "$certs/ca.pem" --cert "$certs/client.pem" --key "$certs/client-key.pem")
curl -fsS "${curl_tls[@]}" -o "$run_dir/openapi.json" "https://${endpoints[0]}/v1/openapi.json"

echo "api-check: Schemathesis, $examples examples an operation, seed $seed (MIRRORKV_API_CHECK_SEED)"
status=0
tls_files=("$certs/ca.pem" "$certs/client.pem" "$certs/client-key.pem" "$certs/bootstrap-token")
# Fresh keys written through every node while the fuzzing runs (at most 2000, 600 s).
"$venv/bin/python" "$repo/scripts/api-check/readback.py" write "$run_dir/writes.jsonl" 600 2000 \
  "${tls_files[@]}" "${endpoints[@]}" &
writer=$!
MIRRORKV_API_CHECK_LOG=$run_dir/requests.jsonl SCHEMATHESIS_HOOKS=hooks \
  PYTHONPATH=$repo/scripts/api-check \
  "$venv/bin/st" run "$run_dir/openapi.json" --url "https://${endpoints[0]}" \
  --checks all --exclude-checks not_a_server_error,positive_data_acceptance --exclude-path /v1/watch --max-examples "$examples" --seed "$seed" \
  --workers 1 --request-timeout 30 --continue-on-failure --no-color \
  --tls-verify "$certs/ca.pem" --request-cert "$certs/client.pem" \
  --request-cert-key "$certs/client-key.pem" -H "Authorization: Bearer $token" || status=$?

# The watch stream, which Schemathesis cannot read to its end: api-check/watchcheck.py.
"$venv/bin/python" "$repo/scripts/api-check/watchcheck.py" "$run_dir/openapi.json" \
  "${tls_files[@]}" "${endpoints[0]}" || status=1
kill "$writer" 2>/dev/null || true
wait "$writer" || true
cat "$run_dir/writes.jsonl" >> "$run_dir/requests.jsonl"
"$venv/bin/python" "$repo/scripts/api-check/readback.py" check "$run_dir/requests.jsonl" \
  "${tls_files[@]}" "${endpoints[@]}" || status=1
for id in 1 2 3; do
  pid=$(cat "$MIRRORKV_RUN_DIR/node$id.pid")
  kill -0 "$pid" 2>/dev/null || { echo "api-check: node $id is not running"; status=1; }
done
if grep -h "panicked" "$MIRRORKV_RUN_DIR"/node*.log; then status=1; fi
[ "$status" -eq 0 ] && echo "api-check: passed" || echo "api-check: FAILED"
exit "$status"
