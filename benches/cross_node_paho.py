#!/usr/bin/env python3
"""Publishes across nodes checked with an independent client (paho-mqtt 2, MQTT 5): a
QoS 1 subscriber on node 2 and a QoS 1 publisher on node 1 (100 in flight) of a running
cluster (cluster/local.sh up 3), for D seconds; prints what was acknowledged and what
arrived. A check of delivery, not a speed figure (the Python client is the bound).

Usage: target/interop-venv/bin/python benches/cross_node_paho.py [SECONDS]
(scripts/interop.sh or benches/cluster_paho.py make the venv with paho-mqtt.)
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5
got = []
subscribed = threading.Event()
s = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-xn-sub", protocol=mqtt.MQTTv5)
s.on_message = lambda c, u, m: got.append(m.topic)
s.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
s.connect("127.0.0.1", 1882)
s.loop_start()
s.subscribe("xn/#", qos=1)
if not subscribed.wait(5):
    raise SystemExit("no SUBACK from node 2")
p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-xn-pub", protocol=mqtt.MQTTv5)
p.max_inflight_messages_set(100)
p.connect("127.0.0.1", 1881)
p.loop_start()
t0 = time.perf_counter()
n = 0
pending = []
while time.perf_counter() - t0 < seconds:
    pending.append(p.publish(f"xn/{n % 10}", b"x" * 64, qos=1))
    n += 1
    if len(pending) > 2000:
        pending.pop(0).wait_for_publish(5)
for i in pending:
    i.wait_for_publish(10)
elapsed = time.perf_counter() - t0
last = -1
while len(got) != last:  # until the subscriber has drained
    last = len(got)
    time.sleep(2)
print(f"published and acknowledged {n} in {elapsed:.1f} s ({n / elapsed:.0f}/s), received {len(got)}")
if len(got) < n:
    raise SystemExit(f"{n - len(got)} acknowledged messages did not arrive")
