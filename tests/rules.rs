//! Rules over the admin API and real sockets: a rule created through `/api/rules`
//! republishes what it selects (seen by an independent client, rumqttc), bad SQL is a
//! 400 with its line and column, a rule feeding itself is refused, `/api/rules/test`
//! evaluates without storing, counters add up, rules survive a restart, and in a cluster
//! a rule created on one node runs where a message enters.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS as RQoS};
use serde_json::{json, Value};

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

async fn client(port: u16, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(RPacket::ConnAck(_)))) => return (c, ev),
            Ok(Ok(_)) => continue,
            other => panic!("{id}: no CONNACK: {other:?}"),
        }
    }
}

/// The next PUBLISH this client receives (and everything polled on the way).
async fn next_publish(ev: &mut rumqttc::EventLoop, within: Duration) -> Option<rumqttc::Publish> {
    tokio::time::timeout(within, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(RPacket::Publish(p))) => return p,
                Ok(_) => continue,
                Err(e) => panic!("connection: {e}"),
            }
        }
    })
    .await
    .ok()
}

/// Polls until the SUBACK, so the subscription is in effect.
async fn subscribed(c: &AsyncClient, ev: &mut rumqttc::EventLoop, filter: &str) {
    c.subscribe(filter, RQoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(RPacket::SubAck(_)) = ev.poll().await.unwrap() {
            return;
        }
    }
}

/// Polls a publisher's event loop until its PUBACKs are in.
async fn acked(ev: &mut rumqttc::EventLoop, n: usize) {
    let mut got = 0;
    while got < n {
        if let Event::Incoming(RPacket::PubAck(_)) = ev.poll().await.unwrap() {
            got += 1;
        }
    }
}

