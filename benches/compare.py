#!/usr/bin/env python3
"""Side-by-side load scenarios against homeport, mosquitto and rumqttd.

Each broker runs pinned to CPU 0 and the load generator (`homeport bench`, one worker
thread) to CPU 1. Every scenario runs against every broker in the same run; the table with
absolute figures and the ratios homeport/peer replaces the part of docs/benchmarks.md
between the compare markers. Called by benches/compare.sh, which installs the peers.
"""

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOMEPORT = os.path.join(ROOT, "target", "release", "homeport")
PORT = 18883
SECS = int(os.environ.get("COMPARE_SECS", "10"))
BACKLOG = int(os.environ.get("COMPARE_BACKLOG", "100000"))
BACKLOG_TITLE = f"backlog {BACKLOG} QoS 1 drain (msg/s)"
SEARCH_TITLE = "1:1 max QoS 0 with zero loss (msg/s)"
# Probes of the zero-loss search: each halves the interval between the best rate that lost
# nothing and the lowest that lost something (or that the generator could not offer).
SEARCH_STEPS = int(os.environ.get("COMPARE_SEARCH_STEPS", "6"))
SEARCH_SECS = int(os.environ.get("COMPARE_SEARCH_SECS", "5"))
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Broker:
    def __init__(self, name, work):
        self.name, self.work, self.proc = name, work, None

    def command(self):
        d = os.path.join(self.work, self.name)
        os.makedirs(d, exist_ok=True)
        if self.name == "homeport":
            return [HOMEPORT, "serve", "--data-dir", os.path.join(d, "data"),
                    "--mqtt-bind", f"127.0.0.1:{PORT}", "--ws-bind", "127.0.0.1:0",
                    "--admin-bind", "127.0.0.1:0", "--log-level", "warn"]
        if self.name == "mosquitto":
            conf = os.path.join(d, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {PORT} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 200000\nmax_inflight_messages 64\n"
                        "persistence false\nlog_dest none\n")
            return ["mosquitto", "-c", conf]
        conf = os.path.join(d, "rumqttd.toml")
        with open(conf, "w") as f:
            f.write(f"""id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{PORT}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
""")
        return [shutil.which("rumqttd") or os.path.expanduser("~/.cargo/bin/rumqttd"),
                "--config", conf, "-q"]

    def start(self):
        log = open(os.path.join(self.work, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", "0"] + self.command(),
                                     stdout=log, stderr=log)
        for _ in range(100):
            try:
                import socket
                socket.create_connection(("127.0.0.1", PORT), timeout=0.2).close()
                time.sleep(0.3)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def bench(args, background=False):
    cmd = ["taskset", "-c", "1", HOMEPORT, "bench"] + args + [
        "-H", f"127.0.0.1:{PORT}", "--mqtt", "3.1.1", "--json", "--quiet", "--threads", "1"]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True), cmd
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=300)
    return json.loads(out.stdout), cmd


def scenarios():
    s = SECS
    d = ["-d", str(s)]
    return [
        ("1:1 QoS 0 offered without limit (msg/s)",
         ["pubsub", "-c", "1", "--subscribers", "1", "-q", "0"] + d, "rate"),
        ("1:1 max QoS 1 (msg/s)", ["pubsub", "-c", "1", "--subscribers", "1", "-q", "1"] + d, "rate"),
        ("10k msg/s QoS 0 latency (µs)",
         ["pubsub", "-c", "10", "--subscribers", "10", "-q", "0", "-r", "1000"] + d, "latency"),
        ("50k msg/s QoS 0 latency (µs)",
         ["pubsub", "-c", "10", "--subscribers", "10", "-q", "0", "-r", "5000"] + d, "latency"),
        ("fan-in 50 -> 1 wildcard, QoS 1 (msg/s)",
         ["pubsub", "-c", "50", "--subscribers", "1", "-t", "fanin/%i", "--filter", "fanin/#",
          "-q", "1"] + d, "rate"),
        ("fan-out 1 -> 100, QoS 0 (deliveries/s)",
         ["pubsub", "-c", "1", "--subscribers", "100", "-t", "fanout/x", "--filter", "fanout/x",
          "-q", "0", "-r", "500"] + d, "rate"),
        ("1000 publishers -> $share/g 5 members, QoS 1 (msg/s)",
         ["pubsub", "-c", "1000", "--subscribers", "5", "-t", "sh/%i", "--filter", "sh/#",
          "--shared", "g", "-q", "1", "-r", "10"] + d, "rate"),
    ]


