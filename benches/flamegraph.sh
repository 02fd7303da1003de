#!/usr/bin/env bash
# Profiles the broker under one load scenario and writes a flamegraph (SVG) of where its
# CPU time goes. The broker (release build) runs pinned to CPU 0, the load generator to
# CPU 1, as in benches/compare.sh; perf samples the broker only, at 499 Hz, with call
# graphs from DWARF debug info (the release profile keeps it).
#
#   benches/flamegraph.sh OUT.svg BENCH-ARGS...
#   benches/flamegraph.sh docs/flamegraphs/connect-storm.svg conn -c 10000 --conn-rate 20000 -d 6
#
# FOLDED=path keeps the collapsed stacks (one line per stack, with its sample count) for
# reading with grep and sort.
# Installs inferno (cargo install) if missing; needs perf (Debian: linux-perf) and
# permission to profile (root, or kernel.perf_event_paranoid <= 1). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
shift
command -v perf >/dev/null || { echo "perf is needed (Debian package linux-perf)" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null; then
  cargo install inferno
fi
cargo build --release --bin homeport
bin=${CARGO_TARGET_DIR:-target}/release/homeport
work=$(mktemp -d)
trap 'kill "$broker" 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"
port=18893
taskset -c 0 "$bin" serve --data-dir "$work/data" --mqtt-bind "127.0.0.1:$port" \
  --ws-bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 --log-level warn >"$work/broker.log" 2>&1 &
broker=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
perf record -F 499 -g --call-graph dwarf,8192 -p "$broker" -o "$work/perf.data" 2>"$work/perf.log" &
perf=$!
sleep 0.5
taskset -c 1 "$bin" bench "$@" -H "127.0.0.1:$port" --mqtt 3.1.1 --threads 1 --quiet
kill -INT "$perf"
wait "$perf" || true
mkdir -p "$(dirname "$out")"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
if [ -n "${FOLDED:-}" ]; then cp "$work/folded" "$FOLDED"; fi
inferno-flamegraph --minwidth 0.5 --title "homeport: bench $*" <"$work/folded" >"$out"
echo "wrote $out ($(wc -l <"$work/folded") distinct stacks)"
