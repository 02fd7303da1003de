//! Bytes to packets. [`decode`] frames one packet from a growing buffer: it checks the
//! maximum packet size from the fixed header before waiting for the body, so a 256 MiB
//! remaining length is refused without buffering it.

use bytes::{Buf, BytesMut};

use super::codec::{peek_varint, Reader, VarInt};
use super::packet::*;
use super::properties::{Carrier, Properties};
use super::reason::ReasonCode;
use super::topic;

/// Why a byte sequence is not a valid packet. Each maps to the reason code the spec asks
/// the server to send before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet grammar (spec "Malformed Packet").
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well-formed but breaks a protocol rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A string is not well-formed UTF-8 or contains U+0000.
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The packet is larger than the maximum packet size we accept.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// CONNECT names a protocol or level we do not speak.
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// A PUBLISH topic name is empty where it may not be, or contains a wildcard.
    #[error("invalid topic name")]
    TopicNameInvalid,
    /// More user properties than the configured limit.
    #[error("too many user properties")]
    TooManyUserProperties,
}

impl DecodeError {
    /// The reason code the spec asks for.
    pub fn reason(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) | DecodeError::InvalidUtf8 => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::TopicNameInvalid => ReasonCode::TopicNameInvalid,
            DecodeError::TooManyUserProperties => ReasonCode::QuotaExceeded,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed_packet",
            DecodeError::Protocol(_) => "protocol_error",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::PacketTooLarge { .. } => "packet_too_large",
            DecodeError::UnsupportedProtocol => "unsupported_protocol_version",
            DecodeError::TopicNameInvalid => "topic_name_invalid",
            DecodeError::TooManyUserProperties => "too_many_user_properties",
        }
    }
}

/// One framed packet and its size on the wire.
#[derive(Debug)]
pub struct Decoded {
    pub packet: Packet,
    pub size: usize,
}

/// Limits the body decoder enforces (the packet size is checked while framing).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_user_properties: usize,
}

/// Frames and decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (nothing is consumed). `protocol` is the
/// version negotiated by CONNECT; a CONNECT packet carries its own. On success the packet's
/// bytes are split off `buf`; payloads are slices of them.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
    max_user_properties: usize,
) -> Result<Option<Decoded>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (remaining, hlen) = match peek_varint(&buf[1..])? {
        VarInt::Value(v, n) => (v as usize, n + 1),
        VarInt::Incomplete => return Ok(None),
    };
    let size = hlen + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(hlen);
    let mut r = Reader::new(frame);
    let limits = Limits { max_user_properties };
    let packet = decode_body(first, &mut r, protocol, &limits)?;
    if !r.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes after packet"));
    }
    Ok(Some(Decoded { packet, size }))
}

fn expect_flags(first: u8, want: u8) -> Result<(), DecodeError> {
    if first & 0x0F != want {
        return Err(DecodeError::Malformed("invalid fixed header flags"));
    }
    Ok(())
}

