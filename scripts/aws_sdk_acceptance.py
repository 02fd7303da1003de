"""Acceptance with the AWS IoT Device SDK for Python (awsiotsdk), unchanged, on an awscrt
MQTT connection over plain TCP to the broker (no AWS account involved).

Shadow: get on a new thing is rejected (404); the device reports; the application sets
desired through the admin REST API; the delta reaches the device; the device reports the
desired value and the delta is gone.

Jobs: a job created through the admin REST API reaches the connected device
(notify-next), which takes it with start-next, moves it to IN_PROGRESS and SUCCEEDED; the
admin API then shows the job completed.
"""

import argparse
import json
import queue
import sys
import time
import urllib.request
import uuid

from awscrt import io, mqtt
from awsiot import iotjobs, iotshadow

HOST = "127.0.0.1"
TIMEOUT = 10


def connect(port, client_id):
    elg = io.EventLoopGroup(1)
    bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))
    conn = mqtt.Connection(
        client=mqtt.Client(bootstrap),  # no TLS context: plain TCP
        host_name=HOST,
        port=port,
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
    )
    conn.connect().result(TIMEOUT)
    return conn


def admin(port, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return r.status, json.loads(r.read() or b"null")


def shadow(port, admin_port):
    thing = f"sdk-thing-{uuid.uuid4().hex[:8]}"
    conn = connect(port, thing)
    client = iotshadow.IotShadowClient(conn)
    events = queue.Queue()
    q1 = mqtt.QoS.AT_LEAST_ONCE

    def on(kind):
        return lambda msg: events.put((kind, msg))

    subs = [
        client.subscribe_to_get_shadow_accepted(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), q1, on("get/accepted")),
        client.subscribe_to_get_shadow_rejected(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), q1, on("get/rejected")),
        client.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), q1, on("update/accepted")),
        client.subscribe_to_update_shadow_rejected(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), q1, on("update/rejected")),
        client.subscribe_to_shadow_delta_updated_events(
            iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), q1, on("delta")),
    ]
    for fut, _topic in subs:
        fut.result(TIMEOUT)

    def expect(kind):
        got_kind, msg = events.get(timeout=TIMEOUT)
        assert got_kind == kind, f"expected {kind}, got {got_kind}: {msg}"
        return msg

    client.publish_get_shadow(
        iotshadow.GetShadowRequest(thing_name=thing, client_token="get-1"), q1).result(TIMEOUT)
    err = expect("get/rejected")
    assert err.code == 404 and err.client_token == "get-1", err
    print("shadow get of a new thing: rejected 404 ok")

    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing,
        state=iotshadow.ShadowState(reported={"color": "off", "fw": "1.2"}),
        client_token="rep-1"), q1).result(TIMEOUT)
    acc = expect("update/accepted")
    assert acc.version == 1 and acc.client_token == "rep-1", acc
    assert acc.state.reported == {"color": "off", "fw": "1.2"}, acc.state
    print("shadow update reported: accepted ok")

    status, body = admin(admin_port, "POST", f"/api/things/{thing}/shadow",
                         {"state": {"desired": {"color": "green"}}})
    assert status == 200 and body["version"] == 2, body
    # Subscribers of update/accepted see the application's update too, as on AWS.
    seen = {}
    while "delta" not in seen or "update/accepted" not in seen:
        kind, msg = events.get(timeout=TIMEOUT)
        assert kind in ("delta", "update/accepted") and kind not in seen, (kind, msg)
        seen[kind] = msg
    assert seen["update/accepted"].state.desired == {"color": "green"}, seen
    delta = seen["delta"]
    assert delta.state == {"color": "green"} and delta.version == 2, delta
    print("desired from the admin API: delta at the device ok")

    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"color": "green"}), version=2),
        q1).result(TIMEOUT)
    acc = expect("update/accepted")
    assert acc.version == 3, acc
    client.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing), q1).result(TIMEOUT)
    got = expect("get/accepted")
    assert got.version == 3 and got.state.delta is None, got.state
    assert got.state.reported == {"color": "green", "fw": "1.2"}, got.state
    assert got.state.desired == {"color": "green"}, got.state
    print("device converges: delta gone ok")
    conn.disconnect().result(TIMEOUT)


def jobs(port, admin_port):
    thing = f"sdk-jobs-{uuid.uuid4().hex[:8]}"
    job_id = f"sdk-job-{uuid.uuid4().hex[:8]}"
    conn = connect(port, thing)
    client = iotjobs.IotJobsClient(conn)
    events = queue.Queue()
    q1 = mqtt.QoS.AT_LEAST_ONCE

    def on(kind):
        return lambda msg: events.put((kind, msg))

    subs = [
        client.subscribe_to_next_job_execution_changed_events(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), q1, on("next")),
        client.subscribe_to_start_next_pending_job_execution_accepted(
            iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), q1,
            on("start/accepted")),
        client.subscribe_to_start_next_pending_job_execution_rejected(
            iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), q1,
            on("start/rejected")),
        client.subscribe_to_update_job_execution_accepted(
            iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id=job_id), q1,
            on("update/accepted")),
        client.subscribe_to_update_job_execution_rejected(
            iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id=job_id), q1,
            on("update/rejected")),
    ]
    for fut, _topic in subs:
        fut.result(TIMEOUT)

    def expect(kind):
        got_kind, msg = events.get(timeout=TIMEOUT)
        assert got_kind == kind, f"expected {kind}, got {got_kind}: {msg}"
        return msg

    status, body = admin(admin_port, "POST", "/api/jobs", {
        "jobId": job_id, "document": {"operation": "reboot"}, "targets": [thing]})
    assert status == 201, body
    nxt = expect("next")
    assert nxt.execution.job_id == job_id and nxt.execution.status == "QUEUED", nxt
    print("job created through the admin API: notify-next at the device ok")

    client.publish_start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(
            thing_name=thing, client_token="sn-1", status_details={"step": "begin"}),
        q1).result(TIMEOUT)
    started = expect("start/accepted")
    ex = started.execution
    assert ex.job_id == job_id and ex.status == "IN_PROGRESS", ex
    assert ex.job_document == {"operation": "reboot"}, ex.job_document
    assert started.client_token == "sn-1", started
    print("start-next: IN_PROGRESS with the job document ok")

    client.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        thing_name=thing, job_id=job_id, status="IN_PROGRESS",
        status_details={"step": "rebooting"}, expected_version=ex.version_number,
        include_job_execution_state=True), q1).result(TIMEOUT)
    upd = expect("update/accepted")
    assert upd.execution_state.status == "IN_PROGRESS", upd
    client.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        thing_name=thing, job_id=job_id, status="SUCCEEDED",
        expected_version=upd.execution_state.version_number), q1).result(TIMEOUT)
    expect("update/accepted")
    nxt = expect("next")
    assert nxt.execution is None, nxt
    print("update IN_PROGRESS then SUCCEEDED: accepted ok")

    for _ in range(100):
        status, body = admin(admin_port, "GET", f"/api/jobs/{job_id}")
        if body["job"]["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    assert body["job"]["status"] == "COMPLETED", body
    assert body["job"]["jobProcessDetails"]["numberOfSucceededThings"] == 1, body
    print("job completed in the admin API ok")
    conn.disconnect().result(TIMEOUT)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin", type=int, required=True)
    args = ap.parse_args()
    shadow(args.port, args.admin)
    print("awsiotsdk: shadow ok")
    jobs(args.port, args.admin)
    print("awsiotsdk: jobs ok")


if __name__ == "__main__":
    sys.exit(main())
