#!/usr/bin/env bash
# The README's test command: unit, property and integration tests (real sockets, rumqttc,
# in-process clusters over loopback QUIC and `homeport serve` processes), a compile check
# of the benchmarks, the external-client check with mosquitto and paho-mqtt (installed by
# scripts/interop.sh itself), and a real Prometheus scraping a three-node cluster
# (installed by scripts/cluster_prometheus.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-features
# The benchmarks compile (in the test profile, sharing the build above; `cargo bench`
# builds them optimized when figures are taken).
cargo test --benches --no-run
if [ "${HOMEPORT_SKIP_INTEROP:-0}" != "1" ]; then
  ./scripts/interop.sh
  # A real Prometheus scrapes a three-node cluster; the dashboard's queries are checked.
  ./scripts/cluster_prometheus.sh
fi
