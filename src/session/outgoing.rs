//! Outbound QoS 1/2 flow towards one client: at most `window` (the client's Receive
//! Maximum) unacknowledged PUBLISH packets, the rest wait in order.

use std::collections::{HashSet, VecDeque};

use crate::broker::Delivery;
use crate::mqtt::QoS;

/// Where an unacknowledged outbound message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// What to send again after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// PUBLISH with DUP set and the same packet id.
    Publish(u16, Delivery),
    /// PUBREL for a message the client already received.
    PubRel(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubComp,
}

/// Result of an acknowledgement: the message it completed, if any, and what the freed
/// window slots let through next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    pub done: Option<Delivery>,
    pub next: Vec<(u16, Delivery)>,
}

/// An acknowledgement that fits no in-flight message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No in-flight message has that packet id (v5: reason 0x92 on PUBCOMP/PUBREL paths).
    #[error("packet identifier not found")]
    NotFound,
    /// The message is in another stage (e.g. PUBACK for a QoS 2 message).
    #[error("acknowledgement does not match the message's QoS or stage")]
    WrongStage,
}

/// The outbound window of one session.
#[derive(Debug)]
pub struct Outgoing {
    window: usize,
    inflight: VecDeque<Inflight>,
    used: HashSet<u16>,
    pending: VecDeque<Delivery>,
    next_pkid: u16,
}

impl Outgoing {
    pub fn new(window: u16) -> Self {
        Outgoing {
            window: usize::from(window.max(1)),
            inflight: VecDeque::new(),
            used: HashSet::new(),
            pending: VecDeque::new(),
            next_pkid: 1,
        }
    }

    /// Restores in-flight messages of a resumed session (they keep their packet ids).
    pub fn restore(&mut self, inflight: Vec<Inflight>) {
        for i in inflight {
            if self.used.insert(i.pkid) {
                self.inflight.push_back(i);
            }
        }
    }

