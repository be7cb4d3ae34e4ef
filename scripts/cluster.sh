#!/usr/bin/env bash
# Start, inspect and stop a local mirrorkv cluster on 127.0.0.1.
#
#   scripts/cluster.sh up [3|4|5] [--secure]
#                                   build if needed, start N nodes, wait for a leader; with
#                                   --secure, TLS on both ports (client certificates required)
#                                   with certificates from `mirrorkv certs init` in the run
#                                   folder (certs/), and --auth with the bootstrap token in
#                                   certs/bootstrap-token
#   scripts/cluster.sh join         start one more node that joins as a mirror (--join)
#   scripts/cluster.sh status       one line per node
#   scripts/cluster.sh down         stop every node (SIGTERM, then SIGKILL after 10 s)
#
# Everything lives in one run folder: $MIRRORKV_RUN_DIR, default ./run/cluster. Ports are asked
# of the OS on the first `up` and kept in the folder, so `up` again on the same folder restarts
# the same cluster with its data (and, for a secure one, its certificates).
# $MIRRORKV_NODE_FLAGS: more flags for every node (e.g. "--max-wait-s 1"), split on spaces.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${MIRRORKV_RUN_DIR:-$repo/run/cluster}
target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/mirrorkv-target}
bin=$target_dir/release/mirrorkv
ready_timeout_s=${MIRRORKV_READY_TIMEOUT_S:-60}

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

api_of() { sed -n "s/^api_$1=//p" "$run_dir/cluster.env"; }
pid_of() { cat "$run_dir/node$1.pid" 2>/dev/null || true; }
alive() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
nodes() { sed -n 's/^nodes=//p' "$run_dir/cluster.env"; }
# Every node of the folder: the initial ones and those that joined later.
ids() { sed -n 's/^api_\([0-9]*\)=.*/\1/p' "$run_dir/cluster.env"; }
joined() { sed -n 's/^joined_\([0-9]*\)=1/\1/p' "$run_dir/cluster.env"; }
raft_of() { sed -n "s/^raft_$1=//p" "$run_dir/cluster.env"; }
endpoints() { local out=""; for id in $(ids); do out+="${out:+,}$(api_of "$id")"; done; echo "$out"; }
secure() { grep -q '^secure=1' "$run_dir/cluster.env" 2>/dev/null; }
certs_dir() { echo "$run_dir/certs"; }
scheme() { if secure; then echo https; else echo http; fi; }
# curl as the cluster's client: with its CA and client certificate when secure.
kv_curl() {
  if secure; then
    local c; c=$(certs_dir)
    curl --cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem" \
      -H "Authorization: Bearer $(cat "$c/bootstrap-token")" "$@"
  else
    curl "$@"
  fi
}
tls_flags() { # id: the TLS flags of that node when secure (its certificate serves both ports)
  secure || return 0
  local c; c=$(certs_dir)
  echo "--tls-cert $c/node$1.pem --tls-key $c/node$1-key.pem --tls-client-ca $c/ca.pem" \
    "--peer-cert $c/node$1.pem --peer-key $c/node$1-key.pem --peer-ca $c/ca.pem" \
    "--auth --auth-bootstrap-token-file $c/bootstrap-token"
}

start_node() { # id, then the flags that say how it finds its cluster
  local id=$1; shift
  # shellcheck disable=SC2046,SC2086 # the flags are paths without spaces, split on purpose
  nohup "$bin" --id "$id" --data-dir "$run_dir/node$id" \
    --api-addr "$(api_of "$id")" --raft-addr "$(raft_of "$id")" $(tls_flags "$id") ${MIRRORKV_NODE_FLAGS:-} "$@" \
    >> "$run_dir/node$id.log" 2>&1 &
  echo $! > "$run_dir/node$id.pid"
}

wait_ready() { # id, deadline (epoch seconds)
  until kv_curl -fsS "$(scheme)://$(api_of "$1")/ready" >/dev/null 2>&1; do
    alive "$1" || die "node $1 exited; see $run_dir/node$1.log"
    [ "$(date +%s)" -lt "$2" ] || die "node $1 not ready after ${ready_timeout_s}s; see $run_dir/node$1.log"
    sleep 0.05
  done
}

