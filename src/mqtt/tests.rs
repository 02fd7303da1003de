//! Codec tests: property-based round trips of every packet kind under both protocol
//! versions, and the bad-input cases the specs name.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn roundtrip(p: &Packet, v: Protocol) -> Packet {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    assert_eq!(out.len(), encoded_len(p, v), "encoded_len disagrees with encode");
    let d = decode(&mut out, v, MAX, 64).expect("decodes").expect("complete");
    assert!(out.is_empty());
    d.packet
}

fn s() -> impl Strategy<Value = String> {
    "[a-z0-9/ é]{0,12}"
}
fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,3}"
}
fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}
fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}
fn user_props() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((s(), s()), 0..3)
}

fn publish_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(s()),
        proptest::option::of(topic()),
        proptest::option::of(bytes()),
        proptest::collection::vec(1u32..=268_435_455, 0..3),
        proptest::option::of(1u16..),
        user_props(),
    )
        .prop_map(|(pfi, exp, ct, rt, cd, ids, alias, up)| Properties {
            payload_format_indicator: pfi,
            message_expiry_interval: exp,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: ids,
            topic_alias: alias,
            user_properties: up,
            ..Properties::default()
        })
}

fn connect_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(1u16..),
        proptest::option::of(any::<u16>()),
        proptest::option::of(1u32..),
        proptest::option::of(0u8..=1),
        user_props(),
    )
        .prop_map(|(sei, rm, tam, mps, rpi, up)| Properties {
            session_expiry_interval: sei,
            receive_maximum: rm,
            topic_alias_maximum: tam,
            maximum_packet_size: mps,
            request_problem_information: rpi,
            user_properties: up,
            ..Properties::default()
        })
}

fn resp_props() -> impl Strategy<Value = Properties> {
    (proptest::option::of(s()), user_props()).prop_map(|(rs, up)| Properties {
        reason_string: rs,
        user_properties: up,
        ..Properties::default()
    })
}

fn v5() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::V311), Just(Protocol::V5)]
}

fn strip(p: Properties, v: Protocol) -> Properties {
    if v.is_v5() {
        p
    } else {
        Properties::default()
    }
}

fn sub_options(v: Protocol) -> impl Strategy<Value = SubOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(q, nl, rap, rh)| {
        if !v.is_v5() {
            return SubOptions::qos(q);
        }
        SubOptions {
            qos: q,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        }
    })
}

/// Any reason code a packet of type `kind` may carry.
fn reason_for(kind: u8) -> impl Strategy<Value = ReasonCode> {
    (0u8..=0xA2).prop_filter_map("reason code allowed in this packet", move |b| {
        ReasonCode::from_u8(b).filter(|c| c.allowed_in(kind))
    })
}

