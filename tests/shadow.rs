//! Device shadows and presence events through real sockets: a rumqttc device uses the AWS
//! IoT reserved topics, the application side uses the admin REST API, and a restart keeps
//! what was accepted.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

fn client(id: &str, node: &homeport::node::Node) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port(node));
    o.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(o, 100)
}

/// The next PUBLISH on `ev`: (topic, JSON payload).
async fn next(ev: &mut rumqttc::EventLoop) -> (String, Value) {
    until(ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => {
            Some((p.topic.clone(), serde_json::from_slice(&p.payload).expect("replies are JSON")))
        }
        _ => None,
    })
    .await
}

async fn connected(
    node: &homeport::node::Node,
    id: &str,
    subs: &[&str],
) -> (AsyncClient, rumqttc::EventLoop) {
    let (c, mut ev) = client(id, node);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    for s in subs {
        c.subscribe(*s, QoS::AtLeastOnce).await.unwrap();
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    }
    (c, ev)
}

fn json_body(b: &str) -> Value {
    serde_json::from_str(b).unwrap_or_else(|e| panic!("JSON body ({e}): {b}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_application_share_a_shadow_and_it_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let admin = node.admin_addr.unwrap();
    let base = "$aws/things/lamp-1/shadow";
    let (dev, mut ev) = connected(&node, "lamp-1", &[&format!("{base}/update/delta")]).await;

    // No shadow yet: the rejection reaches the requester without a subscription.
    dev.publish(format!("{base}/get"), QoS::AtLeastOnce, false, r#"{"clientToken":"g1"}"#)
        .await
        .unwrap();
    let (topic, body) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/get/rejected"));
    assert_eq!((body["code"].as_u64(), body["clientToken"].as_str()), (Some(404), Some("g1")));
    assert_eq!(body["message"], "No shadow exists with name: 'lamp-1'");

    // The device reports.
    let report = json!({"state": {"reported": {"on": false, "level": 3}}, "clientToken": "r1"});
    dev.publish(format!("{base}/update"), QoS::AtLeastOnce, false, report.to_string())
        .await
        .unwrap();
    let (topic, body) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/update/accepted"));
    assert_eq!((body["version"].as_u64(), body["clientToken"].as_str()), (Some(1), Some("r1")));
    assert_eq!(body["state"], report["state"]);

    // The application sets desired over HTTP; the delta reaches the device.
    let (status, body) = http(
        admin,
        "POST",
        "/api/things/lamp-1/shadow",
        r#"{"state":{"desired":{"on":true,"level":3}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["version"], 2);
    let (topic, delta) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/update/delta"));
    assert_eq!(delta["state"], json!({"on": true}), "level is equal, so not in the delta");
    assert_eq!(delta["version"], 2);

    // A stale version is refused with 409, over MQTT and HTTP alike.
    let stale = json!({"state": {"reported": {"on": true}}, "version": 1, "clientToken": "s"});
    dev.publish(format!("{base}/update"), QoS::AtLeastOnce, false, stale.to_string())
        .await
        .unwrap();
    let (topic, body) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/update/rejected"));
    assert_eq!((body["code"].as_u64(), body["clientToken"].as_str()), (Some(409), Some("s")));
    let (status, body) = http(
        admin,
        "POST",
        "/api/things/lamp-1/shadow",
        r#"{"state":{"desired":{"on":1}},"version":1}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(json_body(&body)["code"], "version_conflict");

    // The device catches up; null deletes a key.
    let catch_up = json!({"state": {"reported": {"on": true, "level": null}}, "version": 2});
    dev.publish(format!("{base}/update"), QoS::AtLeastOnce, false, catch_up.to_string())
        .await
        .unwrap();
    let (topic, _) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/update/accepted"));
    let (status, body) = http_get(admin, "/api/things/lamp-1/shadow").await;
    assert_eq!(status, 200);
    let doc = json_body(&body);
    assert_eq!(doc["version"], 3);
    assert_eq!(doc["state"]["reported"], json!({"on": true}));
    assert!(doc["metadata"]["reported"].get("level").is_none());
    // desired.level = 3 and reported has no level now: it is in the delta.
    assert_eq!(doc["state"]["delta"], json!({"level": 3}));

    // A named shadow is separate from the classic one.
    let named = "$aws/things/lamp-1/shadow/name/cfg";
    dev.publish(
        format!("{named}/update"),
        QoS::AtLeastOnce,
        false,
        r#"{"state":{"reported":{"mode":"eco"}}}"#,
    )
    .await
    .unwrap();
    let (topic, body) = next(&mut ev).await;
    assert_eq!(topic, format!("{named}/update/accepted"));
    assert_eq!(body["version"], 1);
    let (status, body) = http_get(admin, "/api/things/lamp-1/shadow?name=cfg").await;
    assert_eq!(status, 200);
    assert_eq!(json_body(&body)["state"]["reported"]["mode"], "eco");

    // Bad input: a JSON error and a metric, the node goes on.
    dev.publish(format!("{base}/update"), QoS::AtLeastOnce, false, "{oops").await.unwrap();
    let (topic, body) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/update/rejected"));
    assert_eq!(
        (body["code"].as_u64(), body["message"].as_str()),
        (Some(400), Some("Invalid JSON"))
    );
    assert!(
        metric(&node, "homeport_shadow_requests_total{op=\"update\",result=\"400\"}").await >= 1.0
    );
    let (status, body) = http(admin, "POST", "/api/things/bad%20name/shadow", "{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(json_body(&body)["message"].as_str().unwrap().starts_with("thing:"));

    drop((dev, ev));
    node.shutdown().await.unwrap();
    let node = start(dir.path()).await;
    let (status, body) = http_get(node.admin_addr.unwrap(), "/api/things/lamp-1/shadow").await;
    assert_eq!(status, 200);
    let doc = json_body(&body);
    assert_eq!(doc["version"], 3);
    assert_eq!(doc["state"]["desired"], json!({"on": true, "level": 3}));

    // Delete, then a new shadow continues from the deleted version.
    let (status, body) =
        http(node.admin_addr.unwrap(), "DELETE", "/api/things/lamp-1/shadow", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["version"], 3);
    let (status, _) = http_get(node.admin_addr.unwrap(), "/api/things/lamp-1/shadow").await;
    assert_eq!(status, 404);
    let (status, body) = http(
        node.admin_addr.unwrap(),
        "POST",
        "/api/things/lamp-1/shadow",
        r#"{"state":{"desired":{"x":1}}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_body(&body)["version"], 4);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_to_subscribers_and_reply_topics_are_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    // An application watching every thing's documents.
    let (_app, mut app_ev) =
        connected(&node, "app", &["$aws/things/+/shadow/update/documents"]).await;
    let (dev, mut dev_ev) = connected(&node, "sensor-9", &[]).await;
    dev.publish(
        "$aws/things/sensor-9/shadow/update",
        QoS::AtLeastOnce,
        false,
        r#"{"state":{"reported":{"t":21}}}"#,
    )
    .await
    .unwrap();
    let (topic, body) = next(&mut dev_ev).await;
    assert_eq!(topic, "$aws/things/sensor-9/shadow/update/accepted");
    assert_eq!(body["state"]["reported"]["t"], 21);
    let (topic, docs) = next(&mut app_ev).await;
    assert_eq!(topic, "$aws/things/sensor-9/shadow/update/documents");
    assert_eq!(docs["current"]["state"]["reported"]["t"], 21);
    assert!(docs.get("previous").is_none());

    // Nobody but the broker publishes on reply topics: v3.1.1 has no negative PUBACK,
    // so the client is disconnected, and the attempt is counted.
    dev.publish("$aws/things/sensor-9/shadow/update/accepted", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if dev_ev.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "publisher to a reply topic is disconnected");
    assert!(
        metric_reaches(&node, "homeport_protocol_errors_total{reason=\"reserved_topic\"}", 1.0)
            .await
            >= 1.0
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_follow_connections() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let (_w, mut w_ev) = connected(&node, "watcher", &["$aws/events/presence/+/door-3"]).await;
    let (dev, mut dev_ev) = connected(&node, "door-3", &[]).await;
    let (topic, ev) = next(&mut w_ev).await;
    assert_eq!(topic, "$aws/events/presence/connected/door-3");
    assert_eq!(
        (ev["eventType"].as_str(), ev["clientId"].as_str()),
        (Some("connected"), Some("door-3"))
    );
    assert_eq!(ev["ipAddress"], "127.0.0.1");
    let version = ev["versionNumber"].as_u64().unwrap();
    dev.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while dev_ev.poll().await.is_ok() {} }).await;
    let (topic, ev) = next(&mut w_ev).await;
    assert_eq!(topic, "$aws/events/presence/disconnected/door-3");
    assert_eq!(ev["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(ev["clientInitiatedDisconnect"], true);
    assert_eq!(ev["versionNumber"].as_u64(), Some(version));
    // Events nobody hears are not counted as dropped messages.
    assert_eq!(
        metric(&node, "homeport_messages_dropped_total{reason=\"no_subscribers\"}").await,
        0.0
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_device_actor_keeps_its_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let base = "$aws/things/crashy/shadow";
    let (dev, mut ev) = connected(&node, "crashy", &[]).await;
    for v in 1..=3 {
        let body = json!({"state": {"reported": {"n": v}}});
        dev.publish(format!("{base}/update"), QoS::AtLeastOnce, false, body.to_string())
            .await
            .unwrap();
        let (topic, _) = next(&mut ev).await;
        assert_eq!(topic, format!("{base}/update/accepted"));
    }
    let restarts = metric(&node, "homeport_device_actor_restarts_total").await;
    assert!(node.devices.inject_panic("crashy"));
    metric_reaches(&node, "homeport_device_actor_restarts_total", restarts + 1.0).await;
    dev.publish(
        format!("{base}/update"),
        QoS::AtLeastOnce,
        false,
        r#"{"state":{"reported":{"n":4}},"version":3}"#,
    )
    .await
    .unwrap();
    let (topic, body) = next(&mut ev).await;
    assert_eq!(topic, format!("{base}/update/accepted"), "{body}");
    assert_eq!(body["version"], 4);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_on_a_reply_topic_gets_0x87_and_the_connection_stays() {
    use common::raw::{publish, Raw};
    use homeport::mqtt::{Packet as HPacket, Properties, Protocol, QoS as HQoS, ReasonCode};
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut c = Raw::open(&node).await;
    c.connect("v5-dev", Protocol::V5, Properties::default()).await;
    for (pkid, topic) in
        [(1, "$aws/things/v5-dev/shadow/update/accepted"), (2, "$aws/things/v5-dev/jobs/notify")]
    {
        c.send(&publish(topic, HQoS::AtLeastOnce, pkid, "{}")).await;
        match c.recv().await {
            Some(HPacket::PubAck(a)) => {
                assert_eq!((a.pkid, a.reason), (pkid, ReasonCode::NotAuthorized))
            }
            other => panic!("expected PUBACK 0x87, got {other:?}"),
        }
    }
    // A request on the same connection is still served.
    c.send(&publish("$aws/things/v5-dev/shadow/get", HQoS::AtLeastOnce, 3, "")).await;
    let mut saw_ack = false;
    let mut saw_reply = false;
    while !(saw_ack && saw_reply) {
        match c.recv().await {
            Some(HPacket::PubAck(a)) => {
                assert_eq!((a.pkid, a.reason), (3, ReasonCode::Success));
                saw_ack = true;
            }
            Some(HPacket::Publish(p)) => {
                assert_eq!(p.topic, "$aws/things/v5-dev/shadow/get/rejected");
                saw_reply = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        metric(&node, "homeport_protocol_errors_total{reason=\"reserved_topic\"}").await,
        2.0
    );
    node.shutdown().await.unwrap();
}
