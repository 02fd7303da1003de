#!/usr/bin/env bash
# N homeport nodes on this machine's loopback, as one cluster.
#
#   cluster/local.sh up N          start N nodes (certificates made on first use)
#   cluster/local.sh status        the cluster as node 1 (or the first live node) sees it
#   cluster/local.sh kill-9 NODE   SIGKILL one node
#   cluster/local.sh stop NODE     SIGTERM one node and wait for it to exit
#   cluster/local.sh start NODE    start one node again on its data directory
#   cluster/local.sh rolling-restart  SIGTERM and start each node in turn, waiting until
#                                  it serves again ($ROLL_PAUSE s between, default 3)
#   cluster/local.sh down          stop every node this script started
#
# Node i: MQTT 127.0.0.1:(1880+i), WebSocket (8880+i), admin (8080+i), cluster QUIC on
# UDP (7000+i). Data, logs, pids and certificates live under $CLUSTER_DIR (default
# target/cluster). The binary is $HOMEPORT_BIN, else target/release/homeport (built if
# missing). Anonymous devices and an admin API without tokens, as in the quick start;
# $CLUSTER_CONFIG names a config file to use instead (flags still set ids and ports).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CLUSTER_DIR:-$ROOT/target/cluster}
BIN=${HOMEPORT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/homeport}

ensure_bin() {
  if [ ! -x "$BIN" ]; then
    echo "building $BIN" >&2
    (cd "$ROOT" && cargo build --release --quiet)
  fi
}

size() { cat "$DIR/size" 2>/dev/null || { echo "no cluster under $DIR (run: $0 up N)" >&2; exit 1; }; }

members() {
  local n; n=$(size)
  local out=""
  for i in $(seq 1 "$n"); do out="$out${out:+,}$i@127.0.0.1:$((7000 + i))"; done
  echo "$out"
}

pid_of() { cat "$DIR/node-$1/pid" 2>/dev/null || true; }

# A zombie (killed, not yet reaped: in a container PID 1 may be slow to) is not alive.
alive() {
  local p; p=$(pid_of "$1")
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  local state; state=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || echo X)
  [ "$state" != Z ] && [ "$state" != X ]
}

start_node() {
  local i=$1
  if alive "$i"; then echo "node $i is running (pid $(pid_of "$i"))"; return; fi
  mkdir -p "$DIR/node-$i"
  local config=()
  [ -n "${CLUSTER_CONFIG:-}" ] && config=(--config "$CLUSTER_CONFIG")
  "$BIN" serve "${config[@]}" --node-id "$i" --data-dir "$DIR/node-$i/data" \
    --mqtt-bind "127.0.0.1:$((1880 + i))" --ws-bind "127.0.0.1:$((8880 + i))" \
    --admin-bind "127.0.0.1:$((8080 + i))" --cluster-bind "127.0.0.1:$((7000 + i))" \
    --initial-members "$(members)" \
    --cluster-ca "$DIR/certs/ca.pem" --cluster-cert "$DIR/certs/node-$i.pem" \
    --cluster-key "$DIR/certs/node-$i.key" --cluster-fault-injection true \
    >>"$DIR/node-$i/log" 2>&1 &
  echo $! >"$DIR/node-$i/pid"
  echo "node $i: pid $!, mqtt 127.0.0.1:$((1880 + i)), ws 127.0.0.1:$((8880 + i)), admin 127.0.0.1:$((8080 + i)), cluster udp 127.0.0.1:$((7000 + i)), log $DIR/node-$i/log"
}

wait_ready() {
  local i=$1
  for _ in $(seq 1 100); do
    if "$BIN" ctl --admin "127.0.0.1:$((8080 + i))" cluster members >/dev/null 2>&1; then return 0; fi
    alive "$i" || { echo "node $i exited; see $DIR/node-$i/log" >&2; return 1; }
    sleep 0.2
  done
  echo "node $i did not answer within 20 s" >&2
  return 1
}

cmd=${1:-}
case "$cmd" in
  up)
    n=${2:?usage: $0 up N}
    ensure_bin
    mkdir -p "$DIR"
    if [ -f "$DIR/size" ] && [ "$(cat "$DIR/size")" != "$n" ]; then
      echo "$DIR holds a cluster of $(cat "$DIR/size") nodes; run '$0 down' and remove $DIR first" >&2
      exit 1
    fi
    echo "$n" >"$DIR/size"
    [ -f "$DIR/certs/ca.pem" ] || "$BIN" ctl certs init --dir "$DIR/certs" --nodes "$n" >/dev/null
    for i in $(seq 1 "$n"); do start_node "$i"; done
    for i in $(seq 1 "$n"); do wait_ready "$i"; done
    "$BIN" ctl --admin 127.0.0.1:8081 cluster members
    ;;
  status)
    n=$(size)
    for i in $(seq 1 "$n"); do
      if alive "$i"; then echo "node $i: running (pid $(pid_of "$i"))"; else echo "node $i: down"; fi
    done
    for i in $(seq 1 "$n"); do
      if alive "$i"; then exec "$BIN" ctl --admin "127.0.0.1:$((8080 + i))" cluster status; fi
    done
    ;;
  kill-9)
    i=${2:?usage: $0 kill-9 NODE}
    if alive "$i"; then
      kill -9 "$(pid_of "$i")"
      # SIGKILL is delivered at once but a process with many threads takes a moment to
      # go: wait, so that a `start` right after does not find it running.
      for _ in $(seq 1 100); do alive "$i" || break; sleep 0.05; done
      echo "node $i killed"
    else
      echo "node $i is not running"
    fi
    ;;
  stop)
    i=${2:?usage: $0 stop NODE}
    if alive "$i"; then
      # SIGTERM: the node hands its leaders off and sends its clients elsewhere first
      # (at most cluster.leave_timeout_ms, 20 s by default), then stops.
      p=$(pid_of "$i"); kill -TERM "$p"
      for _ in $(seq 1 400); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      echo "node $i stopped"
    else
      echo "node $i is not running"
    fi
    ;;
  start)
    i=${2:?usage: $0 start NODE}
    ensure_bin; size >/dev/null
    start_node "$i"; wait_ready "$i"
    ;;
  rolling-restart)
    n=$(size)
    ensure_bin
    for i in $(seq 1 "$n"); do
      t0=$(date +%s.%N)
      "$0" stop "$i"
      start_node "$i" >/dev/null
      wait_ready "$i"
      # Serving again: /readyz says the node is on the meta group's majority side.
      for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$((8080 + i))/readyz" >/dev/null 2>&1 && break
        sleep 0.2
      done
      echo "node $i restarted in $(echo "$(date +%s.%N) - $t0" | bc) s"
      sleep "${ROLL_PAUSE:-3}"
    done
    ;;
  down)
    n=$(size)
    for i in $(seq 1 "$n"); do alive "$i" && kill -TERM "$(pid_of "$i")" || true; done
    for i in $(seq 1 "$n"); do
      p=$(pid_of "$i"); [ -z "$p" ] && continue
      for _ in $(seq 1 400); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$p" 2>/dev/null && kill -9 "$p" || true
      rm -f "$DIR/node-$i/pid"
    done
    echo "stopped; data stays in $DIR"
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
