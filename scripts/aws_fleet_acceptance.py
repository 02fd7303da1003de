"""Fleet provisioning by claim with the AWS IoT Device SDK for Python (awsiotsdk's
`iotidentity` client, unchanged) over mutual TLS (awscrt) to the broker: a device with
the claim certificate calls CreateKeysAndCertificate and RegisterThing, then connects
with the certificate it got as the thing the template named; a second device does the
same from its own CSR (CreateCertificateFromCsr).

    python scripts/aws_fleet_acceptance.py DIR --port TLS_PORT --admin HOST:PORT

DIR holds ca.pem, claim.pem and claim.key (scripts/interop_auth.py gen).
"""

import argparse
import json
import os
import queue
import sys
import tempfile
import urllib.request

from awscrt import io, mqtt
from awsiot import iotidentity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TIMEOUT = 10
Q1 = mqtt.QoS.AT_LEAST_ONCE


def admin(addr, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return r.status, json.loads(r.read() or b"null")


def connect(port, client_id, cert, key, ca):
    elg = io.EventLoopGroup(1)
    bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))
    opts = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
    opts.override_default_trust_store_from_path(None, ca)
    conn = mqtt.Connection(
        client=mqtt.Client(bootstrap, io.ClientTlsContext(opts)),
        host_name="localhost",
        port=port,
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
    )
    conn.connect().result(TIMEOUT)
    return conn


def provision(port, d, serial, use_csr):
    ca = os.path.join(d, "ca.pem")
    conn = connect(port, f"claimant-{serial}", os.path.join(d, "claim.pem"), os.path.join(d, "claim.key"), ca)
    client = iotidentity.IotIdentityClient(conn)
    events = queue.Queue()
    on = lambda kind: (lambda msg: events.put((kind, msg)))
    subs = [
        client.subscribe_to_register_thing_accepted(
            iotidentity.RegisterThingSubscriptionRequest(template_name="fleet"), Q1, on("registered")),
        client.subscribe_to_register_thing_rejected(
            iotidentity.RegisterThingSubscriptionRequest(template_name="fleet"), Q1, on("rejected")),
    ]
    key_pem = None
    if use_csr:
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev-{serial}")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
        req = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
        subs.append(client.subscribe_to_create_certificate_from_csr_accepted(req, Q1, on("created")))
        subs.append(client.subscribe_to_create_certificate_from_csr_rejected(req, Q1, on("rejected")))
    else:
        req = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
        subs.append(client.subscribe_to_create_keys_and_certificate_accepted(req, Q1, on("created")))
        subs.append(client.subscribe_to_create_keys_and_certificate_rejected(req, Q1, on("rejected")))
    for fut, _ in subs:
        fut.result(TIMEOUT)
    if use_csr:
        client.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), Q1).result(TIMEOUT)
    else:
        client.publish_create_keys_and_certificate(
            iotidentity.CreateKeysAndCertificateRequest(), Q1).result(TIMEOUT)
    kind, created = events.get(timeout=TIMEOUT)
    assert kind == "created", (kind, vars(created))
    assert created.certificate_pem and created.certificate_ownership_token
    if not use_csr:
        key_pem = created.private_key
    client.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name="fleet",
        certificate_ownership_token=created.certificate_ownership_token,
        parameters={"SerialNumber": serial}), Q1).result(TIMEOUT)
    kind, registered = events.get(timeout=TIMEOUT)
    assert kind == "registered", (kind, vars(registered))
    assert registered.thing_name == f"sensor-{serial}", registered.thing_name
    assert registered.device_configuration == {"telemetry": f"sensors/sensor-{serial}/t"}
    conn.disconnect().result(TIMEOUT)

    # The device now is its thing, with its own certificate.
    with tempfile.TemporaryDirectory() as t:
        cert_path, key_path = os.path.join(t, "c.pem"), os.path.join(t, "k.pem")
        with open(cert_path, "w") as f:
            f.write(created.certificate_pem)
        with open(key_path, "w") as f:
            f.write(key_pem)
        dev = connect(port, registered.thing_name, cert_path, key_path, ca)
        fut, _ = dev.publish(f"sensors/{registered.thing_name}/t", "21.5", Q1)
        fut.result(TIMEOUT)
        dev.disconnect().result(TIMEOUT)
    print(f"awsiotsdk fleet provisioning ({'CSR' if use_csr else 'keys and certificate'}): ok")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin", required=True)
    a = p.parse_args()
    with open(os.path.join(a.dir, "claim.pem")) as f:
        claim = f.read()
    s, b = admin(a.admin, "POST", "/api/certificates", {"certificatePem": claim, "claim": True})
    assert s == 201, b
    doc = {"statements": [{"effect": "allow", "actions": ["publish"], "topics": ["sensors/${thing.name}/#"]}]}
    admin(a.admin, "PUT", "/api/policies/sensor", {"document": doc})
    admin(a.admin, "PUT", "/api/provisioning-templates/fleet", {
        "thingName": "sensor-${SerialNumber}", "policies": ["sensor"],
        "deviceConfiguration": {"telemetry": "sensors/sensor-${SerialNumber}/t"}})
    provision(a.port, a.dir, "1001", use_csr=False)
    provision(a.port, a.dir, "1002", use_csr=True)
    print("2 passed")


if __name__ == "__main__":
    sys.exit(main())
