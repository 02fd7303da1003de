//! Publishes under `$aws/things/`: shadow and jobs requests go to the thing's device
//! actor (they are routed like any message too); reply and notification topics are the
//! broker's alone. Each thing has a bounded line of waiting requests: beyond it a shadow
//! request gets 429 and a jobs request `RequestThrottled`, at once, so a flooding client
//! cannot grow its actor's mailbox without bound.

use std::sync::Arc;

use super::ConnCtx;
use crate::auth::fleet;
use crate::broker::{now_ms, Message, SessionSlot};
use crate::device::ShadowRequest;
use crate::jobs::{self, JobsCall};
use crate::shadow;

/// Hands a shadow or jobs request from `slot`'s client to the thing's device actor:
/// `Some(true)`. `Some(false)` for a reply or notification topic, which clients may not
/// publish to; `None` for any other topic.
pub fn route(ctx: &Arc<ConnCtx>, slot: &Arc<SessionSlot>, msg: &Message) -> Option<bool> {
    if fleet::is_fleet_topic(&msg.topic) {
        let Some(req) = fleet::parse(&msg.topic) else { return Some(false) };
        let (ctx, slot) = (ctx.clone(), slot.clone());
        let (topic, payload) = (msg.topic.to_string(), msg.payload.clone());
        // Issuing a certificate and writing to the meta group take time: answered by a
        // task, to the requester alone.
        tokio::spawn(async move {
            let (op, answer) = match &req {
                fleet::Request::Create => ("create", ctx.auth.fleet_create().await),
                fleet::Request::CreateFromCsr => {
                    ("create_from_csr", ctx.auth.fleet_create_from_csr(&payload).await)
                }
                fleet::Request::Provision { template } => {
                    ("provision", ctx.auth.fleet_provision(template, &payload).await)
                }
            };
            match answer {
                Ok(v) => ctx.router.reply_to(&fleet::reply_topic(&topic, true), &v, &slot),
                Err(r) => {
                    ctx.metrics.fleet_requests.with_label_values(&[op, r.code]).inc();
                    ctx.router.reply_to(&fleet::reply_topic(&topic, false), &r.json(), &slot);
                }
            }
        });
        return Some(true);
    }
    if jobs::topics::is_jobs_topic(&msg.topic) {
        let Some(topic) = jobs::topics::parse_request(&msg.topic) else { return Some(false) };
        let thing = topic.thing.clone();
        let Some(permit) = ctx.devices.permit(&thing, ctx.cfg.jobs.max_pending_per_thing) else {
            let op = jobs::op_label(&topic.op);
            ctx.metrics.jobs_requests.with_label_values(&[op, "RequestThrottled"]).inc();
            let r = jobs::throttled(&topic, &msg.payload, now_ms());
            ctx.router.publish_reply(&r.topic, &r.payload, Some(slot));
            return Some(true);
        };
        let call = JobsCall::Request { topic, payload: msg.payload.clone() };
        // The device actor publishes the answer; nobody waits for the outcome here.
        drop(ctx.devices.jobs(&thing, call, Some(slot.clone()), Some(permit)));
        return Some(true);
    }
    if !shadow::topics::is_shadow_topic(&msg.topic) {
        return None;
    }
    let Some(topic) = shadow::topics::parse_request(&msg.topic) else { return Some(false) };
    let Some(permit) = ctx.devices.permit(&topic.thing, ctx.cfg.shadow.max_pending_per_thing)
    else {
        ctx.metrics.shadow_requests.with_label_values(&[topic.op.as_str(), "429"]).inc();
        let r = shadow::throttled(&topic, &msg.payload, now_ms());
        ctx.router.publish_reply(&r.topic, &r.payload, Some(slot));
        return Some(true);
    };
    ctx.devices.shadow(ShadowRequest {
        topic,
        payload: msg.payload.clone(),
        requester: Some(slot.clone()),
        reply: None,
        permit: Some(permit),
    });
    Some(true)
}
