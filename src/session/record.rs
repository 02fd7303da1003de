//! The persisted session record: what survives a disconnect and a restart.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::outgoing::{Inflight, Stage};
use crate::broker::{Delivery, StoredMessage};
use crate::mqtt::{QoS, SubOptions};

/// Session expiry meaning "never" (3.1.1 persistent sessions, v5 0xFFFFFFFF).
pub const NEVER_EXPIRES: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub opts: SubOptions,
    pub id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInflight {
    pub pkid: u16,
    pub released: bool,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// Offline-queue entry this came from, if any.
    pub seq: Option<u64>,
    pub msg: StoredMessage,
}

impl From<&Inflight> for StoredInflight {
    fn from(i: &Inflight) -> Self {
        StoredInflight {
            pkid: i.pkid,
            released: i.stage == Stage::Released,
            qos: i.delivery.qos,
            retain: i.delivery.retain,
            sub_ids: i.delivery.sub_ids.clone(),
            seq: i.delivery.seq,
            msg: StoredMessage::from(&*i.delivery.msg),
        }
    }
}

impl StoredInflight {
    pub fn into_inflight(self) -> Inflight {
        Inflight {
            pkid: self.pkid,
            stage: if self.released { Stage::Released } else { Stage::Published },
            delivery: Delivery {
                msg: Arc::new(self.msg.into_message(None)),
                qos: self.qos,
                retain: self.retain,
                sub_ids: self.sub_ids,
                seq: self.seq,
                shared: None,
            },
        }
    }
}

/// A will waiting for its delay (v5) to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWill {
    pub msg: StoredMessage,
    /// Delay interval in seconds (0 = at connection loss).
    pub delay_secs: u32,
    /// When it fires, once the connection is gone.
    pub at_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Seconds the session outlives its connection; [`NEVER_EXPIRES`] for ever.
    pub expiry_secs: u32,
    pub subscriptions: Vec<StoredSubscription>,
    pub inflight: Vec<StoredInflight>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub awaiting_rel: Vec<u16>,
    /// When the last connection ended; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    pub will: Option<StoredWill>,
    /// Next offline-queue sequence number.
    pub next_seq: u64,
}

impl SessionRecord {
    /// Nothing to remember beyond its sequence counter: a clean session with no
    /// subscriptions, will or messages in flight.
    pub fn is_blank(&self) -> bool {
        self.expiry_secs == 0
            && self.subscriptions.is_empty()
            && self.inflight.is_empty()
            && self.awaiting_rel.is_empty()
            && self.disconnected_at_ms.is_none()
            && self.will.is_none()
    }

    /// When the session expires, if it is offline and expires at all.
    pub fn expires_at_ms(&self) -> Option<u64> {
        let at = self.disconnected_at_ms?;
        (self.expiry_secs != NEVER_EXPIRES).then(|| at + u64::from(self.expiry_secs) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_nothing_but_the_counter() {
        let mut r = SessionRecord { next_seq: 42, ..Default::default() };
        assert!(r.is_blank());
        r.subscriptions.push(StoredSubscription {
            filter: "a/#".into(),
            opts: SubOptions::qos(QoS::AtMostOnce),
            id: None,
        });
        assert!(!r.is_blank());
        let persistent = SessionRecord { expiry_secs: 10, ..Default::default() };
        assert!(!persistent.is_blank());
        let awaiting = SessionRecord { awaiting_rel: vec![7], ..Default::default() };
        assert!(!awaiting.is_blank());
    }
}
