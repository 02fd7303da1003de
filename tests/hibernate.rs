//! Hibernating connections (`mqtt.hibernate_after_ms`): an idle plain-TCP connection frees
//! its working state and waits in a small poll; these tests check, through real sockets,
//! that it still receives deliveries, answers pings, takes publishes, times out on
//! keep-alive (with its will) and hears the node's shutdown.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use homeport::mqtt::{
    Connect, LastWill, Packet, Properties, Protocol, PubResp, QoS, ReasonCode, SubOptions,
    Subscribe,
};

const GAUGE: &str = "homeport_connections_hibernating";

async fn node(dir: &std::path::Path) -> homeport::node::Node {
    let mut cfg = config(dir);
    cfg.mqtt.hibernate_after_ms = 100;
    homeport::node::Node::start(cfg).await.expect("node starts")
}

/// Waits until exactly `n` connections hibernate.
async fn hibernating(node: &homeport::node::Node, n: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(node, GAUGE).await;
        if v == n {
            return;
        }
        assert!(Instant::now() < deadline, "{GAUGE} stayed at {v}, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernated_connections_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut sub = Raw::open(&node).await;
    sub.connect("sleeper", Protocol::V5, Properties::default()).await;
    sub.send(&subscribe(1, &[("h/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publ = Raw::open(&node).await;
    publ.connect("waker", Protocol::V5, Properties::default()).await;

    for round in 1..=3u16 {
        hibernating(&node, 2.0).await;
        // A publish wakes the publisher's connection, and its delivery the subscriber's.
        publ.send(&publish("h/x", QoS::AtLeastOnce, round, &format!("m{round}"))).await;
        match publ.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!((a.pkid, a.reason), (round, ReasonCode::Success))
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let p = sub.next_publish(true).await;
        assert_eq!(&p.payload[..], format!("m{round}").as_bytes());
        hibernating(&node, 2.0).await;
        // A ping is read and answered by a hibernated connection.
        sub.send(&Packet::PingReq).await;
        assert!(matches!(sub.recv().await, Some(Packet::PingResp)));
    }
    // Both hibernate once more, then close: the gauge falls back to zero.
    hibernating(&node, 2.0).await;
    drop(sub);
    drop(publ);
    hibernating(&node, 0.0).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_ends_a_hibernating_connection_with_its_will() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut watcher = Raw::open(&node).await;
    watcher.connect("watcher", Protocol::V5, Properties::default()).await;
    watcher
        .send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![("wills/#".into(), SubOptions::qos(QoS::AtMostOnce))],
            properties: Properties::default(),
        }))
        .await;
    assert!(matches!(watcher.recv().await, Some(Packet::SubAck(_))));

    let mut silent = Raw::open(&node).await;
    let c = Connect {
        keep_alive: 1,
        will: Some(LastWill {
            topic: "wills/silent".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }),
        ..connect_packet("silent", Protocol::V5, true, Properties::default())
    };
    silent.connect_with(c).await;
    hibernating(&node, 2.0).await;
    // 1.5 times the keep-alive after its last packet, with no working state left.
    assert_eq!(silent.closed_with().await, Some(ReasonCode::KeepAliveTimeout));
    let will = watcher.publish_within(WAIT).await.expect("the will is published");
    assert_eq!((&*will.topic, &will.payload[..]), ("wills/silent", &b"gone"[..]));
    let timeouts = metric(&node, "homeport_disconnects_total{reason=\"keep_alive_timeout\"}").await;
    assert_eq!(timeouts, 1.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_hibernating_connections() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut a = Raw::open(&node).await;
    a.connect("a", Protocol::V5, Properties::default()).await;
    let mut b = Raw::open(&node).await;
    b.connect("b", Protocol::V5, Properties::default()).await;
    // One with a message in flight it has not acknowledged: hibernating does not wait for
    // the acknowledgement, and the message stays the session's.
    b.send(&subscribe(1, &[("s/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(b.recv().await, Some(Packet::SubAck(_))));
    a.send(&publish("s/1", QoS::AtLeastOnce, 1, "x")).await;
    assert!(matches!(a.recv().await, Some(Packet::PubAck(_))));
    let p = b.next_publish(false).await;
    hibernating(&node, 2.0).await;
    b.send(&Packet::PubAck(PubResp::ok(p.pkid))).await;
    hibernating(&node, 2.0).await;

    // Every connection task has to end for shutdown to go on: it would wait 10 s for
    // connections that never heard of it.
    let began = Instant::now();
    let stop = tokio::spawn(node.shutdown());
    assert_eq!(a.closed_with().await, Some(ReasonCode::ServerShuttingDown));
    assert_eq!(b.closed_with().await, Some(ReasonCode::ServerShuttingDown));
    stop.await.unwrap().unwrap();
    assert!(began.elapsed() < Duration::from_secs(8), "shutdown waited for hibernating tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_do_not_hibernate() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut tcp = Raw::open(&node).await;
    tcp.connect("tcp-idle", Protocol::V311, Properties::default()).await;
    let ws = node.ws_addr.expect("ws listener");
    let mut o = rumqttc::MqttOptions::new(
        "ws-idle",
        format!("ws://127.0.0.1:{}/mqtt", ws.port()),
        ws.port(),
    );
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    let (_client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    until(&mut ev, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))).then_some(())
    })
    .await;
    // The WebSocket bridge buffers input itself, so its connection cannot wait on the
    // socket without a buffer: only the TCP one hibernates.
    let poll = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    hibernating(&node, 1.0).await;
    assert_eq!(metric(&node, "homeport_connections{listener=\"ws\"}").await, 1.0);
    poll.abort();
    node.shutdown().await.unwrap();
}
