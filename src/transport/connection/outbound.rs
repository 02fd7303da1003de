//! Encoding what goes to the client into one batch buffer: control packets, and PUBLISH
//! with per-subscriber properties (subscription identifiers, remaining expiry, outbound
//! topic aliases) over the shared payload.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use crate::broker::{now_ms, Delivery};
use crate::mqtt::{self, Packet, Protocol, PublishRef};
use crate::telemetry::{DropReason, Metrics};

pub struct Outbound {
    protocol: Protocol,
    alias_max: u16,
    aliases: HashMap<Arc<str>, u16>,
    max_packet: usize,
    /// The pending batch; written with one syscall and released after.
    pub buf: BytesMut,
}

impl Outbound {
    pub fn new(protocol: Protocol, alias_max: u16, max_packet: usize) -> Self {
        Outbound { protocol, alias_max, aliases: HashMap::new(), max_packet, buf: BytesMut::new() }
    }

    pub fn packet(&mut self, p: &Packet, metrics: &Metrics) {
        let start = self.buf.len();
        mqtt::encode(p, self.protocol, &mut self.buf);
        metrics.packet_out(self.buf[start], self.buf.len() - start);
    }

    /// Encodes one delivery. Returns false if it was dropped (expired, or larger than the
    /// client's maximum packet size); the caller then treats it as delivered.
    pub fn publish(&mut self, pkid: u16, d: &Delivery, dup: bool, metrics: &Metrics) -> bool {
        let now = now_ms();
        if d.msg.expired(now) {
            metrics.dropped(DropReason::Expired);
            return false;
        }
        let v5 = self.protocol.is_v5();
        let mut alias_only = false;
        let mut new_alias = None;
        let props = if v5 {
            let mut p = d.msg.props.clone();
            p.subscription_identifiers.clone_from(&d.sub_ids);
            p.message_expiry_interval = d.msg.remaining_expiry(now);
            if self.alias_max > 0 {
                if let Some(a) = self.aliases.get(&d.msg.topic) {
                    p.topic_alias = Some(*a);
                    alias_only = true;
                } else if self.aliases.len() < usize::from(self.alias_max) {
                    let a = self.aliases.len() as u16 + 1;
                    new_alias = Some(a);
                    p.topic_alias = Some(a);
                }
            }
            p
        } else {
            mqtt::Properties::default()
        };
        let p = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: if alias_only { "" } else { &d.msg.topic },
            pkid,
            properties: &props,
            payload: &d.msg.payload,
        };
        let len = p.encoded_len(self.protocol);
        if len > self.max_packet {
            metrics.dropped(DropReason::TooLargeForClient);
            return false;
        }
        if let Some(a) = new_alias {
            // Registered only once the client actually receives the mapping.
            self.aliases.insert(d.msg.topic.clone(), a);
        }
        p.encode(self.protocol, &mut self.buf);
        metrics.packet_out(0x30, len);
        metrics.messages_out.inc();
        true
    }
}
