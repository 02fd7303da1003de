#!/usr/bin/env python3
"""The cluster's shadow figures checked with an independent client (paho-mqtt 2, MQTT 5),
not our load generator: C devices, each connected with its thing name as client id
(following CONNACK 0x9C to the Server Reference, as a v5 device should), each with one
shadow update in flight (publish `update`, wait for `update/accepted`), for D seconds,
against a 3-node cluster (cluster/local.sh) and against one node, same machine, same run.

Usage: benches/cluster_paho.py [--clients 100] [--seconds 20]
Installs paho-mqtt into target/interop-venv (as scripts/interop.sh does) if it is missing.
Uses target/release/homeport. Figures go into docs/benchmarks.md ("Cluster").
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target/interop-venv")
try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError:
    if not os.path.exists(os.path.join(VENV, "bin/python")):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([os.path.join(VENV, "bin/pip"), "install", "-q", "paho-mqtt>=2,<3"], check=True)
    if os.environ.get("HOMEPORT_PAHO_REEXEC"):
        raise
    os.environ["HOMEPORT_PAHO_REEXEC"] = "1"
    os.execv(os.path.join(VENV, "bin/python"), [os.path.join(VENV, "bin/python"), *sys.argv])

BIN = os.environ.get("HOMEPORT_BIN", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/homeport"))
LOCAL = os.path.join(ROOT, "cluster/local.sh")


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read().decode() or "null")
    except Exception:
        return 0, None


class Device:
    def __init__(self, name, hosts, index):
        self.name = name
        self.hosts = hosts
        self.index = index
        self.accepted = threading.Event()
        self.connected = threading.Event()
        self.redirect = None
        self.refused = None
        self.latencies = []
        self.redirects = 0
        self.timeouts = 0
        self.client = None

    def _connect(self, host):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.name, protocol=mqtt.MQTTv5)
        c.on_connect = self.on_connect
        c.on_message = self.on_message
        h, p = host.rsplit(":", 1)
        self.connected.clear()
        self.redirect = self.refused = None
        c.connect(h, int(p), keepalive=60)
        c.loop_start()
        self.connected.wait(10)
        return c

    def on_connect(self, client, userdata, flags, reason, props):
        if reason.value in (0x9C, 0x9D) and getattr(props, "ServerReference", None):
            self.redirect = props.ServerReference.split(",")[0].strip()
        elif reason.is_failure:
            self.refused = reason.value
        else:
            base = f"$aws/things/{self.name}/shadow/update"
            client.subscribe([(base + "/accepted", 1), (base + "/rejected", 1)])
        self.connected.set()

    def on_message(self, client, userdata, msg):
        if msg.topic.endswith("/accepted"):
            self.accepted.set()

    def start(self):
        host = self.hosts[self.index % len(self.hosts)]
        for _ in range(4):
            c = self._connect(host)
            if self.redirect:
                self.redirects += 1
                c.loop_stop()
                c.disconnect()
                host = self.redirect
                continue
            if self.refused is not None or not self.connected.is_set():
                raise SystemExit(f"{self.name}: refused {self.refused} at {host}")
            self.client = c
            time.sleep(0.2)  # SUBACK
            return
        raise SystemExit(f"{self.name}: redirected too often")

    def run(self, until):
        base = f"$aws/things/{self.name}/shadow/update"
        n = 0
        while time.time() < until:
            n += 1
            self.accepted.clear()
            t0 = time.perf_counter()
            body = json.dumps({"state": {"reported": {"n": n}}})
            self.client.publish(base, body, qos=1)
            if self.accepted.wait(10):
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.timeouts += 1

    def stop(self):
        if self.client:
            self.client.loop_stop()
            self.client.disconnect()


def run(hosts, clients, seconds, tag):
    devs = [Device(f"paho-{tag}-{i}", hosts, i) for i in range(clients)]
    for d in devs:
        d.start()
    until = time.time() + seconds
    t0 = time.time()
    threads = [threading.Thread(target=d.run, args=(until,)) for d in devs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    for d in devs:
        d.stop()
    lat = sorted(x for d in devs for x in d.latencies)
    q = lambda p: lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] * 1000 if lat else float("nan")
    return {"accepted_per_sec": len(lat) / elapsed, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "timeouts": sum(d.timeouts for d in devs), "redirects": sum(d.redirects for d in devs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=20)
    a = ap.parse_args()
    env = dict(os.environ, CLUSTER_DIR=tempfile.mkdtemp(), HOMEPORT_BIN=BIN)
    try:
        subprocess.run([LOCAL, "up", "3"], env=env, check=True, capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            code, v = http_status(8081, "/api/cluster")
            if code == 200 and all(g["leader"] is not None and len(g["voters"]) == 3
                                   for g in v["groups"]):
                break
            time.sleep(0.5)
        time.sleep(5)
        cluster = run([f"127.0.0.1:{1880 + i}" for i in (1, 2, 3)], a.clients, a.seconds, "c")
    finally:
        subprocess.run([LOCAL, "down"], env=env, capture_output=True)
        shutil.rmtree(env["CLUSTER_DIR"], ignore_errors=True)
    d = tempfile.mkdtemp()
    proc = subprocess.Popen([BIN, "serve", "--data-dir", d, "--mqtt-bind", "127.0.0.1:1890",
                             "--ws-bind", "127.0.0.1:8890", "--admin-bind", "127.0.0.1:8090"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if http_status(8090, "/readyz")[0] == 200:
                break
            time.sleep(0.1)
        single = run(["127.0.0.1:1890"], a.clients, a.seconds, "s")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({"clients": a.clients, "seconds": a.seconds, "cluster": cluster,
                      "single": single,
                      "ratio": cluster["accepted_per_sec"] / max(single["accepted_per_sec"], 1e-9)},
                     indent=2))


if __name__ == "__main__":
    main()
