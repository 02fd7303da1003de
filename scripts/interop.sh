#!/usr/bin/env bash
# Drives the broker with independent clients: mosquitto_pub/sub (Debian) and paho-mqtt
# (PyPI, in a venv). Installs what it needs. Covers QoS 0/1/2 both ways, retained
# messages, wills, and a persistent session across `kill -9` and restart. Then the AWS IoT
# Device SDK for Python (awsiotsdk, unchanged, on awscrt over plain TCP) runs the shadow
# and jobs acceptance (scripts/aws_sdk_acceptance.py), and paho-mqtt authenticates with
# each credential kind against a node without anonymous access (scripts/interop_auth.py),
# where awsiotsdk's iotidentity client provisions devices by claim
# (scripts/aws_fleet_acceptance.py).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto_pub >/dev/null; then
  echo "installing mosquitto-clients"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients) >/dev/null
fi
VENV=target/interop-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q 'paho-mqtt>=2,<3' 'awsiotsdk>=1.22,<2' 'cryptography>=42'

cargo build -q --bin homeport
BIN=${CARGO_TARGET_DIR:-target}/debug/homeport
DATA=$(mktemp -d)
PORT=18830
LOG=$(mktemp)
PID=""
start() {
  "$BIN" serve --data-dir "$DATA" --mqtt-bind 127.0.0.1:$PORT --ws-bind 127.0.0.1:18083 \
    --admin-bind 127.0.0.1:18080 >>"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    if mosquitto_pub -h 127.0.0.1 -p $PORT -t ping -m x 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "broker did not start"; cat "$LOG"; exit 1
}
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

start
echo "== mosquitto: QoS 0/1/2 both ways"
OUT=$(mktemp)
mosquitto_sub -h 127.0.0.1 -p $PORT -q 2 -t 'i/#' -v -C 3 -W 10 >"$OUT" &
SUB=$!
sleep 0.5
for q in 0 1 2; do mosquitto_pub -h 127.0.0.1 -p $PORT -q $q -t "i/q$q" -m "m$q"; done
wait $SUB
diff <(printf 'i/q0 m0\ni/q1 m1\ni/q2 m2\n') "$OUT"

echo "== mosquitto: retained"
mosquitto_pub -h 127.0.0.1 -p $PORT -q 1 -r -t i/ret -m keep
[ "$(mosquitto_sub -h 127.0.0.1 -p $PORT -t i/ret -C 1 -W 5)" = keep ]
mosquitto_pub -h 127.0.0.1 -p $PORT -q 1 -r -t i/ret -n
if mosquitto_sub -h 127.0.0.1 -p $PORT -t i/ret -C 1 -W 1 >/dev/null 2>&1; then
  echo "cleared retained message still delivered"; exit 1
fi

echo "== paho: will, persistent session (part 1)"
"$VENV/bin/python" scripts/interop.py --port $PORT before

echo "== kill -9 and restart"
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
start
"$VENV/bin/python" scripts/interop.py --port $PORT after
echo "== awsiotsdk: shadow and jobs acceptance"
"$VENV/bin/python" scripts/aws_sdk_acceptance.py --port $PORT --admin 18080
echo "== paho: device secret, JWT and X.509 on a node without anonymous access"
kill "$PID"; wait "$PID" 2>/dev/null || true
PKI=$(mktemp -d)
"$VENV/bin/python" scripts/interop_auth.py gen "$PKI"
SECURE=$(mktemp -d)
printf '%s\n' "[node]" "data_dir = \"$SECURE\"" "[listeners.tcp]" "bind = \"127.0.0.1:18831\"" \
  "[listeners.tls]" "bind = \"127.0.0.1:18884\"" "cert = \"$PKI/server.pem\"" \
  "key = \"$PKI/server.key\"" "[provisioning]" "ca_cert = \"$PKI/ca.pem\"" \
  "ca_key = \"$PKI/ca.key\"" "[listeners.ws]" "bind = \"127.0.0.1:18085\"" "[admin]" "bind = \"127.0.0.1:18081\"" "require_token = false" \
  >"$PKI/secure.toml"
"$BIN" serve --config "$PKI/secure.toml" >>"$LOG" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18081/readyz')" 2>/dev/null; then break; fi
  sleep 0.1
done
"$VENV/bin/python" scripts/interop_auth.py run "$PKI" --port 18831 --tls-port 18884 --admin 127.0.0.1:18081
echo "== awsiotsdk: fleet provisioning by claim over mutual TLS"
"$VENV/bin/python" scripts/aws_fleet_acceptance.py "$PKI" --port 18884 --admin 127.0.0.1:18081
rm -rf "$PKI" "$SECURE"
echo "interop: 13 passed, 0 failed"
