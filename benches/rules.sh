#!/usr/bin/env bash
# The rule engine's cost on the publish path, in one run: the broker (release build)
# pinned to CPU 0 with the engine off, on with no rules, 10 and 100 rules that every
# message matches (each reads the payload and its WHERE is false, so nothing is
# republished: the cost of finding and evaluating them), and 10 rules that match no
# message. Load from `homeport bench` on CPU 1 (1:1 QoS 1, 64-byte payloads) and, as an
# independent client, paho-mqtt (QoS 1, 100 in flight; Python bounds its rate, so its
# figure is the broker's CPU time per message). Prints a markdown table. Not part of CI.
#   RULES_SECS=10  seconds per loadgen run
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/interop-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q 'paho-mqtt>=2,<3'
cargo build -q --release --bin homeport
ulimit -n "$(ulimit -Hn)"
exec "$VENV/bin/python" benches/rules.py