fn pkid(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

fn props(r: &mut Reader, v: Protocol, c: Carrier, l: &Limits) -> Result<Properties, DecodeError> {
    if v.is_v5() {
        Properties::read(r, c, l.max_user_properties)
    } else {
        Ok(Properties::default())
    }
}

/// A reason code byte in a packet of type `kind`: unknown codes and codes that packet type
/// may not carry are malformed.
fn reason(b: u8, kind: u8) -> Result<ReasonCode, DecodeError> {
    match ReasonCode::from_u8(b) {
        Some(c) if c.allowed_in(kind) => Ok(c),
        Some(_) => Err(DecodeError::Malformed("reason code not allowed in this packet")),
        None => Err(DecodeError::Malformed("unknown reason code")),
    }
}

/// A 3.1.1 SUBACK return code: 0x00-0x02 or 0x80 only.
fn v3_suback_code(b: u8) -> Result<ReasonCode, DecodeError> {
    match b {
        0x00 => Ok(ReasonCode::Success),
        0x01 => Ok(ReasonCode::GrantedQos1),
        0x02 => Ok(ReasonCode::GrantedQos2),
        0x80 => Ok(ReasonCode::UnspecifiedError),
        _ => Err(DecodeError::Malformed("reserved SUBACK return code")),
    }
}

fn decode_body(first: u8, r: &mut Reader, v: Protocol, l: &Limits) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    Ok(match kind {
        1 => {
            expect_flags(first, 0)?;
            Packet::Connect(Box::new(connect(r, l)?))
        }
        2 => {
            expect_flags(first, 0)?;
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("reserved CONNACK flags"));
            }
            let code = r.u8()?;
            let reason = if v.is_v5() {
                reason(code, kind)?
            } else {
                match code {
                    0 => ReasonCode::Success,
                    1 => ReasonCode::UnsupportedProtocolVersion,
                    2 => ReasonCode::ClientIdentifierNotValid,
                    3 => ReasonCode::ServerUnavailable,
                    4 => ReasonCode::BadUserNameOrPassword,
                    5 => ReasonCode::NotAuthorized,
                    _ => return Err(DecodeError::Malformed("unknown CONNACK return code")),
                }
            };
            let properties = props(r, v, Carrier::ConnAck, l)?;
            Packet::ConnAck(ConnAck { session_present: flags & 1 == 1, reason, properties })
        }
        3 => Packet::Publish(publish(first, r, v, l)?),
        4 => {
            expect_flags(first, 0)?;
            Packet::PubAck(pub_resp(r, v, kind, l)?)
        }
        5 => {
            expect_flags(first, 0)?;
            Packet::PubRec(pub_resp(r, v, kind, l)?)
        }
        6 => {
            expect_flags(first, 2)?;
            Packet::PubRel(pub_resp(r, v, kind, l)?)
        }
        7 => {
            expect_flags(first, 0)?;
            Packet::PubComp(pub_resp(r, v, kind, l)?)
        }
        8 => {
            expect_flags(first, 2)?;
            let pkid = pkid(r)?;
            let properties = props(r, v, Carrier::Subscribe, l)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let f = r.string()?;
                let o = r.u8()?;
                filters.push((f, sub_options(o, v)?));
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe { pkid, filters, properties })
        }
        9 => {
            expect_flags(first, 0)?;
            let pkid = pkid(r)?;
            let properties = props(r, v, Carrier::SubAck, l)?;
            let reasons = r
                .rest()
                .iter()
                .map(|b| if v.is_v5() { reason(*b, kind) } else { v3_suback_code(*b) })
                .collect::<Result<Vec<_>, _>>()?;
            Packet::SubAck(SubAck { pkid, reasons, properties })
        }
        10 => {
            expect_flags(first, 2)?;
            let pkid = pkid(r)?;
            let properties = props(r, v, Carrier::Unsubscribe, l)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe { pkid, filters, properties })
        }
        11 => {
            expect_flags(first, 0)?;
            let pkid = pkid(r)?;
            let properties = props(r, v, Carrier::UnsubAck, l)?;
            let reasons = if v.is_v5() {
                r.rest().iter().map(|b| reason(*b, kind)).collect::<Result<Vec<_>, _>>()?
            } else {
                Vec::new()
            };
            Packet::UnsubAck(UnsubAck { pkid, reasons, properties })
        }
        12 => {
            expect_flags(first, 0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(first, 0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(first, 0)?;
            let (reason, properties) = reason_and_props(r, v, kind, Carrier::Disconnect, l)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 if v.is_v5() => {
            expect_flags(first, 0)?;
            let (reason, properties) = reason_and_props(r, v, kind, Carrier::Auth, l)?;
            Packet::Auth(Auth { reason, properties })
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    })
}

fn reason_and_props(
    r: &mut Reader,
    v: Protocol,
    kind: u8,
    c: Carrier,
    l: &Limits,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !v.is_v5() || r.is_empty() {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let code = reason(r.u8()?, kind)?;
    let p = if r.is_empty() { Properties::default() } else { props(r, v, c, l)? };
    Ok((code, p))
}

fn pub_resp(r: &mut Reader, v: Protocol, kind: u8, l: &Limits) -> Result<PubResp, DecodeError> {
    let pkid = pkid(r)?;
    let (reason, properties) = reason_and_props(r, v, kind, Carrier::PubResp, l)?;
    Ok(PubResp { pkid, reason, properties })
}

fn sub_options(o: u8, v: Protocol) -> Result<SubOptions, DecodeError> {
    let qos = QoS::from_u8(o & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
    if !v.is_v5() {
        if o & 0xFC != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits"));
        }
        return Ok(SubOptions::qos(qos));
    }
    if o & 0xC0 != 0 {
        return Err(DecodeError::Malformed("reserved subscription option bits"));
    }
    let retain_handling = match (o >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::Protocol("retain handling 3")),
    };
    Ok(SubOptions {
        qos,
        no_local: o & 0x04 != 0,
        retain_as_published: o & 0x08 != 0,
        retain_handling,
    })
}

fn publish(first: u8, r: &mut Reader, v: Protocol, l: &Limits) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let retain = first & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    if topic.is_empty() {
        if !v.is_v5() {
            return Err(DecodeError::TopicNameInvalid);
        }
    } else {
        topic::validate_name(&topic)?;
    }
    let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid(r)? };
    let properties = props(r, v, Carrier::Publish, l)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::Protocol("empty topic without topic alias"));
    }
    let payload = r.rest();
    Ok(Publish { dup, qos, retain, topic, pkid, properties, payload })
}

fn connect(r: &mut Reader, l: &Limits) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        _ => return Err(DecodeError::UnsupportedProtocol),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain set without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if protocol == Protocol::V311 && password_flag && !username_flag {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = props(r, protocol, Carrier::Connect, l)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let wp = props(r, protocol, Carrier::Will, l)?;
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::TopicNameInvalid);
        }
        topic::validate_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties: wp })
    } else {
        None
    };
    let username = if username_flag { Some(r.string()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}
