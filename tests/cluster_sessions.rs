//! MQTT sessions served across nodes: a client connects to any node, and its session is
//! served by its device actor on the shard's leader (in-process clusters over loopback
//! QUIC, raw MQTT clients over real sockets).

mod common;

use std::time::Duration;

use common::cluster::TestCluster;
use common::raw::{connect_packet, publish, subscribe, Raw};
use homeport::mqtt::{Disconnect, Packet, Properties, Protocol, PubResp, QoS, ReasonCode};

fn bye() -> Packet {
    Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

/// A node that is not `leader`.
fn other(leader: usize, k: usize) -> usize {
    (leader + k) % 3
}

fn persistent() -> Properties {
    Properties { session_expiry_interval: Some(3600), ..Default::default() }
}

/// Connects, trying again while the shard changes leaders (the placement controller
/// still hands leaderships over right after the cluster settled).
async fn connack(raw: &mut Raw, id: &str, v: Protocol, clean: bool, props: Properties) -> bool {
    match raw.connect_retrying(connect_packet(id, v, clean, props)).await {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::Success, "{id}: {a:?}");
            a.session_present
        }
        p => panic!("{id}: {p:?}"),
    }
}

async fn subscribed(raw: &mut Raw, pkid: u16, filter: &str, qos: QoS) {
    raw.send(&subscribe(pkid, &[(filter, qos)], None)).await;
    match raw.recv().await {
        Some(Packet::SubAck(a)) => assert!(a.reasons.iter().all(|r| !r.is_error()), "{a:?}"),
        p => panic!("{p:?}"),
    }
}

async fn published(raw: &mut Raw, topic: &str, pkid: u16, payload: &str) {
    raw.send(&publish(topic, QoS::AtLeastOnce, pkid, payload)).await;
    loop {
        match raw.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => {
                assert!(!a.reason.is_error(), "{a:?}");
                return;
            }
            Some(_) => continue,
            None => panic!("publisher closed"),
        }
    }
}

/// v5 and 3.1.1 clients connect to a node that does not lead their shard: they are
/// accepted there, subscribe through the leader's actor and get what is published on
/// the leader's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_is_served_on_a_node_that_does_not_lead_its_shard() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let mut publ = Raw::open(c.node(leader)).await;
    connack(&mut publ, "pub-1", Protocol::V5, true, Properties::default()).await;
    for (k, v) in [(1, Protocol::V5), (2, Protocol::V311)] {
        let client = common::cluster::thing_in_shard(1, shards, &format!("away-{k}"));
        let mut sub = Raw::open(c.node(other(leader, k))).await;
        assert!(!connack(&mut sub, &client, v, true, Properties::default()).await);
        let topic = format!("t/{client}");
        subscribed(&mut sub, 1, &topic, QoS::AtLeastOnce).await;
        published(&mut publ, &topic, k as u16, "hello").await;
        let p = sub.next_publish(true).await;
        assert_eq!((&*p.topic, &p.payload[..]), (topic.as_str(), &b"hello"[..]));
        // Unsubscribed through the leader: nothing more arrives.
        sub.send(&Packet::Unsubscribe(homeport::mqtt::Unsubscribe {
            pkid: 2,
            filters: vec![topic.clone()],
            properties: Properties::default(),
        }))
        .await;
        assert!(matches!(sub.recv().await, Some(Packet::UnsubAck(_))));
        published(&mut publ, &topic, 10 + k as u16, "after").await;
        assert!(sub.publish_within(Duration::from_millis(500)).await.is_none());
        // The node that holds the connection counts it; the leader serves it.
        let held = c.node(other(leader, k)).devices.remote_attached();
        assert_eq!(held, 1, "connections served from another node");
        sub.send(&bye()).await;
        assert!(sub.recv().await.is_none());
    }
    // The leader's stand-ins for the connections are gone once they detached.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.node(leader).devices.proxied() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "proxies left on the leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}

