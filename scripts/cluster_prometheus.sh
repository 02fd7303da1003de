#!/usr/bin/env bash
# A real Prometheus server (Debian's `prometheus`, installed here if missing) scrapes a
# three-node cluster started with cluster/local.sh, using the shipped scrape config
# (docs/prometheus/prometheus.yml), and the cluster's metrics are read back through
# Prometheus's query API: every group has exactly one leader across the nodes, and every
# node reports every group's term. Every query of the shipped Grafana dashboard
# (docs/grafana/homeport-cluster.json) is then evaluated by the same server and must be
# valid PromQL over these metrics. Exits non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null; then
  echo "installing prometheus"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
fi
cargo build -q --bin homeport
export HOMEPORT_BIN=${HOMEPORT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/homeport}
export CLUSTER_DIR=$(mktemp -d)
PROM_DIR=$(mktemp -d)
PROM_PID=""
cleanup() {
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null || true
  ./cluster/local.sh down >/dev/null 2>&1 || true
  rm -rf "$CLUSTER_DIR" "$PROM_DIR"
}
trap cleanup EXIT

./cluster/local.sh up 3 >/dev/null
NGROUPS=$(( $("$HOMEPORT_BIN" gen-config | sed -n 's/^shards = //p') + 1 ))
prometheus --config.file=docs/prometheus/prometheus.yml --storage.tsdb.path="$PROM_DIR" \
  --web.listen-address=127.0.0.1:19090 --log.level=warn >"$PROM_DIR/log" 2>&1 &
PROM_PID=$!

query() {
  curl -sf --get --data-urlencode "query=$1" http://127.0.0.1:19090/api/v1/query |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'
}

for _ in $(seq 1 60); do
  leaders=$(query 'sum(homeport_raft_is_leader)' 2>/dev/null || echo none)
  terms=$(query 'count(homeport_raft_term)' 2>/dev/null || echo none)
  up=$(query 'sum(up{job="homeport"})' 2>/dev/null || echo none)
  if [ "$leaders" = "$NGROUPS" ] && [ "$terms" = "$((NGROUPS * 3))" ] && [ "$up" = "3" ]; then
    echo "prometheus: 3 targets up, $leaders group leaders, $terms group terms"
    python3 - <<'PY'
import json, sys, urllib.parse, urllib.request
dash = json.load(open("docs/grafana/homeport-cluster.json"))
bad = []
n = 0
for p in dash["panels"]:
    for t in p.get("targets", []):
        n += 1
        url = "http://127.0.0.1:19090/api/v1/query?" + urllib.parse.urlencode({"query": t["expr"]})
        try:
            r = json.load(urllib.request.urlopen(url))
        except Exception as e:  # a 400 answer is an invalid query
            bad.append((p["title"], t["expr"], str(e)))
            continue
        if r.get("status") != "success":
            bad.append((p["title"], t["expr"], r))
if bad:
    for b in bad:
        print("dashboard query failed:", b, file=sys.stderr)
    sys.exit(1)
print(f"grafana dashboard: {n} queries valid")
PY
    exit 0
  fi
  sleep 2
done
echo "prometheus did not see the cluster: up=$up leaders=$leaders (want $NGROUPS) terms=$terms" >&2
cat "$PROM_DIR/log" >&2
exit 1
