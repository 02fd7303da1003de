//! MQTT 5 properties: one struct for every packet kind, with the per-packet table of which
//! properties are allowed, the duplicate rule and the value rules of spec 2.2.2.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{put_binary, put_string, put_varint, varint_len, Reader};
use super::decode::DecodeError;

/// Packet kinds that carry properties, used to check which properties are allowed where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// All v5 properties. `None`/empty means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several on PUBLISH (one per matching subscription), at most one on SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn allowed(id: u8, c: Carrier) -> bool {
    use Carrier::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(c, Publish | Will),
        0x0B => matches!(c, Publish | Subscribe),
        0x11 => matches!(c, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => c == ConnAck,
        0x15 | 0x16 => matches!(c, Connect | ConnAck | Auth),
        0x17 | 0x19 => c == Connect,
        0x18 => c == Will,
        0x1C => matches!(c, ConnAck | Disconnect),
        0x1F => !matches!(c, Connect | Publish | Will | Subscribe | Unsubscribe),
        0x21 | 0x22 | 0x27 => matches!(c, Connect | ConnAck),
        0x23 => c == Publish,
        0x26 => true,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("duplicate property"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

impl Properties {
    /// Reads a property block (length then properties) for `carrier`. `max_user_properties`
    /// bounds user-property floods.
    pub(crate) fn read(
        r: &mut Reader,
        carrier: Carrier,
        max_user_properties: usize,
    ) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let block = r.take(len)?;
        let mut r = Reader::new(block);
        let mut p = Properties::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
            if !allowed(id, carrier) {
                return Err(DecodeError::Malformed("property not allowed in this packet"));
            }
            match id {
                0x01 => set_once(&mut p.payload_format_indicator, flag(r.u8()?)?)?,
                0x02 => set_once(&mut p.message_expiry_interval, r.u32()?)?,
                0x03 => set_once(&mut p.content_type, r.string()?)?,
                0x08 => {
                    let t = r.string()?;
                    super::topic::validate_name(&t)?;
                    set_once(&mut p.response_topic, t)?
                }
                0x09 => set_once(&mut p.correlation_data, r.binary()?)?,
                0x0B => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if carrier == Carrier::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("duplicate property"));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut p.session_expiry_interval, r.u32()?)?,
                0x12 => set_once(&mut p.assigned_client_identifier, r.string()?)?,
                0x13 => set_once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => set_once(&mut p.authentication_method, r.string()?)?,
                0x16 => set_once(&mut p.authentication_data, r.binary()?)?,
                0x17 => set_once(&mut p.request_problem_information, flag(r.u8()?)?)?,
                0x18 => set_once(&mut p.will_delay_interval, r.u32()?)?,
                0x19 => set_once(&mut p.request_response_information, flag(r.u8()?)?)?,
                0x1A => set_once(&mut p.response_information, r.string()?)?,
                0x1C => set_once(&mut p.server_reference, r.string()?)?,
                0x1F => set_once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                0x22 => set_once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => set_once(&mut p.topic_alias, r.u16()?)?,
                0x24 => set_once(&mut p.maximum_qos, flag(r.u8()?)?)?,
                0x25 => set_once(&mut p.retain_available, flag(r.u8()?)?)?,
                0x26 => {
                    if p.user_properties.len() >= max_user_properties {
                        return Err(DecodeError::TooManyUserProperties);
                    }
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                0x28 => set_once(&mut p.wildcard_subscription_available, flag(r.u8()?)?)?,
                0x29 => set_once(&mut p.subscription_identifier_available, flag(r.u8()?)?)?,
                0x2A => set_once(&mut p.shared_subscription_available, flag(r.u8()?)?)?,
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(p)
    }

    /// Length of the property block body (without its own length prefix).
    pub fn body_len(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, |v| 3 + v.len());
        let b = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 3 + v.len());
        let n1 = |o: &Option<u8>| o.map_or(0, |_| 2);
        let n2 = |o: &Option<u16>| o.map_or(0, |_| 3);
        let n4 = |o: &Option<u32>| o.map_or(0, |_| 5);
        n1(&self.payload_format_indicator)
            + n4(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + varint_len(*v as usize))
                .sum::<usize>()
            + n4(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(&self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(&self.request_problem_information)
            + n4(&self.will_delay_interval)
            + n1(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(&self.receive_maximum)
            + n2(&self.topic_alias_maximum)
            + n2(&self.topic_alias)
            + n1(&self.maximum_qos)
            + n1(&self.retain_available)
            + self.user_properties.iter().map(|(k, v)| 5 + k.len() + v.len()).sum::<usize>()
            + n4(&self.maximum_packet_size)
            + n1(&self.wildcard_subscription_available)
            + n1(&self.subscription_identifier_available)
            + n1(&self.shared_subscription_available)
    }

    /// Length of the whole block including its length prefix.
    pub fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n) + n
    }

    pub fn is_empty(&self) -> bool {
        self.body_len() == 0
    }

    pub(crate) fn write(&self, out: &mut BytesMut) {
        put_varint(out, self.body_len());
        let u8p = |out: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        u8p(out, 0x01, self.payload_format_indicator);
        if let Some(v) = self.message_expiry_interval {
            out.put_u8(0x02);
            out.put_u32(v);
        }
        put_opt_str(out, 0x03, &self.content_type);
        put_opt_str(out, 0x08, &self.response_topic);
        put_opt_bin(out, 0x09, &self.correlation_data);
        for v in &self.subscription_identifiers {
            out.put_u8(0x0B);
            put_varint(out, *v as usize);
        }
        if let Some(v) = self.session_expiry_interval {
            out.put_u8(0x11);
            out.put_u32(v);
        }
        put_opt_str(out, 0x12, &self.assigned_client_identifier);
        if let Some(v) = self.server_keep_alive {
            out.put_u8(0x13);
            out.put_u16(v);
        }
        put_opt_str(out, 0x15, &self.authentication_method);
        put_opt_bin(out, 0x16, &self.authentication_data);
        u8p(out, 0x17, self.request_problem_information);
        if let Some(v) = self.will_delay_interval {
            out.put_u8(0x18);
            out.put_u32(v);
        }
        u8p(out, 0x19, self.request_response_information);
        put_opt_str(out, 0x1A, &self.response_information);
        put_opt_str(out, 0x1C, &self.server_reference);
        put_opt_str(out, 0x1F, &self.reason_string);
        for (id, v) in [
            (0x21, self.receive_maximum),
            (0x22, self.topic_alias_maximum),
            (0x23, self.topic_alias),
        ] {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        }
        u8p(out, 0x24, self.maximum_qos);
        u8p(out, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(0x26);
            put_string(out, k);
            put_string(out, v);
        }
        if let Some(v) = self.maximum_packet_size {
            out.put_u8(0x27);
            out.put_u32(v);
        }
        u8p(out, 0x28, self.wildcard_subscription_available);
        u8p(out, 0x29, self.subscription_identifier_available);
        u8p(out, 0x2A, self.shared_subscription_available);
    }
}

