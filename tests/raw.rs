//! Bad input and MQTT 5 details through raw sockets: exact bytes in, exact packets out.

mod common;

use bytes::BytesMut;
use common::raw::*;
use common::*;
use homeport::mqtt::{
    Packet, Properties, Protocol, Publish, QoS, ReasonCode, SubOptions, Subscribe,
};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_counted_without_disturbing_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let (mut sub, mut publ) = healthy_pair(&node).await;

    // Garbage before CONNECT.
    let mut r = Raw::open(&node).await;
    r.send_bytes(&[0xFF, 0x03, 0xDE, 0xAD, 0xBE]).await;
    assert!(r.recv().await.is_none());
    still_works(&mut sub, &mut publ, 1).await;

    // First packet not CONNECT.
    let mut r = Raw::open(&node).await;
    r.send_bytes(&[0xC0, 0x00]).await;
    assert!(r.recv().await.is_none());

    // Unsupported protocol level: CONNACK 0x01 (3.1.1 form), then close.
    let mut r = Raw::open(&node).await;
    r.v = Protocol::V311;
    r.send_bytes(&[0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 3, 2, 0, 60, 0, 1, b'c']).await;
    match r.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::UnsupportedProtocolVersion),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(r.recv().await.is_none());

    // A 256 MiB remaining length: refused from the header alone with 0x95.
    let mut r = Raw::open(&node).await;
    r.connect("big", Protocol::V5, Properties::default()).await;
    r.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_eq!(r.closed_with().await, Some(ReasonCode::PacketTooLarge));

    // Wildcard in a PUBLISH topic: 0x90.
    let mut r = Raw::open(&node).await;
    r.connect("wild", Protocol::V5, Properties::default()).await;
    r.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00]).await;
    assert_eq!(r.closed_with().await, Some(ReasonCode::TopicNameInvalid));

    // QoS 1 PUBLISH with packet id 0: protocol error.
    let mut r = Raw::open(&node).await;
    r.connect("pkid0", Protocol::V5, Properties::default()).await;
    r.send_bytes(&[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00]).await;
    assert_eq!(r.closed_with().await, Some(ReasonCode::ProtocolError));

    // Second CONNECT: protocol error.
    let mut r = Raw::open(&node).await;
    r.connect("twice", Protocol::V5, Properties::default()).await;
    r.connect("twice", Protocol::V5, Properties::default()).await;
    assert_eq!(r.closed_with().await, None);

    // Invalid UTF-8 in a topic: malformed.
    let mut r = Raw::open(&node).await;
    r.connect("utf", Protocol::V5, Properties::default()).await;
    r.send_bytes(&[0x30, 0x05, 0x00, 0x02, 0xC0, 0xAF, 0x00]).await;
    assert_eq!(r.closed_with().await, Some(ReasonCode::MalformedPacket));

    // Topic alias 0.
    let mut r = Raw::open(&node).await;
    r.connect("alias", Protocol::V5, Properties::default()).await;
    let p = Packet::Publish(Publish {
        properties: Properties { topic_alias: Some(0), ..Default::default() },
        ..match publish("a", QoS::AtMostOnce, 0, "x") {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    });
    r.send(&p).await;
    assert_eq!(r.closed_with().await, Some(ReasonCode::TopicAliasInvalid));

    still_works(&mut sub, &mut publ, 2).await;
    assert!(
        metric(&node, "homeport_protocol_errors_total{reason=\"packet_too_large\"}").await >= 1.0
    );
    assert!(
        metric(&node, "homeport_protocol_errors_total{reason=\"topic_name_invalid\"}").await >= 1.0
    );
    assert!(
        metric(&node, "homeport_protocol_errors_total{reason=\"first_packet_not_connect\"}").await
            >= 1.0
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connect_times_out_and_invalid_filters_get_suback_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt.connect_timeout_secs = 1;
    let node = homeport::node::Node::start(cfg).await.unwrap();
    let mut slow = Raw::open(&node).await;
    slow.send_bytes(&[0x10]).await; // a CONNECT that never finishes
    assert!(slow.recv().await.is_none(), "closed at the CONNECT deadline");

    let mut r = Raw::open(&node).await;
    r.connect("filters", Protocol::V5, Properties::default()).await;
    r.send(&subscribe(
        3,
        &[("a/#/b", QoS::AtLeastOnce), ("ok/+", QoS::ExactlyOnce), ("$share/g", QoS::AtMostOnce)],
        None,
    ))
    .await;
    match r.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(
            s.reasons,
            vec![
                ReasonCode::TopicFilterInvalid,
                ReasonCode::GrantedQos2,
                ReasonCode::TopicFilterInvalid
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // 3.1.1 gets 0x80 for a failure.
    let mut r = Raw::open(&node).await;
    r.connect("filters3", Protocol::V311, Properties::default()).await;
    r.send(&subscribe(4, &[("a/#/b", QoS::AtLeastOnce)], None)).await;
    let mut buf = BytesMut::new();
    // Read raw to see the byte on the wire.
    tokio::time::timeout(WAIT, async {
        while buf.len() < 5 {
            r.s.read_buf(&mut buf).await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(&buf[..5], &[0x90, 0x03, 0x00, 0x04, 0x80]);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_overlapping_subscriptions_and_identifiers_and_no_local() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut c = Raw::open(&node).await;
    c.connect("overlap", Protocol::V5, Properties::default()).await;
    c.send(&subscribe(1, &[("o/+", QoS::AtMostOnce)], Some(7))).await;
    c.recv().await;
    c.send(&subscribe(2, &[("o/#", QoS::ExactlyOnce)], Some(9))).await;
    c.recv().await;
    // no-local subscription on the same client's own topic
    let nl = Packet::Subscribe(Subscribe {
        pkid: 3,
        filters: vec![(
            "self/x".into(),
            SubOptions { no_local: true, ..SubOptions::qos(QoS::AtMostOnce) },
        )],
        properties: Properties::default(),
    });
    c.send(&nl).await;
    c.recv().await;
    c.send(&publish("self/x", QoS::AtMostOnce, 0, "echo?")).await;

    let mut p = Raw::open(&node).await;
    p.connect("overlap-pub", Protocol::V5, Properties::default()).await;
    p.send(&publish("o/1", QoS::ExactlyOnce, 5, "x")).await;
    match c.recv().await {
        Some(Packet::Publish(m)) => {
            assert_eq!(m.qos, QoS::ExactlyOnce, "highest granted QoS");
            let mut ids = m.properties.subscription_identifiers.clone();
            ids.sort();
            assert_eq!(ids, vec![7, 9], "all identifiers, one copy");
            assert_eq!(m.topic, "o/1");
        }
        other => panic!("expected one PUBLISH, got {other:?}"),
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let admin = node.admin_addr.unwrap();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let (status, body) = http_get(admin, "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("\"code\":\"not_found\""), "{body}");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(metrics.contains("homeport_connections"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// rumqttc cannot show this: it reports a DISCONNECT that arrives with the close as
/// `ConnectionAborted`, so the exact bytes are checked here.
async fn v5_session_takeover_sends_0x8e_to_the_old_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut a = Raw::open(&node).await;
    a.connect("twin2", Protocol::V5, Properties::default()).await;
    let mut b = Raw::open(&node).await;
    let ack = b.connect("twin2", Protocol::V5, Properties::default()).await;
    assert!(matches!(ack, Packet::ConnAck(_)));
    assert_eq!(a.closed_with().await, Some(ReasonCode::SessionTakenOver));
    node.shutdown().await.unwrap();
}