const RULE: &str =
    r#"SELECT payload.temp AS temp, clientid, topic FROM "sensors/+/data" WHERE temp > 30"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_republishes_what_it_selects() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let body = json!({
        "name": "hot",
        "sql": RULE,
        "actions": [{"republish": {"topic": "alerts/${clientid}", "qos": 1}}],
    });
    let (status, resp) = http(a, "POST", "/api/rules", &body.to_string()).await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(v(&resp)["version"], 1);
    let (status, _) = http(a, "POST", "/api/rules", &body.to_string()).await;
    assert_eq!(status, 409);

    let (sub, mut sev) = client(port(&node), "watcher").await;
    subscribed(&sub, &mut sev, "alerts/#").await;
    let (publ, mut pev) = client(port(&node), "dev-7").await;
    publ.publish("sensors/dev-7/data", RQoS::AtLeastOnce, false, r#"{"temp": 35}"#).await.unwrap();
    publ.publish("sensors/dev-7/data", RQoS::AtLeastOnce, false, r#"{"temp": 20}"#).await.unwrap();
    publ.publish("sensors/dev-7/data", RQoS::AtLeastOnce, false, "not json").await.unwrap();
    publ.publish("other/topic", RQoS::AtLeastOnce, false, r#"{"temp": 99}"#).await.unwrap();
    acked(&mut pev, 4).await;
    let p = next_publish(&mut sev, Duration::from_secs(5)).await.expect("the alert");
    assert_eq!(p.topic, "alerts/dev-7");
    assert_eq!(
        v(std::str::from_utf8(&p.payload).unwrap()),
        json!({"temp": 35, "clientid": "dev-7", "topic": "sensors/dev-7/data"})
    );
    assert!(next_publish(&mut sev, Duration::from_millis(300)).await.is_none(), "one alert only");

    // Counters add up: 3 matched (the fourth message is on another topic).
    let (_, r) = http_get(a, "/api/rules/hot").await;
    let m = &v(&r)["metrics"];
    assert_eq!((m["matched"].as_u64(), m["passed"].as_u64()), (Some(3), Some(1)), "{m}");
    assert_eq!(m["noResult"], 2, "WHERE on a missing field is not true: {m}");
    assert_eq!(m["actionsOk"], 1);
    let passed = r#"homeport_rule_evaluations_total{result="passed",rule="hot"}"#;
    assert_eq!(metric(&node, passed).await, 1.0);

    // Disabled, it does nothing; deleted, it is gone.
    let (status, resp) = http(a, "PUT", "/api/rules/hot", r#"{"enabled": false}"#).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(v(&resp)["version"], 2);
    publ.publish("sensors/dev-7/data", RQoS::AtLeastOnce, false, r#"{"temp": 50}"#).await.unwrap();
    acked(&mut pev, 1).await;
    assert!(next_publish(&mut sev, Duration::from_millis(300)).await.is_none(), "disabled");
    let (status, _) = http(a, "PUT", "/api/rules/hot", r#"{"enabled": true}"#).await;
    assert_eq!(status, 200);
    let (status, _) = http(a, "DELETE", "/api/rules/hot", "").await;
    assert_eq!(status, 204);
    let (status, _) = http_get(a, "/api/rules/hot").await;
    assert_eq!(status, 404);
    publ.publish("sensors/dev-7/data", RQoS::AtLeastOnce, false, r#"{"temp": 50}"#).await.unwrap();
    acked(&mut pev, 1).await;
    assert!(next_publish(&mut sev, Duration::from_millis(300)).await.is_none(), "deleted");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let post = |body: Value| async move { http(a, "POST", "/api/rules", &body.to_string()).await };
    let (status, resp) =
        post(json!({"name": "r", "sql": "SELECT a,\n  nope(1) FROM \"t/#\""})).await;
    assert_eq!(status, 400);
    let e = v(&resp);
    assert_eq!((e["line"].as_u64(), e["column"].as_u64()), (Some(2), Some(3)), "{e}");
    assert_eq!(e["message"], "sql: line 2, column 3: unknown function `nope`");
    let (status, resp) = post(json!({"name": "r", "sql": "SELECT * FROM \"t/#\"",
        "actions": [{"republish": {"topic": "t/again"}}]}))
    .await;
    assert_eq!(status, 400);
    assert!(v(&resp)["message"].as_str().unwrap().contains("it would loop"), "{resp}");
    let (status, resp) = post(json!({"name": "r", "sql": "SELECT * FROM \"t/#\"",
        "actions": [{"republish": {"topic": "out", "qos": 3}}]}))
    .await;
    assert_eq!(status, 400);
    assert!(resp.contains("actions[0].republish.qos"), "{resp}");
    let (status, resp) =
        post(json!({"name": "r", "sql": "SELECT * FROM \"t/#\"", "oops": 1})).await;
    assert_eq!(status, 400);
    assert!(resp.contains("oops"), "{resp}");
    let (status, _) = post(json!({"name": "bad name", "sql": "SELECT * FROM \"t/#\""})).await;
    assert_eq!(status, 400);
    let (_, list) = http_get(a, "/api/rules").await;
    assert_eq!(v(&list)["rules"], json!([]), "nothing was stored");

    // Trying a statement: rows out, nothing stored.
    let test = json!({"sql": "SELECT topic(2) AS id, temp FROM 'dev/+/t' WHERE temp > 1",
        "dialect": "aws", "topic": "dev/d1/t", "payload": "{\"temp\": 5}"});
    let (status, resp) = http(a, "POST", "/api/rules/test", &test.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(v(&resp)["rows"], json!([{"id": "d1", "temp": 5}]));
    let test = json!({"sql": "SELECT temp, topic(2) AS id FROM 'dev/+/t'", "dialect": "aws",
        "topic": "dev/d1/t", "payload": "{\"temp\": 5}"});
    let (_, resp) = http(a, "POST", "/api/rules/test", &test.to_string()).await;
    assert!(resp.contains(r#"[{"temp":5,"id":"d1"}]"#), "rows keep their SELECT order: {resp}");
    let test = json!({"sql": "SELECT x FROM 'dev/+/t'", "topic": "elsewhere", "payload": ""});
    let (status, resp) = http(a, "POST", "/api/rules/test", &test.to_string()).await;
    assert_eq!(status, 400);
    assert!(resp.contains("topic"), "{resp}");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_survive_a_restart_and_chains_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    // Two rules feeding each other: each hop is a valid rule, the chain is bounded.
    for (name, from, to) in [("ping", "a/#", "b/x"), ("pong", "b/#", "a/x")] {
        let body = json!({"name": name, "sql": format!("SELECT * FROM \"{from}\""),
            "actions": [{"republish": {"topic": to, "payload": "${payload}"}}]});
        let (status, resp) = http(a, "POST", "/api/rules", &body.to_string()).await;
        assert_eq!(status, 201, "{resp}");
    }
    node.shutdown().await.unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let (_, list) = http_get(a, "/api/rules").await;
    assert_eq!(v(&list)["rules"].as_array().unwrap().len(), 2, "{list}");
    let (sub, mut sev) = client(port(&node), "watcher").await;
    subscribed(&sub, &mut sev, "b/x").await;
    let (publ, mut pev) = client(port(&node), "starter").await;
    publ.publish("a/start", RQoS::AtLeastOnce, false, "go").await.unwrap();
    acked(&mut pev, 1).await;
    let mut seen = 0;
    while next_publish(&mut sev, Duration::from_millis(500)).await.is_some() {
        seen += 1;
    }
    assert_eq!(seen, 4, "8 hops: ping runs at depths 0, 2, 4, 6");
    let looped = r#"homeport_rule_actions_total{action="republish",result="loop",rule="ping"}"#;
    assert_eq!(metric(&node, looped).await, 1.0, "the ninth hop is cut and counted");
    node.shutdown().await.unwrap();
}

/// In a cluster, a rule created through one node runs on every node: a message entering
/// at another node is evaluated there, once, and its republished copy reaches a
/// subscriber on a third node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_runs_on_the_node_where_a_message_enters() {
    let c = common::cluster::TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let a0 = c.node(0).admin_addr.unwrap();
    let body = json!({"name": "hot", "sql": RULE,
        "actions": [{"republish": {"topic": "alerts/${clientid}", "qos": 1}}]});
    let (status, resp, unknown) = http_retrying(a0, "POST", "/api/rules", &body.to_string()).await;
    // A try answered 503 may have committed: then the retry finds the rule there.
    assert!(status == 201 || (unknown && status == 409), "{status} {resp}");
    for i in 0..3 {
        metric_reaches(c.node(i), "homeport_rules_loaded", 1.0).await;
    }
    let (sub, mut sev) = client(port(c.node(2)), "watcher").await;
    subscribed(&sub, &mut sev, "alerts/#").await;
    let (publ, mut pev) = client(port(c.node(1)), "dev-9").await;
    publ.publish("sensors/dev-9/data", RQoS::AtLeastOnce, false, r#"{"temp": 41}"#).await.unwrap();
    acked(&mut pev, 1).await;
    let p = next_publish(&mut sev, Duration::from_secs(10)).await.expect("the alert");
    assert_eq!(p.topic, "alerts/dev-9");
    assert!(next_publish(&mut sev, Duration::from_millis(500)).await.is_none(), "evaluated once");
    let passed = r#"homeport_rule_evaluations_total{result="passed",rule="hot"}"#;
    assert_eq!(metric(c.node(1), passed).await, 1.0);
    for i in [0, 2] {
        assert_eq!(metric(c.node(i), passed).await, 0.0, "node {i} did not evaluate it");
    }
    c.shutdown().await;
}

/// `$events/client_connected` and `client_disconnected` reach rules that select them,
/// with the event's columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_events_reach_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let body = json!({"name": "presence",
        "sql": r#"SELECT clientid, peername, proto_ver, reason FROM "$events/client_connected", "$events/client_disconnected" WHERE clientid = 'dev-e'"#,
        "actions": [{"republish": {"topic": "presence/${clientid}"}}]});
    let (status, resp) = http(a, "POST", "/api/rules", &body.to_string()).await;
    assert_eq!(status, 201, "{resp}");
    let (sub, mut sev) = client(port(&node), "watcher").await;
    subscribed(&sub, &mut sev, "presence/#").await;
    let (dev, mut dev_ev) = client(port(&node), "dev-e").await;
    let p = next_publish(&mut sev, Duration::from_secs(5)).await.expect("connected event");
    let v1 = v(std::str::from_utf8(&p.payload).unwrap());
    assert_eq!(v1["clientid"], "dev-e");
    assert_eq!(v1["proto_ver"], 4);
    assert!(v1["peername"].as_str().unwrap().starts_with("127.0.0.1:"), "{v1}");
    assert!(v1.get("reason").is_none(), "{v1}");
    dev.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), dev_ev.poll()).await;
    let p = next_publish(&mut sev, Duration::from_secs(5)).await.expect("disconnected event");
    let v2 = v(std::str::from_utf8(&p.payload).unwrap());
    assert_eq!(
        (v2["clientid"].as_str(), v2["reason"].as_str()),
        (Some("dev-e"), Some("normal")),
        "{v2}"
    );
    node.shutdown().await.unwrap();
}

/// `get_thing_shadow` reads the device's shadow on the node the message entered: a rule
/// puts the reported temperature of the publisher's shadow into what it republishes,
/// and a thing without a shadow gives Undefined (left out of the row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_reads_the_publishers_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let doc = json!({"state": {"reported": {"temp": 21}, "desired": {"temp": 19}}});
    let (status, resp) = http(a, "POST", "/api/things/lamp-7/shadow", &doc.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    let sql = r#"SELECT clientid, get_thing_shadow(clientid).state.reported.temp AS reported,
        get_thing_shadow(clientid).version AS version FROM "ping/+""#;
    let body = json!({
        "name": "with-shadow",
        "sql": sql,
        "actions": [{"republish": {"topic": "shadowed/${clientid}", "qos": 1}}],
    });
    let (status, resp) = http(a, "POST", "/api/rules", &body.to_string()).await;
    assert_eq!(status, 201, "{resp}");
    let (sub, mut sev) = client(port(&node), "shadow-watch").await;
    subscribed(&sub, &mut sev, "shadowed/#").await;
    for id in ["lamp-7", "no-shadow"] {
        let (p, mut pev) = client(port(&node), id).await;
        p.publish(format!("ping/{id}"), RQoS::AtLeastOnce, false, "{}").await.unwrap();
        acked(&mut pev, 1).await;
        let got = next_publish(&mut sev, Duration::from_secs(5)).await.expect("republished");
        assert_eq!(got.topic, format!("shadowed/{id}"));
        let row = v(std::str::from_utf8(&got.payload).unwrap());
        if id == "lamp-7" {
            assert_eq!(row, json!({"clientid": "lamp-7", "reported": 21, "version": 1}), "{row}");
        } else {
            assert_eq!(row, json!({"clientid": "no-shadow"}), "{row}");
        }
    }
    node.shutdown().await.unwrap();
}

/// The `username` and `peerhost` columns of a message are its publisher's CONNECT user
/// name and IP address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_sees_the_publishers_username_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let body = json!({
        "name": "who",
        "sql": r#"SELECT clientid, username, peerhost FROM "who/+""#,
        "actions": [{"republish": {"topic": "seen/${clientid}", "qos": 1}}],
    });
    let (status, resp) = http(a, "POST", "/api/rules", &body.to_string()).await;
    assert_eq!(status, 201, "{resp}");
    let (sub, mut sev) = client(port(&node), "who-watch").await;
    subscribed(&sub, &mut sev, "seen/#").await;
    let mut o = MqttOptions::new("named-dev", "127.0.0.1", port(&node));
    o.set_credentials("alice", "");
    let (p, mut pev) = AsyncClient::new(o, 10);
    p.publish("who/x", RQoS::AtLeastOnce, false, "{}").await.unwrap();
    acked(&mut pev, 1).await;
    let got = next_publish(&mut sev, Duration::from_secs(5)).await.expect("republished");
    let row = v(std::str::from_utf8(&got.payload).unwrap());
    assert_eq!(row, json!({"clientid": "named-dev", "username": "alice", "peerhost": "127.0.0.1"}));
    node.shutdown().await.unwrap();
}

/// `$events/session_subscribed` and `session_unsubscribed` reach rules, one event per
/// filter, with the filter as `topic`, the granted `qos` and the client's user name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_events_reach_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let body = json!({"name": "subs",
        "sql": r#"SELECT clientid, username, topic, qos, peerhost FROM "$events/session_subscribed", "$events/session_unsubscribed" WHERE clientid = 'dev-s'"#,
        "actions": [{"republish": {"topic": "subs/${clientid}"}}]});
    let (status, resp) = http(a, "POST", "/api/rules", &body.to_string()).await;
    assert_eq!(status, 201, "{resp}");
    let (w, mut wev) = client(port(&node), "subs-watch").await;
    subscribed(&w, &mut wev, "subs/#").await;
    let mut o = MqttOptions::new("dev-s", "127.0.0.1", port(&node));
    o.set_credentials("bob", "");
    let (dev, mut dev_ev) = AsyncClient::new(o, 10);
    subscribed(&dev, &mut dev_ev, "cmd/dev-s/#").await;
    let p = next_publish(&mut wev, Duration::from_secs(5)).await.expect("subscribed event");
    let row = v(std::str::from_utf8(&p.payload).unwrap());
    assert_eq!(
        row,
        json!({"clientid": "dev-s", "username": "bob", "topic": "cmd/dev-s/#", "qos": 1, "peerhost": "127.0.0.1"})
    );
    dev.unsubscribe("cmd/dev-s/#").await.unwrap();
    loop {
        if let Event::Incoming(RPacket::UnsubAck(_)) = dev_ev.poll().await.unwrap() {
            break;
        }
    }
    let p = next_publish(&mut wev, Duration::from_secs(5)).await.expect("unsubscribed event");
    let row = v(std::str::from_utf8(&p.payload).unwrap());
    assert_eq!((row["topic"].as_str(), row.get("qos")), (Some("cmd/dev-s/#"), None), "{row}");
    node.shutdown().await.unwrap();
}
