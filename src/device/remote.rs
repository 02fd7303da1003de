//! Device actors on other nodes. A device's actor lives on its shard's leader; this node
//! reaches the actor of a device whose shard another node leads through [`Remote`] (the
//! cluster transport), and answers such calls from peers for the devices it leads
//! ([`LeaderCalls`]).
//!
//! What crosses nodes: shadow requests (applications through the admin API, and clients
//! connected here asking about another thing), jobs work (the scheduler on the meta
//! leader, and clients' jobs requests for another thing), and the MQTT sessions of
//! clients connected to a node that does not lead their shard (`super::attached`).

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::{Devices, ShadowRequest};
use crate::cluster::service::DeviceCalls;
use crate::cluster::wire::{
    ConnAnswer, ConnCall, DeviceAnswer, DeviceCall, JobsWork, WireError, WireReply,
};
use crate::jobs::{JobsCall, Outcome};
use crate::shadow::Reply;

/// How this node reaches device actors on other nodes.
pub trait Remote: Send + Sync + 'static {
    /// The MQTT address (`host:port`) clients dial to reach `node`, if it has one.
    fn mqtt_address(&self, node: u64) -> Option<String>;
    /// The active members other than this node (not draining, joining or removed).
    fn active_peers(&self) -> Vec<u64>;
    /// Runs `call` on `node`'s device actor and returns what it came to.
    fn call(&self, node: u64, call: DeviceCall)
        -> BoxFuture<'static, Result<DeviceAnswer, String>>;
    /// As [`Remote::call`], for calls that may wait for a takeover and a durable write
    /// there (attach, subscribe): a longer timeout.
    fn session_call(
        &self,
        node: u64,
        call: DeviceCall,
    ) -> BoxFuture<'static, Result<DeviceAnswer, String>>;
    /// Deliveries and orders for a connection on `node` served by an actor here.
    fn conn_call(
        &self,
        node: u64,
        call: ConnCall,
    ) -> BoxFuture<'static, Result<ConnAnswer, String>>;
}

fn to_wire(r: &Reply) -> WireReply {
    WireReply {
        topic: r.topic.clone(),
        payload: r.payload.to_string(),
        to_requester: r.to_requester,
    }
}

fn from_wire(r: WireReply) -> Reply {
    Reply {
        topic: r.topic,
        payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::Null),
        to_requester: r.to_requester,
    }
}

impl Devices {
    /// `call` to the actor of `thing` on `node` (its shard's leader), ended as failed
    /// when the shard elects another leader meanwhile: a call to a leader that died
    /// waits for the transport's timeout otherwise, and holds the thing's request
    /// permit (every later request for it is throttled) until then. The outcome of an
    /// ended call is unknown (the old leader may have applied it), so it is not sent
    /// again; the caller answers "unavailable". `session` calls (attach, subscribe)
    /// get the longer timeout. None without a cluster.
    pub(super) fn leader_call(
        &self,
        node: u64,
        thing: &str,
        call: DeviceCall,
        session: bool,
    ) -> Option<BoxFuture<'static, Result<DeviceAnswer, String>>> {
        let remote = self.remote.get()?;
        let answer =
            if session { remote.session_call(node, call) } else { remote.call(node, call) };
        let Some(groups) = self.groups.get() else { return Some(answer) };
        let replaced = groups.leader_replaced(groups.shard_of(thing), node);
        Some(
            async move {
                tokio::select! {
                    a = answer => a,
                    now = replaced => Err(format!("leader {node} was replaced by {now} during the call")),
                }
            }
            .boxed(),
        )
    }

    /// A shadow request for a thing another node leads: answered there; the answers for
    /// the requester come back and are delivered here.
    pub(super) fn shadow_remote(&self, node: u64, req: ShadowRequest) {
        let router = self.router.get().cloned();
        let call = DeviceCall::Shadow { topic: req.topic.base(), payload: req.payload.to_vec() };
        let Some(answer) = self.leader_call(node, &req.topic.thing, call, false) else { return };
        tokio::spawn(async move {
            let replies = match answer.await {
                Ok(DeviceAnswer::Shadow(r)) => r.into_iter().map(from_wire).collect::<Vec<_>>(),
                Ok(_) | Err(_) => {
                    // The caller's channel drops: it answers "unavailable".
                    drop(req.permit);
                    return;
                }
            };
            if let (Some(slot), Some(router)) = (&req.requester, router.and_then(|r| r.upgrade())) {
                for r in replies.iter().filter(|r| r.to_requester) {
                    router.reply_to(&r.topic, &r.payload, slot);
                }
            }
            if let Some(tx) = req.reply {
                let _ = tx.send(replies);
            }
            drop(req.permit);
        });
    }

    /// Jobs work for a thing another node leads.
    pub(super) fn jobs_remote(
        &self,
        node: u64,
        thing: &str,
        call: JobsCall,
        requester: Option<Arc<crate::broker::SessionSlot>>,
        permit: Option<super::RequestPermit>,
    ) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let router = self.router.get().cloned();
        let work = match call {
            JobsCall::Request { topic, payload } => {
                JobsWork::Request { topic: topic.base(), payload: payload.to_vec() }
            }
            JobsCall::Queue { job_id } => JobsWork::Queue { job_id },
            JobsCall::Timeout { job_id } => JobsWork::Timeout { job_id },
            JobsCall::Cancel { job_id, force } => JobsWork::Cancel { job_id, force },
        };
        let call = DeviceCall::Jobs { thing: thing.to_string(), call: work };
        let Some(answer) = self.leader_call(node, thing, call, false) else { return rx };
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(DeviceAnswer::Jobs { ok, replies }) = answer.await else {
                return;
            };
            let replies: Vec<Reply> = replies.into_iter().map(from_wire).collect();
            if let (Some(slot), Some(router)) = (&requester, router.and_then(|r| r.upgrade())) {
                for r in replies.iter().filter(|r| r.to_requester) {
                    router.reply_to(&r.topic, &r.payload, slot);
                }
            }
            let _ = tx.send(Outcome { replies, ok });
        });
        rx
    }
}

