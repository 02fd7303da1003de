//! PUBLISH from a live session: topic aliases, QoS and quota bookkeeping, the abuse
//! limits (rate, bandwidth, topic size, user property bytes) and the client's policies,
//! then routing; and the acknowledgement, sent at once or when what it waits for
//! (storage, room at a full subscriber) has happened, in PUBLISH order.

use std::sync::Arc;

use super::{reserved, AckDone, Conn, End, MAX_OWED_ACKS, MAX_PAUSE};
use crate::auth::policy::Action;
use crate::broker::{app_properties, now_ms, AckWait, Message};
use crate::mqtt::{self, Packet, Properties, PubResp, QoS, ReasonCode};
use crate::transport::limits;

impl Conn {
    /// Counts an inbound packet against the rate limits; over them, reading pauses
    /// until the budget has refilled.
    pub(super) fn limit(&mut self, size: usize, publish: bool) {
        let Some(l) = &mut self.limiter else { return };
        let Some((wait, which)) = l.packet(size, publish, std::time::Instant::now()) else {
            return;
        };
        self.ctx.metrics.limit_hits.with_label_values(&[which]).inc();
        let before = self.paused.take();
        self.paused = Some(Box::pin(async move {
            if let Some(p) = before {
                p.await;
            }
            tokio::time::sleep(wait).await;
        }));
    }

