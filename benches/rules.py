#!/usr/bin/env python3
"""Publish throughput and broker CPU per message with the rule engine off, on with no
rules, and with 10 / 100 matching rules (benches/rules.sh installs paho-mqtt and builds).
"""

import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "homeport")
MQTT, ADMIN = 18890, 18891
SECS = int(os.environ.get("RULES_SECS", "10"))
PAHO_MSGS = 20000


def http(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def cpu(pid):
    """Seconds on CPU of every thread of `pid` (schedstat: nanoseconds, not ticks)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def start(enabled, tmp):
    cfg = subprocess.run([BIN, "gen-config"], check=True, capture_output=True, text=True).stdout
    cfg = cfg.replace("[rules]\n# Off: no rule runs on this node (rules can still be written through the admin API).\nenabled = true",
                      f"[rules]\nenabled = {'true' if enabled else 'false'}")
    path = os.path.join(tmp, "c.toml")
    with open(path, "w") as f:
        f.write(cfg)
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--config", path, "--data-dir",
                          os.path.join(tmp, "data"), "--mqtt-bind", f"127.0.0.1:{MQTT}",
                          "--admin-bind", f"127.0.0.1:{ADMIN}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            http("GET", "/healthz")
            return p
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("broker did not start")


def loadgen():
    out = subprocess.run(["taskset", "-c", "1", BIN, "bench", "pubsub", "-c", "1", "--subscribers", "1",
                          "-q", "1", "-d", str(SECS), "-s", "64", "--json", "-H", f"127.0.0.1:{MQTT}"],
                         check=True, capture_output=True, text=True).stdout
    d = json.loads(out)
    return d["received_per_sec"], d["received"], d["lost"]


def paho_run():
    """QoS 1 publisher (100 in flight) and subscriber; returns messages received."""
    got = [0]
    done = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-rules-sub")
    ready = threading.Event()
    sub.on_subscribe = lambda c, u, mid, rc, p: ready.set()

    def on_msg(c, u, m):
        got[0] += 1
        if got[0] >= PAHO_MSGS:
            done.set()
    sub.on_message = on_msg
    sub.connect("127.0.0.1", MQTT)
    sub.loop_start()
    sub.subscribe("bench/paho", qos=1)
    ready.wait(5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-rules-pub")
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", MQTT)
    pub.loop_start()
    payload = b"x" * 64
    for _ in range(PAHO_MSGS):
        pub.publish("bench/paho", payload, qos=1)
    done.wait(120)
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()
    return got[0]


def main():
    modes = [("engine off", False, 0, "bench/#"), ("no rules", True, 0, "bench/#"),
             ("10 rules, no match", True, 10, "elsewhere/#"),
             ("10 matching rules", True, 10, "bench/#"), ("100 matching rules", True, 100, "bench/#")]
    rounds = int(os.environ.get("RULES_ROUNDS", "2"))
    results = {m[0]: [] for m in modes}
    for _ in range(rounds):
        for name, enabled, n, source in modes:
            with tempfile.TemporaryDirectory() as tmp:
                p = start(enabled, tmp)
                try:
                    for i in range(n):
                        sql = f'SELECT payload.v AS v, clientid FROM "{source}" WHERE v > {i}'
                        http("POST", "/api/rules", {"name": f"r{i}", "sql": sql})
                    time.sleep(0.5)
                    c0 = cpu(p.pid)
                    rate, received, lost = loadgen()
                    c1 = cpu(p.pid)
                    got = paho_run()
                    c2 = cpu(p.pid)
                    results[name].append((rate, lost, (c1 - c0) / max(received, 1) * 1e6,
                                          (c2 - c1) / max(got, 1) * 1e6, got))
                finally:
                    p.terminate()
                    p.wait(20)
    mean = lambda xs: sum(xs) / len(xs)
    base = mean([r[0] for r in results[modes[0][0]]])
    print(f"| configuration | loadgen 1:1 QoS 1 msg/s (each round) | mean ratio to engine off | lost | broker CPU µs/msg, loadgen | broker CPU µs/msg, paho ({PAHO_MSGS} msgs) |")
    print("|---|---|---|---|---|---|")
    for name, *_ in modes:
        rs = results[name]
        rates = ", ".join(f"{r[0]:,.0f}" for r in rs)
        print(f"| {name} | {rates} | {mean([r[0] for r in rs]) / base:.2f} | {sum(r[1] for r in rs)} | "
              f"{mean([r[2] for r in rs]):.2f} | {mean([r[3] for r in rs]):.2f} ({min(r[4] for r in rs)} received) |")


if __name__ == "__main__":
    main()
