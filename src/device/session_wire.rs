//! The wire forms of what a session's connection and its device actor exchange across
//! nodes (`super::attached`): deliveries, in-flight messages, a connection's live state,
//! a re-attach, reason codes. Pure conversions, no I/O.

use std::sync::Arc;

use super::Resume;
use crate::broker::{Delivery, LiveState, SharedKey, StoredMessage};
use crate::cluster::wire::{WireDelivery, WireInflight, WireLive, WireResume};
use crate::mqtt::ReasonCode;
use crate::session::{Inflight, Stage};

pub(super) fn delivery_to_wire(d: &Delivery) -> WireDelivery {
    WireDelivery {
        msg: StoredMessage::from(d),
        sub_ids: d.sub_ids.clone(),
        seq: d.seq,
        shared: d.shared.as_ref().map(|k| (k.group.to_string(), k.filter.to_string())),
    }
}

pub(super) fn delivery_from_wire(w: WireDelivery) -> Delivery {
    Delivery {
        qos: w.msg.qos,
        retain: w.msg.retain,
        msg: Arc::new(w.msg.into_message(None)),
        sub_ids: w.sub_ids,
        seq: w.seq,
        shared: w.shared.map(|(group, filter)| {
            Arc::new(SharedKey { group: group.into(), filter: filter.into() })
        }),
    }
}

pub(super) fn inflight_to_wire(i: &Inflight) -> WireInflight {
    WireInflight {
        pkid: i.pkid,
        released: i.stage == Stage::Released,
        delivery: delivery_to_wire(&i.delivery),
    }
}

pub(super) fn inflight_from_wire(w: WireInflight) -> Inflight {
    Inflight {
        pkid: w.pkid,
        stage: if w.released { Stage::Released } else { Stage::Published },
        delivery: delivery_from_wire(w.delivery),
    }
}

pub(super) fn live_to_wire(l: &LiveState) -> WireLive {
    WireLive {
        inflight: l.inflight.iter().map(inflight_to_wire).collect(),
        pending: l.pending.iter().map(delivery_to_wire).collect(),
        awaiting_rel: l.awaiting_rel.clone(),
        done: l.done.clone(),
    }
}

pub(super) fn live_from_wire(w: WireLive) -> LiveState {
    LiveState {
        inflight: w.inflight.into_iter().map(inflight_from_wire).collect(),
        pending: w.pending.into_iter().map(delivery_from_wire).collect(),
        awaiting_rel: w.awaiting_rel,
        done: w.done,
    }
}

pub(super) fn resume_to_wire(r: &Resume) -> WireResume {
    WireResume {
        inflight: r.inflight.iter().map(inflight_to_wire).collect(),
        pending_seqs: r.pending_seqs.clone(),
        awaiting_rel: r.awaiting_rel.clone(),
        record: r.record.clone(),
    }
}

pub(super) fn resume_from_wire(w: WireResume) -> Resume {
    Resume {
        inflight: w.inflight.into_iter().map(inflight_from_wire).collect(),
        pending_seqs: w.pending_seqs,
        awaiting_rel: w.awaiting_rel,
        record: w.record,
    }
}

pub(super) fn codes(raw: Vec<u8>) -> Vec<ReasonCode> {
    raw.into_iter()
        .map(|c| ReasonCode::from_u8(c).unwrap_or(ReasonCode::UnspecifiedError))
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::broker::Message;
    use crate::mqtt::{Properties, QoS};
    use crate::session::Inflight;

    fn delivery(seq: Option<u64>, shared: bool) -> Delivery {
        let msg = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            props: Properties {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            },
            expires_at_ms: Some(99),
            origin: None,
            publisher: None,
        };
        Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![3, 4],
            seq,
            shared: shared.then(|| Arc::new(SharedKey { group: "g".into(), filter: "a/+".into() })),
        }
    }

    #[test]
    fn deliveries_and_live_state_survive_the_wire() {
        let d = delivery(Some(7), true);
        let back = delivery_from_wire(delivery_to_wire(&d));
        // The delivered QoS and RETAIN flag travel as the message's.
        assert_eq!((back.qos, back.retain, back.seq), (QoS::AtLeastOnce, false, Some(7)));
        assert_eq!(back.sub_ids, vec![3, 4]);
        assert_eq!(back.msg.payload, d.msg.payload);
        assert_eq!(back.msg.props, d.msg.props);
        assert_eq!(back.msg.expires_at_ms, Some(99));
        assert_eq!(back.shared.as_deref(), d.shared.as_deref());

        let live = LiveState {
            inflight: vec![Inflight {
                pkid: 12,
                stage: Stage::Released,
                delivery: delivery(None, false),
            }],
            pending: vec![delivery(Some(8), false), delivery(None, true)],
            awaiting_rel: vec![5, 6],
            done: vec![3],
        };
        let wire = live_to_wire(&live);
        let bytes = crate::cluster::wire::encode(&wire);
        let back = live_from_wire(crate::cluster::wire::decode(&bytes).unwrap());
        assert_eq!(back.inflight.len(), 1);
        assert_eq!((back.inflight[0].pkid, back.inflight[0].stage), (12, Stage::Released));
        assert_eq!(back.pending.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![Some(8), None]);
        assert!(back.pending[1].shared.is_some());
        assert_eq!(back.awaiting_rel, vec![5, 6]);
    }

    #[test]
    fn reason_codes_that_do_not_decode_are_unspecified_errors() {
        assert_eq!(
            codes(vec![0x00, 0x01, 0x87, 0xff]),
            vec![
                ReasonCode::Success,
                ReasonCode::GrantedQos1,
                ReasonCode::NotAuthorized,
                ReasonCode::UnspecifiedError
            ]
        );
    }
}