/// A persistent session subscribed through one node, offline while QoS 1 messages are
/// stored for it, resumes through the third node with `session present` and its queue
/// in order; acknowledged entries are not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_session_resumes_through_another_node() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let client = common::cluster::thing_in_shard(1, shards, "roam");
    let topic = format!("q/{client}");
    let mut sub = Raw::open(c.node(other(leader, 1))).await;
    assert!(!connack(&mut sub, &client, Protocol::V5, true, persistent()).await);
    subscribed(&mut sub, 1, &topic, QoS::AtLeastOnce).await;
    sub.send(&bye()).await;
    assert!(sub.recv().await.is_none());

    let mut publ = Raw::open(c.node(leader)).await;
    connack(&mut publ, "pub-q", Protocol::V5, true, Properties::default()).await;
    for i in 1..=3u16 {
        published(&mut publ, &topic, i, &format!("m{i}")).await;
    }
    let mut sub = Raw::open(c.node(other(leader, 2))).await;
    assert!(connack(&mut sub, &client, Protocol::V5, false, persistent()).await);
    for i in 1..=3 {
        let p = sub.next_publish(true).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
    }
    // A live message after the queue, through the same connection.
    published(&mut publ, &topic, 4, "m4").await;
    assert_eq!(&sub.next_publish(true).await.payload[..], b"m4");
    sub.send(&bye()).await;
    assert!(sub.recv().await.is_none());
    // Everything was acknowledged: a third connect finds the session and nothing queued.
    let mut sub = Raw::open(c.node(other(leader, 1))).await;
    assert!(connack(&mut sub, &client, Protocol::V5, false, persistent()).await);
    if let Some(p) = sub.publish_within(Duration::from_millis(700)).await {
        panic!("delivered again: {p:?}");
    }
    c.shutdown().await;
}

/// Connecting again on another node takes the session over: the old connection gets
/// DISCONNECT 0x8E, the unacknowledged message goes to the new one (DUP), and only the
/// new one gets what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_is_taken_over_across_nodes() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let client = common::cluster::thing_in_shard(1, shards, "twice");
    let topic = format!("x/{client}");
    let mut first = Raw::open(c.node(other(leader, 1))).await;
    connack(&mut first, &client, Protocol::V5, true, persistent()).await;
    subscribed(&mut first, 1, &topic, QoS::AtLeastOnce).await;
    let mut publ = Raw::open(c.node(leader)).await;
    connack(&mut publ, "pub-x", Protocol::V5, true, Properties::default()).await;
    published(&mut publ, &topic, 1, "unacked").await;
    let p = first.next_publish(false).await;
    assert_eq!(&p.payload[..], b"unacked");

    // The second connection: on the leader itself, then on the third node.
    for (round, node) in [(0, leader), (1, other(leader, 2))] {
        let mut second = Raw::open(c.node(node)).await;
        assert!(connack(&mut second, &client, Protocol::V5, false, persistent()).await);
        assert_eq!(first.closed_with().await, Some(ReasonCode::SessionTakenOver), "round {round}");
        if round == 0 {
            let again = second.next_publish(false).await;
            assert!(again.dup, "{again:?}");
            assert_eq!(&again.payload[..], b"unacked");
            second.send(&Packet::PubAck(PubResp::ok(again.pkid))).await;
        }
        published(&mut publ, &topic, 2 + round, "next").await;
        assert_eq!(&second.next_publish(true).await.payload[..], b"next");
        first = second;
    }
    c.shutdown().await;
}

/// A client connected to a node that does not lead its shard works with its own shadow:
/// `accepted` comes back to it, and a delta made through the admin API of a third node
/// reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_elsewhere_gets_its_shadow_replies_and_deltas() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let thing = common::cluster::thing_in_shard(1, shards, "lamp");
    let base = format!("$aws/things/{thing}/shadow");
    let mut dev = Raw::open(c.node(other(leader, 1))).await;
    connack(&mut dev, &thing, Protocol::V311, true, Properties::default()).await;
    subscribed(&mut dev, 1, &format!("{base}/update/delta"), QoS::AtLeastOnce).await;
    let update = r#"{"state":{"reported":{"on":false}}}"#;
    dev.send(&publish(&format!("{base}/update"), QoS::AtLeastOnce, 2, update)).await;
    let accepted = format!("{base}/update/accepted");
    loop {
        match dev.recv().await {
            Some(Packet::Publish(p)) if *p.topic == *accepted => break,
            Some(_) => continue,
            None => panic!("device closed"),
        }
    }
    let admin = c.node(other(leader, 2)).admin_addr.unwrap();
    let path = format!("/api/things/{thing}/shadow");
    let (status, body) =
        common::http(admin, "POST", &path, r#"{"state":{"desired":{"on":true}}}"#).await;
    assert_eq!(status, 200, "{body}");
    let delta = dev.next_publish(true).await;
    assert_eq!(*delta.topic, *format!("{base}/update/delta"));
    let v: serde_json::Value = serde_json::from_slice(&delta.payload).unwrap();
    assert_eq!(v["state"]["on"], true, "{v}");
    c.shutdown().await;
}

