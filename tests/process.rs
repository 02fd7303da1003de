//! The `homeport` binary as a separate process: `kill -9` in the middle of deliveries loses
//! no acknowledged message (offline queues and the in-flight journal), nor an accepted
//! shadow update or job execution change; SIGTERM disconnects clients with 0x8B, flushes
//! and exits 0.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::process::Proc;
use common::raw::*;
use common::*;
use homeport::mqtt::{Packet, Properties, Protocol, QoS as HQoS, ReasonCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS};

fn client(id: &str, a: SocketAddr, clean: bool) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, a.ip().to_string(), a.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_manual_acks(true);
    AsyncClient::new(o, 100)
}

async fn connack(ev: &mut rumqttc::EventLoop) -> bool {
    until(ev, |e| match e {
        Event::Incoming(RPacket::ConnAck(a)) => Some(a.session_present),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::spawn(dir.path());

    // `online` stays connected and never acknowledges; `offline` leaves after subscribing.
    let (online, mut on_ev) = client("journal-online", node.mqtt, false);
    connack(&mut on_ev).await;
    online.subscribe("j/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut on_ev, |e| matches!(e, Event::Incoming(RPacket::SubAck(_))).then_some(())).await;
    let (offline, mut off_ev) = client("journal-offline", node.mqtt, false);
    connack(&mut off_ev).await;
    offline.subscribe("j/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut off_ev, |e| matches!(e, Event::Incoming(RPacket::SubAck(_))).then_some(())).await;
    offline.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while off_ev.poll().await.is_ok() {} }).await;

    let (publ, mut pub_ev) = client("journal-pub", node.mqtt, true);
    connack(&mut pub_ev).await;
    const N: usize = 20;
    for i in 0..N {
        publ.publish("j/x", QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
    }
    // A retained message (its shard commits it before the PUBACK).
    publ.publish("k/r", QoS::AtLeastOnce, true, "kept").await.unwrap();
    let mut acked = 0;
    until(&mut pub_ev, |e| {
        if let Event::Incoming(RPacket::PubAck(_)) = e {
            acked += 1;
        }
        (acked == N + 1).then_some(())
    })
    .await;
    // The connected subscriber has at least started receiving (unacknowledged).
    until(&mut on_ev, |e| matches!(e, Event::Incoming(RPacket::Publish(_))).then_some(())).await;

    let mut node = node;
    node.child.kill().expect("SIGKILL");
    node.child.wait().unwrap();
    drop((online, on_ev, publ, pub_ev));
    let node = Proc::spawn(dir.path());

    for id in ["journal-online", "journal-offline"] {
        let (c, mut ev) = client(id, node.mqtt, false);
        assert!(connack(&mut ev).await, "{id}: session present after kill -9");
        let mut seen = std::collections::BTreeSet::new();
        until(&mut ev, |e| {
            if let Event::Incoming(RPacket::Publish(p)) = e {
                seen.insert(String::from_utf8_lossy(&p.payload).to_string());
                let _ = c.try_ack(p);
            }
            (seen.len() == N).then_some(())
        })
        .await;
        let want: std::collections::BTreeSet<_> = (0..N).map(|i| format!("m{i}")).collect();
        assert_eq!(seen, want, "{id}");
    }
    let (c, mut ev) = client("retained-reader", node.mqtt, true);
    connack(&mut ev).await;
    c.subscribe("k/r", QoS::AtLeastOnce).await.unwrap();
    let p = until(&mut ev, |e| match e {
        Event::Incoming(RPacket::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_with_0x8b_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Proc::spawn(dir.path());
    let mut publ = Raw::open_addr(node.mqtt).await;
    publ.connect("term-pub", Protocol::V5, Properties::default()).await;
    let retained = match publish("term/r", HQoS::AtLeastOnce, 1, "kept") {
        Packet::Publish(mut p) => {
            p.retain = true;
            Packet::Publish(p)
        }
        _ => unreachable!(),
    };
    publ.send(&retained).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));

    node.signal("-TERM");
    assert_eq!(publ.closed_with().await, Some(ReasonCode::ServerShuttingDown));
    let status = tokio::task::spawn_blocking(move || {
        let s = node.child.wait();
        (s, node)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let node = Proc::spawn(dir.path());
    let mut sub = Raw::open_addr(node.mqtt).await;
    sub.connect("term-sub", Protocol::V5, Properties::default()).await;
    sub.send(&subscribe(1, &[("term/#", HQoS::AtLeastOnce)], None)).await;
    let p = sub.next_publish(true).await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
}

/// A shadow update answered `accepted` is on disk: `kill -9` right after loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_accepted_shadow_updates() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::spawn(dir.path());
    let base = "$aws/things/meter-1/shadow";
    let (c, mut ev) = client("meter-1", node.mqtt, true);
    connack(&mut ev).await;
    const N: u64 = 25;
    // Rounds of 5: within the thing's line of waiting requests (10 by default).
    let mut accepted = 0;
    for i in 1..=N {
        let body = format!(r#"{{"state":{{"reported":{{"reading":{i}}}}}}}"#);
        c.publish(format!("{base}/update"), QoS::AtLeastOnce, false, body).await.unwrap();
        if i % 5 != 0 {
            continue;
        }
        until(&mut ev, |e| {
            if let Event::Incoming(RPacket::Publish(p)) = e {
                assert_eq!(p.topic, format!("{base}/update/accepted"));
                accepted += 1;
                let _ = c.try_ack(p);
            }
            (accepted == i).then_some(())
        })
        .await;
    }
    let mut node = node;
    node.child.kill().expect("SIGKILL");
    node.child.wait().unwrap();
    drop((c, ev));

    let node = Proc::spawn(dir.path());
    let (c, mut ev) = client("meter-1", node.mqtt, true);
    connack(&mut ev).await;
    c.publish(format!("{base}/get"), QoS::AtLeastOnce, false, "").await.unwrap();
    let doc: serde_json::Value = until(&mut ev, |e| match e {
        Event::Incoming(RPacket::Publish(p)) => {
            let _ = c.try_ack(p);
            Some(serde_json::from_slice(&p.payload).unwrap())
        }
        _ => None,
    })
    .await;
    assert_eq!(doc["version"], N);
    assert_eq!(doc["state"]["reported"]["reading"], N);
}

/// A job execution the device moved to IN_PROGRESS (answered `accepted`) is still in
/// progress after `kill -9`, and the rollout state of the job survives too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_job_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::spawn(dir.path());
    let job = r#"{"jobId":"k9","document":{"op":"x"},"targets":["gw-1","gw-2"]}"#;
    let (status, body) = http(node.admin, "POST", "/api/jobs", job).await;
    assert_eq!(status, 201, "{body}");
    let (c, mut ev) = client("gw-1", node.mqtt, true);
    connack(&mut ev).await;
    // The rollout reaches gw-1 within a scheduler tick; start-next until it has.
    let started: serde_json::Value = tokio::time::timeout(WAIT, async {
        loop {
            c.publish("$aws/things/gw-1/jobs/start-next", QoS::AtLeastOnce, false, "{}")
                .await
                .unwrap();
            let v: serde_json::Value = until(&mut ev, |e| match e {
                Event::Incoming(RPacket::Publish(p))
                    if p.topic.ends_with("start-next/accepted") =>
                {
                    let _ = c.try_ack(p);
                    Some(serde_json::from_slice(&p.payload).unwrap())
                }
                Event::Incoming(RPacket::Publish(p)) => {
                    let _ = c.try_ack(p);
                    None
                }
                _ => None,
            })
            .await;
            if v.get("execution").is_some() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("execution queued");
    assert_eq!(started["execution"]["status"], "IN_PROGRESS");
    let mut node = node;
    node.child.kill().expect("SIGKILL");
    node.child.wait().unwrap();
    drop((c, ev));

    let node = Proc::spawn(dir.path());
    let (c, mut ev) = client("gw-1", node.mqtt, true);
    connack(&mut ev).await;
    c.publish("$aws/things/gw-1/jobs/get", QoS::AtLeastOnce, false, "{}").await.unwrap();
    let pending: serde_json::Value = until(&mut ev, |e| match e {
        Event::Incoming(RPacket::Publish(p)) if p.topic.ends_with("jobs/get/accepted") => {
            let _ = c.try_ack(p);
            Some(serde_json::from_slice(&p.payload).unwrap())
        }
        _ => None,
    })
    .await;
    assert_eq!(pending["inProgressJobs"][0]["jobId"], "k9", "{pending}");
    let (status, body) = http_get(node.admin, "/api/jobs/k9").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["job"]["jobProcessDetails"]["numberOfInProgressThings"], 1, "{j}");
}
