//! Multi-node behaviour with `homeport serve` processes: `kill -9` of the node leading
//! the most groups under a steady load of shadow updates and offline-queue publishes.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{get_json, wait_formed, Conn, ProcCluster};
use homeport::mqtt::{self, Packet, Properties, QoS, ReasonCode};

/// The MQTT address of the node that leads `group`, as the first node of `admins` that
/// answers sees it.
async fn leader_mqtt(admins: &[SocketAddr], group: u32) -> Option<SocketAddr> {
    for admin in admins {
        let Ok(Ok((200, body))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::spawn(common::http_get(*admin, "/api/cluster")),
        )
        .await
        .map(|r| r.map_err(|_| ())) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        let groups = v["groups"].as_array().cloned().unwrap_or_default();
        let Some(leader) = groups
            .iter()
            .find(|g| g["group"].as_u64() == Some(u64::from(group)))
            .and_then(|g| g["leader"].as_u64())
        else {
            continue;
        };
        let members = v["members"].as_array().cloned().unwrap_or_default();
        if let Some(addr) = members
            .iter()
            .find(|m| m["id"].as_u64() == Some(leader))
            .and_then(|m| m["mqttAddr"].as_str())
            .and_then(|a| a.parse().ok())
        {
            return Some(addr);
        }
    }
    None
}

fn mqtt_addrs(c: &ProcCluster) -> Vec<SocketAddr> {
    c.running().into_iter().map(|i| c.proc(i).mqtt).collect()
}

