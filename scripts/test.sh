#!/usr/bin/env bash
# The README's test command: unit, property and integration tests (real sockets, rumqttc),
# a compile check of the benchmarks, and the external-client check with mosquitto and
# paho-mqtt (installed by scripts/interop.sh itself).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-features
# The benchmarks compile (in the test profile, sharing the build above; `cargo bench`
# builds them optimized when figures are taken).
cargo test --benches --no-run
if [ "${HOMEPORT_SKIP_INTEROP:-0}" != "1" ]; then
  ./scripts/interop.sh
fi
