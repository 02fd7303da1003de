//! Flow control and idle device actors, through real sockets.
//!
//! - A subscriber that stops acknowledging fills its backlog (`mqtt.outbound_queue`); QoS 1
//!   publishers are then held (their PUBACKs wait) instead of having their messages
//!   dropped, and everything arrives once the subscriber acknowledges again.
//! - A connected session's device actor retires when idle; subscribe, unsubscribe, the will
//!   and the end of a clean session still work through its successor.

mod common;

use std::time::Duration;

use common::raw::{self, Raw};
use common::*;
use homeport::mqtt::{self, Packet, Properties, Protocol, QoS};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions};

const LIMIT: usize = 8;
const N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscriber_holds_qos1_publishers_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut sub) = node_with_slow_subscriber(dir.path(), "flow-sub", "flow/#").await;

    let mut o = MqttOptions::new("flow-pub", "127.0.0.1", port(&node));
    o.set_inflight(100);
    let (publ, mut pev) = AsyncClient::new(o, N);
    for i in 0..N {
        publ.publish("flow/x", rumqttc::QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    // While the subscriber holds its window, the publisher (its event loop polled, so it
    // sends) gets at most the backlog limit (plus the one in the window) acknowledged.
    let mut acked = 0;
    let mut sent = 0;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match pev.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => sent += 1,
                _ => {}
            }
        }
    })
    .await;
    assert!(sent > LIMIT + 1, "the publisher sent {sent}, more than the backlog limit");
    assert!(metric(&node, "homeport_backpressure_waits_total").await >= 1.0);
    assert!(acked > 0, "below the limit publishes are acknowledged");
    assert!(acked <= LIMIT + 1, "held publisher still got {acked} acknowledgements");

    // The subscriber acknowledges again: every message arrives once, in order, and every
    // publish is acknowledged.
    let recv = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            let p = sub.next_publish(true).await;
            got.push(String::from_utf8_lossy(&p.payload).parse::<usize>().unwrap());
        }
        got
    });
    until(&mut pev, |e| {
        if let Event::Incoming(rumqttc::Packet::PubAck(_)) = e {
            acked += 1;
        }
        (acked == N).then_some(())
    })
    .await;
    let got = tokio::time::timeout(WAIT, recv).await.expect("all delivered").unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all messages, once, in order");
    let dropped = metric(&node, "homeport_messages_dropped_total{reason=\"queue_full\"}").await;
    assert_eq!(dropped, 0.0, "no QoS 1 message dropped");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_over_the_limit_pauses_the_publisher_and_drops_at_twice_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // The subscriber does not read: once the socket buffers are full, the broker cannot
    // write to it and its backlog grows.
    let (node, mut sub) = node_with_slow_subscriber(dir.path(), "flow0-sub", "f0/#").await;
    const SENT: usize = 400;
    let payload = "x".repeat(64 * 1024);
    let mut publ = Raw::open(&node).await;
    publ.connect("flow0-pub", Protocol::V5, Properties::default()).await;
    let publisher = tokio::spawn(async move {
        for _ in 0..SENT {
            publ.send(&raw::publish("f0/big", QoS::AtMostOnce, 0, &payload)).await;
        }
        // Packets are handled in order: the answer means every publish was routed.
        publ.send(&Packet::PingReq).await;
        while !matches!(publ.recv().await, Some(Packet::PingResp)) {}
    });
    let dropped_metric = "homeport_messages_dropped_total{reason=\"queue_full\"}";
    assert!(metric_reaches(&node, dropped_metric, 1.0).await >= 1.0, "drops at 2x the limit");
    // Between the limit and twice the limit the publisher's reading pauses first.
    assert!(metric(&node, "homeport_publisher_pauses_total").await >= LIMIT as f64);
    // The subscriber reads again: everything not dropped arrives, and the publisher
    // (paused while the backlog was full) finishes.
    let mut received = 0;
    let dropped = loop {
        let p = sub.next_publish(true).await;
        assert_eq!(p.payload.len(), 64 * 1024);
        received += 1;
        let d = metric(&node, dropped_metric).await as usize;
        if received + d == SENT {
            break d;
        }
    };
    tokio::time::timeout(WAIT, publisher).await.expect("publisher finishes").unwrap();
    assert!(dropped < SENT - 2 * LIMIT, "only what overflowed twice the limit is dropped");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_session_works_on_after_its_actor_retires() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt.actor_idle_connected_ms = 20;
    let node = homeport::node::Node::start(cfg).await.unwrap();
    let sessions_before = metric(&node, "homeport_sessions").await;

    let mut watcher = Raw::open(&node).await;
    watcher.connect("retire-watch", Protocol::V5, Properties::default()).await;
    watcher.send(&raw::subscribe(1, &[("will/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(watcher.recv().await, Some(Packet::SubAck(_))));

    let mut o = MqttOptions::new("retire-dev", "127.0.0.1", port(&node));
    o.set_last_will(LastWill::new("will/retire-dev", "gone", rumqttc::QoS::AtLeastOnce, false));
    let (dev, mut ev) = AsyncClient::new(o, 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(rumqttc::Packet::ConnAck(_))).then_some(()))
        .await;
    wait_for_no_actors(&node).await;

    // Subscribe and unsubscribe through a successor actor.
    dev.subscribe("cmd/a", rumqttc::QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(rumqttc::Packet::SubAck(_))).then_some(()))
        .await;
    wait_for_no_actors(&node).await;
    dev.subscribe("cmd/b", rumqttc::QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(rumqttc::Packet::SubAck(_))).then_some(()))
        .await;
    wait_for_no_actors(&node).await;
    dev.unsubscribe("cmd/a").await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(rumqttc::Packet::UnsubAck(_))).then_some(()))
        .await;
    wait_for_no_actors(&node).await;
    assert_eq!(metric(&node, "homeport_subscriptions").await, 2.0, "will/# and cmd/b");

    let mut publ = Raw::open(&node).await;
    publ.connect("retire-pub", Protocol::V5, Properties::default()).await;
    publ.send(&raw::publish("cmd/a", QoS::AtMostOnce, 0, "a")).await;
    publ.send(&raw::publish("cmd/b", QoS::AtMostOnce, 0, "b")).await;
    let got = until(&mut ev, |e| match e {
        Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got, "cmd/b", "the unsubscribed filter gets nothing");

    // The connection drops without DISCONNECT: the will, kept while no actor ran, goes out
    // and the clean session ends with its subscriptions.
    wait_for_no_actors(&node).await;
    drop(dev);
    drop(ev);
    let will = watcher.next_publish(true).await;
    assert_eq!(will.topic, "will/retire-dev");
    assert_eq!(&will.payload[..], b"gone");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&node, "homeport_subscriptions").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "session's subscriptions removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(publ);
    drop(watcher);
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&node, "homeport_sessions").await != sessions_before {
        assert!(tokio::time::Instant::now() < deadline, "ended sessions are forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_are_acknowledged_through_a_successor_actor() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt.actor_idle_connected_ms = 20;
    let node = homeport::node::Node::start(cfg).await.unwrap();

    // A persistent subscriber with a journaled message in flight.
    let mut c = raw::connect_packet("succ-sub", Protocol::V311, false, Properties::default());
    c.keep_alive = 30;
    let mut sub = Raw::open(&node).await;
    sub.connect_with(c.clone()).await;
    sub.send(&raw::subscribe(1, &[("succ/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publ = Raw::open(&node).await;
    publ.connect("succ-pub", Protocol::V5, Properties::default()).await;
    publ.send(&raw::publish("succ/x", QoS::AtLeastOnce, 1, "m")).await;
    let p = sub.next_publish(false).await;
    wait_for_no_actors(&node).await;
    // The acknowledgement reaches a successor actor, which deletes the journal entry: the
    // message is not sent again after a reconnect.
    sub.send(&Packet::PubAck(mqtt::PubResp::ok(p.pkid))).await;
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Some(Packet::PingResp)));
    // The successor has handled the acknowledgement once it retires again.
    wait_for_no_actors(&node).await;
    drop(sub);
    let mut again = Raw::open(&node).await;
    again.connect_with(c).await;
    assert!(
        again.publish_within(Duration::from_millis(500)).await.is_none(),
        "an acknowledged message is not sent again"
    );
    node.shutdown().await.unwrap();
}

/// A node with a backlog limit of [`LIMIT`] and a v5 subscriber to `filter` with a window
/// of one, which does not acknowledge until the test says so.
async fn node_with_slow_subscriber(
    dir: &std::path::Path,
    id: &str,
    filter: &str,
) -> (homeport::node::Node, Raw) {
    let mut cfg = config(dir);
    cfg.mqtt.outbound_queue = LIMIT;
    let node = homeport::node::Node::start(cfg).await.unwrap();
    let mut sub = Raw::open(&node).await;
    let props = Properties { receive_maximum: Some(1), ..Default::default() };
    sub.connect(id, Protocol::V5, props).await;
    sub.send(&raw::subscribe(1, &[(filter, QoS::AtLeastOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    (node, sub)
}

/// Waits until no device actor runs (connected sessions' actors retire when idle).
async fn wait_for_no_actors(node: &homeport::node::Node) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(node, "homeport_device_actors").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "device actors retire when idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
