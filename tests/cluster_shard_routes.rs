//! Routes of offline persistent sessions come from their shard, not from the node that
//! last served them: a message acknowledged to a publisher on another node while the
//! session's shard changes leaders (a hand-off at a node's leave, the loss of the
//! leader) is in the session's queue when it comes back (in-process clusters over
//! loopback QUIC, raw MQTT clients over real sockets).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{thing_in_shard, TestCluster};
use common::raw::{connect_packet, publish, subscribe, Raw};
use homeport::mqtt::{Disconnect, Packet, Properties, Protocol, QoS, ReasonCode};

const TOPIC: &str = "shard-routes/t";

fn expiry() -> Properties {
    Properties { session_expiry_interval: Some(3600), ..Default::default() }
}

/// A persistent session in shard 1, subscribed to [`TOPIC`] at QoS 1 and offline.
async fn offline_subscriber(c: &TestCluster, via: usize) -> String {
    let id = thing_in_shard(1, c.cfgs[0].raft.shards, "offline-sub");
    let mut s =
        Raw::connected(c.node(via), connect_packet(&id, Protocol::V5, true, expiry())).await;
    s.send(&subscribe(1, &[(TOPIC, QoS::AtLeastOnce)], None)).await;
    loop {
        match s.recv().await {
            Some(Packet::SubAck(_)) => break,
            Some(_) => continue,
            None => panic!("closed before SUBACK"),
        }
    }
    let bye = Disconnect { reason: ReasonCode::Success, properties: Properties::default() };
    s.send(&Packet::Disconnect(bye)).await;
    assert_eq!(s.closed_with().await, None);
    id
}

/// Publishes `n` QoS 1 messages on `node`, one at a time, from a clean session in a
/// shard that `node` leads; returns the numbers acknowledged with a reason that is not
/// an error (0x10 "no matching subscribers" counts as acknowledged: it would be a loss).
/// A closed connection is opened again; a message without an answer is not counted.
async fn publish_numbered(node: &homeport::node::Node, id: &str, n: u32) -> BTreeSet<u32> {
    publish_until(node, id, n, || false).await
}

