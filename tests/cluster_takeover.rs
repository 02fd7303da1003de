//! Session takeover across nodes in a loop: one client id connects again and again, each
//! time on the next node, without closing its previous connection, while QoS 2 messages
//! are published to it from a fourth connection (in-process cluster over loopback QUIC,
//! raw MQTT clients over real sockets).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::TestCluster;
use common::raw::{connect_packet, subscribe, Raw};
use homeport::mqtt::{Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode};

const ROUNDS: usize = 100;

fn persistent() -> Properties {
    Properties { session_expiry_interval: Some(3600), ..Default::default() }
}

/// The whole QoS 2 flow of a publisher: PUBLISH, PUBREC, PUBREL, PUBCOMP.
async fn publish_qos2(raw: &mut Raw, topic: &str, pkid: u16, payload: &str) {
    let p = Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: topic.into(),
        pkid,
        payload: payload.to_string().into(),
        properties: Properties::default(),
    };
    raw.send(&Packet::Publish(p)).await;
    match raw.recv().await {
        Some(Packet::PubRec(r)) => assert!(!r.reason.is_error(), "{r:?}"),
        p => panic!("{p:?}"),
    }
    raw.send(&Packet::PubRel(PubResp::ok(pkid))).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubComp(_))));
}

/// Receives the next PUBLISH (resent PUBRELs on the way are completed).
async fn next_publish(raw: &mut Raw) -> Publish {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), raw.recv()).await {
            Ok(Some(Packet::Publish(p))) => return p,
            Ok(Some(Packet::PubRel(r))) => raw.send(&Packet::PubComp(PubResp::ok(r.pkid))).await,
            Ok(Some(_)) => continue,
            other => panic!("no PUBLISH: {other:?}"),
        }
    }
}

/// The subscriber's half of QoS 2 for `p`: PUBREC, then PUBCOMP for the PUBREL.
async fn complete(raw: &mut Raw, p: &Publish) {
    raw.send(&Packet::PubRec(PubResp::ok(p.pkid))).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), raw.recv()).await {
            Ok(Some(Packet::PubRel(r))) if r.pkid == p.pkid => {
                raw.send(&Packet::PubComp(PubResp::ok(r.pkid))).await;
                return;
            }
            Ok(Some(Packet::PubRel(r))) => raw.send(&Packet::PubComp(PubResp::ok(r.pkid))).await,
            other => panic!("no PUBREL for {}: {other:?}", p.pkid),
        }
    }
}

/// 100 takeovers, each on the next node: the old connection gets DISCONNECT 0x8E,
/// `session present` is set, and every QoS 2 message arrives exactly once as an
/// application message, including those left unacknowledged (no PUBREC) on the
/// connection that was taken over, which the new connection gets again with DUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_takeovers_across_nodes_lose_and_duplicate_nothing_at_qos_2() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let client = "hopper";
    let topic = "hop/t";
    let mut publ = Raw::open(c.node(0)).await;
    let pc = connect_packet("hop-publisher", Protocol::V5, true, Properties::default());
    assert!(
        matches!(publ.connect_retrying(pc).await, Packet::ConnAck(a) if a.reason == ReasonCode::Success)
    );

    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    // A message the current connection got but did not PUBREC.
    let mut open: Option<String> = None;
    let mut conn: Option<Raw> = None;
    for round in 0..ROUNDS {
        let mut next = Raw::open(c.node(round % 3)).await;
        let connect = connect_packet(client, Protocol::V5, round == 0, persistent());
        match next.connect_retrying(connect).await {
            Packet::ConnAck(a) => {
                assert_eq!(a.reason, ReasonCode::Success, "round {round}");
                assert_eq!(a.session_present, round > 0, "round {round}");
            }
            p => panic!("round {round}: {p:?}"),
        }
        if let Some(mut old) = conn.take() {
            assert_eq!(
                old.closed_with().await,
                Some(ReasonCode::SessionTakenOver),
                "round {round}"
            );
        } else {
            next.send(&subscribe(1, &[(topic, QoS::ExactlyOnce)], None)).await;
            assert!(matches!(next.recv().await, Some(Packet::SubAck(_))));
        }
        // What the taken-over connection left unacknowledged comes again, marked DUP.
        if let Some(payload) = open.take() {
            let p = next_publish(&mut next).await;
            assert_eq!(String::from_utf8_lossy(&p.payload), payload, "round {round}");
            assert!(p.dup, "round {round}: {p:?}");
            complete(&mut next, &p).await;
            *received.entry(payload).or_default() += 1;
        }
        let payload = format!("m{round}");
        publish_qos2(&mut publ, topic, (round % 60_000) as u16 + 1, &payload).await;
        let p = next_publish(&mut next).await;
        assert_eq!(String::from_utf8_lossy(&p.payload), payload, "round {round}: {p:?}");
        if round % 2 == 1 && round + 1 < ROUNDS {
            // Left in flight for the next connection.
            open = Some(payload);
        } else {
            complete(&mut next, &p).await;
            *received.entry(payload).or_default() += 1;
        }
        conn = Some(next);
    }
    // Nothing more arrives: no duplicate of a completed message.
    let mut last = conn.expect("connected");
    if let Ok(Some(Packet::Publish(p))) =
        tokio::time::timeout(Duration::from_secs(2), last.recv()).await
    {
        panic!("an extra delivery: {p:?}");
    }
    assert_eq!(received.len(), ROUNDS, "every message arrived");
    assert!(received.values().all(|n| *n == 1), "each exactly once: {received:?}");
    c.shutdown().await;
}