/// Answers device calls from peers for the devices this node leads.
pub struct LeaderCalls {
    pub devices: Weak<Devices>,
    pub shadow_limit: usize,
    pub jobs_limit: usize,
    /// The delivery backlog limit of a connection (`mqtt.outbound_queue`), for the
    /// queues that stand in for connections on other nodes.
    pub queue_limit: usize,
}

impl DeviceCalls for LeaderCalls {
    fn call(
        &self,
        from: u64,
        call: DeviceCall,
    ) -> BoxFuture<'static, Result<DeviceAnswer, WireError>> {
        let Some(devices) = self.devices.upgrade() else {
            return async { Err(WireError::Unavailable("node is stopping".into())) }.boxed();
        };
        let (shadow_limit, jobs_limit) = (self.shadow_limit, self.jobs_limit);
        let queue_limit = self.queue_limit;
        async move {
            match call {
                call @ DeviceCall::Attach { .. } => {
                    devices.serve_attach(from, call, queue_limit).await
                }
                call @ (DeviceCall::Subscribe { .. }
                | DeviceCall::Unsubscribe { .. }
                | DeviceCall::Delivered { .. }
                | DeviceCall::Detach { .. }) => devices.serve_session(from, call).await,
                DeviceCall::Shadow { topic, payload } => {
                    let Some(topic) = crate::shadow::topics::parse_request(&topic) else {
                        return Err(WireError::Refused(format!(
                            "{topic:?} is not a shadow request"
                        )));
                    };
                    if !devices.leads(&topic.thing) {
                        return Err(WireError::Unavailable(
                            "this node does not lead the thing's shard".into(),
                        ));
                    }
                    let Some(permit) = devices.permit(&topic.thing, shadow_limit) else {
                        let r = crate::shadow::throttled(&topic, &payload, crate::broker::now_ms());
                        return Ok(DeviceAnswer::Shadow(vec![to_wire(&r)]));
                    };
                    let (tx, rx) = oneshot::channel();
                    devices.shadow(ShadowRequest {
                        topic,
                        payload: payload.into(),
                        requester: None,
                        reply: Some(tx),
                        permit: Some(permit),
                    });
                    match rx.await {
                        Ok(replies) => {
                            Ok(DeviceAnswer::Shadow(replies.iter().map(to_wire).collect()))
                        }
                        Err(_) => Err(WireError::Unavailable("device actor unavailable".into())),
                    }
                }
                DeviceCall::Jobs { thing, call } => {
                    if !devices.leads(&thing) {
                        return Err(WireError::Unavailable(
                            "this node does not lead the thing's shard".into(),
                        ));
                    }
                    let (call, permit) = match call {
                        JobsWork::Request { topic, payload } => {
                            let Some(t) = crate::jobs::topics::parse_request(&topic) else {
                                return Err(WireError::Refused(format!(
                                    "{topic:?} is not a jobs request"
                                )));
                            };
                            let Some(permit) = devices.permit(&thing, jobs_limit) else {
                                let r =
                                    crate::jobs::throttled(&t, &payload, crate::broker::now_ms());
                                return Ok(DeviceAnswer::Jobs {
                                    ok: false,
                                    replies: vec![to_wire(&r)],
                                });
                            };
                            (JobsCall::Request { topic: t, payload: payload.into() }, Some(permit))
                        }
                        JobsWork::Queue { job_id } => (JobsCall::Queue { job_id }, None),
                        JobsWork::Timeout { job_id } => (JobsCall::Timeout { job_id }, None),
                        JobsWork::Cancel { job_id, force } => {
                            (JobsCall::Cancel { job_id, force }, None)
                        }
                    };
                    match devices.jobs(&thing, call, None, permit).await {
                        Ok(o) => Ok(DeviceAnswer::Jobs {
                            ok: o.ok,
                            replies: o.replies.iter().map(to_wire).collect(),
                        }),
                        Err(_) => Err(WireError::Unavailable("device actor unavailable".into())),
                    }
                }
            }
        }
        .boxed()
    }

    fn conn(&self, call: ConnCall) -> BoxFuture<'static, Result<ConnAnswer, WireError>> {
        let Some(devices) = self.devices.upgrade() else {
            return async { Err(WireError::Unavailable("node is stopping".into())) }.boxed();
        };
        async move { Ok(devices.conn_call(call).await) }.boxed()
    }
}
