//! Limits against abuse through real sockets: publish rate and inbound bandwidth (the
//! client is slowed, nothing is lost), connections per source address, subscriptions per
//! client, topic length and depth, user property bytes, and retained messages. Each has
//! its reason code and its `homeport_limit_hits_total` series; other clients keep
//! working throughout.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use homeport::config::Config;
use homeport::mqtt::{Packet, Properties, Protocol, Publish, QoS, ReasonCode};
use homeport::node::Node;

async fn node_with(dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Node {
    let mut cfg = config(dir);
    tune(&mut cfg);
    Node::start(cfg).await.expect("node starts")
}

async fn hits(node: &Node, limit: &str) -> f64 {
    metric(node, &format!("homeport_limit_hits_total{{limit=\"{limit}\"}}")).await
}

/// Publishes `n` QoS 0 messages of `size` bytes as fast as the socket takes them and
/// returns how long the subscriber took to receive all of them.
async fn flood(node: &Node, n: usize, size: usize) -> Duration {
    let mut sub = Raw::open(node).await;
    sub.connect("flood-sub", Protocol::V5, Properties::default()).await;
    sub.send(&subscribe(1, &[("flood/t", QoS::AtMostOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publ = Raw::open(node).await;
    publ.connect("flood-pub", Protocol::V5, Properties::default()).await;
    let payload = "x".repeat(size);
    let started = Instant::now();
    for _ in 0..n {
        publ.send(&publish("flood/t", QoS::AtMostOnce, 0, &payload)).await;
    }
    for i in 0..n {
        let p = sub.next_publish(false).await;
        assert_eq!(p.payload.len(), size, "message {i}");
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_and_bandwidth_slow_the_client_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), |c| c.limits.max_publish_rate = 20).await;
    // 60 messages at 20/s with one second of burst: at least two seconds.
    let took = flood(&node, 60, 10).await;
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(hits(&node, "publish_rate").await >= 1.0);
    node.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), |c| c.limits.max_inbound_bytes_rate = 20_000).await;
    // 60 KB at 20 KB/s with one second of burst.
    let took = flood(&node, 60, 1000).await;
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(hits(&node, "inbound_bytes_rate").await >= 1.0);
    assert_eq!(hits(&node, "publish_rate").await, 0.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), |c| c.limits.max_connections_per_address = 2).await;
    let mut a = Raw::open(&node).await;
    assert!(matches!(a.connect("a", Protocol::V5, Properties::default()).await,
        Packet::ConnAck(c) if c.reason == ReasonCode::Success));
    let mut b = Raw::open(&node).await;
    b.connect("b", Protocol::V311, Properties::default()).await;
    let mut c = Raw::open(&node).await;
    assert!(matches!(c.connect("c", Protocol::V5, Properties::default()).await,
        Packet::ConnAck(k) if k.reason == ReasonCode::QuotaExceeded));
    let mut d = Raw::open(&node).await;
    // 3.1.1 has no quota code: 0x05 (not authorized) is the nearest.
    assert!(matches!(d.connect("d", Protocol::V311, Properties::default()).await,
        Packet::ConnAck(k) if k.reason.is_error()));
    assert_eq!(hits(&node, "connections_per_address").await, 2.0);
    // A place frees when a connection ends.
    a.send(&Packet::Disconnect(homeport::mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(a.closed_with().await, None);
    let mut e = Raw::open(&node).await;
    let mut ok = false;
    for _ in 0..50 {
        if matches!(e.connect("e", Protocol::V5, Properties::default()).await,
            Packet::ConnAck(k) if k.reason == ReasonCode::Success)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        e = Raw::open(&node).await;
    }
    assert!(ok, "a freed place is usable");
    drop(b);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_topics_and_user_properties_have_limits() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), |c| {
        c.mqtt.max_subscriptions_per_client = 2;
        c.limits.max_topic_length = 32;
        c.limits.max_topic_levels = 4;
        c.limits.max_user_property_bytes = 64;
    })
    .await;
    let (mut hs, mut hp) = healthy_pair(&node).await;

    let mut c = Raw::open(&node).await;
    c.connect("limited", Protocol::V5, Properties::default()).await;
    c.send(&subscribe(
        1,
        &[("a/1", QoS::AtLeastOnce), ("a/2", QoS::AtLeastOnce), ("a/3", QoS::AtLeastOnce)],
        None,
    ))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(
            s.reasons,
            vec![ReasonCode::GrantedQos1, ReasonCode::GrantedQos1, ReasonCode::QuotaExceeded]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(hits(&node, "subscriptions").await, 1.0);

    // Too deep or too long: SUBACK 0x8F, PUBACK 0x90, QoS 0 dropped.
    c.send(&subscribe(
        2,
        &[("a/b/c/d/e", QoS::AtLeastOnce), (&"l".repeat(40), QoS::AtLeastOnce)],
        None,
    ))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => {
            assert_eq!(
                s.reasons,
                vec![ReasonCode::TopicFilterInvalid, ReasonCode::TopicFilterInvalid]
            )
        }
        other => panic!("{other:?}"),
    }
    c.send(&publish(&"t".repeat(33), QoS::AtLeastOnce, 3, "x")).await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::TopicNameInvalid)
    );
    c.send(&publish("a/b/c/d/e", QoS::AtMostOnce, 0, "x")).await;
    c.send(&publish("a/1", QoS::AtLeastOnce, 4, "fine")).await;
    // Its PUBACK and its delivery, in either order; the deep QoS 0 message never comes.
    let mut delivered = Vec::new();
    for _ in 0..2 {
        match c.recv().await {
            Some(Packet::Publish(p)) => delivered.push(p.payload),
            Some(Packet::PubAck(a)) => assert_eq!(a.pkid, 4),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delivered, vec![bytes::Bytes::from_static(b"fine")]);
    assert_eq!(hits(&node, "topic_size").await, 4.0);

    // User properties past 64 bytes: DISCONNECT 0x97.
    let mut p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/1".into(),
        pkid: 5,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"x"),
    };
    p.properties.user_properties.push(("k".into(), "v".repeat(100)));
    c.send(&Packet::Publish(p)).await;
    assert_eq!(c.closed_with().await, Some(ReasonCode::QuotaExceeded));
    assert_eq!(hits(&node, "user_property_bytes").await, 1.0);

    // 3.1.1 has no negative PUBACK: a too long topic closes the connection.
    let mut old = Raw::open(&node).await;
    old.connect("old", Protocol::V311, Properties::default()).await;
    old.send(&publish(&"t".repeat(33), QoS::AtLeastOnce, 1, "x")).await;
    assert_eq!(old.closed_with().await, None);

    still_works(&mut hs, &mut hp, 9).await;
    node.shutdown().await.unwrap();
}

