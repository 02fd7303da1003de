//! Packets to bytes. Lengths are computed first so each packet is written once, straight
//! into the caller's output buffer (the connection batches many packets into one write).

use bytes::{BufMut, BytesMut};

use super::codec::{put_binary, put_string, put_varint, varint_len};
use super::packet::*;
use super::properties::Properties;
use super::reason::{connack_v3_code, ReasonCode};

fn props_len(v: Protocol, p: &Properties) -> usize {
    if v.is_v5() {
        p.encoded_len()
    } else {
        0
    }
}

/// Fields of an outgoing PUBLISH, borrowed so the router's shared message is not cloned per
/// subscriber.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub pkid: u16,
    pub properties: &'a Properties,
    pub payload: &'a [u8],
}

impl PublishRef<'_> {
    fn body_len(&self, v: Protocol) -> usize {
        2 + self.topic.len()
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + props_len(v, self.properties)
            + self.payload.len()
    }

    /// Size of the whole packet on the wire.
    pub fn encoded_len(&self, v: Protocol) -> usize {
        let b = self.body_len(v);
        1 + varint_len(b) + b
    }

    pub fn encode(&self, v: Protocol, out: &mut BytesMut) {
        let b = self.body_len(v);
        out.reserve(1 + varint_len(b) + b);
        let mut first = 0x30 | ((self.qos as u8) << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        out.put_u8(first);
        put_varint(out, b);
        put_string(out, self.topic);
        if self.qos != QoS::AtMostOnce {
            out.put_u16(self.pkid);
        }
        if v.is_v5() {
            self.properties.write(out);
        }
        out.put_slice(self.payload);
    }
}

impl Publish {
    pub fn as_ref(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            pkid: self.pkid,
            properties: &self.properties,
            payload: &self.payload,
        }
    }
}

fn pub_resp_body(v: Protocol, p: &PubResp) -> usize {
    if !v.is_v5() || (p.reason == ReasonCode::Success && p.properties.is_empty()) {
        2
    } else if p.properties.is_empty() {
        3
    } else {
        3 + p.properties.encoded_len()
    }
}

fn reason_props_body(v: Protocol, reason: ReasonCode, p: &Properties) -> usize {
    if !v.is_v5() || (reason == ReasonCode::Success && p.is_empty()) {
        0
    } else if p.is_empty() {
        1
    } else {
        1 + p.encoded_len()
    }
}

fn body_len(p: &Packet, v: Protocol) -> usize {
    match p {
        Packet::Connect(c) => {
            let cv = c.protocol;
            let mut n = 6 + 1 + 1 + 2 + props_len(cv, &c.properties) + 2 + c.client_id.len();
            if let Some(w) = &c.will {
                n += props_len(cv, &w.properties) + 2 + w.topic.len() + 2 + w.payload.len();
            }
            n += c.username.as_ref().map_or(0, |u| 2 + u.len());
            n += c.password.as_ref().map_or(0, |p| 2 + p.len());
            n
        }
        Packet::ConnAck(c) => 2 + props_len(v, &c.properties),
        Packet::Publish(p) => p.as_ref().body_len(v),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pub_resp_body(v, r)
        }
        Packet::Subscribe(s) => {
            2 + props_len(v, &s.properties)
                + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(v, &s.properties) + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(v, &u.properties) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            if v.is_v5() {
                2 + u.properties.encoded_len() + u.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => reason_props_body(v, d.reason, &d.properties),
        Packet::Auth(a) => reason_props_body(v, a.reason, &a.properties),
    }
}

/// Size of `p` on the wire under protocol `v`.
pub fn encoded_len(p: &Packet, v: Protocol) -> usize {
    let b = body_len(p, v);
    1 + varint_len(b) + b
}

fn sub_options_byte(o: &SubOptions, v: Protocol) -> u8 {
    let mut b = o.qos as u8;
    if v.is_v5() {
        if o.no_local {
            b |= 0x04;
        }
        if o.retain_as_published {
            b |= 0x08;
        }
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

fn put_reason_props(out: &mut BytesMut, v: Protocol, reason: ReasonCode, p: &Properties) {
    if reason_props_body(v, reason, p) > 0 {
        out.put_u8(reason as u8);
        if !p.is_empty() {
            p.write(out);
        }
    }
}

/// Appends `p` encoded under protocol `v` to `out`. A CONNECT uses its own protocol.
pub fn encode(p: &Packet, v: Protocol, out: &mut BytesMut) {
    if let Packet::Publish(publish) = p {
        publish.as_ref().encode(v, out);
        return;
    }
    let b = body_len(p, v);
    out.reserve(1 + varint_len(b) + b);
    let first: u8 = match p {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(_) => unreachable!("handled above"),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    };
    out.put_u8(first);
    put_varint(out, b);
    match p {
        Packet::Connect(c) => {
            let cv = c.protocol;
            put_string(out, "MQTT");
            out.put_u8(if cv.is_v5() { 5 } else { 4 });
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            if cv.is_v5() {
                c.properties.write(out);
            }
            put_string(out, &c.client_id);
            if let Some(w) = &c.will {
                if cv.is_v5() {
                    w.properties.write(out);
                }
                put_string(out, &w.topic);
                put_binary(out, &w.payload);
            }
            if let Some(u) = &c.username {
                put_string(out, u);
            }
            if let Some(pw) = &c.password {
                put_binary(out, pw);
            }
        }
        Packet::ConnAck(c) => {
            out.put_u8(u8::from(c.session_present));
            if v.is_v5() {
                out.put_u8(c.reason as u8);
                c.properties.write(out);
            } else {
                out.put_u8(connack_v3_code(c.reason));
            }
        }
        Packet::Publish(_) => unreachable!("handled above"),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            out.put_u16(r.pkid);
            let n = pub_resp_body(v, r);
            if n >= 3 {
                out.put_u8(r.reason as u8);
            }
            if n > 3 {
                r.properties.write(out);
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.pkid);
            if v.is_v5() {
                s.properties.write(out);
            }
            for (f, o) in &s.filters {
                put_string(out, f);
                out.put_u8(sub_options_byte(o, v));
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.pkid);
            if v.is_v5() {
                s.properties.write(out);
            }
            for r in &s.reasons {
                let code = *r as u8;
                // 3.1.1 knows only 0x00-0x02 and 0x80.
                out.put_u8(if !v.is_v5() && code >= 0x80 { 0x80 } else { code });
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.pkid);
            if v.is_v5() {
                u.properties.write(out);
            }
            for f in &u.filters {
                put_string(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.pkid);
            if v.is_v5() {
                u.properties.write(out);
                for r in &u.reasons {
                    out.put_u8(*r as u8);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => put_reason_props(out, v, d.reason, &d.properties),
        Packet::Auth(a) => put_reason_props(out, v, a.reason, &a.properties),
    }
}
