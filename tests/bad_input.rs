//! More bad input through raw sockets: each case gets the reason code the specs ask for (or
//! a plain close where they ask for that), is counted, and leaves a healthy pair of clients
//! undisturbed.

mod common;

use bytes::Bytes;
use common::raw::*;
use common::*;
use homeport::mqtt::{Packet, Properties, Protocol, Publish, QoS, ReasonCode};

/// A v5 client that has connected; `bytes` are then sent verbatim.
async fn after_connect(node: &homeport::node::Node, id: &str, bytes: &[u8]) -> Option<ReasonCode> {
    let mut r = Raw::open(node).await;
    r.connect(id, Protocol::V5, Properties::default()).await;
    r.send_bytes(bytes).await;
    r.closed_with().await
}

/// A connection whose first bytes are `bytes`: returns the CONNACK reason (read as
/// `v`) if any came.
async fn as_connect(node: &homeport::node::Node, v: Protocol, bytes: &[u8]) -> Option<ReasonCode> {
    let mut r = Raw::open(node).await;
    r.v = v;
    r.send_bytes(bytes).await;
    let mut code = None;
    while let Some(p) = r.recv().await {
        if let Packet::ConnAck(a) = p {
            code = Some(a.reason);
        }
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_refused_with_the_right_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let (mut sub, mut publ) = healthy_pair(&node).await;

    // CONNECT with the reserved flag bit set (v5): CONNACK 0x81, then close.
    let reserved = [0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 1, b'r'];
    assert_eq!(as_connect(&node, Protocol::V5, &reserved).await, Some(ReasonCode::MalformedPacket));
    // Will QoS set without the will flag.
    let will_qos = [0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x0A, 0, 60, 0, 0, 1, b'w'];
    assert_eq!(as_connect(&node, Protocol::V5, &will_qos).await, Some(ReasonCode::MalformedPacket));
    // Bad protocol name.
    let name = [0x10, 0x0E, 0, 4, b'M', b'Q', b'X', b'X', 5, 0x02, 0, 60, 0, 0, 1, b'n'];
    let code = as_connect(&node, Protocol::V311, &name).await;
    assert!(matches!(code, None | Some(ReasonCode::UnsupportedProtocolVersion)), "{code:?}");
    // The same flaw from a 3.1.1 client: closed without CONNACK (3.1.1 has no code).
    let v3 = [0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 2, b'r', b'3'];
    assert_eq!(as_connect(&node, Protocol::V311, &v3[..]).await, None);
    still_works(&mut sub, &mut publ, 1).await;

    // A variable-byte integer of five bytes.
    let long = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    assert_eq!(after_connect(&node, "varint5", &long).await, Some(ReasonCode::MalformedPacket));
    // A non-minimal variable-byte integer (5 written as 0x85 0x00).
    let padded = [0x30, 0x85, 0x00, 0x00, 0x01, b'a', 0x00, b'x'];
    assert_eq!(
        after_connect(&node, "varint-pad", &padded).await,
        Some(ReasonCode::MalformedPacket)
    );
    // SUBSCRIBE with fixed-header flags 0000 instead of 0010.
    let flags = [0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00, 0x00];
    assert_eq!(after_connect(&node, "flags", &flags).await, Some(ReasonCode::MalformedPacket));
    // SUBSCRIBE with no topic filter.
    let empty = [0x82, 0x03, 0x00, 0x01, 0x00];
    assert_eq!(after_connect(&node, "nofilter", &empty).await, Some(ReasonCode::ProtocolError));
    // PUBLISH with QoS 3.
    let qos3 = [0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00];
    assert_eq!(after_connect(&node, "qos3", &qos3).await, Some(ReasonCode::MalformedPacket));
    // A DUP flag on a QoS 0 PUBLISH.
    let dup0 = [0x38, 0x04, 0x00, 0x01, b'a', 0x00];
    assert_eq!(after_connect(&node, "dup0", &dup0).await, Some(ReasonCode::MalformedPacket));
    // A topic containing U+0000.
    let nul = [0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00];
    assert_eq!(after_connect(&node, "nul", &nul).await, Some(ReasonCode::MalformedPacket));
    still_works(&mut sub, &mut publ, 2).await;

    // A flood of user properties: 0x97 quota exceeded.
    let mut flood = Raw::open(&node).await;
    flood.connect("flood", Protocol::V5, Properties::default()).await;
    let user_properties = (0..5_000).map(|i| (format!("k{i}"), "v".to_string())).collect();
    flood
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "h/flood".into(),
            pkid: 0,
            properties: Properties { user_properties, ..Default::default() },
            payload: Bytes::from_static(b"x"),
        }))
        .await;
    assert_eq!(flood.closed_with().await, Some(ReasonCode::QuotaExceeded));

    // Remaining length larger than what arrives: the server waits for the rest without
    // misreading anything, and the keepalive deadline ends the connection.
    let mut short = Raw::open(&node).await;
    let mut c = connect_packet("short", Protocol::V5, true, Properties::default());
    c.keep_alive = 1;
    short.connect_with(c).await;
    short.send_bytes(&[0x30, 0x64, 0x00, 0x01, b'a', 1, 2, 3]).await;
    assert_eq!(short.closed_with().await, Some(ReasonCode::KeepAliveTimeout));
    still_works(&mut sub, &mut publ, 3).await;

    for reason in ["malformed_packet", "protocol_error", "too_many_user_properties"] {
        let name = format!("homeport_protocol_errors_total{{reason=\"{reason}\"}}");
        assert!(metric_reaches(&node, &name, 1.0).await >= 1.0, "{name}");
    }
    node.shutdown().await.unwrap();
}