fn retained(topic: &str, qos: QoS, pkid: u16, payload: &str) -> Packet {
    match publish(topic, qos, pkid, payload) {
        Packet::Publish(p) => Packet::Publish(Publish { retain: true, ..p }),
        other => other,
    }
}

/// The reason of the PUBACK for `pkid`.
async fn puback(c: &mut Raw, pkid: u16) -> ReasonCode {
    loop {
        match c.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => return a.reason,
            Some(_) => continue,
            None => panic!("closed before PUBACK {pkid}"),
        }
    }
}

/// Retained topics a fresh subscriber to `filter` gets, sorted.
async fn retained_topics(node: &Node, filter: &str) -> Vec<String> {
    let mut c = Raw::open(node).await;
    c.connect("retained-reader", Protocol::V5, Properties::default()).await;
    c.send(&subscribe(1, &[(filter, QoS::AtMostOnce)], None)).await;
    let mut topics = Vec::new();
    while let Some(p) = c.publish_within(Duration::from_millis(300)).await {
        assert!(p.retain, "only retained messages are published here");
        topics.push(p.topic.to_string());
    }
    topics.sort();
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_limited_by_count_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), |c| {
        c.limits.max_retained_messages = 2;
        c.limits.max_retained_bytes = 64;
    })
    .await;
    let mut live = Raw::open(&node).await;
    live.connect("live", Protocol::V5, Properties::default()).await;
    live.send(&subscribe(1, &[("r/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(live.recv().await, Some(Packet::SubAck(_))));
    let mut v5 = Raw::open(&node).await;
    v5.connect("retainer5", Protocol::V5, Properties::default()).await;

    v5.send(&retained("r/1", QoS::AtLeastOnce, 1, "one")).await;
    assert_eq!(puback(&mut v5, 1).await, ReasonCode::Success);
    v5.send(&retained("r/2", QoS::AtLeastOnce, 2, "two")).await;
    assert_eq!(puback(&mut v5, 2).await, ReasonCode::Success);
    // A third topic is over the count: delivered to the live subscriber, not retained.
    v5.send(&retained("r/3", QoS::AtLeastOnce, 3, "three")).await;
    assert_eq!(puback(&mut v5, 3).await, ReasonCode::QuotaExceeded);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(live.next_publish(true).await.topic.to_string());
    }
    assert_eq!(got, ["r/1", "r/2", "r/3"]);
    assert_eq!(retained_topics(&node, "r/#").await, ["r/1", "r/2"]);
    assert_eq!(hits(&node, "retained_messages").await, 1.0);

    // Replacing a retained topic is within the count; growing past the bytes is not.
    v5.send(&retained("r/1", QoS::AtLeastOnce, 4, "uno")).await;
    assert_eq!(puback(&mut v5, 4).await, ReasonCode::Success);
    v5.send(&retained("r/1", QoS::AtLeastOnce, 5, &"x".repeat(80))).await;
    assert_eq!(puback(&mut v5, 5).await, ReasonCode::QuotaExceeded);
    // 3.1.1 has no negative acknowledgement: acknowledged, counted, not retained.
    let mut v3 = Raw::open(&node).await;
    v3.connect("retainer3", Protocol::V311, Properties::default()).await;
    v3.send(&retained("r/4", QoS::AtLeastOnce, 1, "four")).await;
    assert!(matches!(v3.recv().await, Some(Packet::PubAck(_))));
    assert_eq!(retained_topics(&node, "r/#").await, ["r/1", "r/2"]);
    assert_eq!(hits(&node, "retained_messages").await, 3.0);

    // Clearing always works and makes room.
    v5.send(&retained("r/2", QoS::AtLeastOnce, 6, "")).await;
    assert_eq!(puback(&mut v5, 6).await, ReasonCode::Success);
    v5.send(&retained("r/3", QoS::AtLeastOnce, 7, "three")).await;
    assert_eq!(puback(&mut v5, 7).await, ReasonCode::Success);
    assert_eq!(retained_topics(&node, "r/#").await, ["r/1", "r/3"]);
    assert_eq!(metric(&node, "homeport_retained_messages").await, 2.0);
    // "r/1" + "uno" and "r/3" + "three".
    assert_eq!(metric(&node, "homeport_retained_bytes").await, 14.0);
    node.shutdown().await.unwrap();
}