/// The node running the sessions' actors is cut off, as if it had crashed. A persistent
/// session's connection on another node keeps its socket and re-attaches to the new
/// leader's actor (from the replicated state); a clean session's state was in the lost
/// node's memory, so its connection is closed with DISCONNECT 0x9C naming the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_elsewhere_survive_the_loss_of_their_actors_node() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let away = other(leader, 1);
    let kept = common::cluster::thing_in_shard(1, shards, "kept");
    let lost = common::cluster::thing_in_shard(1, shards, "lost");
    let mut durable = Raw::open(c.node(away)).await;
    connack(&mut durable, &kept, Protocol::V5, true, persistent()).await;
    subscribed(&mut durable, 1, &format!("f/{kept}"), QoS::AtLeastOnce).await;
    let mut clean = Raw::open(c.node(away)).await;
    connack(&mut clean, &lost, Protocol::V5, true, Properties::default()).await;
    subscribed(&mut clean, 1, &format!("f/{lost}"), QoS::AtLeastOnce).await;
    c.isolate(leader);
    let reason = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match clean.recv().await {
                Some(Packet::Disconnect(d)) => return (d.reason, d.properties.server_reference),
                Some(_) => continue,
                None => panic!("closed without DISCONNECT"),
            }
        }
    })
    .await
    .expect("the clean session's connection is told within 15 s");
    assert_eq!(reason.0, ReasonCode::UseAnotherServer, "{reason:?}");
    // The new leader among the nodes on this side of the cut.
    let new_leader = (0..3)
        .filter(|&i| i != leader)
        .find(|&i| c.node(i).groups.is_leader(1))
        .expect("a new leader");
    assert_eq!(reason.1, c.node(new_leader).mqtt_addr.map(|a| a.to_string()));
    // The persistent session's connection is still there and served by the new actor.
    let mut publ = Raw::open(c.node(new_leader)).await;
    connack(&mut publ, "pub-f", Protocol::V5, true, Properties::default()).await;
    published(&mut publ, &format!("f/{kept}"), 1, "after failover").await;
    assert_eq!(&durable.next_publish(true).await.payload[..], b"after failover");
    // Offline: what is published meanwhile is stored and delivered on resuming.
    durable.send(&bye()).await;
    assert!(durable.recv().await.is_none());
    published(&mut publ, &format!("f/{kept}"), 2, "stored").await;
    let mut durable = Raw::open(c.node(away)).await;
    assert!(connack(&mut durable, &kept, Protocol::V5, false, persistent()).await);
    assert_eq!(&durable.next_publish(true).await.payload[..], b"stored");
    c.heal();
    c.shutdown().await;
}

