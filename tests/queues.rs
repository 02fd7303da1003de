//! Offline queue limits through real sockets with rumqttc: `drop-oldest` keeps the newest
//! messages, `reject-new` keeps the oldest, and both count what they drop. Queued messages
//! are delivered in order after reconnecting.

mod common;

use std::time::Duration;

use common::*;
use homeport::config::QueuePolicy;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn client(id: &str, port: u16, clean: bool) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(o, 100)
}

/// Queues `n` messages for an offline persistent subscriber under `policy` with a limit of
/// 3, then reconnects it and returns what it receives, in order.
async fn run(
    policy: QueuePolicy,
    n: usize,
) -> (Vec<String>, homeport::node::Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt.offline_queue_limit = 3;
    cfg.mqtt.offline_queue_policy = policy;
    let node = homeport::node::Node::start(cfg).await.unwrap();
    let port = port(&node);

    let (sub, mut ev) = client("q-sub", port, false);
    sub.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    sub.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while ev.poll().await.is_ok() {} }).await;

    let (publ, mut pev) = client("q-pub", port, true);
    for i in 0..n {
        publ.publish("q/x", QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
    }
    let mut acked = 0;
    until(&mut pev, |e| {
        if let Event::Incoming(Packet::PubAck(_)) = e {
            acked += 1;
        }
        (acked == n).then_some(())
    })
    .await;

    let (_sub, mut ev) = client("q-sub", port, false);
    let mut got = Vec::new();
    until(&mut ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            got.push(String::from_utf8_lossy(&p.payload).to_string());
        }
        (got.len() == 3).then_some(())
    })
    .await;
    // Nothing beyond the limit arrives.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = ev.poll().await {
                return p;
            }
        }
    })
    .await;
    assert!(extra.is_err(), "only the queue limit is delivered: {extra:?}");
    (got, node, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_and_counts() {
    let (got, node, _dir) = run(QueuePolicy::DropOldest, 5).await;
    assert_eq!(got, ["m2", "m3", "m4"]);
    let name = "homeport_messages_dropped_total{reason=\"offline_queue_drop_oldest\"}";
    assert_eq!(metric(&node, name).await, 2.0);
    assert_eq!(metric(&node, "homeport_offline_queue_depth").await, 0.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_new_keeps_the_oldest_and_counts() {
    let (got, node, _dir) = run(QueuePolicy::RejectNew, 5).await;
    assert_eq!(got, ["m0", "m1", "m2"]);
    let name = "homeport_messages_dropped_total{reason=\"offline_queue_reject_new\"}";
    assert_eq!(metric(&node, name).await, 2.0);
    node.shutdown().await.unwrap();
}
