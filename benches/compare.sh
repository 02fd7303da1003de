#!/usr/bin/env bash
# Side-by-side benchmark of homeport against mosquitto and rumqttd on this machine, in
# one run: installs the peers if missing (mosquitto from Debian, rumqttd with cargo
# install), builds homeport in release mode, runs benches/compare.py and rewrites the
# side-by-side table in docs/benchmarks.md. Takes about 10-15 minutes. Not part of CI.
#   COMPARE_SECS=10         seconds per throughput/latency scenario
#   COMPARE_BACKLOG=100000  messages queued for the offline-subscriber scenario
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q mosquitto
fi
if ! command -v rumqttd >/dev/null && [ ! -x "$HOME/.cargo/bin/rumqttd" ]; then
  # rumqttd 0.20's lock file pins metrics 0.22.1, which newer rustc rejects: fall back to
  # the newest compatible dependencies.
  cargo install rumqttd --locked || cargo install rumqttd ||
    echo "rumqttd could not be installed; comparing without it" >&2
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
cargo build --release --bin homeport
ulimit -n "$(ulimit -Hn)"
python3 benches/compare.py
