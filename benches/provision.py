#!/usr/bin/env python3
"""Registers N things with a device secret each through the admin API, for connect-storm
benchmarks: thing `{prefix}{i}` gets the secret `{secret}` with `%i` replaced by i.

    python3 benches/provision.py --admin 127.0.0.1:8080 -n 10000 \
        --prefix bench- --secret 'storm-secret-%i-0123456789'
"""
import argparse
import concurrent.futures
import http.client
import json
import sys


def call(admin, method, path, body, token):
    host, port = admin.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, path, json.dumps(body), headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def one(args, i):
    name = f"{args.prefix}{i}"
    s, d = call(args.admin, "POST", "/api/things", {"thingName": name}, args.token)
    if s not in (201, 409):
        raise RuntimeError(f"thing {name}: {s} {d!r}")
    secret = args.secret.replace("%i", str(i))
    s, d = call(args.admin, "POST", f"/api/things/{name}/credentials",
                {"type": "secret", "secret": secret}, args.token)
    if s != 201:
        raise RuntimeError(f"credential {name}: {s} {d!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--admin", default="127.0.0.1:8080")
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--prefix", default="bench-")
    p.add_argument("--secret", required=True)
    p.add_argument("--token")
    p.add_argument("--workers", type=int, default=32)
    args = p.parse_args()
    with concurrent.futures.ThreadPoolExecutor(args.workers) as ex:
        for f in concurrent.futures.as_completed([ex.submit(one, args, i) for i in range(args.n)]):
            f.result()
    print(f"provisioned {args.n} things", file=sys.stderr)


if __name__ == "__main__":
    main()
