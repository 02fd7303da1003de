//! Persistent sessions, offline queues and retained messages live in the shard groups:
//! they are found under the shard's keys, survive a restart after the log was snapshotted
//! and compacted, and an earlier release's plain sled trees are moved into the shards at
//! start-up. Real sockets with rumqttc.

mod common;

use std::time::Duration;

use common::*;
use homeport::broker::StoredMessage;
use homeport::mqtt::{QoS as HQoS, SubOptions};
use homeport::node::Node;
use homeport::raft::sessions;
use homeport::session::{SessionRecord, StoredSubscription, NEVER_EXPIRES};
use homeport::store::encode;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

fn client(id: &str, port: u16, clean: bool) -> (AsyncClient, EventLoop) {
    client_with(id, port, clean, 50)
}

fn client_with(id: &str, port: u16, clean: bool, inflight: u16) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(inflight);
    AsyncClient::new(o, 500)
}

async fn connack(ev: &mut EventLoop) -> bool {
    until(ev, |e| match e {
        Event::Incoming(Packet::ConnAck(a)) => Some(a.session_present),
        _ => None,
    })
    .await
}

/// Receives `n` publishes (acknowledged by rumqttc), returning their payloads in order.
async fn receive(ev: &mut EventLoop, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    until(ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            got.push(String::from_utf8_lossy(&p.payload).to_string());
        }
        (got.len() == n).then_some(())
    })
    .await;
    got
}

/// Keys under `prefix` in the data of `client`'s (or topic's) shard.
fn shard_keys(node: &Node, key: &str, prefix: &[u8]) -> usize {
    let shard = node.groups.shard_of(key);
    node.groups.data(shard).expect("shard").scan_prefix(prefix).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_retained_are_in_the_shards_and_survive_restart_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Snapshot and compact often, so the restart rebuilds from a snapshot plus a log tail.
    cfg.raft.snapshot_after_logs = 20;
    cfg.raft.keep_logs = 5;
    let node = Node::start(cfg.clone()).await.unwrap();
    let port = port(&node);

    let (sub, mut sev) = client("s-sub", port, false);
    assert!(!connack(&mut sev).await);
    sub.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut sev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    sub.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while sev.poll().await.is_ok() {} }).await;
    assert_eq!(shard_keys(&node, "s-sub", &sessions::session_key("s-sub")), 1);

    let n = 300;
    // One message in flight: each is its own log entry, so the log is compacted often.
    let (publ, mut pev) = client_with("s-pub", port, true, 1);
    publ.publish("s/retained", QoS::AtLeastOnce, true, "kept").await.unwrap();
    for i in 0..n {
        publ.publish("s/x", QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
    }
    let mut acked = 0;
    until(&mut pev, |e| {
        if let Event::Incoming(Packet::PubAck(_)) = e {
            acked += 1;
        }
        (acked == n + 1).then_some(())
    })
    .await;
    // Acknowledged means stored in the shard (the retained message is queued too).
    assert_eq!(shard_keys(&node, "s-sub", &sessions::queue_prefix("s-sub")), n + 1);
    assert_eq!(shard_keys(&node, "s/retained", &sessions::retained_key("s/retained")), 1);
    assert!(metric(&node, "homeport_raft_writes_total{result=\"applied\"}").await > n as f64);
    let entries = metric(&node, "homeport_raft_batch_commands_count").await;
    assert!(entries > n as f64, "{entries} entries: one per message, many snapshots");
    drop(publ);
    node.shutdown().await.unwrap();

    let node = Node::start(cfg).await.unwrap();
    let port = common::port(&node);
    assert_eq!(metric(&node, "homeport_offline_queue_depth").await, (n + 1) as f64);
    let (_sub, mut sev) = client("s-sub", port, false);
    assert!(connack(&mut sev).await, "session present after restart");
    let got = receive(&mut sev, n + 1).await;
    let mut want: Vec<String> = vec!["kept".into()];
    want.extend((0..n).map(|i| format!("m{i}")));
    assert_eq!(got, want, "every queued message, in order");
    // Acknowledged messages leave the shard.
    for _ in 0..100 {
        if shard_keys(&node, "s-sub", &sessions::queue_prefix("s-sub")) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shard_keys(&node, "s-sub", &sessions::queue_prefix("s-sub")), 0);

    let (other, mut oev) = client("s-other", port, true);
    other.subscribe("s/retained", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(receive(&mut oev, 1).await, ["kept"]);
    node.shutdown().await.unwrap();
}

fn stored(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        qos: HQoS::AtLeastOnce,
        retain: false,
        expires_at_ms: None,
        props: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_releases_sessions_move_into_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The layout before session state moved into Raft: plain trees in the main db.
        let db = sled::open(dir.path()).unwrap();
        let rec = SessionRecord {
            expiry_secs: NEVER_EXPIRES,
            subscriptions: vec![StoredSubscription {
                filter: "old/#".into(),
                opts: SubOptions::qos(HQoS::AtLeastOnce),
                id: None,
            }],
            disconnected_at_ms: Some(1),
            next_seq: 8,
            ..Default::default()
        };
        db.open_tree("sessions").unwrap().insert("legacy", encode(&rec).unwrap()).unwrap();
        let queues = db.open_tree("queues").unwrap();
        for (seq, p) in [(5u64, "q5"), (7, "q7")] {
            let mut k = b"legacy\0".to_vec();
            k.extend_from_slice(&seq.to_be_bytes());
            queues.insert(k, encode(&stored("old/a", p)).unwrap()).unwrap();
        }
        let mut r = stored("old/r", "retained");
        r.retain = true;
        db.open_tree("retained").unwrap().insert("old/r", encode(&r).unwrap()).unwrap();
        db.flush().unwrap();
    }
    // sled's own threads let go of the directory a little after the drop.
    tokio::time::timeout(WAIT, homeport::store::unlocked(dir.path())).await.unwrap();
    let node = start(dir.path()).await;
    let port = port(&node);
    assert_eq!(shard_keys(&node, "legacy", &sessions::queue_prefix("legacy")), 2);

    let (_c, mut ev) = client("legacy", port, false);
    assert!(connack(&mut ev).await, "the migrated session is present");
    assert_eq!(receive(&mut ev, 2).await, ["q5", "q7"]);
    // Its subscription was restored too.
    let (publ, mut pev) = client("pub", port, true);
    publ.publish("old/b", QoS::AtLeastOnce, false, "live").await.unwrap();
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    assert_eq!(receive(&mut ev, 1).await, ["live"]);

    let (other, mut oev) = client("other", port, true);
    other.subscribe("old/r", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(receive(&mut oev, 1).await, ["retained"]);
    node.shutdown().await.unwrap();
}
