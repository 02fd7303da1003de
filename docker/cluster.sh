#!/usr/bin/env bash
# The three-node compose cluster (docker/compose.cluster.yml), built from our own
# statically linked binary into a FROM-scratch image (no registry involved).
#
#   docker/cluster.sh up      build the binary and image, make certificates, start 3 nodes
#   docker/cluster.sh check   wait until the cluster formed, write through one node, read
#                             through the others (exits non-zero if it does not)
#   docker/cluster.sh down    stop the nodes and delete their volumes
#   docker/cluster.sh test    up, check, down
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/homeport
COMPOSE=(docker-compose -f "$HERE/compose.cluster.yml" -p homeport)

build() {
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet --target "$TARGET" --bin homeport)
  mkdir -p "$HERE/build"
  cp "$BIN" "$HERE/build/homeport"
  docker build --quiet -t homeport:local -f "$HERE/Dockerfile" "$HERE/build" >/dev/null
  echo "image homeport:local from $BIN"
}

certs() {
  [ -f "$HERE/certs/ca.pem" ] || "$BIN" ctl certs init --dir "$HERE/certs" --nodes 3 >/dev/null
  chmod 0644 "$HERE"/certs/*.key # read by the container's user
}

ctl() { "$BIN" ctl --admin "127.0.0.1:$1" "${@:2}"; }

retry() {
  local out
  for _ in $(seq 1 20); do
    if out=$("$@" 2>&1) || [[ "$out" == *"already exists"* ]]; then return 0; fi
    echo "retrying after: $out" >&2
    sleep 1
  done
  echo "gave up: $*: $out" >&2
  return 1
}

check() {
  echo "waiting for the cluster to form"
  for _ in $(seq 1 120); do
    if ctl 8081 --json cluster status 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
ok = len(v["members"]) == 3 and all(m["reachable"] for m in v["members"]) \
    and all(g["leader"] is not None and len(g["voters"]) == 3 for g in v["groups"])
sys.exit(0 if ok else 1)'; then
      break
    fi
    sleep 1
  done
  ctl 8081 cluster status
  # A write may meet a leader hand-off (leaders spread out in the first minute) and be
  # answered 503 with its outcome unknown: retry as a client would. Both are idempotent.
  retry ctl 8081 things create compose-check
  retry ctl 8082 shadows update compose-check --desired '{"through":"node2"}'
  for port in 8081 8082 8083; do
    got=$(ctl "$port" --json shadows get compose-check | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["desired"]["through"])')
    [ "$got" = "node2" ] || { echo "node at $port reads $got" >&2; exit 1; }
    ctl "$port" things get compose-check >/dev/null
  done
  echo "compose cluster formed and serves: a write through node 2 reads back on every node"
}

case "${1:-}" in
  up) build; certs; "${COMPOSE[@]}" up -d ;;
  check) check ;;
  down) "${COMPOSE[@]}" down -v ;;
  test)
    build; certs
    trap '"${COMPOSE[@]}" logs --tail 50 >&2 || true; "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true' EXIT
    "${COMPOSE[@]}" up -d
    check
    ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