up() {
  local n=3 want_secure=0
  for arg in "$@"; do
    case "$arg" in
      3|4|5) n=$arg ;;
      --secure) want_secure=1 ;;
      *) die "usage: up [3|4|5] [--secure]; a cluster has 3, 4 or 5 nodes, not '$arg'" ;;
    esac
  done
  command -v curl >/dev/null || die "curl is required"
  command -v python3 >/dev/null || die "python3 is required"
  local started_at; started_at=$(date +%s.%N)
  mkdir -p "$run_dir"
  if [ -f "$run_dir/cluster.env" ]; then
    [ "$(nodes)" = "$n" ] || die "$run_dir holds a $(nodes)-node cluster; use that size or another MIRRORKV_RUN_DIR"
    if secure; then want_secure=1; elif [ "$want_secure" = 1 ]; then
      die "$run_dir holds a cluster without TLS; use another MIRRORKV_RUN_DIR for --secure"
    fi
  else
    {
      echo "nodes=$n"
      echo "secure=$want_secure"
      for id in $(seq 1 "$n"); do echo "api_$id=127.0.0.1:$(free_port)"; echo "raft_$id=127.0.0.1:$(free_port)"; done
    } > "$run_dir/cluster.env"
  fi
  "$repo/scripts/deps.sh"
  (cd "$repo" && CARGO_TARGET_DIR=$target_dir cargo build --release --quiet --workspace) || die "build failed"
  if secure && [ ! -f "$(certs_dir)/ca.pem" ]; then
    "$bin" certs init --dir "$(certs_dir)" --nodes "$n" >/dev/null || die "mirrorkv certs init failed"
  fi
  if secure && [ ! -f "$(certs_dir)/bootstrap-token" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$(certs_dir)/bootstrap-token")
  fi
  local spec=""
  for id in $(seq 1 "$n"); do
    spec+="${spec:+,}$id=$(sed -n "s/^raft_$id=//p" "$run_dir/cluster.env")/$(api_of "$id")"
  done
  for id in $(seq 1 "$n"); do
    if alive "$id"; then echo "node $id already running (pid $(pid_of "$id"))"; continue; fi
    start_node "$id" --initial-cluster "$spec"
  done
  for id in $(joined); do
    alive "$id" || start_node "$id" --join "$(api_of 1)"
  done
  # Ready: every node answers /ready (it knows the leader and has applied what it committed).
  local deadline=$(( $(date +%s) + ready_timeout_s ))
  for id in $(ids); do wait_ready "$id" "$deadline"; done
  local took; took=$(python3 -c "import time; print(f'{time.time() - $started_at:.2f}')")
  echo "mirrorkv: $n nodes ready in ${took}s (run folder: $run_dir)"
  for id in $(ids); do echo "  node $id  $(scheme)://$(api_of "$id")"; done
  local api; api=$(api_of 1)
  if secure; then
    local c; c=$(certs_dir)
    cat <<EXAMPLE
TLS on both ports and --auth; certificates and the bootstrap (admin) token in $c. Try:
  curl --cacert $c/ca.pem --cert $c/client.pem --key $c/client-key.pem -H "Authorization: Bearer \$(cat $c/bootstrap-token)" -X PUT --data-binary 'hello' https://$api/v1/kv/greeting
or the command-line client:
  export MIRRORKV_ENDPOINTS=$(endpoints) MIRRORKV_CA=$c/ca.pem MIRRORKV_CERT=$c/client.pem MIRRORKV_KEY=$c/client-key.pem MIRRORKV_TOKEN=\$(cat $c/bootstrap-token)
  $bin ctl get greeting
  $bin ctl auth role put app --read-write app/ && $bin ctl auth token create --role app
EXAMPLE
    return
  fi
  cat <<EXAMPLE
Try:
  curl -X PUT --data-binary 'hello' http://$api/v1/kv/greeting
  curl http://$(api_of "$n")/v1/kv/greeting
  curl http://$api/v1/cluster
or the command-line client:
  export MIRRORKV_ENDPOINTS=$(endpoints)
  $bin ctl cluster status
EXAMPLE
}

join() {
  [ -f "$run_dir/cluster.env" ] || die "no cluster in $run_dir; 'up' first"
  local id=$(( $(ids | sort -n | tail -1) + 1 ))
  {
    echo "api_$id=127.0.0.1:$(free_port)"
    echo "raft_$id=127.0.0.1:$(free_port)"
    echo "joined_$id=1"
  } >> "$run_dir/cluster.env"
  if secure; then
    "$bin" certs node --dir "$(certs_dir)" --id "$id" --force >/dev/null || die "mirrorkv certs node failed"
  fi
  start_node "$id" --join "$(endpoints)"
  wait_ready "$id" $(( $(date +%s) + ready_timeout_s ))
  echo "mirrorkv: node $id joined as a mirror at $(scheme)://$(api_of "$id")"
  local tls_env=""
  if secure; then
    local c; c=$(certs_dir)
    tls_env="MIRRORKV_CA=$c/ca.pem MIRRORKV_CERT=$c/client.pem MIRRORKV_KEY=$c/client-key.pem MIRRORKV_TOKEN=\$(cat $c/bootstrap-token) "
  fi
  echo "  promote it to voter: MIRRORKV_ENDPOINTS=$(endpoints) $tls_env$bin ctl member promote $id"
}

status() {
  [ -f "$run_dir/cluster.env" ] || die "no cluster in $run_dir"
  for id in $(ids); do
    if alive "$id"; then
      local info; info=$(kv_curl -fsS --max-time 2 "$(scheme)://$(api_of "$id")/v1/cluster" 2>/dev/null || echo '{}')
      python3 - "$id" "$(scheme)://$(api_of "$id")" "$info" <<'PY'
import json, sys
node_id, api, raw = sys.argv[1], sys.argv[2], sys.argv[3]
info = json.loads(raw or "{}")
node = info.get("node", {})
print(f"node {node_id}  {api}  up  state={node.get('state', '?')} leader={info.get('leader')} "
      f"term={info.get('term')} applied={node.get('applied_index')} commit={info.get('commit_index')}")
PY
    else
      echo "node $id  $(scheme)://$(api_of "$id")  down"
    fi
  done
}

down() {
  [ -f "$run_dir/cluster.env" ] || die "no cluster in $run_dir"
  for id in $(ids); do alive "$id" && kill -TERM "$(pid_of "$id")"; done
  local deadline=$(( $(date +%s) + 10 ))
  for id in $(ids); do
    while alive "$id"; do
      if [ "$(date +%s)" -ge "$deadline" ]; then kill -KILL "$(pid_of "$id")" 2>/dev/null || true; break; fi
      sleep 0.05
    done
    rm -f "$run_dir/node$id.pid"
  done
  echo "mirrorkv: stopped (data kept in $run_dir; 'rm -rf $run_dir' to start afresh)"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  join) join ;;
  status) status ;;
  down) down ;;
  *) echo "usage: scripts/cluster.sh up [3|4|5] [--secure] | join | status | down" >&2; exit 2 ;;
esac
