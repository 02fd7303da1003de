//! SUBSCRIBE and UNSUBSCRIBE of a live session: checked against the client's policies,
//! then handed to the device actor, which owns the subscriptions; the answer waits for
//! a persistent session's record to be durable.

use super::{Conn, End};
use crate::auth::policy::Action;
use crate::device::DeviceMsg;
use crate::mqtt::{self, Packet, Properties, ReasonCode, SubAck, UnsubAck};

impl Conn {
    pub(super) async fn on_unsubscribe(&mut self, u: mqtt::Unsubscribe) -> Result<(), End> {
        let filters = u.filters.clone();
        let res = self
            .ctx
            .devices
            .call(&self.client, Some(&self.slot), |reply| DeviceMsg::Unsubscribe { filters, reply })
            .await;
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
        let allowed: Vec<bool> = s
            .filters
            .iter()
            .map(|(f, _)| self.access.allows(&self.ctx.auth, Action::Subscribe, f))
            .collect();
        let filters: Vec<_> =
            s.filters.iter().zip(&allowed).filter(|(_, a)| **a).map(|(f, _)| f.clone()).collect();
        if filters.is_empty() {
            let reasons = vec![ReasonCode::NotAuthorized; s.filters.len()];
            let ack = SubAck { pkid: s.pkid, reasons, properties: Properties::default() };
            self.out.packet(&Packet::SubAck(ack), &self.ctx.metrics);
            return Ok(());
        }
        let res = self
            .ctx
            .devices
            .call(&self.client, Some(&self.slot), |reply| DeviceMsg::Subscribe {
                filters,
                id,
                reply,
            })
            .await;
        let (reasons, retained) = match res {
            Ok(r) => {
                let ok = match r.durable {
                    Some(d) => matches!(d.await, Ok(Ok(()))),
                    None => true,
                };
                if ok {
                    // Denied filters were not asked for; their places get 0x87 (0x80 on
                    // 3.1.1).
                    let mut codes = r.codes.into_iter();
                    let all = allowed
                        .iter()
                        .map(|a| match a {
                            true => codes.next().unwrap_or(ReasonCode::UnspecifiedError),
                            false => ReasonCode::NotAuthorized,
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
        let ack = SubAck { pkid: s.pkid, reasons, properties: Properties::default() };
        self.out.packet(&Packet::SubAck(ack), &self.ctx.metrics);
        for d in retained {
            self.deliver(d);
        }
        Ok(())
    }
}