/// [`publish_numbered`], stopping early once `done()` holds or the node no longer
/// accepts the publisher.
async fn publish_until(
    node: &homeport::node::Node,
    id: &str,
    n: u32,
    done: impl Fn() -> bool,
) -> BTreeSet<u32> {
    let mut acked = BTreeSet::new();
    let mut p =
        Raw::connected(node, connect_packet(id, Protocol::V5, true, Default::default())).await;
    for i in 0..n {
        if done() {
            break;
        }
        let pkid = (i % 60_000 + 1) as u16;
        p.send(&publish(TOPIC, QoS::AtLeastOnce, pkid, &format!("m{i}"))).await;
        let answer = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match p.recv().await {
                    Some(Packet::PubAck(a)) if a.pkid == pkid => return Some(a.reason),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        match answer {
            Some(r) if !r.is_error() => {
                assert_ne!(r, ReasonCode::NoMatchingSubscribers, "m{i}: the session was not found");
                acked.insert(i);
            }
            Some(_) => {}
            None => {
                p = Raw::open(node).await;
                let c = connect_packet(id, Protocol::V5, true, Default::default());
                match p.connect_retrying(c).await {
                    Packet::ConnAck(a) if a.reason == ReasonCode::Success => {}
                    // A drained node sends its clients away and refuses new ones.
                    _ => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

/// The session comes back through `node`: every message is read (and acknowledged)
/// until none comes for 3 s.
async fn drained(node: &homeport::node::Node, id: &str) -> BTreeSet<u32> {
    let mut s = Raw::open(node).await;
    match s.connect_retrying(connect_packet(id, Protocol::V5, false, expiry())).await {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert!(a.session_present, "the persistent session is there");
        }
        p => panic!("{p:?}"),
    }
    let mut got = BTreeSet::new();
    while let Some(m) = s.publish_within(Duration::from_secs(3)).await {
        let text = String::from_utf8_lossy(&m.payload).to_string();
        got.insert(text.trim_start_matches('m').parse::<u32>().expect("a numbered message"));
        if m.qos == QoS::AtLeastOnce {
            s.send(&Packet::PubAck(homeport::mqtt::PubResp::ok(m.pkid))).await;
        }
    }
    got
}

fn missing(acked: &BTreeSet<u32>, got: &BTreeSet<u32>) -> Vec<u32> {
    acked.difference(got).copied().collect()
}

/// In a settled cluster: `l` leads shard 1, `p` publishes (from a session in a shard
/// it leads), `w` is the third node; `id` is a persistent session of shard 1,
/// subscribed through `w` and offline.
struct Roles {
    l: usize,
    p: usize,
    w: usize,
    id: String,
    publisher: String,
}

async fn roles(c: &TestCluster) -> Roles {
    c.wait_settled(3, Duration::from_secs(20)).await;
    let l = c.leader_of(1).expect("shard 1 has a leader");
    let (p, w) = ((l + 1) % 3, (l + 2) % 3);
    let id = offline_subscriber(c, w).await;
    let shards = c.cfgs[0].raft.shards;
    let pub_shard = (1..=shards).find(|s| c.leader_of(*s) == Some(p)).unwrap_or(1);
    let publisher = thing_in_shard(pub_shard, shards, "shard-routes-pub");
    Roles { l, p, w, id, publisher }
}

/// Node L leads the session's shard and leaves (as at SIGTERM: it hands every group
/// it leads to another voter) while a publisher on another node sends a message every
/// 10 ms. Every message acknowledged meanwhile reaches the session's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_acknowledged_while_the_sessions_shard_is_handed_off_are_queued() {
    let mut c = TestCluster::start_static(3).await;
    let Roles { l, p, w, id, publisher } = roles(&c).await;

    let leave = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.node(l).leave(Duration::from_secs(10)).await
    };
    let (acked, _) = tokio::join!(publish_numbered(c.node(p), &publisher, 300), leave);
    assert_ne!(c.leader_of(1), Some(l), "the shard moved");
    assert!(acked.len() > 250, "most were acknowledged: {}", acked.len());
    c.stop(l).await;
    let got = drained(c.node(w), &id).await;
    assert_eq!(missing(&acked, &got), Vec::<u32>::new(), "acknowledged but not queued");
    c.shutdown().await;
}

/// Node L leads the session's shard and is cut off from the others while a publisher
/// on another node sends a message every 10 ms: copies forwarded to L get no answer,
/// and go to the shard's next leader once it is elected. Every acknowledged message
/// reaches the session's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_acknowledged_after_the_sessions_leader_is_lost_are_queued() {
    let c = TestCluster::start_static_with(3, |cfg| {
        cfg.cluster.rpc_timeout_ms = 1000;
    })
    .await;
    let Roles { l, p, w, id, publisher } = roles(&c).await;

    let cut = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.isolate(l);
    };
    let (acked, ()) = tokio::join!(publish_numbered(c.node(p), &publisher, 400), cut);
    assert!(acked.len() > 200, "most were acknowledged: {}", acked.len());
    assert!([p, w].iter().any(|n| c.node(*n).groups.is_leader(1)), "another node leads the shard");
    let got = drained(c.node(w), &id).await;
    assert_eq!(missing(&acked, &got), Vec::<u32>::new(), "acknowledged but not queued");
    c.heal();
    c.shutdown().await;
}

/// Node L leads the session's shard and is drained: it hands its groups off one at a
/// time and keeps its clients until it leads none. A publisher on L itself keeps
/// publishing after the session's shard has left L (L's trie no longer has the
/// session): L finds the session through the shard's routes, at the shard's new
/// leader. Every acknowledged message reaches the session's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_published_on_the_old_leader_after_the_shard_left_it_are_queued() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let l = c.leader_of(1).expect("shard 1 has a leader");
    let w = (l + 1) % 3;
    let id = offline_subscriber(&c, w).await;
    let shards = c.cfgs[0].raft.shards;
    let publisher = thing_in_shard(1, shards, "shard-routes-pub");

    let moved_at = std::sync::Mutex::new(None::<tokio::time::Instant>);
    let done = || {
        let mut m = moved_at.lock().unwrap();
        if m.is_none() && !c.node(l).groups.is_leader(1) {
            *m = Some(tokio::time::Instant::now());
        }
        m.is_some_and(|t| t.elapsed() > Duration::from_millis(1500))
    };
    let drain = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let admin = c.node(l).admin_addr.unwrap();
        let path = format!("/api/cluster/members/{}/drain", l + 1);
        let (status, body, _) = common::http_retrying(admin, "POST", &path, "").await;
        assert_eq!(status, 200, "{body}");
    };
    let (acked, ()) = tokio::join!(publish_until(c.node(l), &publisher, 3000, done), drain);
    let moved = moved_at.lock().unwrap().is_some();
    assert!(moved, "shard 1 left L while the publisher published there");
    assert!(acked.len() > 10, "acknowledged: {}", acked.len());
    let got = drained(c.node(w), &id).await;
    assert_eq!(missing(&acked, &got), Vec::<u32>::new(), "acknowledged but not queued");
    c.shutdown().await;
}
