"""paho-mqtt (MQTT 5 and 3.1.1) against a node with anonymous access off: a device
secret, a JWT signed by a registered ES256 key, and a client certificate from a CA
registered through the admin API over mutual TLS; wrong, expired and revoked credentials
are refused with their reason codes, and revoking closes the live connection.

    python scripts/interop_auth.py gen DIR        # CA, server and device certificates
    python scripts/interop_auth.py run DIR --port P --tls-port T --admin A
"""

import argparse
import base64
import datetime
import http.client
import json
import os
import queue
import ssl
import sys
import time

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


def pem(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cert(subject_cn, key, issuer_cert, issuer_key, ca=False, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        import ipaddress
        names = [x509.DNSName(s) if not s[0].isdigit() else x509.IPAddress(ipaddress.ip_address(s))
                 for s in sans]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def gen(d):
    os.makedirs(d, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("interop CA", ca_key, None, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = cert("localhost", server_key, ca, ca_key, sans=("localhost", "127.0.0.1"))
    dev_key = ec.generate_private_key(ec.SECP256R1())
    dev = cert("paho-cam", dev_key, ca, ca_key)
    claim_key = ec.generate_private_key(ec.SECP256R1())
    claim = cert("fleet claim", claim_key, ca, ca_key)
    files = {"ca.pem": pem(ca), "ca.key": pem(ca_key), "server.pem": pem(server),
             "server.key": pem(server_key), "device.pem": pem(dev), "device.key": pem(dev_key),
             "claim.pem": pem(claim), "claim.key": pem(claim_key)}
    for f, text in files.items():
        with open(os.path.join(d, f), "w") as fh:
            fh.write(text)


def api(admin, method, path, body=None):
    host, port = admin.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request(method, path, json.dumps(body or {}), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


def connect(cid, port, password=None, v5=True, tls=None):
    """(client, events queue, reason code of CONNACK); the client loops in a thread."""
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
    ev = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: ev.put(("connack", rc))
    c.on_disconnect = lambda cl, ud, flags, rc, props: ev.put(("disconnect", rc))
    c.on_publish = lambda cl, ud, mid, rc, props: ev.put(("puback", rc))
    if password is not None:
        c.username_pw_set("unused", password)
    if tls:
        c.tls_set_context(tls)
    c.reconnect_delay_set(60, 120)
    c.connect(HOST if not tls else "localhost", port, keepalive=30)
    c.loop_start()
    kind, rc = ev.get(timeout=10)
    assert kind == "connack", kind
    return c, ev, rc


def refused(cid, port, password=None, v5=True, tls=None):
    c, _, rc = connect(cid, port, password, v5, tls)
    c.loop_stop()
    c.disconnect()
    return rc


def jwt(key, sub, iat, exp):
    e = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = e(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    body = e(json.dumps({"sub": sub, "iat": iat, "exp": exp}).encode())
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{head}.{body}.{e(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def run(d, port, tls_port, admin):
    passed = 0
    # Secret.
    assert api(admin, "POST", "/api/things", {"thingName": "paho-1"})[0] == 201
    s, b = api(admin, "POST", "/api/things/paho-1/credentials", {"type": "secret"})
    assert s == 201, b
    secret, cred_id = b["secret"], b["credentialId"]
    # paho reports 3.1.1 return codes as their MQTT 5 equivalents (4 -> 0x86, 5 -> 0x87).
    assert refused("paho-1", port).value == 135, "no credentials: 0x87"
    assert refused("paho-1", port, "wrong-secret-wrong-secret").value == 134, "0x86"
    assert refused("paho-1", port, "wrong-secret-wrong-secret", v5=False).value == 134, "3.1.1: 4"
    c, ev, rc = connect("paho-1", port, secret)
    assert not rc.is_failure, rc
    c.publish("devices/paho-1/t", "x", qos=1)
    assert ev.get(timeout=10)[1].value == 16  # no matching subscribers: allowed
    c.publish("devices/paho-2/t", "x", qos=1)
    assert ev.get(timeout=10)[1].value == 135  # another device's topic: not authorized
    assert api(admin, "DELETE", f"/api/things/paho-1/credentials/{cred_id}")[0] == 204
    kind, rc = ev.get(timeout=10)
    assert (kind, rc.value) == ("disconnect", 135), (kind, rc)
    c.loop_stop()
    # An expired secret no longer authenticates.
    assert api(admin, "POST", "/api/things", {"thingName": "paho-3"})[0] == 201
    s, b = api(admin, "POST", "/api/things/paho-3/credentials",
               {"type": "secret", "expiresAt": int(time.time() * 1000) - 1})
    assert s == 201, b
    assert refused("paho-3", port, b["secret"]).value == 134, "expired secret: 0x86"
    print("paho secret: ok")
    passed += 1

    # JWT (3.1.1 client).
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert api(admin, "POST", "/api/things", {"thingName": "paho-2"})[0] == 201
    s, b = api(admin, "POST", "/api/things/paho-2/credentials", {"type": "publicKey", "publicKeyPem": pub})
    assert s == 201, b
    now = int(time.time())
    c, ev, rc = connect("paho-2", port, jwt(key, "paho-2", now - 5, now + 600), v5=False)
    assert not rc.is_failure, rc
    c.loop_stop()
    c.disconnect()
    assert refused("paho-2", port, jwt(key, "paho-2", now - 7200, now - 3600), v5=False).value == 134
    assert refused("paho-2", port, jwt(key, "paho-1", now, now + 600), v5=False).value == 134
    print("paho jwt: ok")
    passed += 1

    # X.509 over mutual TLS.
    with open(os.path.join(d, "ca.pem")) as f:
        ca_pem = f.read()
    with open(os.path.join(d, "device.pem")) as f:
        dev_pem = f.read()
    assert api(admin, "POST", "/api/cas", {"caCertificatePem": ca_pem})[0] == 201
    s, b = api(admin, "POST", "/api/certificates", {"certificatePem": dev_pem})
    assert s == 201, b
    cert_id = b["certificateId"]
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
    ctx.load_cert_chain(os.path.join(d, "device.pem"), os.path.join(d, "device.key"))
    c, ev, rc = connect("paho-cam", tls_port, tls=ctx)
    assert not rc.is_failure, rc
    assert refused("someone-else", tls_port, tls=ctx).value == 135
    s, _ = api(admin, "PATCH", f"/api/certificates/{cert_id}", {"status": "REVOKED"})
    assert s == 200
    kind, rc = ev.get(timeout=10)
    assert (kind, rc.value) == ("disconnect", 135), (kind, rc)
    c.loop_stop()
    assert refused("paho-cam", tls_port, tls=ctx).value == 135
    print("paho x509: ok")
    passed += 1
    return passed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["gen", "run"])
    p.add_argument("dir")
    p.add_argument("--port", type=int)
    p.add_argument("--tls-port", type=int)
    p.add_argument("--admin")
    a = p.parse_args()
    if a.cmd == "gen":
        gen(a.dir)
    else:
        print(f"{run(a.dir, a.port, a.tls_port, a.admin)} passed")


if __name__ == "__main__":
    sys.exit(main())
