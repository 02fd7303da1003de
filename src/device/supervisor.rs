//! The device supervisor: parent of every device actor on this node.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::oneshot;

use super::actor::{DeviceActor, DeviceArgs};
use super::{AttachReply, AttachRequest, DeviceCtx, DeviceError, DeviceMsg};
use crate::broker::{now_ms, Delivery};
use crate::store::StoreError;

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Will,
    Expire,
}

pub enum SupervisorMsg {
    /// Forwarded to the client's actor, spawned if needed.
    Attach {
        client: Arc<str>,
        req: AttachRequest,
        reply: RpcReplyPort<Result<AttachReply, DeviceError>>,
    },
    /// A delivery for an offline session whose actor is not running.
    Deliver {
        client: Arc<str>,
        delivery: Delivery,
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The client's running actor, spawned if needed.
    Get {
        client: Arc<str>,
        reply: RpcReplyPort<ActorRef<DeviceMsg>>,
    },
    Schedule {
        client: Arc<str>,
        at_ms: u64,
        msg: Timer,
    },
    Tick,
}

pub struct DeviceSupervisor;

pub struct SupervisorState {
    ctx: DeviceCtx,
    children: HashMap<Arc<str>, ActorRef<DeviceMsg>>,
    by_id: HashMap<ActorId, Arc<str>>,
    timers: BTreeSet<(u64, Arc<str>, Timer)>,
}

impl SupervisorState {
    async fn child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        client: &Arc<str>,
    ) -> Result<ActorRef<DeviceMsg>, ActorProcessingErr> {
        if let Some(c) = self.children.get(client) {
            return Ok(c.clone());
        }
        let slot = self.ctx.devices.slot(client);
        self.ctx.metrics.sessions.set(self.ctx.devices.len() as i64);
        let args = DeviceArgs {
            client: client.clone(),
            slot,
            ctx: self.ctx.clone(),
            supervisor: myself.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, DeviceActor, args, myself.get_cell()).await?;
        self.children.insert(client.clone(), actor.clone());
        self.by_id.insert(actor.get_id(), client.clone());
        Ok(actor)
    }

    fn forget(&mut self, id: ActorId) -> Option<Arc<str>> {
        let client = self.by_id.remove(&id)?;
        if self.children.get(&client).is_some_and(|a| a.get_id() == id) {
            self.children.remove(&client);
        }
        Some(client)
    }
}

/// Restores persistent sessions from the store: routes (subscriptions) and timers. Clean
/// sessions left by a crash are deleted.
fn restore(state: &mut SupervisorState) -> Result<(), StoreError> {
    let now = now_ms();
    let ctx = state.ctx.clone();
    for (client, mut rec) in ctx.store.sessions()? {
        if rec.expiry_secs == 0 {
            ctx.store.delete_session(&client)?;
            continue;
        }
        let client: Arc<str> = Arc::from(client);
        if rec.disconnected_at_ms.is_none() {
            // The node stopped while the client was connected: the connection is gone.
            rec.disconnected_at_ms = Some(now);
            if let Some(w) = &mut rec.will {
                w.at_ms = Some(now + u64::from(w.delay_secs.min(rec.expiry_secs)) * 1000);
            }
            ctx.store.put_session(&client, &rec)?;
        }
        let slot = ctx.devices.slot(&client);
        slot.route_mut().persistent = true;
        for s in &rec.subscriptions {
            ctx.router.subscribe(&slot, &s.filter, s.opts, s.id);
        }
        if let Some(at) = rec.will.as_ref().and_then(|w| w.at_ms) {
            state.timers.insert((at, client.clone(), Timer::Will));
        }
        if let Some(at) = rec.expires_at_ms() {
            state.timers.insert((at, client.clone(), Timer::Expire));
        }
    }
    ctx.metrics.sessions.set(ctx.devices.len() as i64);
    ctx.metrics.offline_queue_depth.set(ctx.store.queued_total() as i64);
    Ok(())
}

impl Actor for DeviceSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = DeviceCtx;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        ctx: DeviceCtx,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            ctx,
            children: HashMap::new(),
            by_id: HashMap::new(),
            timers: BTreeSet::new(),
        };
        restore(&mut state)?;
        myself.send_interval(Duration::from_secs(1), || SupervisorMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Attach { client, req, reply } => {
                match state.child(&myself, &client).await {
                    Ok(child) => {
                        if let Err(ractor::MessagingErr::SendErr(DeviceMsg::Attach(_, reply))) =
                            child.cast(DeviceMsg::Attach(req, reply))
                        {
                            let _ = reply.send(Err(DeviceError::Unavailable));
                        }
                    }
                    Err(e) => {
                        tracing::error!(message = "device actor spawn failed", client = %client, error = %e);
                        let _ = reply.send(Err(DeviceError::Unavailable));
                    }
                }
            }
            SupervisorMsg::Deliver { client, delivery, ack } => {
                match state.child(&myself, &client).await {
                    Ok(child) => {
                        if let Err(ractor::MessagingErr::SendErr(DeviceMsg::Enqueue(_, ack))) =
                            child.cast(DeviceMsg::Enqueue(delivery, ack))
                        {
                            let _ = ack.send(Err(StoreError::Closed));
                        }
                    }
                    Err(e) => {
                        tracing::error!(message = "device actor spawn failed", error = %e);
                        let _ = ack.send(Err(StoreError::Closed));
                    }
                }
            }
            SupervisorMsg::Get { client, reply } => {
                if let Ok(child) = state.child(&myself, &client).await {
                    let _ = reply.send(child);
                }
            }
            SupervisorMsg::Schedule { client, at_ms, msg } => {
                state.timers.insert((at_ms, client, msg));
            }
            SupervisorMsg::Tick => {
                let now = now_ms();
                while let Some(first) = state.timers.first() {
                    if first.0 > now {
                        break;
                    }
                    let Some((_, client, timer)) = state.timers.pop_first() else { break };
                    // Only sessions that still exist get a timer message.
                    if state.ctx.devices.get_slot(&client).is_none() {
                        continue;
                    }
                    if let Ok(child) = state.child(&myself, &client).await {
                        let _ = child.cast(match timer {
                            Timer::Will => DeviceMsg::FireWill,
                            Timer::Expire => DeviceMsg::Expire,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(client) = state.forget(cell.get_id()) {
                    state.ctx.metrics.actor_restarts.inc();
                    tracing::error!(message = "device actor failed; restarting from stored state", client = %client, error = %err);
                    // The slot (and an attached connection) survive; the new actor picks
                    // them up in pre_start.
                    if state.ctx.devices.get_slot(&client).is_some() {
                        if let Err(e) = state.child(&myself, &client).await {
                            tracing::error!(message = "device actor restart failed", client = %client, error = %e);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
