//! Publishes under `$aws/things/`: shadow and jobs requests go to the thing's device
//! actor (they are routed like any message too); reply and notification topics are the
//! broker's alone.

use std::sync::Arc;

use crate::broker::{Message, SessionSlot};
use crate::device::{Devices, ShadowRequest};
use crate::jobs::{self, JobsCall};
use crate::shadow;

/// Hands a shadow or jobs request from `slot`'s client to the thing's device actor:
/// `Some(true)`. `Some(false)` for a reply or notification topic, which clients may not
/// publish to; `None` for any other topic.
pub fn route(devices: &Devices, slot: &Arc<SessionSlot>, msg: &Message) -> Option<bool> {
    if jobs::topics::is_jobs_topic(&msg.topic) {
        let Some(topic) = jobs::topics::parse_request(&msg.topic) else { return Some(false) };
        let thing = topic.thing.clone();
        let call = JobsCall::Request { topic, payload: msg.payload.clone() };
        // The device actor publishes the answer; nobody waits for the outcome here.
        drop(devices.jobs(&thing, call, Some(slot.clone())));
        return Some(true);
    }
    if !shadow::topics::is_shadow_topic(&msg.topic) {
        return None;
    }
    let Some(topic) = shadow::topics::parse_request(&msg.topic) else { return Some(false) };
    devices.shadow(ShadowRequest {
        topic,
        payload: msg.payload.clone(),
        requester: Some(slot.clone()),
        reply: None,
    });
    Some(true)
}