def lossless(r, offered):
    """A probe passes if nothing was lost and the generator really offered the rate."""
    return r["lost"] == 0 and r["duplicates"] == 0 and r["sent_per_sec"] >= 0.97 * offered


def search_rate(b, ceiling):
    """The highest 1:1 QoS 0 rate (one publisher, one subscriber) delivered without loss,
    by bisection between 0 and `ceiling` (what the unlimited run received)."""
    lo, hi, best, cmd = 0.0, max(ceiling, 1000.0), None, None
    for _ in range(SEARCH_STEPS):
        rate = (lo + hi) / 2
        args = ["pubsub", "-c", "1", "--subscribers", "1", "-q", "0", "-r", f"{rate:.0f}",
                "-d", str(SEARCH_SECS)]
        b.start()
        try:
            r, cmd = bench(args)
        finally:
            b.stop()
        ok = lossless(r, rate)
        print(f"  {b.name}: search {rate:.0f}/s: recv {r['received_per_sec']:.0f}/s "
              f"lost {r['lost']} -> {'pass' if ok else 'fail'}", file=sys.stderr)
        if ok:
            lo, best = rate, (r, cmd)
        else:
            hi = rate
    if best is None:
        return None
    best[0]["offered"] = lo
    return best


def run_broker(name, work):
    b = Broker(name, work)
    rows = {}
    for title, args, kind in scenarios():
        b.start()
        cpu0 = cpu_secs(b.proc.pid)
        try:
            r, cmd = bench(args)
        except Exception as e:  # a peer that cannot run a scenario gets a dash
            print(f"  {name}: {title}: failed: {e}", file=sys.stderr)
            b.stop()
            continue
        cpu = cpu_secs(b.proc.pid) - cpu0
        b.stop()
        r["cpu_us_per_msg"] = 1e6 * cpu / max(r["received"], 1)
        rows[title] = (kind, r, cmd)
        print(f"  {name}: {title}: recv {r['received_per_sec']:.0f}/s lost {r['lost']} "
              f"p99 {r['latency_us']['p99']} µs", file=sys.stderr)

    unlimited = rows.get("1:1 QoS 0 offered without limit (msg/s)")
    if unlimited:
        found = search_rate(b, unlimited[1]["received_per_sec"])
        if found:
            rows[SEARCH_TITLE] = ("rate", found[0], found[1])

    # 10,000 idle connections: RSS delta / N and connect rate.
    b.start()
    before = rss_kib(b.proc.pid)
    p, cmd = bench(["conn", "-c", "10000", "--conn-rate", "20000", "-d", "15"], background=True)
    time.sleep(12)
    during = rss_kib(b.proc.pid)
    out, _ = p.communicate(timeout=120)
    r = json.loads(out)
    b.stop()
    r["kib_per_conn"] = (during - before) / max(r["connected"], 1)
    rows["10k idle connections"] = ("idle", r, cmd)
    print(f"  {name}: idle: {r['kib_per_conn']:.2f} KiB/conn, {r['connect_rate_per_sec']:.0f} conn/s",
          file=sys.stderr)

    # Persistent-session backlog: 100,000 QoS 1 messages for an offline subscriber.
    b.start()
    sub = ["-c", "1", "-q", "1", "--id", "backlog-%i", "--session-expiry", "3600", "-t", "bl/0"]
    bench(["sub", "--subscribe-only"] + sub)
    bench(["pub", "-c", "1", "-q", "1", "-n", str(BACKLOG), "-t", "bl/0", "--id", "blpub-%i"])
    r, cmd = bench(["sub", "--expect", str(BACKLOG), "-d", "60"] + sub)
    b.stop()
    rows[BACKLOG_TITLE] = ("backlog", r, cmd)
    print(f"  {name}: backlog drained {r['received']} at {r['received_per_sec']:.0f}/s",
          file=sys.stderr)
    return rows


def version(name):
    try:
        if name == "homeport":
            return subprocess.run([HOMEPORT, "--version"], capture_output=True, text=True).stdout.strip()
        if name == "mosquitto":
            out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
            return out.splitlines()[0]
        return "rumqttd " + subprocess.run(["cargo", "install", "--list"], capture_output=True,
                                            text=True).stdout.split("rumqttd v")[1].split(":")[0]
    except Exception:
        return name