    /// The unacknowledged deliveries, and the stored entries waiting for a window slot:
    /// what a connection that re-attaches to a moved session keeps (`crate::device::Resume`).
    pub fn snapshot(&self) -> (Vec<Inflight>, Vec<u64>) {
        let pending = self.pending.iter().filter_map(|d| d.seq).collect();
        (self.inflight.iter().cloned().collect(), pending)
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.used.contains(&id) {
                self.used.insert(id);
                return id;
            }
        }
    }

    /// Offers a delivery. Returns the packet id to send it with (0 for QoS 0), or `None`
    /// when the window is full and it waits.
    pub fn submit(&mut self, d: Delivery) -> Option<(u16, Delivery)> {
        if d.qos == QoS::AtMostOnce {
            return Some((0, d));
        }
        if self.inflight.len() >= self.window || !self.pending.is_empty() {
            self.pending.push_back(d);
            return self.next_pending();
        }
        let pkid = self.alloc_pkid();
        self.inflight.push_back(Inflight { pkid, delivery: d.clone(), stage: Stage::Published });
        Some((pkid, d))
    }

    fn next_pending(&mut self) -> Option<(u16, Delivery)> {
        if self.inflight.len() >= self.window {
            return None;
        }
        let d = self.pending.pop_front()?;
        let pkid = self.alloc_pkid();
        self.inflight.push_back(Inflight { pkid, delivery: d.clone(), stage: Stage::Published });
        Some((pkid, d))
    }

    /// Appends deliveries to the waiting list without sending any (the session is about
    /// to move to another connection).
    pub fn hold(&mut self, items: impl IntoIterator<Item = Delivery>) {
        self.pending.extend(items);
    }

    /// Applies an acknowledgement. On PUBREC the caller sends PUBREL. Completed messages
    /// free window slots; the deliveries to send next are returned.
    pub fn ack(&mut self, pkid: u16, kind: AckKind) -> Result<Acked, AckError> {
        // Acks usually arrive in order: look at the front first.
        let idx = if self.inflight.front().is_some_and(|i| i.pkid == pkid) {
            0
        } else {
            self.inflight.iter().position(|i| i.pkid == pkid).ok_or(AckError::NotFound)?
        };
        let entry = &mut self.inflight[idx];
        match (kind, entry.delivery.qos, entry.stage) {
            (AckKind::PubAck, QoS::AtLeastOnce, Stage::Published)
            | (AckKind::PubComp, QoS::ExactlyOnce, Stage::Released) => {
                let done = self.inflight.remove(idx).map(|i| i.delivery);
                self.used.remove(&pkid);
                let mut next = Vec::new();
                while let Some(s) = self.next_pending() {
                    next.push(s);
                }
                Ok(Acked { done, next })
            }
            (AckKind::PubRec, QoS::ExactlyOnce, Stage::Published) => {
                entry.stage = Stage::Released;
                Ok(Acked::default())
            }
            // A repeated PUBREC after PUBREL: the caller answers with PUBREL again.
            (AckKind::PubRec, QoS::ExactlyOnce, Stage::Released) => Ok(Acked::default()),
            _ => Err(AckError::WrongStage),
        }
    }

    /// A PUBREC with an error reason (v5) ends a QoS 2 flow early.
    pub fn abandon(&mut self, pkid: u16) -> Acked {
        let mut done = None;
        if let Some(idx) = self.inflight.iter().position(|i| i.pkid == pkid) {
            done = self.inflight.remove(idx).map(|i| i.delivery);
            self.used.remove(&pkid);
        }
        let mut next = Vec::new();
        while let Some(s) = self.next_pending() {
            next.push(s);
        }
        Acked { done, next }
    }

    /// What to retransmit when the session resumes on a new connection, in order.
    pub fn resend(&self) -> Vec<Resend> {
        self.inflight
            .iter()
            .map(|i| match i.stage {
                Stage::Published => Resend::Publish(i.pkid, i.delivery.clone()),
                Stage::Released => Resend::PubRel(i.pkid),
            })
            .collect()
    }

    /// Ends the live session: its in-flight and waiting messages, in order.
    pub fn into_parts(self) -> (Vec<Inflight>, Vec<Delivery>) {
        (self.inflight.into(), self.pending.into())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::broker::test_delivery;

    fn d(qos: QoS, n: u8) -> Delivery {
        test_delivery(qos, n)
    }

    #[test]
    fn window_limits_inflight_and_pending_keeps_order() {
        let mut o = Outgoing::new(2);
        assert_eq!(o.submit(d(QoS::AtLeastOnce, 1)).unwrap().0, 1);
        assert_eq!(o.submit(d(QoS::AtLeastOnce, 2)).unwrap().0, 2);
        assert!(o.submit(d(QoS::AtLeastOnce, 3)).is_none());
        assert!(o.submit(d(QoS::AtLeastOnce, 4)).is_none());
        // QoS 0 never waits.
        assert_eq!(o.submit(d(QoS::AtMostOnce, 5)).unwrap().0, 0);
        let acked = o.ack(2, AckKind::PubAck).unwrap();
        assert_eq!(acked.done.unwrap().msg.payload[0], 2);
        assert_eq!(acked.next.len(), 1);
        assert_eq!(acked.next[0].1.msg.payload[0], 3);
        assert_eq!(o.inflight_len(), 2);
        assert_eq!(o.pending_len(), 1);
    }

    #[test]
    fn qos2_flow_and_wrong_acks() {
        let mut o = Outgoing::new(10);
        let (id, _) = o.submit(d(QoS::ExactlyOnce, 1)).unwrap();
        assert_eq!(o.ack(id, AckKind::PubAck), Err(AckError::WrongStage));
        assert_eq!(o.ack(id, AckKind::PubComp), Err(AckError::WrongStage));
        assert_eq!(o.ack(id, AckKind::PubRec).unwrap(), Acked::default());
        assert_eq!(o.resend(), vec![Resend::PubRel(id)]);
        o.ack(id, AckKind::PubComp).unwrap();
        assert_eq!(o.inflight_len(), 0);
        assert_eq!(o.ack(id, AckKind::PubComp), Err(AckError::NotFound));
    }

    #[test]
    fn resend_keeps_ids_and_ids_are_not_reused_while_in_flight() {
        let mut o = Outgoing::new(3);
        let a = o.submit(d(QoS::AtLeastOnce, 1)).unwrap().0;
        let (inflight, pending) = Outgoing::into_parts(o);
        assert!(pending.is_empty());
        let mut o = Outgoing::new(3);
        o.restore(inflight);
        assert!(matches!(&o.resend()[0], Resend::Publish(id, _) if *id == a));
        let b = o.submit(d(QoS::AtLeastOnce, 2)).unwrap().0;
        assert_ne!(a, b);
    }

    #[test]
    fn packet_ids_wrap_and_skip_used() {
        let mut o = Outgoing::new(u16::MAX);
        o.next_pkid = u16::MAX;
        assert_eq!(o.submit(d(QoS::AtLeastOnce, 1)).unwrap().0, u16::MAX);
        assert_eq!(o.submit(d(QoS::AtLeastOnce, 2)).unwrap().0, 1);
    }
}