fn packet() -> impl Strategy<Value = (Protocol, Packet)> {
    v5().prop_flat_map(|v| {
        let connect = (
            any::<bool>(),
            any::<u16>(),
            s(),
            proptest::option::of((topic(), bytes(), qos(), any::<bool>(), publish_props())),
            proptest::option::of(s()),
            proptest::option::of(bytes()),
            connect_props(),
        )
            .prop_map(move |(cs, ka, cid, will, user, pw, props)| {
                let (username, password) = match (user, pw) {
                    (None, _) if !v.is_v5() => (None, None),
                    other => other,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start: cs,
                    keep_alive: ka,
                    client_id: cid,
                    will: will.map(|(t, p, q, r, mut wp)| {
                        wp.topic_alias = None;
                        wp.subscription_identifiers.clear();
                        wp.will_delay_interval = Some(5);
                        LastWill {
                            topic: t,
                            payload: p,
                            qos: q,
                            retain: r,
                            properties: strip(wp, v),
                        }
                    }),
                    username,
                    password,
                    properties: strip(props, v),
                }))
            });
        let publish =
            (any::<bool>(), qos(), any::<bool>(), topic(), 1u16.., publish_props(), bytes())
                .prop_map(move |(dup, q, retain, t, id, props, payload)| {
                    Packet::Publish(Publish {
                        dup: dup && q != QoS::AtMostOnce,
                        qos: q,
                        retain,
                        topic: t,
                        pkid: if q == QoS::AtMostOnce { 0 } else { id },
                        properties: strip(props, v),
                        payload,
                    })
                });
        let resp = (0u8..4)
            .prop_flat_map(|k| (Just(k), 1u16.., reason_for(4 + k), resp_props()))
            .prop_map(move |(k, id, r, p)| {
                let resp = PubResp {
                    pkid: id,
                    reason: if v.is_v5() { r } else { ReasonCode::Success },
                    properties: strip(p, v),
                };
                match k {
                    0 => Packet::PubAck(resp),
                    1 => Packet::PubRec(resp),
                    2 => Packet::PubRel(resp),
                    _ => Packet::PubComp(resp),
                }
            });
        let subscribe = (
            1u16..,
            proptest::collection::vec((topic(), sub_options(v)), 1..4),
            proptest::option::of(1u32..=268_435_455),
        )
            .prop_map(move |(id, filters, sid)| {
                Packet::Subscribe(Subscribe {
                    pkid: id,
                    filters,
                    properties: strip(
                        Properties {
                            subscription_identifiers: sid.into_iter().collect(),
                            ..Properties::default()
                        },
                        v,
                    ),
                })
            });
        let suback = (1u16.., proptest::collection::vec(reason_for(9), 1..4), resp_props())
            .prop_map(move |(id, codes, p)| {
                let v3 =
                    |c: ReasonCode| if c.is_error() { ReasonCode::UnspecifiedError } else { c };
                Packet::SubAck(SubAck {
                    pkid: id,
                    reasons: codes.into_iter().map(|c| if v.is_v5() { c } else { v3(c) }).collect(),
                    properties: strip(p, v),
                })
            });
        let unsubscribe =
            (1u16.., proptest::collection::vec(topic(), 1..4)).prop_map(move |(id, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    pkid: id,
                    filters,
                    properties: Properties::default(),
                })
            });
        let unsuback = (1u16.., proptest::collection::vec(reason_for(11), 1..3)).prop_map(
            move |(id, reasons)| {
                Packet::UnsubAck(UnsubAck {
                    pkid: id,
                    reasons: if v.is_v5() { reasons } else { Vec::new() },
                    properties: Properties::default(),
                })
            },
        );
        let connack = (any::<bool>(), connect_props()).prop_map(move |(sp, mut p)| {
            p.request_problem_information = None;
            p.assigned_client_identifier = Some("auto".into());
            Packet::ConnAck(ConnAck {
                session_present: sp,
                reason: ReasonCode::Success,
                properties: strip(p, v),
            })
        });
        let disconnect = (reason_for(14), resp_props()).prop_map(move |(r, p)| {
            Packet::Disconnect(Disconnect {
                reason: if v.is_v5() { r } else { ReasonCode::Success },
                properties: strip(p, v),
            })
        });
        prop_oneof![
            connect,
            connack,
            publish,
            resp,
            subscribe,
            suback,
            unsubscribe,
            unsuback,
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            disconnect,
        ]
        .prop_map(move |p| (v, p))
    })
}

proptest! {
    #[test]
    fn every_packet_round_trips((v, p) in packet()) {
        prop_assert_eq!(roundtrip(&p, v), p);
    }

    #[test]
    fn split_input_decodes_the_same((v, p) in packet(), cut in any::<prop::sample::Index>()) {
        let mut whole = BytesMut::new();
        encode(&p, v, &mut whole);
        let at = cut.index(whole.len());
        let mut buf = BytesMut::from(&whole[..at]);
        prop_assert!(decode(&mut buf, v, MAX, 64).unwrap().is_none());
        buf.extend_from_slice(&whole[at..]);
        let d = decode(&mut buf, v, MAX, 64).unwrap().unwrap();
        prop_assert_eq!(d.packet, p);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256), v in v5()) {
        let mut buf = BytesMut::from(&data[..]);
        // Decode until error or need-more; must never panic or loop.
        for _ in 0..64 {
            match decode(&mut buf, v, MAX, 64) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }
}

fn err(bytes: &[u8], v: Protocol) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, MAX, 64).expect_err("must be rejected")
}

#[test]
fn oversize_is_refused_from_the_header_alone() {
    // 256 MiB remaining length, only the header has arrived.
    let e = err(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], Protocol::V5);
    assert_eq!(e.reason(), ReasonCode::PacketTooLarge);
}

#[test]
fn bad_fixed_headers() {
    // QoS 3 publish.
    assert_eq!(
        err(&[0x36, 0x03, 0x00, 0x01, b'a'], Protocol::V311).reason(),
        ReasonCode::MalformedPacket
    );
    // SUBSCRIBE with flags 0000.
    assert!(matches!(err(&[0x80, 0x02, 0x00, 0x01], Protocol::V311), DecodeError::Malformed(_)));
    // PUBREL with flags 0000.
    assert!(matches!(err(&[0x60, 0x02, 0x00, 0x01], Protocol::V311), DecodeError::Malformed(_)));
    // DUP on QoS 0.
    assert!(
        err(&[0x38, 0x03, 0x00, 0x01, b'a'], Protocol::V311).reason()
            == ReasonCode::MalformedPacket
    );
    // Reserved type 0.
    assert!(err(&[0x00, 0x00], Protocol::V311).reason() == ReasonCode::MalformedPacket);
    // AUTH under 3.1.1.
    assert!(err(&[0xF0, 0x00], Protocol::V311).reason() == ReasonCode::MalformedPacket);
    // Five-byte remaining length.
    assert!(
        err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Protocol::V5).reason()
            == ReasonCode::MalformedPacket
    );
    // Non-minimal remaining length.
    assert!(err(&[0xC0, 0x80, 0x00], Protocol::V5).reason() == ReasonCode::MalformedPacket);
    // Found by the fuzzer: a 3.1.1 SUBACK return code other than 0x00-0x02 and 0x80.
    assert!(
        err(&[0x90, 0x04, 0x00, 0x9B, 0x93, 0x00], Protocol::V311).reason()
            == ReasonCode::MalformedPacket
    );
    // A reason code the packet type may not carry: PUBACK 0x8B, DISCONNECT 0x10.
    assert!(matches!(
        err(&[0x40, 0x03, 0x00, 0x01, 0x8B], Protocol::V5),
        DecodeError::Malformed(_)
    ));
    assert!(matches!(err(&[0xE0, 0x01, 0x10], Protocol::V5), DecodeError::Malformed(_)));
}

