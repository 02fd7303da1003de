//! SUBSCRIBE and UNSUBSCRIBE of a live session: checked against the client's policies,
//! then handed to the device actor, which owns the subscriptions; the answer waits for
//! a persistent session's record to be durable.

use super::{Conn, End};
use crate::auth::policy::Action;
use crate::broker::now_ms;
use crate::mqtt::{self, Packet, Properties, ReasonCode, SubAck, UnsubAck};
use crate::rules::Value;
use crate::transport::limits;

const SUBSCRIBED: &str = "$events/session_subscribed";
const UNSUBSCRIBED: &str = "$events/session_unsubscribed";

impl Conn {
    pub(super) async fn on_unsubscribe(&mut self, u: mqtt::Unsubscribe) -> Result<(), End> {
        let filters = u.filters.clone();
        let res =
            self.ctx.devices.unsubscribe(&self.client, &self.slot, self.queue.id, filters).await;
        let reasons = match res {
            Ok((codes, durable)) => {
                let ok = match durable {
                    Some(d) => matches!(d.await, Ok(Ok(()))),
                    None => true,
                };
                if ok {
                    codes
                } else {
                    vec![ReasonCode::UnspecifiedError; u.filters.len()]
                }
            }
            Err(_) => vec![ReasonCode::UnspecifiedError; u.filters.len()],
        };
        let removed: Vec<&str> = u
            .filters
            .iter()
            .zip(&reasons)
            .filter(|(_, r)| **r == ReasonCode::Success)
            .map(|(f, _)| f.as_str())
            .collect();
        self.event(UNSUBSCRIBED, removed.into_iter().map(|f| (f, None)));
        let ack = UnsubAck { pkid: u.pkid, reasons, properties: Properties::default() };
        self.out.packet(&Packet::UnsubAck(ack), &self.ctx.metrics);
        Ok(())
    }

    pub(super) async fn on_subscribe(&mut self, s: mqtt::Subscribe) -> Result<(), End> {
        let cfg = &self.ctx.cfg.mqtt;
        let v5 = self.neg.protocol.is_v5();
        if v5
            && !s.properties.subscription_identifiers.is_empty()
            && !cfg.subscription_identifiers_available
        {
            return Err(End::Violation(
                ReasonCode::SubscriptionIdentifiersNotSupported,
                "subscription_ids_not_supported",
            ));
        }
        if v5 && s.filters.iter().any(|(f, o)| o.no_local && f.starts_with("$share/")) {
            return Err(End::Violation(ReasonCode::ProtocolError, "no_local_on_shared"));
        }
        let id = s.properties.subscription_identifiers.first().copied();
        // Refused here (too long or deep, or denied by policy) or asked of the actor.
        let limits = &self.ctx.cfg.limits;
        if v5 && limits::user_property_bytes(&s.properties) > limits.max_user_property_bytes {
            self.ctx.metrics.limit_hits.with_label_values(&["user_property_bytes"]).inc();
            return Err(End::Violation(ReasonCode::QuotaExceeded, "user_properties_too_large"));
        }
        let mut refused: Vec<Option<ReasonCode>> = Vec::with_capacity(s.filters.len());
        for (f, _) in &s.filters {
            refused.push(if !limits::topic_ok(f, limits) {
                self.ctx.metrics.limit_hits.with_label_values(&["topic_size"]).inc();
                Some(ReasonCode::TopicFilterInvalid)
            } else if !self.access.allows(&self.ctx.auth, Action::Subscribe, f) {
                Some(ReasonCode::NotAuthorized)
            } else {
                None
            });
        }
        let filters: Vec<_> = s
            .filters
            .iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(f, _)| f.clone())
            .collect();
        if filters.is_empty() {
            let reasons =
                refused.iter().map(|r| r.unwrap_or(ReasonCode::UnspecifiedError)).collect();
            let ack = SubAck { pkid: s.pkid, reasons, properties: Properties::default() };
            self.out.packet(&Packet::SubAck(ack), &self.ctx.metrics);
            return Ok(());
        }
        let res =
            self.ctx.devices.subscribe(&self.client, &self.slot, self.queue.id, filters, id).await;
        let (reasons, retained) = match res {
            Ok(r) => {
                let ok = match r.durable {
                    Some(d) => matches!(d.await, Ok(Ok(()))),
                    None => true,
                };
                if ok {
                    // Refused filters were not asked for; their places get their own
                    // code (0x80 on 3.1.1).
                    let mut codes = r.codes.into_iter();
                    let all = refused
                        .iter()
                        .map(|r| match r {
                            None => codes.next().unwrap_or(ReasonCode::UnspecifiedError),
                            Some(code) => *code,
                        })
                        .collect();
                    (all, r.retained)
                } else {
                    (vec![ReasonCode::UnspecifiedError; s.filters.len()], Vec::new())
                }
            }
            Err(e) => {
                tracing::warn!(message = "subscribe failed", client = %self.client, error = %e);
                (vec![ReasonCode::UnspecifiedError; s.filters.len()], Vec::new())
            }
        };
        let granted = s
            .filters
            .iter()
            .zip(&reasons)
            .filter(|(_, r)| !r.is_error())
            .map(|((f, o), _)| (f.as_str(), Some(o.qos as u8)));
        self.event(SUBSCRIBED, granted);
        let ack = SubAck { pkid: s.pkid, reasons, properties: Properties::default() };
        self.out.packet(&Packet::SubAck(ack), &self.ctx.metrics);
        for d in retained {
            self.deliver(d);
        }
        Ok(())
    }

    /// `$events/session_subscribed` / `session_unsubscribed`, one per filter (its
    /// `topic`, and the granted `qos`), for the rules that select them.
    fn event<'a>(&self, kind: &'static str, filters: impl Iterator<Item = (&'a str, Option<u8>)>) {
        let router = &self.ctx.router;
        let Some(r) = router.rules().filter(|r| r.wants(kind)) else { return };
        let at = if kind == SUBSCRIBED { "subscribed_at" } else { "unsubscribed_at" };
        for (f, qos) in filters {
            let mut extra =
                vec![("topic", Value::Str(f.to_string())), (at, Value::Int(now_ms() as i64))];
            // An UNSUBSCRIBE names no QoS: Undefined, not the message column's 0.
            extra.push(("qos", qos.map_or(Value::Undefined, |q| Value::Int(i64::from(q)))));
            r.on_event(router, kind, &self.client, &self.publisher, &extra);
        }
    }
}