fn put_opt_str(out: &mut BytesMut, id: u8, v: &Option<String>) {
    if let Some(v) = v {
        out.put_u8(id);
        put_string(out, v);
    }
}

fn put_opt_bin(out: &mut BytesMut, id: u8, v: &Option<Bytes>) {
    if let Some(v) = v {
        out.put_u8(id);
        put_binary(out, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], c: Carrier) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        Properties::read(&mut r, c, 16)
    }

    #[test]
    fn duplicate_property_is_protocol_error() {
        let e = read(&[6, 0x02, 0, 0, 0, 1, 0x02], Carrier::Publish);
        assert!(e.is_err());
        let e = read(&[10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], Carrier::Publish).unwrap_err();
        assert!(matches!(e, DecodeError::Protocol(_)));
    }

    #[test]
    fn property_outside_its_packet_is_rejected() {
        // Topic alias in CONNECT.
        assert!(read(&[3, 0x23, 0, 1], Carrier::Connect).is_err());
        assert!(read(&[3, 0x23, 0, 1], Carrier::Publish).is_ok());
    }

    #[test]
    fn user_property_flood_is_bounded() {
        let mut body = Vec::new();
        for _ in 0..17 {
            body.extend_from_slice(&[0x26, 0, 1, b'k', 0, 1, b'v']);
        }
        let mut bytes = vec![body.len() as u8];
        bytes.extend(body);
        assert_eq!(read(&bytes, Carrier::Publish), Err(DecodeError::TooManyUserProperties));
    }

    #[test]
    fn zero_values_that_spec_forbids() {
        assert!(read(&[3, 0x21, 0, 0], Carrier::Connect).is_err());
        assert!(read(&[5, 0x27, 0, 0, 0, 0], Carrier::Connect).is_err());
        assert!(read(&[2, 0x0B, 0], Carrier::Subscribe).is_err());
    }
}