def fmt(kind, r):
    if kind == "rate" or kind == "backlog":
        return f"{r['received_per_sec']:,.0f} (lost {r['lost']})"
    if kind == "latency":
        q = r["latency_us"]
        return f"p50 {q['p50']} / p99 {q['p99']} / p99.9 {q['p999']} (lost {r['lost']})"
    return f"{r['kib_per_conn']:.2f} KiB, {r['connect_rate_per_sec']:,.0f} conn/s"


def key(kind, r):
    """The figure ratios are taken of (higher is better)."""
    if kind in ("rate", "backlog"):
        return r["received_per_sec"]
    if kind == "latency":
        return 1.0 / max(r["latency_us"]["p99"], 1)
    return 1.0 / max(r["kib_per_conn"], 1e-3)


def main():
    brokers = [b for b in ["homeport", "mosquitto", "rumqttd"]
               if b == "homeport" or shutil.which(b) or os.path.exists(os.path.expanduser(f"~/.cargo/bin/{b}"))]
    work = tempfile.mkdtemp(prefix="homeport-compare-")
    results = {}
    for b in brokers:
        print(f"== {b}", file=sys.stderr)
        results[b] = run_broker(b, work)
    titles = [SEARCH_TITLE] + [t for t, _, _ in scenarios()] + ["10k idle connections",
                                                                 BACKLOG_TITLE]
    peers = [b for b in brokers if b != "homeport"]
    lines = [BEGIN, "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} cores, "
             f"{platform.machine()}, Linux {platform.release()}; broker on CPU 0, load generator on CPU 1.",
             "Versions: " + "; ".join(version(b) for b in brokers) + ".",
             "Command: `benches/compare.sh` (scenarios below; every bench run adds "
             f"`-H 127.0.0.1:{PORT} --mqtt 3.1.1 --json --quiet --threads 1`). Ratios are homeport / peer; "
             "above 1 is better for homeport (for latency and memory the inverse figure is compared).",
             "",
             "| scenario | " + " | ".join(brokers) + " | " + " | ".join(f"vs {p}" for p in peers) + " |",
             "|---" * (1 + len(brokers) + len(peers)) + "|"]
    for t in titles:
        cells, hk = [], None
        for b in brokers:
            row = results[b].get(t)
            cells.append(fmt(row[0], row[1]) if row else "-")
            if b == "homeport" and row:
                hk = key(row[0], row[1])
        ratios = []
        for p in peers:
            row = results[p].get(t)
            ratios.append(f"{hk / key(row[0], row[1]):.2f}x" if row and hk and key(row[0], row[1]) else "-")
        lines.append(f"| {t} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    cpu = []
    for b in brokers:
        row = results[b].get("1:1 max QoS 1 (msg/s)")
        if row:
            cpu.append(f"{b} {row[1]['cpu_us_per_msg']:.2f} µs")
    lines += ["", "Broker CPU time per message in the 1:1 QoS 1 run (/proc utime+stime / received): "
              + ", ".join(cpu) + ".", "", "Scenario commands (`homeport bench ...`):", ""]
    for t, args, _ in scenarios():
        lines.append(f"- {t}: `{' '.join(args)}`")
    lines += [f"- {SEARCH_TITLE}: bisection over `pubsub -c 1 --subscribers 1 -q 0 -r RATE "
              f"-d {SEARCH_SECS}` between 0 and the unlimited run's received rate, "
              f"{SEARCH_STEPS} probes, each on a fresh broker; a probe passes with nothing "
              "lost or duplicated and at least 97% of RATE sent",
              "- 10k idle connections: `conn -c 10000 --conn-rate 20000 -d 15` (RSS read 12 s in)",
              f"- backlog: `sub --subscribe-only ...`, `pub -c 1 -q 1 -n {BACKLOG} -t bl/0`, "
              f"`sub --expect {BACKLOG} -d 60 -c 1 -q 1 --id backlog-%i --session-expiry 3600 -t bl/0`",
              f"- environment: COMPARE_SECS={SECS} COMPARE_BACKLOG={BACKLOG}",
              "", END]
    doc = os.path.join(ROOT, "docs", "benchmarks.md")
    text = open(doc).read()
    table = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text.split(BEGIN)[0] + table + text.split(END)[1]
    else:
        text = text.rstrip() + "\n\n## Side by side\n\n" + table + "\n"
    open(doc, "w").write(text)
    print(table)


if __name__ == "__main__":
    main()