/// The node running the sessions' actors stops without handing its shards over (its
/// leadership ends with it). Its actors evict their sessions as they stop: connections
/// on other nodes keep their sockets, and a clean session's state (its subscription,
/// in the stopped node's memory only) goes with its connection to the new leader's
/// actor, as on a hand-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_elsewhere_keep_their_sessions_when_their_actors_node_stops() {
    let mut c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let away = other(leader, 1);
    let kept = common::cluster::thing_in_shard(1, shards, "kept");
    let clean_id = common::cluster::thing_in_shard(1, shards, "clean");
    let mut durable = Raw::open(c.node(away)).await;
    connack(&mut durable, &kept, Protocol::V5, true, persistent()).await;
    subscribed(&mut durable, 1, &format!("s/{kept}"), QoS::AtLeastOnce).await;
    let mut clean = Raw::open(c.node(away)).await;
    connack(&mut clean, &clean_id, Protocol::V5, true, Properties::default()).await;
    subscribed(&mut clean, 1, &format!("s/{clean_id}"), QoS::AtLeastOnce).await;
    assert_eq!(c.node(leader).devices.proxied(), 2, "both are served by the leader's actors");
    c.stop(leader).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let new_leader = loop {
        if let Some(l) = c.leader_of(1) {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "a new leader within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut publ = Raw::open(c.node(new_leader)).await;
    connack(&mut publ, "pub-s", Protocol::V5, true, Properties::default()).await;
    // Re-attaching may still be under way: each is published until it arrives.
    for (raw, id) in [(&mut durable, &kept), (&mut clean, &clean_id)] {
        let got = tokio::time::timeout(Duration::from_secs(15), async {
            let mut n = 0u16;
            loop {
                n += 1;
                published(&mut publ, &format!("s/{id}"), n, "after stop").await;
                let wait = Duration::from_millis(500);
                loop {
                    match tokio::time::timeout(wait, raw.recv()).await {
                        Ok(Some(Packet::Publish(p))) => return p,
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("{id}: the connection was closed"),
                        Err(_) => break,
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} is served again on its socket within 15 s"));
        assert_eq!(&got.payload[..], b"after stop");
    }
    let resumed = r#"homeport_session_resumes_total{result="resumed"}"#;
    assert!(common::metric(c.node(away), resumed).await >= 2.0);
    c.shutdown().await;
}

/// The leader of the sessions' shard hands it over (drain): no connection on the other
/// nodes is dropped. A clean 3.1.1 session and a persistent session with an
/// unacknowledged message on other nodes re-attach to the new leader's actor on their
/// sockets: subscriptions (the clean one's came from the old actor's memory) and the
/// in-flight window are kept, and nothing is sent twice. A persistent session on the
/// old leader itself re-attaches on its socket too, until the drained node, leading no
/// group any more, sends its clients away (DISCONNECT 0x9C): then it resumes on the
/// new leader with `session present`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_hand_off_keeps_every_connection() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let leader = c.leader_of(1).unwrap();
    let names = ["on-leader", "clean-away", "window-away"];
    let ids: Vec<String> =
        names.iter().map(|n| common::cluster::thing_in_shard(1, shards, n)).collect();
    let mut on_leader = Raw::open(c.node(leader)).await;
    connack(&mut on_leader, &ids[0], Protocol::V5, true, persistent()).await;
    let mut clean = Raw::open(c.node(other(leader, 1))).await;
    connack(&mut clean, &ids[1], Protocol::V311, true, Properties::default()).await;
    let mut window = Raw::open(c.node(other(leader, 2))).await;
    connack(&mut window, &ids[2], Protocol::V5, true, persistent()).await;
    let mut clients = [on_leader, clean, window];
    for (raw, id) in clients.iter_mut().zip(&ids) {
        subscribed(raw, 1, &format!("h/{id}"), QoS::AtLeastOnce).await;
    }
    let mut publ = Raw::open(c.node(leader)).await;
    connack(&mut publ, "pub-h", Protocol::V5, true, Properties::default()).await;
    published(&mut publ, &format!("h/{}", ids[2]), 1, "unacked").await;
    let unacked = clients[2].next_publish(false).await;
    assert_eq!(&unacked.payload[..], b"unacked");

    let admin = c.node(leader).admin_addr.unwrap();
    let path = format!("/api/cluster/members/{}/drain", leader + 1);
    let (status, body, _) = common::http_retrying(admin, "POST", &path, "").await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        match c.leader_of(1) {
            Some(l) if l != leader => break l,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "shard 1 did not move");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every connection is served by the new leader's actor: a publish there reaches all.
    let mut publ = Raw::open(c.node(new_leader)).await;
    connack(&mut publ, "pub-h2", Protocol::V5, true, Properties::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sent_away = 0.0;
    for (i, (raw, id)) in clients.iter_mut().zip(&ids).enumerate() {
        let topic = format!("h/{id}");
        // The resume may still be on its way: publish until it arrives.
        let mut n = 10 + i as u16 * 100;
        let got = loop {
            published(&mut publ, &topic, n, "moved").await;
            if let Some(p) = raw.publish_within(Duration::from_millis(300)).await {
                break p;
            }
            let closed = matches!(
                tokio::time::timeout(Duration::from_millis(50), raw.recv()).await,
                Ok(None)
            );
            if i == 0 && closed {
                *raw = Raw::open(c.node(new_leader)).await;
                assert!(
                    connack(raw, id, Protocol::V5, false, persistent()).await,
                    "{id}: session present after the drained node sent it away"
                );
                sent_away = 1.0;
                continue;
            }
            assert!(!closed, "{id}: connection closed");
            assert!(tokio::time::Instant::now() < deadline, "{id} gets nothing after the move");
            n += 1;
        };
        assert_eq!(&got.payload[..], b"moved", "{id}: {got:?}");
        assert!(!got.dup, "{id}: {got:?}");
        if got.qos == QoS::AtLeastOnce {
            raw.send(&Packet::PubAck(PubResp::ok(got.pkid))).await;
        }
    }
    // The message in flight before the move is acknowledged on the same socket, and the
    // new actor does not send it again.
    clients[2].send(&Packet::PubAck(PubResp::ok(unacked.pkid))).await;
    while let Some(p) = clients[2].publish_within(Duration::from_millis(500)).await {
        assert_ne!(&p.payload[..], b"unacked", "sent again: {p:?}");
        if p.qos == QoS::AtLeastOnce {
            clients[2].send(&Packet::PubAck(PubResp::ok(p.pkid))).await;
        }
    }
    let mut resumed = 0.0;
    for n in c.nodes.iter().flatten() {
        resumed += common::metric(n, "homeport_session_resumes_total{result=\"resumed\"}").await;
    }
    assert!(resumed >= 3.0 - sent_away, "resumes counted: {resumed}");
    c.shutdown().await;
}
