//! CONNECT: read it within the deadline, validate it, negotiate limits, attach to the
//! session, answer CONNACK.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ConnCtx, DeviceIo};
use crate::broker::{app_properties, now_ms, StoredMessage};
use crate::mqtt::{
    self, ConnAck, Connect, DecodeError, Packet, Properties, Protocol, QoS, ReasonCode,
};
use crate::session::StoredWill;

pub use crate::broker::next_conn_id;

/// Why the handshake ended without a session.
#[derive(Debug)]
pub enum Refused {
    /// The socket closed or failed.
    Io,
    /// The deadline passed before CONNECT arrived.
    Timeout,
    /// Bad bytes: counted and the socket closed (with CONNACK where the spec asks or
    /// allows). `v5`: the CONNECT declared protocol level 5.
    Decode(DecodeError, bool),
    /// The first packet was not CONNECT.
    NotConnect,
}

/// Reads the CONNECT packet within the configured deadline.
pub async fn read_connect<S: DeviceIo>(
    io: &mut S,
    buf: &mut BytesMut,
    ctx: &ConnCtx,
) -> Result<Box<Connect>, Refused> {
    let cfg = &ctx.cfg.mqtt;
    let deadline = Duration::from_secs(cfg.connect_timeout_secs);
    let read = async {
        loop {
            let level = connect_level(buf);
            match mqtt::decode(
                buf,
                Protocol::V5,
                cfg.max_packet_size as usize,
                cfg.max_user_properties,
            ) {
                Ok(Some(d)) => {
                    ctx.metrics.packet_in(0x10, d.size);
                    return match d.packet {
                        Packet::Connect(c) => Ok(c),
                        _ => Err(Refused::NotConnect),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(Refused::Decode(e, level == Some(5))),
            }
            // Reject a first packet that is not CONNECT as soon as its type byte arrives.
            if buf.first().is_some_and(|b| b >> 4 != 1) {
                return Err(Refused::NotConnect);
            }
            buf.reserve(1024);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return Err(Refused::Io),
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Timeout),
    }
}

/// Negotiated per-connection settings.
#[derive(Debug)]
pub struct Negotiated {
    pub protocol: Protocol,
    /// Emptied once CONNACK is built; `Conn::client` names the client from then on.
    pub client_id: String,
    pub assigned: bool,
    pub keep_alive: u16,
    pub expiry_secs: u32,
    /// Client's Receive Maximum: our outbound window.
    pub client_receive_max: u16,
    /// Client's Maximum Packet Size.
    pub client_max_packet: usize,
    /// Topic aliases the client accepts from us.
    pub client_alias_max: u16,
    /// Boxed: it moves to the session at attach, and the connection keeps this struct.
    pub will: Option<Box<StoredWill>>,
}

/// Validates CONNECT and works out the session parameters, or the CONNACK reason to refuse.
pub fn negotiate(c: &Connect, ctx: &ConnCtx) -> Result<Negotiated, ReasonCode> {
    let cfg = &ctx.cfg.mqtt;
    let v5 = c.protocol.is_v5();
    if c.properties.authentication_method.is_some() {
        return Err(ReasonCode::BadAuthenticationMethod);
    }
    let (client_id, assigned) = if c.client_id.is_empty() {
        if !v5 && !c.clean_start {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        (format!("hp-{}-{:x}", ctx.cfg.node.id, next_conn_id() ^ now_ms()), true)
    } else {
        (c.client_id.clone(), false)
    };
    let max_qos = QoS::from_u8(cfg.maximum_qos).unwrap_or(QoS::ExactlyOnce);
    let will = match &c.will {
        Some(w) => {
            if w.qos > max_qos {
                return Err(ReasonCode::QosNotSupported);
            }
            if w.retain && !cfg.retain_available {
                return Err(ReasonCode::RetainNotSupported);
            }
            let now = now_ms();
            let msg = StoredMessage::from(&crate::broker::Message {
                topic: w.topic.as_str().into(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                props: app_properties(&w.properties),
                expires_at_ms: w
                    .properties
                    .message_expiry_interval
                    .map(|s| now + u64::from(s) * 1000),
                origin: None,
                publisher: None,
            });
            Some(Box::new(StoredWill {
                msg,
                delay_secs: w.properties.will_delay_interval.unwrap_or(0),
                at_ms: None,
            }))
        }
        None => None,
    };
    let expiry_secs = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0).min(cfg.max_session_expiry_secs)
    } else if c.clean_start {
        0
    } else {
        // 3.1.1 persistent sessions live as long as the longest expiry we grant.
        cfg.max_session_expiry_secs
    };
    let keep_alive = match (v5, cfg.server_keep_alive) {
        (true, Some(k)) => k,
        _ => c.keep_alive,
    };
    Ok(Negotiated {
        protocol: c.protocol,
        client_id,
        assigned,
        keep_alive,
        expiry_secs,
        client_receive_max: c.properties.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet: c.properties.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
        client_alias_max: if v5 { c.properties.topic_alias_maximum.unwrap_or(0) } else { 0 },
        will,
    })
}

/// The CONNACK for an accepted session, with our limits on v5.
pub fn connack(n: &Negotiated, c: &Connect, ctx: &ConnCtx, session_present: bool) -> Packet {
    let cfg = &ctx.cfg.mqtt;
    let mut p = Properties::default();
    if n.protocol.is_v5() {
        if n.assigned {
            p.assigned_client_identifier = Some(n.client_id.clone());
        }
        if c.properties.session_expiry_interval.unwrap_or(0) != n.expiry_secs {
            p.session_expiry_interval = Some(n.expiry_secs);
        }
        p.receive_maximum = Some(cfg.receive_maximum);
        p.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        if cfg.maximum_qos < 2 {
            p.maximum_qos = Some(cfg.maximum_qos);
        }
        if !cfg.retain_available {
            p.retain_available = Some(0);
        }
        p.maximum_packet_size = Some(cfg.max_packet_size);
        if !cfg.wildcard_subscription_available {
            p.wildcard_subscription_available = Some(0);
        }
        if !cfg.subscription_identifiers_available {
            p.subscription_identifier_available = Some(0);
        }
        if !cfg.shared_subscription_available {
            p.shared_subscription_available = Some(0);
        }
        if let Some(k) = cfg.server_keep_alive {
            p.server_keep_alive = Some(k);
        }
    }
    Packet::ConnAck(ConnAck { session_present, reason: ReasonCode::Success, properties: p })
}

/// Sends a refusing CONNACK and flushes it.
pub async fn refuse<S: DeviceIo>(
    io: &mut S,
    protocol: Protocol,
    reason: ReasonCode,
    ctx: &ConnCtx,
) {
    refuse_with(io, protocol, reason, Properties::default(), ctx).await
}

/// As [`refuse`], with CONNACK properties (v5; a 3.1.1 CONNACK has none).
pub async fn refuse_with<S: DeviceIo>(
    io: &mut S,
    protocol: Protocol,
    reason: ReasonCode,
    properties: Properties,
    ctx: &ConnCtx,
) {
    let p = Packet::ConnAck(ConnAck { session_present: false, reason, properties });
    let mut out = BytesMut::new();
    mqtt::encode(&p, protocol, &mut out);
    ctx.metrics.packet_out(0x20, out.len());
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
    ctx.metrics.connects.with_label_values(&[reason.label()]).inc();
}

/// The CONNACK to answer a CONNECT-time decode error with, if any. An unknown protocol
/// level gets the 3.1.1 form (0x01), which every version understands; a v5 client gets its
/// reason code (MQTT 5 4.13.1 allows it); a 3.1.1 client is only disconnected, as 3.1.1
/// has no code for malformed packets.
pub fn connack_for_decode_error(e: &DecodeError, v5: bool) -> Option<(Protocol, ReasonCode)> {
    match e {
        DecodeError::UnsupportedProtocol => {
            Some((Protocol::V311, ReasonCode::UnsupportedProtocolVersion))
        }
        _ if v5 => Some((Protocol::V5, e.reason())),
        _ => None,
    }
}

/// The protocol level of a CONNECT at the front of `buf`, once its header has arrived.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    // Skip the variable-byte remaining length (at most 4 bytes).
    let len_bytes = buf.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let rest = buf.get(1 + len_bytes..)?;
    match rest.get(..7)? {
        [0, 4, b'M', b'Q', b'T', b'T', level] => Some(*level),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_level_reads_the_declared_version() {
        let v5 = [0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03];
        assert_eq!(connect_level(&v5), Some(5));
        let v4_long_len = [0x10, 0x80, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 4];
        assert_eq!(connect_level(&v4_long_len), Some(4));
        assert_eq!(connect_level(&v5[..8]), None, "level not yet arrived");
        assert_eq!(connect_level(&[0x30, 0x00]), None, "not CONNECT");
        assert_eq!(connect_level(&[0x10, 0x0E, 0, 6, b'M', b'Q', b'I', b's']), None);
        assert_eq!(connect_level(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), None);
    }

    #[test]
    fn decode_errors_get_a_connack_only_where_the_client_can_read_it() {
        let e = DecodeError::Malformed("reserved flag");
        assert_eq!(
            connack_for_decode_error(&e, true),
            Some((Protocol::V5, ReasonCode::MalformedPacket))
        );
        assert_eq!(connack_for_decode_error(&e, false), None);
        assert_eq!(
            connack_for_decode_error(&DecodeError::UnsupportedProtocol, false),
            Some((Protocol::V311, ReasonCode::UnsupportedProtocolVersion))
        );
    }
}
