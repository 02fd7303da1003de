//! A node that stops answering: after `cluster.node_down_ms` the others declare it down,
//! the sessions of its connections end as lost connections (wills fire once, clean
//! sessions end, persistent ones queue), and after the heal they resume elsewhere
//! (in-process clusters over loopback QUIC, raw MQTT clients over real sockets).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cluster::TestCluster;
use common::raw::{connect_packet, publish, subscribe, Raw};
use homeport::mqtt::{LastWill, Packet, Properties, Protocol, QoS, ReasonCode};
use homeport::node::Node;

async fn connected(node: &Node, id: &str, clean: bool, props: Properties, will: &str) -> Raw {
    let mut c = connect_packet(id, Protocol::V5, clean, props);
    if !will.is_empty() {
        c.will = Some(LastWill {
            topic: will.into(),
            payload: Bytes::from(format!("{id} is gone")),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
    }
    Raw::connected(node, c).await
}

async fn acked(raw: &mut Raw) -> Packet {
    loop {
        match raw.recv().await {
            Some(p @ (Packet::SubAck(_) | Packet::PubAck(_))) => return p,
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

/// Node C is cut off from the others. Its connections are served by device actors on
/// node L (their shard's leader): L declares C down after the detection time, the
/// clean session's and the persistent session's wills reach a watcher on the third
/// node once each, the clean session ends and the persistent one queues what is
/// published for it. C closes its connections with DISCONNECT 0x9C. After the heal the
/// persistent session resumes on another node with `session present` and its queue,
/// and no will comes a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_is_declared_down_and_its_connections_wills_fire_once() {
    let c = TestCluster::start_static_with(3, |cfg| {
        cfg.cluster.rpc_timeout_ms = 1000;
        cfg.cluster.node_down_ms = 2000;
    })
    .await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let l = c.leader_of(1).unwrap();
    let (cut, w) = ((l + 1) % 3, (l + 2) % 3);
    let clean_id = common::cluster::thing_in_shard(1, shards, "clean");
    let durable_id = common::cluster::thing_in_shard(1, shards, "durable");
    // Served by L too: sessions whose actors were on C move (a clean one ends).
    let watcher_id = common::cluster::thing_in_shard(1, shards, "watcher");
    let publisher_id = common::cluster::thing_in_shard(1, shards, "publisher");

    let mut watcher = connected(c.node(w), &watcher_id, true, Properties::default(), "").await;
    watcher.send(&subscribe(1, &[("will/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(acked(&mut watcher).await, Packet::SubAck(_)));
    let mut clean =
        connected(c.node(cut), &clean_id, true, Properties::default(), "will/clean").await;
    let expiry = Properties { session_expiry_interval: Some(3600), ..Default::default() };
    let mut durable =
        connected(c.node(cut), &durable_id, true, expiry.clone(), "will/durable").await;
    durable.send(&subscribe(1, &[(&format!("q/{durable_id}"), QoS::AtLeastOnce)], None)).await;
    assert!(matches!(acked(&mut durable).await, Packet::SubAck(_)));
    // Both are served by L's actors from C.
    // (The watcher's session may be served by L too.)
    let proxied = c.node(l).devices.proxied();
    assert!(proxied >= 2);
    assert_eq!(c.node(cut).devices.remote_attached(), 2);

    c.isolate(cut);
    let mut wills = Vec::new();
    while wills.len() < 2 {
        let p = watcher
            .publish_within(Duration::from_secs(15))
            .await
            .expect("both wills within 15 s of the cut (detection time 2 s)");
        wills.push((p.topic.to_string(), p.payload.clone()));
    }
    wills.sort();
    assert_eq!(wills[0], ("will/clean".into(), Bytes::from(format!("{clean_id} is gone"))));
    assert_eq!(wills[1], ("will/durable".into(), Bytes::from(format!("{durable_id} is gone"))));
    let down = r#"homeport_cluster_peer_state_changes_total{state="down"}"#;
    assert!(common::metric(c.node(l), down).await >= 1.0);
    // C, cut off from the actors' node, closes both connections.
    for raw in [&mut clean, &mut durable] {
        let reason = tokio::time::timeout(Duration::from_secs(15), raw.closed_with())
            .await
            .expect("closed within 15 s");
        assert_eq!(reason, Some(ReasonCode::UseAnotherServer));
    }
    assert_eq!(c.node(l).devices.proxied(), proxied - 2, "L let go of C's connections");
    // Offline now: a message for the persistent session is queued at L.
    let mut publ = connected(c.node(w), &publisher_id, true, Properties::default(), "").await;
    publ.send(&publish(&format!("q/{durable_id}"), QoS::AtLeastOnce, 1, "queued")).await;
    match acked(&mut publ).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        p => panic!("{p:?}"),
    }

    c.heal();
    let mut back = Raw::open(c.node(w)).await;
    match back.connect_retrying(connect_packet(&durable_id, Protocol::V5, false, expiry)).await {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert!(a.session_present, "the persistent session survived its node's loss");
        }
        p => panic!("{p:?}"),
    }
    assert_eq!(&back.next_publish(true).await.payload[..], b"queued");
    // The clean session ended: its client id starts afresh.
    let mut again = Raw::open(c.node(w)).await;
    match again
        .connect_retrying(connect_packet(&clean_id, Protocol::V5, false, Properties::default()))
        .await
    {
        Packet::ConnAck(a) => assert!(!a.session_present, "{a:?}"),
        p => panic!("{p:?}"),
    }
    assert!(
        watcher.publish_within(Duration::from_secs(3)).await.is_none(),
        "a will came a second time"
    );
    c.shutdown().await;
}

/// A node leaving before a stop (what SIGTERM does in a cluster): it hands every
/// group's leadership off, sends its v5 clients to another node with DISCONNECT 0x9C
/// and a Server Reference, closes its 3.1.1 clients and refuses new CONNECTs the same
/// way. The persistent session resumes where it was sent; clients of other nodes keep
/// their connections throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaving_node_hands_off_its_leaders_and_sends_its_clients_elsewhere() {
    let mut c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let d = 2;
    let others: Vec<String> =
        (0..2).map(|i| c.node(i).mqtt_addr.expect("mqtt").to_string()).collect();
    let expiry = Properties { session_expiry_interval: Some(3600), ..Default::default() };
    let mut durable = connected(c.node(d), "leaving-durable", true, expiry.clone(), "").await;
    durable.send(&subscribe(1, &[("t/leaving-durable", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(acked(&mut durable).await, Packet::SubAck(_)));
    let mut old = Raw::open(c.node(d)).await;
    match old
        .connect_retrying(connect_packet("leaving-v3", Protocol::V311, true, Properties::default()))
        .await
    {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::Success),
        p => panic!("{p:?}"),
    }
    let mut stays = connected(c.node(0), "staying", true, Properties::default(), "").await;

    let started = std::time::Instant::now();
    let open = c.node(d).leave(Duration::from_secs(20)).await;
    eprintln!("left in {:?}", started.elapsed());
    assert_eq!(open, 0, "every connection closed");
    let n = c.node(d);
    assert_eq!(n.groups.ids().filter(|g| n.groups.is_leader(*g)).count(), 0, "leads nothing");
    let to = loop {
        match durable.recv().await {
            Some(Packet::Disconnect(dis)) => {
                assert_eq!(dis.reason, ReasonCode::UseAnotherServer);
                break dis.properties.server_reference.expect("a Server Reference");
            }
            Some(_) => continue,
            None => panic!("closed without DISCONNECT"),
        }
    };
    assert!(others.contains(&to), "{to} is not one of {others:?}");
    assert_eq!(old.closed_with().await, None, "3.1.1: closed, no DISCONNECT");
    let mut refused = Raw::open(c.node(d)).await;
    match refused
        .connect_with(connect_packet("late", Protocol::V5, true, Properties::default()))
        .await
    {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::UseAnotherServer);
            assert!(a.properties.server_reference.is_some_and(|s| others.contains(&s)));
        }
        p => panic!("{p:?}"),
    }

    let mut back = Raw::open_addr(to.parse().expect("address")).await;
    match back
        .connect_retrying(connect_packet("leaving-durable", Protocol::V5, false, expiry))
        .await
    {
        Packet::ConnAck(a) => assert!(a.session_present, "{a:?}"),
        p => panic!("{p:?}"),
    }
    stays.send(&publish("t/leaving-durable", QoS::AtLeastOnce, 1, "after the move")).await;
    match acked(&mut stays).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        p => panic!("{p:?}"),
    }
    assert_eq!(&back.next_publish(true).await.payload[..], b"after the move");
    c.stop(d).await;
    stays.send(&publish("t/leaving-durable", QoS::AtLeastOnce, 2, "after the stop")).await;
    match acked(&mut stays).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        p => panic!("{p:?}"),
    }
    assert_eq!(&back.next_publish(true).await.payload[..], b"after the stop");
    c.shutdown().await;
}
