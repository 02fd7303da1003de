#!/usr/bin/env python3
"""Cluster figures, same machine, same run (docs/benchmarks.md, "Cluster"):

1. shadow updates through a 3-node cluster against one node (`homeport bench shadow`,
   1,000 devices, one update in flight each, spread over the three nodes; a device on
   a node that does not lead its shard is served by its actor on the leader through
   the node it is connected to): accepted updates/s unthrottled, and p50/p99 at 2,000
   updates/s;
2. bytes on the wire per replicated update (QUIC payload bytes of every link) and CPU
   per update on the leader and on a follower (nodes 2 and 3 drained, so node 1 leads
   every group, and every device connected to node 1: only replication crosses the
   links); and the same with the devices spread over the three nodes (replication and
   the device calls of the devices on nodes 2 and 3);
3. failover: `kill -9` of the leader of a shard, time until a shadow update of a thing
   in that shard is accepted again through another node, over N kills.

Usage: benches/cluster.py [--kills 20] [--seconds 20] [--json]
(BENCH_KEEP=1 keeps the cluster's data and logs.)
Uses target/release/homeport (built if missing) and cluster/local.sh with its own
CLUSTER_DIR. Nothing here is a test: the figures go into docs/benchmarks.md.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("HOMEPORT_BIN", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/homeport"))
LOCAL = os.path.join(ROOT, "cluster/local.sh")
SHARDS = 16


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_of(thing):
    return 1 + fnv1a(thing) % SHARDS


def thing_in(shard, prefix):
    i = 0
    while True:
        t = f"{prefix}-{i}"
        if shard_of(t) == shard:
            return t
        i += 1


def http(port, method, path, body=None, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:  # refused, reset, timed out
        return 0, str(e)


def local(env, *args):
    r = subprocess.run([LOCAL, *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"cluster/local.sh {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r.stdout


def status(port):
    code, body = http(port, "GET", "/api/cluster")
    return json.loads(body) if code == 200 else None


def wait_balanced(port, within=90, spread=2, still=0):
    """Every group led, three voters each, leaders within `spread` of each other and the
    same for `still` seconds (hand-offs move one group every few seconds, and each
    disconnects that shard's devices); after `within`, any led layout will do."""
    deadline = time.time() + within
    seen, since = None, time.time()
    while True:
        v = status(port)
        if v and all(g["leader"] is not None and len(g["voters"]) == 3 for g in v["groups"]) \
                and all(m["reachable"] for m in v["members"]) and len(v["members"]) == 3:
            leads = [len(m["leads"]) for m in v["members"]]
            layout = [g["leader"] for g in v["groups"]]
            if layout != seen:
                seen, since = layout, time.time()
            if (max(leads) - min(leads) <= spread and time.time() - since >= still) \
                    or time.time() > deadline:
                return v
        if time.time() > deadline + 60:
            raise SystemExit(f"cluster did not settle: {v}")
        time.sleep(0.5)


def bench(hosts, seconds, rate=None):
    cmd = [BIN, "bench", "shadow", "-c", "1000", "--inflight", "1", "-d", str(seconds),
           "--mqtt", "5", "--follow-redirects", "-H", ",".join(hosts), "--json", "--quiet"]
    if rate:
        cmd += ["-r", str(rate / 1000)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def metric_sum(port, name):
    code, body = http(port, "GET", "/metrics")
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / tick


def pids(env):
    d = env["CLUSTER_DIR"]
    return {i: int(open(f"{d}/node-{i}/pid").read()) for i in (1, 2, 3)}


def cluster_phase(env, seconds):
    hosts = [f"127.0.0.1:{1880 + i}" for i in (1, 2, 3)]
    local(env, "up", "3")
    wait_balanced(8081, within=120, spread=1, still=8)
    out = {}
    out["unthrottled"] = bench(hosts, seconds)
    wait_balanced(8081, within=60, spread=1, still=8)
    out["at_2000"] = bench(hosts, seconds, rate=2000)
    # Node 1 leads every group: its CPU is the leader's, the others' a follower's.
    for n in (2, 3):
        http(8081, "POST", f"/api/cluster/members/{n}/drain")
    deadline = time.time() + 120
    while time.time() < deadline:
        v = status(8081)
        if v and all(g["leader"] == 1 and len(g["voters"]) == 3 for g in v["groups"]):
            break
        time.sleep(0.5)
    else:
        raise SystemExit("node 1 did not take every group's leadership")
    time.sleep(5)
    p = pids(env)
    for key, on in (("one_leader", hosts[:1]), ("one_leader_spread", hosts)):
        sent0 = sum(metric_sum(8080 + i, "homeport_cluster_peer_sent_bytes") for i in (1, 2, 3))
        cpu0 = {i: cpu_seconds(p[i]) for i in p}
        r = bench(on, seconds, rate=2000)
        cpu1 = {i: cpu_seconds(p[i]) for i in p}
        sent1 = sum(metric_sum(8080 + i, "homeport_cluster_peer_sent_bytes") for i in (1, 2, 3))
        n = max(r["received"], 1)
        out[key] = r
        out[key]["wire_bytes_per_update"] = (sent1 - sent0) / n
        out[key]["cpu_us_per_update"] = {i: (cpu1[i] - cpu0[i]) * 1e6 / n for i in p}
    out["wire_bytes_per_update"] = out["one_leader"]["wire_bytes_per_update"]
    out["cpu_us_per_update"] = out["one_leader"]["cpu_us_per_update"]
    for n_ in (2, 3):
        http(8081, "POST", f"/api/cluster/members/{n_}/undrain")
    wait_balanced(8081)
    return out


def single_phase(seconds):
    d = tempfile.mkdtemp()
    proc = subprocess.Popen([BIN, "serve", "--data-dir", d, "--mqtt-bind", "127.0.0.1:1890",
                             "--ws-bind", "127.0.0.1:8890", "--admin-bind", "127.0.0.1:8090"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if http(8090, "GET", "/readyz")[0] == 200:
                break
            time.sleep(0.1)
        hosts = ["127.0.0.1:1890"]
        out = {"unthrottled": bench(hosts, seconds), "at_2000": bench(hosts, seconds, rate=2000)}
        p = proc.pid
        c0 = cpu_seconds(p)
        r = bench(hosts, seconds, rate=2000)
        out["cpu_us_per_update"] = (cpu_seconds(p) - c0) * 1e6 / max(r["received"], 1)
        return out
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def failover_phase(env, kills):
    times = []
    for k in range(kills):
        v = wait_balanced(8081 if k == 0 else alive_admin(env))
        # The leader of a shard, and a thing in it.
        shard = 1 + (k % SHARDS)
        g = next(g for g in v["groups"] if g["group"] == shard)
        victim = g["leader"]
        other = 1 + (victim % 3)
        thing = thing_in(shard, f"fo{k}")
        path = f"/api/things/{thing}/shadow"
        code, body = http(8080 + other, "POST", path, '{"state":{"desired":{"k":0}}}')
        if code != 200:
            raise SystemExit(f"warm-up write failed: {code} {body}")
        t0 = time.time()
        local(env, "kill-9", str(victim))  # returns once the process is gone
        # A new attempt every 20 ms, each on its own thread: an attempt stuck on the dead
        # node (until its timeout) does not hide a later one that succeeds.
        done = []
        lock = threading.Lock()

        def attempt(n):
            code, _ = http(8080 + other, "POST", path, '{"state":{"desired":{"k":%d}}}' % n, timeout=5)
            if code == 200:
                with lock:
                    done.append(time.time())

        threads = []
        n = 0
        while not done:
            n += 1
            t = threading.Thread(target=attempt, args=(n,), daemon=True)
            t.start()
            threads.append(t)
            if time.time() - t0 > 30:
                raise SystemExit(f"no write accepted 30 s after killing node {victim}")
            time.sleep(0.02)
        for t in threads:
            t.join(6)
        times.append(min(done) - t0)
        print(f"kill {k + 1}: node {victim} (shard {shard}) -> accepted after {times[-1]:.3f} s",
              file=sys.stderr)
        local(env, "start", str(victim))
    return times


def alive_admin(env):
    for i in (1, 2, 3):
        if http(8080 + i, "GET", "/healthz")[0] == 200:
            return 8080 + i
    raise SystemExit("no node answers")


def q(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    env = dict(os.environ, CLUSTER_DIR=tempfile.mkdtemp(), HOMEPORT_BIN=BIN)
    try:
        cluster = cluster_phase(env, a.seconds)
        fail = failover_phase(env, a.kills) if a.kills else []
    finally:
        subprocess.run([LOCAL, "down"], env=env, capture_output=True)
        if os.environ.get("BENCH_KEEP"):
            print(f"cluster data and logs kept in {env['CLUSTER_DIR']}", file=sys.stderr)
        else:
            shutil.rmtree(env["CLUSTER_DIR"], ignore_errors=True)
    single = single_phase(a.seconds)
    res = {"cluster": cluster, "single": single, "failover_s": fail}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    cu, su = cluster["unthrottled"], single["unthrottled"]
    c2, s2 = cluster["at_2000"], single["at_2000"]
    ms = lambda us: f"{us / 1000:.1f} ms"
    print("| figure | 3-node cluster | one node | ratio |")
    print("|---|---|---|---|")
    print(f"| accepted shadow updates/s, unthrottled | {cu['received_per_sec']:.0f} | "
          f"{su['received_per_sec']:.0f} | {cu['received_per_sec'] / su['received_per_sec']:.2f} |")
    print(f"| p50 / p99 unthrottled | {ms(cu['latency_us']['p50'])} / {ms(cu['latency_us']['p99'])} | "
          f"{ms(su['latency_us']['p50'])} / {ms(su['latency_us']['p99'])} | |")
    print(f"| p50 / p99 at 2,000/s | {ms(c2['latency_us']['p50'])} / {ms(c2['latency_us']['p99'])} | "
          f"{ms(s2['latency_us']['p50'])} / {ms(s2['latency_us']['p99'])} | |")
    cpu = cluster["cpu_us_per_update"]
    print(f"| CPU per update (leader; followers) | {cpu[1]:.0f} µs; {cpu[2]:.0f} µs, {cpu[3]:.0f} µs | "
          f"{single['cpu_us_per_update']:.0f} µs | |")
    print(f"| bytes on the wire per update (all links) | {cluster['wire_bytes_per_update']:.0f} | - | |")
    if fail:
        print(f"\nfailover over {len(fail)} kills: p50 {q(fail, 0.5):.3f} s, p99 {q(fail, 0.99):.3f} s, "
              f"max {max(fail):.3f} s")


if __name__ == "__main__":
    main()
