//! MQTT 5 behaviour through raw sockets: server limits, Receive Maximum, message expiry,
//! will delay, keepalive, topic aliases both ways and shared-subscription handover.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::*;
use common::*;
use homeport::mqtt::{self, Connect, LastWill, Packet, Properties, Protocol, QoS, ReasonCode};

fn connect(id: &str, clean: bool, props: Properties) -> Connect {
    connect_packet(id, Protocol::V5, clean, props)
}

fn expiry(secs: u32) -> Properties {
    Properties { session_expiry_interval: Some(secs), ..Default::default() }
}

fn connack(p: Packet) -> mqtt::ConnAck {
    match p {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn subscribed(node: &homeport::node::Node, id: &str, filter: &str, props: Properties) -> Raw {
    let mut r = Raw::open(node).await;
    let a = connack(r.connect_with(connect(id, true, props)).await);
    assert_eq!(a.reason, ReasonCode::Success);
    r.send(&subscribe(1, &[(filter, QoS::AtLeastOnce)], None)).await;
    assert!(matches!(r.recv().await, Some(Packet::SubAck(_))));
    r
}

async fn publish_acked(r: &mut Raw, p: Packet) {
    let pkid = match &p {
        Packet::Publish(x) => x.pkid,
        _ => unreachable!(),
    };
    r.send(&p).await;
    match r.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.pkid, pkid),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_advertises_server_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt.receive_maximum = 7;
    cfg.mqtt.topic_alias_maximum = 9;
    cfg.mqtt.maximum_qos = 1;
    cfg.mqtt.max_packet_size = 4096;
    cfg.mqtt.retain_available = false;
    cfg.mqtt.server_keep_alive = Some(20);
    let node = homeport::node::Node::start(cfg).await.unwrap();
    let mut r = Raw::open(&node).await;
    let a = connack(r.connect_with(connect("limits", true, Properties::default())).await);
    let p = a.properties;
    assert_eq!(p.receive_maximum, Some(7));
    assert_eq!(p.topic_alias_maximum, Some(9));
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.server_keep_alive, Some(20));
    // A client id is assigned when the client sends an empty one.
    let mut r = Raw::open(&node).await;
    let a = connack(r.connect_with(connect("", true, Properties::default())).await);
    assert!(a.properties.assigned_client_identifier.is_some_and(|id| !id.is_empty()));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_our_receive_maximum_gets_0x93() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt.receive_maximum = 2;
    let node = homeport::node::Node::start(cfg).await.unwrap();
    let mut r = Raw::open(&node).await;
    connack(r.connect_with(connect("greedy", true, Properties::default())).await);
    // QoS 2 publishes stay unacknowledged until PUBREL: the third exceeds the quota.
    for pkid in 1..=3 {
        r.send(&publish("rm/x", QoS::ExactlyOnce, pkid, "x")).await;
    }
    assert_eq!(r.closed_with().await, Some(ReasonCode::ReceiveMaximumExceeded));
    assert!(
        metric(&node, "homeport_protocol_errors_total{reason=\"receive_maximum_exceeded\"}").await
            >= 1.0
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_drops_stale_queued_messages_and_counts_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut sub = Raw::open(&node).await;
    connack(sub.connect_with(connect("exp-sub", true, expiry(300))).await);
    sub.send(&subscribe(1, &[("exp/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send(&Packet::Disconnect(mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }))
    .await;
    drop(sub);

    let mut publ = Raw::open(&node).await;
    connack(publ.connect_with(connect("exp-pub", true, Properties::default())).await);
    let with_expiry = |pkid, secs, body: &str| match publish("exp/a", QoS::AtLeastOnce, pkid, body)
    {
        Packet::Publish(mut p) => {
            p.properties.message_expiry_interval = Some(secs);
            Packet::Publish(p)
        }
        _ => unreachable!(),
    };
    publish_acked(&mut publ, with_expiry(1, 1, "short")).await;
    publish_acked(&mut publ, with_expiry(2, 600, "long")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut sub = Raw::open(&node).await;
    let a = connack(sub.connect_with(connect("exp-sub", false, expiry(300))).await);
    assert!(a.session_present);
    let p = sub.next_publish(true).await;
    assert_eq!(&p.payload[..], b"long");
    let left = p.properties.message_expiry_interval.expect("remaining expiry is sent");
    assert!((590..600).contains(&left), "remaining expiry {left}");
    assert!(metric(&node, "homeport_messages_dropped_total{reason=\"expired\"}").await >= 1.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_normal_disconnect_and_reconnect_within_delay() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut watcher = subscribed(&node, "will-watch", "will/#", Properties::default()).await;
    let with_will = |id: &str, delay: u32| {
        let mut c = connect(id, true, expiry(60));
        c.will = Some(LastWill {
            topic: format!("will/{id}"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties { will_delay_interval: Some(delay), ..Default::default() },
        });
        c
    };

    // 1. Abrupt close with a 1 s delay: the will comes, but not at once.
    let mut a = Raw::open(&node).await;
    connack(a.connect_with(with_will("a", 1)).await);
    drop(a);
    assert!(watcher.publish_within(Duration::from_millis(300)).await.is_none());
    let p = watcher.next_publish(true).await;
    assert_eq!(&*p.topic, "will/a");

    // 2. Normal DISCONNECT: no will.
    let mut b = Raw::open(&node).await;
    connack(b.connect_with(with_will("b", 0)).await);
    b.send(&Packet::Disconnect(mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(b.closed_with().await, None);

    // 3. Abrupt close, then the client is back within the delay: no will.
    let mut c = Raw::open(&node).await;
    connack(c.connect_with(with_will("c", 2)).await);
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Raw::open(&node).await;
    let mut again = connect("c", false, expiry(60));
    again.will = None;
    assert!(connack(c.connect_with(again).await).session_present);

    // 4. DISCONNECT 0x04 (with will): the will comes at once.
    let mut d = Raw::open(&node).await;
    connack(d.connect_with(with_will("d", 0)).await);
    d.send(&Packet::Disconnect(mqtt::Disconnect {
        reason: ReasonCode::DisconnectWithWill,
        properties: Properties::default(),
    }))
    .await;
    let p = watcher.next_publish(true).await;
    assert_eq!(&*p.topic, "will/d", "no will from b or c may come first");
    assert!(watcher.publish_within(Duration::from_millis(2500)).await.is_none());
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_enforced_at_one_and_a_half_times() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut r = Raw::open(&node).await;
    let mut c = connect("sleepy", true, Properties::default());
    c.keep_alive = 1;
    connack(r.connect_with(c).await);
    // Nothing is sent: after 1.5 s the server closes with 0x8D.
    assert_eq!(r.closed_with().await, Some(ReasonCode::KeepAliveTimeout));
    assert!(
        metric(&node, "homeport_disconnects_total{reason=\"keep_alive_timeout\"}").await >= 1.0
    );
    // A client that pings in time stays.
    let mut r = Raw::open(&node).await;
    let mut c = connect("awake", true, Properties::default());
    c.keep_alive = 1;
    connack(r.connect_with(c).await);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        r.send(&Packet::PingReq).await;
        assert_eq!(r.recv().await, Some(Packet::PingResp));
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let props = Properties { topic_alias_maximum: Some(4), ..Default::default() };
    let mut sub = subscribed(&node, "alias-sub", "al/#", props).await;
    let mut publ = Raw::open(&node).await;
    connack(publ.connect_with(connect("alias-pub", true, Properties::default())).await);

    // Inbound: the first PUBLISH sets alias 3, the second uses it with an empty topic.
    let aliased = |topic: &str, pkid| match publish(topic, QoS::AtLeastOnce, pkid, "v") {
        Packet::Publish(mut p) => {
            p.properties.topic_alias = Some(3);
            Packet::Publish(p)
        }
        _ => unreachable!(),
    };
    publish_acked(&mut publ, aliased("al/one", 1)).await;
    publish_acked(&mut publ, aliased("", 2)).await;

    // Outbound: the subscriber allowed 4 aliases; the first copy carries topic and alias,
    // the second only the alias.
    let first = sub.next_publish(true).await;
    assert_eq!(&*first.topic, "al/one");
    let alias = first.properties.topic_alias.expect("server assigns an alias");
    assert!((1..=4).contains(&alias));
    let second = sub.next_publish(true).await;
    assert_eq!(&*second.topic, "");
    assert_eq!(second.properties.topic_alias, Some(alias));

    // An alias above our maximum is a protocol violation (0x94).
    let bad = match publish("al/x", QoS::AtMostOnce, 0, "v") {
        Packet::Publish(mut p) => {
            p.properties.topic_alias = Some(60_000);
            Packet::Publish(p)
        }
        _ => unreachable!(),
    };
    publ.send(&bad).await;
    assert_eq!(publ.closed_with().await, Some(ReasonCode::TopicAliasInvalid));
    // An unknown alias with an empty topic is a protocol error.
    let mut p2 = Raw::open(&node).await;
    connack(p2.connect_with(connect("alias-pub2", true, Properties::default())).await);
    p2.send(&aliased("", 1)).await;
    assert_eq!(p2.closed_with().await, Some(ReasonCode::ProtocolError));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_hands_unacknowledged_messages_to_another_member() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut a = subscribed(&node, "worker-a", "$share/g/jobs/#", Properties::default()).await;
    let mut b = subscribed(&node, "worker-b", "$share/g/jobs/#", Properties::default()).await;
    let mut publ = Raw::open(&node).await;
    connack(publ.connect_with(connect("jobs-pub", true, Properties::default())).await);
    for i in 1..=4u16 {
        publish_acked(&mut publ, publish("jobs/x", QoS::AtLeastOnce, i, &format!("j{i}"))).await;
    }
    // Round robin: two each. `a` acknowledges nothing; `b` acknowledges its own.
    let mut got_a = Vec::new();
    for _ in 0..2 {
        got_a.push(a.next_publish(false).await.payload);
    }
    let mut got_b = Vec::new();
    for _ in 0..2 {
        got_b.push(b.next_publish(true).await.payload);
    }
    // `a` leaves without acknowledging: its two messages go to `b`.
    drop(a);
    for _ in 0..2 {
        got_b.push(b.next_publish(true).await.payload);
    }
    let mut all: Vec<_> = got_b.iter().map(|p| String::from_utf8_lossy(p).to_string()).collect();
    all.sort();
    assert_eq!(all, ["j1", "j2", "j3", "j4"]);
    let from_a: Vec<_> = got_b[2..].to_vec();
    got_a.sort();
    let mut from_a = from_a;
    from_a.sort();
    assert_eq!(got_a, from_a);
    assert_eq!(metric(&node, "homeport_shared_redispatched_total").await, 2.0);
    node.shutdown().await.unwrap();
}