#[test]
fn publish_rules() {
    // Wildcard topic.
    assert_eq!(err(&[0x30, 0x03, 0x00, 0x01, b'#'], Protocol::V311), DecodeError::TopicNameInvalid);
    // QoS 1 with packet id 0.
    assert!(matches!(
        err(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], Protocol::V311),
        DecodeError::Protocol(_)
    ));
    // Invalid UTF-8 in topic.
    assert_eq!(
        err(&[0x30, 0x04, 0x00, 0x02, 0xC0, 0xAF], Protocol::V311),
        DecodeError::InvalidUtf8
    );
    // U+0000 in topic.
    assert_eq!(err(&[0x30, 0x03, 0x00, 0x01, 0x00], Protocol::V311), DecodeError::InvalidUtf8);
    // Empty topic on 3.1.1.
    assert_eq!(err(&[0x30, 0x02, 0x00, 0x00], Protocol::V311), DecodeError::TopicNameInvalid);
    // Empty topic on v5 without alias.
    assert!(matches!(err(&[0x30, 0x03, 0x00, 0x00, 0x00], Protocol::V5), DecodeError::Protocol(_)));
    // Topic length beyond the packet.
    assert!(matches!(
        err(&[0x30, 0x03, 0x00, 0x09, b'a'], Protocol::V311),
        DecodeError::Malformed(_)
    ));
}

fn connect_bytes(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, name.len() as u8];
    body.extend_from_slice(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0x00, 0x3C]);
    body.extend_from_slice(rest);
    let mut v = vec![0x10, body.len() as u8];
    v.extend(body);
    v
}

#[test]
fn connect_rules() {
    let cid = [0x00, 0x01, b'c'];
    let ok = connect_bytes(b"MQTT", 4, 0x02, &cid);
    let mut buf = BytesMut::from(&ok[..]);
    assert!(decode(&mut buf, Protocol::V311, MAX, 64).unwrap().is_some());
    assert_eq!(
        err(&connect_bytes(b"MQTT", 3, 0x02, &cid), Protocol::V311),
        DecodeError::UnsupportedProtocol
    );
    assert_eq!(
        err(&connect_bytes(b"MQIsdp", 3, 0x02, &cid), Protocol::V311),
        DecodeError::UnsupportedProtocol
    );
    assert_eq!(
        err(&connect_bytes(b"MQTX", 4, 0x02, &cid), Protocol::V311),
        DecodeError::UnsupportedProtocol
    );
    // Reserved flag.
    assert!(matches!(
        err(&connect_bytes(b"MQTT", 4, 0x03, &cid), Protocol::V311),
        DecodeError::Malformed(_)
    ));
    // Will QoS without will flag.
    assert!(matches!(
        err(&connect_bytes(b"MQTT", 4, 0x0A, &cid), Protocol::V311),
        DecodeError::Malformed(_)
    ));
    // Will retain without will flag.
    assert!(matches!(
        err(&connect_bytes(b"MQTT", 4, 0x22, &cid), Protocol::V311),
        DecodeError::Malformed(_)
    ));
    // Password without user name on 3.1.1.
    assert!(matches!(
        err(&connect_bytes(b"MQTT", 4, 0x42, &[0, 1, b'c', 0, 1, b'p']), Protocol::V311),
        DecodeError::Malformed(_)
    ));
    // Trailing bytes.
    assert!(matches!(
        err(&connect_bytes(b"MQTT", 4, 0x02, &[0, 1, b'c', 9]), Protocol::V311),
        DecodeError::Malformed(_)
    ));
}

#[test]
fn subscribe_rules() {
    // No filters.
    assert!(matches!(err(&[0x82, 0x02, 0x00, 0x01], Protocol::V311), DecodeError::Protocol(_)));
    // Reserved option bits on 3.1.1.
    assert!(matches!(
        err(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], Protocol::V311),
        DecodeError::Malformed(_)
    ));
    // Retain handling 3 on v5.
    assert!(err(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], Protocol::V5)
        .reason()
        .is_error());
    // Packet id 0.
    assert!(matches!(
        err(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], Protocol::V311),
        DecodeError::Protocol(_)
    ));
}