    pub(super) fn on_publish(&mut self, p: mqtt::Publish) -> Result<(), End> {
        let cfg = self.ctx.cfg.mqtt.clone();
        let v5 = self.neg.protocol.is_v5();
        self.ctx.metrics.messages_in.inc();
        let topic: Arc<str> = match p.properties.topic_alias {
            Some(a) if v5 => {
                if a == 0 || a > cfg.topic_alias_maximum {
                    return Err(End::Violation(
                        ReasonCode::TopicAliasInvalid,
                        "topic_alias_invalid",
                    ));
                }
                if p.topic.is_empty() {
                    match self.in_aliases.get(&a) {
                        Some(t) => t.clone(),
                        None => {
                            return Err(End::Violation(
                                ReasonCode::ProtocolError,
                                "unknown_topic_alias",
                            ))
                        }
                    }
                } else {
                    let t: Arc<str> = Arc::from(p.topic.as_str());
                    self.in_aliases.insert(a, t.clone());
                    t
                }
            }
            _ => Arc::from(p.topic.as_str()),
        };
        if p.qos as u8 > cfg.maximum_qos {
            return Err(End::Violation(ReasonCode::QosNotSupported, "qos_not_supported"));
        }
        if p.retain && !cfg.retain_available {
            return Err(End::Violation(ReasonCode::RetainNotSupported, "retain_not_supported"));
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                if self.incoming.check_quota().is_err() {
                    return Err(End::Violation(
                        ReasonCode::ReceiveMaximumExceeded,
                        "receive_maximum_exceeded",
                    ));
                }
            }
            QoS::ExactlyOnce => match self.incoming.publish(p.pkid) {
                Err(_) => {
                    return Err(End::Violation(
                        ReasonCode::ReceiveMaximumExceeded,
                        "receive_maximum_exceeded",
                    ))
                }
                Ok(false) => {
                    // Duplicate before PUBREL: acknowledge again, do not forward again.
                    self.out.packet(&Packet::PubRec(PubResp::ok(p.pkid)), &self.ctx.metrics);
                    return Ok(());
                }
                Ok(true) => {}
            },
        }
        let limits = &self.ctx.cfg.limits;
        if v5 && limits::user_property_bytes(&p.properties) > limits.max_user_property_bytes {
            self.ctx.metrics.limit_hits.with_label_values(&["user_property_bytes"]).inc();
            return Err(End::Violation(ReasonCode::QuotaExceeded, "user_properties_too_large"));
        }
        if !limits::topic_ok(&topic, limits) {
            self.ctx.metrics.limit_hits.with_label_values(&["topic_size"]).inc();
            if !v5 {
                return Err(End::Violation(ReasonCode::TopicNameInvalid, "topic_too_large"));
            }
            return match p.qos {
                QoS::AtMostOnce => Ok(()),
                qos => self.owe(p.pkid, qos, ReasonCode::TopicNameInvalid, Vec::new()),
            };
        }
        if !self.access.allows(&self.ctx.auth, Action::Publish, &topic) {
            // v5 gets 0x87; 3.1.1, which has no negative acknowledgement, gets its
            // acknowledgement and the message is dropped (counted as denied).
            let reason = if v5 { ReasonCode::NotAuthorized } else { ReasonCode::Success };
            return match p.qos {
                QoS::AtMostOnce => Ok(()),
                qos => self.owe(p.pkid, qos, reason, Vec::new()),
            };
        }
        let now = now_ms();
        let msg = Arc::new(Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: if v5 { app_properties(&p.properties) } else { Properties::default() },
            expires_at_ms: p.properties.message_expiry_interval.map(|s| now + u64::from(s) * 1000),
            origin: Some(self.client.clone()),
            publisher: Some(self.publisher.clone()),
        });
        let reserved = if msg.topic.starts_with("$aws/") {
            reserved::route(&self.ctx, &self.slot, &msg)
        } else {
            None
        };
        // A reply topic is the broker's: clients may not publish there (v5 gets 0x87;
        // 3.1.1, which has no negative acknowledgement, is disconnected).
        let routed = if reserved == Some(false) {
            self.ctx.metrics.protocol_errors.with_label_values(&["reserved_topic"]).inc();
            None
        } else {
            Some(self.ctx.router.publish(msg))
        };
        if p.qos == QoS::AtMostOnce {
            match routed {
                // A subscriber's backlog is full: stop reading this client for a while.
                Some(Ok(r)) if !r.acks.is_empty() => self.pause(r.acks),
                Some(Err(e)) => tracing::error!(message = "publish not stored", error = %e),
                _ => {}
            }
            return Ok(());
        }
        let (pkid, qos) = (p.pkid, p.qos);
        let (reason, waits) = match routed {
            None => (ReasonCode::NotAuthorized, Vec::new()),
            // Delivered but not retained: the retained limits are reached. 3.1.1 has no
            // negative acknowledgement; the refusal is counted either way.
            Some(Ok(r)) if r.retain_refused && v5 => (ReasonCode::QuotaExceeded, r.acks),
            // A shadow or jobs request is taken by its device actor even without
            // subscribers.
            Some(Ok(r)) if r.matched == 0 && reserved.is_none() => {
                (ReasonCode::NoMatchingSubscribers, r.acks)
            }
            Some(Ok(r)) => (ReasonCode::Success, r.acks),
            Some(Err(e)) => {
                tracing::error!(message = "publish not stored", error = %e);
                (ReasonCode::UnspecifiedError, Vec::new())
            }
        };
        self.owe(pkid, qos, reason, waits)
    }

    /// Acknowledges a QoS 1/2 PUBLISH once `waits` are over, after those owed before it.
    fn owe(
        &mut self,
        pkid: u16,
        qos: QoS,
        reason: ReasonCode,
        waits: Vec<AckWait>,
    ) -> Result<(), End> {
        let v5 = self.neg.protocol.is_v5();
        if waits.is_empty() && self.owed.is_empty() {
            return self.acknowledge(AckDone { pkid, qos, reason, owed: false });
        }
        // The acknowledgement waits (storage, or room at a full subscriber); the
        // connection goes on reading and writing meanwhile.
        if self.owed.len() >= MAX_OWED_ACKS {
            return Err(End::Violation(ReasonCode::ReceiveMaximumExceeded, "too_many_owed_acks"));
        }
        if qos == QoS::AtLeastOnce && v5 {
            self.incoming.defer_ack();
        }
        self.owed.push_back(Box::pin(async move {
            let mut ok = true;
            for w in waits {
                ok &= w.wait().await.is_ok();
            }
            let reason = if ok { reason } else { ReasonCode::UnspecifiedError };
            AckDone { pkid, qos, reason, owed: true }
        }));
        Ok(())
    }

    /// Stops reading until `waits` (room at full subscribers) are over, or for
    /// [`MAX_PAUSE`].
    fn pause(&mut self, waits: Vec<AckWait>) {
        self.ctx.metrics.publisher_pauses.inc();
        self.paused = Some(Box::pin(async move {
            let _ = tokio::time::timeout(MAX_PAUSE, async {
                for w in waits {
                    let _ = w.wait().await;
                }
            })
            .await;
        }));
    }

    /// Sends the PUBACK (QoS 1) or PUBREC (QoS 2) for a routed PUBLISH.
    pub(super) fn acknowledge(&mut self, done: AckDone) -> Result<(), End> {
        let v5 = self.neg.protocol.is_v5();
        if done.owed && done.qos == QoS::AtLeastOnce && v5 {
            self.incoming.acked();
        }
        if done.reason.is_error() {
            if !v5 {
                // 3.1.1 has no negative acknowledgement: close so the client retries.
                return Err(End::Io);
            }
            if done.qos == QoS::ExactlyOnce {
                self.incoming.release(done.pkid);
            }
        }
        let resp = PubResp {
            pkid: done.pkid,
            reason: if v5 { done.reason } else { ReasonCode::Success },
            properties: Properties::default(),
        };
        let pkt = match done.qos {
            QoS::ExactlyOnce => Packet::PubRec(resp),
            _ => Packet::PubAck(resp),
        };
        self.out.packet(&pkt, &self.ctx.metrics);
        Ok(())
    }
}
