//! Publishes across nodes: a message published on any node reaches subscribers whose
//! sessions live on other nodes (in-process clusters over loopback QUIC, raw MQTT
//! clients over real sockets).

mod common;

use std::time::Duration;

use common::cluster::TestCluster;
use common::raw::{connect_packet, publish, subscribe, Raw};
use homeport::mqtt::{Packet, Properties, Protocol, QoS, ReasonCode, Unsubscribe};
use homeport::node::Node;

async fn connected(node: &Node, id: &str) -> Raw {
    Raw::connected(node, connect_packet(id, Protocol::V5, true, Properties::default())).await
}

async fn acked(raw: &mut Raw) -> Packet {
    loop {
        match raw.recv().await {
            Some(p @ (Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PubAck(_))) => return p,
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

/// Waits until `node` knows at least `min` filters of its peers.
async fn routes_reach(node: &Node, min: f64) {
    let seen = common::metric_reaches(node, "homeport_cluster_peer_routes", min).await;
    assert!(seen >= min, "node {} knows {seen} peer filters, wanted {min}", node.groups.node());
}

async fn routes_fall_to(node: &Node, max: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = common::metric(node, "homeport_cluster_peer_routes").await;
        if v <= max {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v} peer filters remain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A subscriber connected to node S whose session's actor runs on node L (its shard's
/// leader) gets what a publisher on the third node P publishes, at QoS 0 and 1, through
/// a wildcard, once; the publisher's PUBACK comes after node L confirmed. After the
/// UNSUBSCRIBE the route is withdrawn everywhere and nothing more arrives. A publisher
/// node that restarts learns the routes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_on_any_node_reaches_subscribers_on_the_others() {
    let mut c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let l = c.leader_of(1).unwrap();
    let (s, p) = ((l + 1) % 3, (l + 2) % 3);
    let client = common::cluster::thing_in_shard(1, shards, "far");
    let before = common::metric(c.node(p), "homeport_cluster_peer_routes").await;
    let mut sub = connected(c.node(s), &client).await;
    sub.send(&subscribe(1, &[("far/+/x", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(acked(&mut sub).await, Packet::SubAck(a) if !a.reasons[0].is_error()));
    // The SUBACK came after every node confirmed the route.
    assert!(common::metric(c.node(p), "homeport_cluster_peer_routes").await >= before + 1.0);

    let mut publ = connected(c.node(p), "far-publisher").await;
    publ.send(&publish("far/1/x", QoS::AtMostOnce, 0, "zero")).await;
    publ.send(&publish("far/2/x", QoS::AtLeastOnce, 7, "one")).await;
    match acked(&mut publ).await {
        Packet::PubAck(a) => assert_eq!((a.pkid, a.reason), (7, ReasonCode::Success)),
        other => panic!("{other:?}"),
    }
    let first = sub.next_publish(true).await;
    let second = sub.next_publish(true).await;
    assert_eq!((&*first.topic, &first.payload[..]), ("far/1/x", &b"zero"[..]));
    assert_eq!((&*second.topic, &second.payload[..]), ("far/2/x", &b"one"[..]));
    assert_eq!(second.qos, QoS::AtLeastOnce);
    // Published where the session's actor runs: delivered there, not forwarded back.
    let mut near = connected(c.node(l), "near-publisher").await;
    near.send(&publish("far/3/x", QoS::AtLeastOnce, 1, "near")).await;
    acked(&mut near).await;
    assert_eq!(&sub.next_publish(true).await.payload[..], b"near");
    assert!(sub.publish_within(Duration::from_millis(300)).await.is_none(), "one copy only");

    // The publisher's node restarts: it learns the peers' routes again.
    drop(publ);
    c.stop(p).await;
    c.restart(p).await;
    c.wait_settled(3, Duration::from_secs(30)).await;
    routes_reach(c.node(p), 1.0).await;
    let mut publ = connected(c.node(p), "far-publisher").await;
    publ.send(&publish("far/4/x", QoS::AtLeastOnce, 2, "again")).await;
    acked(&mut publ).await;
    assert_eq!(&sub.next_publish(true).await.payload[..], b"again");

    let unsub =
        Unsubscribe { pkid: 2, filters: vec!["far/+/x".into()], properties: Properties::default() };
    sub.send(&Packet::Unsubscribe(unsub)).await;
    assert!(matches!(acked(&mut sub).await, Packet::UnsubAck(_)));
    routes_fall_to(c.node(p), before).await;
    publ.send(&publish("far/5/x", QoS::AtLeastOnce, 3, "gone")).await;
    acked(&mut publ).await;
    assert!(sub.publish_within(Duration::from_millis(300)).await.is_none());
    c.shutdown().await;
}

/// Subscribe, then publish at once on another node, many times over with a new filter
/// each time: not one publish misses (the SUBACK waits for every node to know the
/// route). The subscriber's session lives on a third node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_right_after_the_suback_is_never_missed() {
    // No leader hand-offs during the test: a hand-off moves the session's routes to
    // the new leader, and a publish in between can miss (the notes).
    let c =
        TestCluster::start_static_with(3, |cfg| cfg.cluster.placement_interval_ms = 600_000).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let l = c.leader_of(2).unwrap();
    let (s, p) = ((l + 1) % 3, (l + 2) % 3);
    let client = common::cluster::thing_in_shard(2, shards, "quick");
    let mut sub = connected(c.node(s), &client).await;
    let mut publ = connected(c.node(p), "quick-publisher").await;
    for i in 0..300u16 {
        let filter = format!("quick/{i}/#");
        sub.send(&subscribe(i + 1, &[(filter.as_str(), QoS::AtLeastOnce)], None)).await;
        assert!(matches!(acked(&mut sub).await, Packet::SubAck(_)));
        publ.send(&publish(&format!("quick/{i}/t"), QoS::AtMostOnce, 0, "now")).await;
        let got = sub.publish_within(Duration::from_secs(5)).await;
        let late =
            common::metric(c.node(l), "homeport_cluster_route_confirms_total{result=\"late\"}")
                .await;
        assert!(
            got.is_some_and(|m| *m.topic == format!("quick/{i}/t")),
            "try {i} missed; shard 2 led by {:?} (was {l}), {late} late confirms",
            c.leader_of(2)
        );
    }
    assert_eq!(
        common::metric(c.node(l), "homeport_cluster_route_confirms_total{result=\"late\"}").await,
        0.0
    );
    c.shutdown().await;
}

/// A retained message published on one node is what a subscriber on every other node
/// gets when it subscribes, and clearing it there clears it everywhere: each node's
/// retained index follows its replicas of the shards as they apply the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retained_message_published_on_one_node_is_retained_on_every_node() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let topic = "retained/across/1";
    let mut publ = connected(c.node(0), "ret-pub").await;
    let mut set = match publish(topic, QoS::AtLeastOnce, 1, "kept") {
        Packet::Publish(p) => p,
        p => panic!("{p:?}"),
    };
    set.retain = true;
    publ.send(&Packet::Publish(set.clone())).await;
    match acked(&mut publ).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        p => panic!("{p:?}"),
    }
    // A subscriber on each other node gets it (a replica may apply it a moment after
    // the PUBACK: a new subscriber tries again for up to 5 s).
    for n in [1, 2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let got = loop {
            let mut s = connected(c.node(n), &format!("ret-sub-{n}")).await;
            s.send(&subscribe(1, &[("retained/across/#", QoS::AtLeastOnce)], None)).await;
            if let Some(p) = s.publish_within(Duration::from_millis(300)).await {
                break p;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {n} has no retained message");
        };
        assert_eq!(&got.payload[..], b"kept");
        assert!(got.retain, "{got:?}");
    }
    // Cleared on node 0: no new subscriber anywhere gets it.
    set.payload = bytes::Bytes::new();
    set.pkid = 2;
    publ.send(&Packet::Publish(set)).await;
    assert!(matches!(acked(&mut publ).await, Packet::PubAck(_)));
    for n in [1, 2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = connected(c.node(n), &format!("ret-late-{n}")).await;
            s.send(&subscribe(1, &[("retained/across/#", QoS::AtLeastOnce)], None)).await;
            match s.publish_within(Duration::from_millis(300)).await {
                None => break,
                Some(p) => assert_eq!(&p.payload[..], b"kept", "{p:?}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "node {n} kept the cleared message");
        }
    }
    c.shutdown().await;
}