/// A client id in `shard` of 16.
fn id_in(shard: u32, prefix: &str) -> String {
    common::cluster::thing_in_shard(shard, 16, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_busiest_leader_loses_no_acknowledged_write() {
    let mut c = ProcCluster::start(3, &[]);
    let view = wait_formed(c.proc(0), 3, Duration::from_secs(60)).await;
    // The node leading the most groups, and a shard it leads.
    let (victim_id, leads) = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["leads"].as_array().unwrap().clone()))
        .max_by_key(|(_, l)| l.len())
        .unwrap();
    let victim = victim_id as usize - 1;
    let shard =
        leads.iter().filter_map(|g| g.as_u64()).find(|g| *g > 0).expect("leads a shard") as u32;

    // The offline session: subscribed at QoS 1, then gone.
    let device = id_in(shard, "sleepy");
    let (mut d, _) = Conn::open(&mqtt_addrs(&c), &device, false).await.expect("device connects");
    let sub = common::raw::subscribe(1, &[(&format!("to/{device}"), mqtt::QoS::AtLeastOnce)], None);
    assert!(d.send(&sub).await);
    assert!(matches!(d.recv(Duration::from_secs(10)).await, Some(Packet::SubAck(_))));
    assert!(
        d.send(&Packet::Disconnect(mqtt::Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default()
        }))
        .await
    );
    drop(d);

    let stop = Arc::new(AtomicBool::new(false));
    // Load 1: QoS 1 publishes to the offline session, entering the cluster on the node
    // that leads the session's shard (where its subscription is until routes between
    // nodes exist), found again after each reconnect.
    // The node to be killed last: its admin API goes away (a failed call is skipped).
    let admins: Vec<SocketAddr> = (1..=3).map(|k| c.proc((victim + k) % 3).admin).collect();
    let publisher = id_in(shard, "feeder");
    let topic = format!("to/{device}");
    let stop1 = stop.clone();
    let feeder = tokio::spawn(async move {
        let mut acked: Vec<u32> = Vec::new();
        let mut seq: u32 = 0;
        while !stop1.load(Ordering::Relaxed) {
            let Some(leader) = leader_mqtt(&admins, shard).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Some((mut p, _)) = Conn::open(&[leader], &publisher, true).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop1.load(Ordering::Relaxed) {
                seq += 1;
                let pkid = (seq % 60_000) as u16 + 1;
                let pkt = common::raw::publish(&topic, QoS::AtLeastOnce, pkid, &seq.to_string());
                if !p.send(&pkt).await {
                    break;
                }
                match p.recv(Duration::from_secs(10)).await {
                    // 0x00: stored for the session (0x10 would say nobody matched).
                    Some(Packet::PubAck(a))
                        if a.pkid == pkid && a.reason == ReasonCode::Success =>
                    {
                        acked.push(seq)
                    }
                    Some(Packet::PubAck(_)) => {}
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        acked
    });
    // Load 2: shadow updates of one thing per shard through the admin API of a node
    // that survives; each thing's writes are sequential.
    let admin = c.proc((victim + 1) % 3).admin;
    let mut writers = Vec::new();
    for s in 1..=16u32 {
        let thing = id_in(s, "meter");
        let stop2 = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut attempted) = (0u64, 0u64);
            let mut n_acked = 0u64;
            let mut outage: Option<Instant> = None;
            let mut worst = Duration::ZERO;
            while !stop2.load(Ordering::Relaxed) {
                attempted += 1;
                let body = format!(r#"{{"state":{{"desired":{{"n":{attempted}}}}}}}"#);
                let path = format!("/api/things/{thing}/shadow");
                let (status, _) = common::http(admin, "POST", &path, &body).await;
                if status == 200 {
                    acked = attempted;
                    n_acked += 1;
                    if let Some(t) = outage.take() {
                        worst = worst.max(t.elapsed());
                    }
                } else {
                    outage.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (thing, acked, attempted, n_acked, worst)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill9(victim);
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = feeder.await.unwrap();
    let mut shadows = Vec::new();
    for w in writers {
        shadows.push(w.await.unwrap());
    }
    assert!(acked.len() > 20, "the feeder got few acknowledgements: {}", acked.len());
    c.restart(victim);
    wait_formed(c.proc(victim), 3, Duration::from_secs(60)).await;

    // Every acknowledged shadow write is there (a write whose answer was lost may be too).
    for (thing, last_acked, attempted, n_acked, worst) in &shadows {
        assert!(*n_acked > 0, "{thing}: no write accepted");
        assert!(*worst < Duration::from_secs(10), "{thing} unavailable for {worst:?}");
        let path = format!("/api/things/{thing}/shadow");
        let doc = loop {
            if let Some(d) = get_json(c.proc(victim), &path).await {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let n = doc["state"]["desired"]["n"].as_u64().unwrap();
        assert!(n >= *last_acked && n <= *attempted, "{thing}: n {n}, acked {last_acked}");
        assert!(doc["version"].as_u64().unwrap() >= *n_acked, "{thing}: {doc}");
    }
    // Every acknowledged publish is in the offline queue, in order.
    let (mut d, present) = Conn::open(&mqtt_addrs(&c), &device, false).await.expect("device back");
    assert!(present, "the persistent session survived");
    let mut got: BTreeMap<u32, usize> = BTreeMap::new();
    let mut last = 0;
    while let Some(p) = d.recv(Duration::from_secs(3)).await {
        if let Packet::Publish(p) = p {
            let seq: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            assert!(seq >= last || got.contains_key(&seq), "out of order: {seq} after {last}");
            last = last.max(seq);
            *got.entry(seq).or_default() += 1;
            d.send(&Packet::PubAck(mqtt::PubResp::ok(p.pkid))).await;
        }
    }
    let lost: Vec<_> = acked.iter().filter(|s| !got.contains_key(s)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // And the replicas agree.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut by_group: BTreeMap<u64, Vec<(String, Option<u64>)>> = BTreeMap::new();
        for i in c.running() {
            for g in get_json(c.proc(i), "/api/cluster/digests").await.unwrap().as_array().unwrap()
            {
                if g["member"] == true {
                    let key = g["group"].as_u64().unwrap();
                    by_group
                        .entry(key)
                        .or_default()
                        .push((g["digest"].to_string(), g["applied"].as_u64()));
                }
            }
        }
        let equal = by_group.values().all(|v| v.len() == 3 && v.windows(2).all(|w| w[0] == w[1]));
        if equal {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas differ: {by_group:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
