//! SUBSCRIBE in the device actor: each filter checked against what the listener
//! allows and the client's subscription limit, added to the router's trie and the
//! session record, and the retained messages it gets; the SUBACK waits for the
//! record's write and, in a cluster, for every peer to know the new routes.

use super::DeviceState;
use crate::device::SubscribeReply;
use crate::mqtt::{topic, QoS, ReasonCode, SubOptions};
use crate::session::StoredSubscription;

impl DeviceState {
    pub(super) fn subscribe(
        &mut self,
        filters: Vec<(String, SubOptions)>,
        id: Option<u32>,
    ) -> SubscribeReply {
        let cfg = self.ctx.mqtt.clone();
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let mut changed = false;
        let mut route: Option<u64> = None;
        for (filter, mut opts) in filters {
            let shared = topic::parse_shared(&filter);
            let code = match &shared {
                Err(_) => ReasonCode::TopicFilterInvalid,
                Ok(None) if !topic::valid_filter(&filter) => ReasonCode::TopicFilterInvalid,
                Ok(Some(_)) if !cfg.shared_subscription_available => {
                    ReasonCode::SharedSubscriptionsNotSupported
                }
                _ if !cfg.wildcard_subscription_available && topic::has_wildcard(&filter) => {
                    ReasonCode::WildcardSubscriptionsNotSupported
                }
                _ if self.record.subscriptions.len() >= cfg.max_subscriptions_per_client
                    && !self.record.subscriptions.iter().any(|s| s.filter == filter) =>
                {
                    self.ctx.metrics.limit_hits.with_label_values(&["subscriptions"]).inc();
                    ReasonCode::QuotaExceeded
                }
                _ => {
                    let max = QoS::from_u8(cfg.maximum_qos).unwrap_or(QoS::ExactlyOnce);
                    opts.qos = opts.qos.min(max);
                    match opts.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
                    }
                }
            };
            if code.is_error() {
                codes.push(code);
                continue;
            }
            let out = self.ctx.router.subscribe(&self.slot, &filter, opts, id);
            route = route.max(out.route);
            let is_shared = matches!(shared, Ok(Some(_)));
            let send_retained = !is_shared
                && match opts.retain_handling {
                    crate::mqtt::RetainHandling::SendAtSubscribe => true,
                    crate::mqtt::RetainHandling::SendIfNew => !out.existed,
                    crate::mqtt::RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for mut d in self.ctx.router.retained_for(&filter, opts.qos) {
                    d.sub_ids.extend(id);
                    retained.push(d);
                }
            }
            self.record.subscriptions.retain(|s| s.filter != filter);
            self.record.subscriptions.push(StoredSubscription { filter, opts, id });
            changed = true;
            codes.push(code);
        }
        // The SUBACK waits until the record is committed (and fails if it is not) and
        // the new routes are known to the other nodes.
        let durable = if changed { self.save() } else { None };
        let durable = self.ctx.router.with_routes(durable, route);
        SubscribeReply { codes, retained, durable }
    }
}
