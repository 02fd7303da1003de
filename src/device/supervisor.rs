//! Device supervisors: one per shard, the parent of the device actors of that shard's
//! devices on this node. Spreading spawns, restarts and timers over the shards keeps one
//! actor from serializing every connect of the node.
//!
//! A supervisor serves its shard only while this node leads the shard's group (a single
//! node always does). [`watch_leadership`] tells it: on `Activate` it waits for a read
//! barrier (everything the previous leader committed is applied here), restores the
//! shard's sessions and serves; on `Deactivate` it stops its actors, takes their
//! subscriptions out of the trie and redirects their connections to the new leader
//! (DISCONNECT 0x9C with a Server Reference). Device actors write without forwarding
//! (`Groups::write_local`), so an actor on a deposed leader cannot commit after the new
//! leader's actors started: one writer per device across the cluster.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent};
use tokio::sync::watch;

use super::actor::{DeviceActor, DeviceArgs};
use super::{DeviceCtx, DeviceMsg};
use crate::broker::{now_ms, Control, SessionSlot};
use crate::raft::{GroupId, Groups, WriteError};
use crate::store::StoreError;

/// How long an activation waits for its read barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Will,
    Expire,
}

pub enum SupervisorMsg {
    /// For the client's actor: delivered to the running one, or to one spawned from stored
    /// state; held while a retiring actor finishes its mailbox.
    Forward {
        client: Arc<str>,
        msg: DeviceMsg,
    },
    Schedule {
        client: Arc<str>,
        at_ms: u64,
        msg: Timer,
    },
    Tick,
    /// This node leads the shard: serve it (after a read barrier).
    Activate,
    /// Another node (or none) leads the shard: stop serving it; connections go to
    /// `leader`.
    Deactivate {
        leader: Option<u64>,
    },
}

pub struct DeviceSupervisor;

pub struct SupervisorState {
    ctx: DeviceCtx,
    /// The shard group whose devices this supervisor parents.
    shard: GroupId,
    children: HashMap<Arc<str>, ActorRef<DeviceMsg>>,
    by_id: HashMap<ActorId, Arc<str>>,
    timers: BTreeSet<(u64, Arc<str>, Timer)>,
    /// Messages for clients whose actor is retiring (draining its mailbox) or has just
    /// failed: delivered, in order, to its successor once it has terminated, so one
    /// client never has two actors at once.
    held: HashMap<Arc<str>, Vec<DeviceMsg>>,
    /// This node leads the shard and has restored it.
    active: bool,
    /// Messages that arrived after this node became the shard's leader and before its
    /// activation finished: handled once it has (refused if it fails for good).
    pending: Vec<(Arc<str>, DeviceMsg)>,
}

/// Most messages held while a shard is being activated.
const MAX_PENDING: usize = 10_000;

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
        self.ctx.metrics.actors.set(self.by_id.len() as i64);
        Ok(actor)
    }

    /// Hands `msg` to `client`'s actor, spawning one if none is running.
    async fn forward(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        client: Arc<str>,
        msg: DeviceMsg,
    ) {
        if !self.active {
            if self.ctx.devices.leads_shard(self.shard) && self.pending.len() < MAX_PENDING {
                // Leader already, activation under way.
                self.pending.push((client, msg));
            } else {
                // Not this node's shard (now): the caller gets an error and tries the
                // leader.
                msg.refuse();
            }
            return;
        }
        if let Some(held) = self.held.get_mut(&client) {
            held.push(msg);
            return;
        }
        match self.child(myself, &client).await {
            Ok(child) => {
                if let Err(MessagingErr::SendErr(msg)) = child.cast(msg) {
                    // Retiring or just failed: its termination event follows.
                    self.held.entry(client).or_default().push(msg);
                }
            }
            Err(e) => {
                tracing::error!(message = "device actor spawn failed", client = %client, error = %e);
                msg.refuse();
            }
        }
    }

    /// After `client`'s actor terminated: a successor takes the held messages (and, after
    /// a failure, the session that is still attached or stored).
    async fn succeed(&mut self, myself: &ActorRef<SupervisorMsg>, client: Arc<str>, failed: bool) {
        let held = self.held.remove(&client).unwrap_or_default();
        if !self.active {
            held.into_iter().for_each(DeviceMsg::refuse);
            return;
        }
        if held.is_empty() && !(failed && self.ctx.devices.get_slot(&client).is_some()) {
            return;
        }
        match self.child(myself, &client).await {
            Ok(child) => {
                let mut rest = Vec::new();
                for msg in held {
                    if let Err(MessagingErr::SendErr(msg)) = child.cast(msg) {
                        rest.push(msg);
                    }
                }
                if !rest.is_empty() {
                    self.held.insert(client, rest);
                }
            }
            Err(e) => {
                tracing::error!(message = "device actor restart failed", client = %client, error = %e);
                held.into_iter().for_each(DeviceMsg::refuse);
            }
        }
    }

    fn forget(&mut self, id: ActorId) -> Option<Arc<str>> {
        let client = self.by_id.remove(&id)?;
        self.ctx.metrics.actors.set(self.by_id.len() as i64);
        if self.children.get(&client).is_some_and(|a| a.get_id() == id) {
            self.children.remove(&client);
        }
        Some(client)
    }
}

/// Restores the persistent sessions of this supervisor's shard: routes (subscriptions)
/// and timers. Clean sessions left by a crash are deleted. A session recorded as
/// connected lost its connection with the node that served it; its will waits `grace_ms`
/// more than its delay (a shard that moved between live nodes: the client is being
/// redirected and comes back in time).
fn restore(state: &mut SupervisorState, grace_ms: u64) -> Result<(), StoreError> {
    let now = now_ms();
    let ctx = state.ctx.clone();
    // In a cluster the shard's persistent routes are announced once, as a whole, when
    // every session is back in the trie.
    ctx.router.claim_shard(state.shard);
    for (client, mut rec) in ctx.sessions.sessions_in(state.shard)? {
        if rec.expiry_secs == 0 {
            ctx.sessions.end(&client);
            ctx.store.inflight_clear(&client)?;
            continue;
        }
        let client: Arc<str> = Arc::from(client);
        let slot = ctx.devices.slot(&client);
        if rec.disconnected_at_ms.is_none() {
            // The node stopped while the client was connected: the connection is gone.
            rec.disconnected_at_ms = Some(now);
            if let Some(w) = &mut rec.will {
                w.at_ms =
                    Some(now + u64::from(w.delay_secs.min(rec.expiry_secs)) * 1000 + grace_ms);
            }
            let (ticket, _) = ctx.sessions.put(&client, &rec);
            slot.last_write.store(ticket, std::sync::atomic::Ordering::Relaxed);
        }
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
    ctx.router.claimed_shard(state.shard, ctx.groups.term(state.shard));
    ctx.metrics.sessions.set(ctx.devices.len() as i64);
    ctx.metrics.offline_queue_depth.add(ctx.sessions.queued_in(state.shard)? as i64);
    Ok(())
}

impl SupervisorState {
    async fn activate(&mut self) -> Result<(), StoreError> {
        if self.active || !self.ctx.devices.leads_shard(self.shard) {
            return Ok(());
        }
        // Only the leader's own barrier counts: a node that is not the leader any more
        // gets no answer from `leader_read` and stays inactive.
        let not_leader = async { Err(WriteError::NotLeader(0)) };
        if let Err(e) = self.ctx.groups.read_barrier(self.shard, BARRIER_TIMEOUT, not_leader).await
        {
            tracing::info!(message = "shard activation waits", shard = self.shard, error = %e);
            return Ok(());
        }
        restore(self, self.ctx.session_grace_ms)?;
        self.active = true;
        tracing::info!(message = "serving shard", shard = self.shard);
        Ok(())
    }

    /// Handles what waited for the activation.
    async fn drain_pending(&mut self, myself: &ActorRef<SupervisorMsg>) {
        for (client, msg) in std::mem::take(&mut self.pending) {
            self.forward(myself, client, msg).await;
        }
    }

    fn deactivate(&mut self, leader: Option<u64>) {
        if !self.active {
            return;
        }
        self.active = false;
        self.timers.clear();
        for (_, msg) in self.pending.drain(..) {
            msg.refuse();
        }
        for (_, msgs) in self.held.drain() {
            msgs.into_iter().for_each(DeviceMsg::refuse);
        }
        let server = leader.and_then(|l| self.ctx.devices.mqtt_address(l));
        for (_, actor) in self.children.drain() {
            // It takes its subscriptions out, redirects its connection and stops.
            let _ = actor.cast(DeviceMsg::Evict { server: server.clone() });
        }
        for slot in self.ctx.devices.slots_in(self.shard) {
            if slot.actor().is_none() {
                evict(&self.ctx, &slot, server.clone(), None, None);
            }
        }
        self.ctx.router.release_shard(self.shard);
        self.ctx.metrics.sessions.set(self.ctx.devices.len() as i64);
        tracing::info!(message = "stopped serving shard", shard = self.shard, leader = ?leader);
    }
}

/// Takes a session off this node: its subscriptions (`subscriptions`, else those of its
/// parked or stored record) leave the trie, its connection is redirected to `server`,
/// and its slot is forgotten. Its state stays in the shard for the new leader.
pub(super) fn evict(
    ctx: &DeviceCtx,
    slot: &Arc<SessionSlot>,
    server: Option<String>,
    subscriptions: Option<Vec<String>>,
    record: Option<Box<crate::session::SessionRecord>>,
) {
    let filters = subscriptions.unwrap_or_else(|| {
        let rec = slot.parked().or_else(|| ctx.sessions.get(&slot.client_id).ok().flatten());
        rec.map(|r| r.subscriptions.into_iter().map(|s| s.filter).collect()).unwrap_or_default()
    });
    for f in filters {
        ctx.router.evict_subscription(slot, &f);
    }
    let (conn, persistent) = {
        let mut route = slot.route_mut();
        (route.conn.take(), route.persistent)
    };
    if let Some(q) = conn {
        // A clean session without an actor has its state parked (or none to keep).
        let record =
            record.or_else(|| (!persistent).then(|| Box::new(slot.parked().unwrap_or_default())));
        q.order(Control::Redirect { server, record });
    }
    ctx.devices.remove_slot(slot);
}

/// Tells each shard's supervisor whether this node leads the shard, on every change and
/// again every second (an activation whose barrier failed is tried again). Cluster nodes
/// only: a single node leads every shard from the start.
pub fn watch_leadership(
    groups: Arc<Groups>,
    supervisors: Vec<ActorRef<SupervisorMsg>>,
    devices: Arc<super::Devices>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut last: Vec<Option<bool>> = vec![None; supervisors.len()];
        let mut leaders: Vec<Option<u64>> = vec![None; supervisors.len()];
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut n: u64 = 0;
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stop {
                return;
            }
            n += 1;
            for (i, sup) in supervisors.iter().enumerate() {
                let shard = i as GroupId + 1;
                // Connections here whose session's actor was on another node follow a
                // new leader.
                let leader = groups.leader(shard);
                if leader.is_some() && (leader != leaders[i] || n.is_multiple_of(20)) {
                    leaders[i] = leader;
                    if let Some(l) = leader {
                        devices.rehome(shard, l);
                    }
                }
                let leads = groups.is_leader(shard);
                if last[i] == Some(leads) && !n.is_multiple_of(20) {
                    continue;
                }
                last[i] = Some(leads);
                let msg = if leads {
                    SupervisorMsg::Activate
                } else {
                    SupervisorMsg::Deactivate { leader: groups.leader(shard) }
                };
                let _ = sup.cast(msg);
            }
        }
    });
}

impl Actor for DeviceSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    /// The node's device context and the shard group to supervise.
    type Arguments = (DeviceCtx, GroupId);

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        (ctx, shard): (DeviceCtx, GroupId),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let active = ctx.devices.leads_shard(shard);
        let mut state = SupervisorState {
            ctx,
            shard,
            children: HashMap::new(),
            by_id: HashMap::new(),
            timers: BTreeSet::new(),
            held: HashMap::new(),
            active,
            pending: Vec::new(),
        };
        if active {
            restore(&mut state, 0)?;
        }
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
            SupervisorMsg::Forward { client, msg } => state.forward(&myself, client, msg).await,
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
                    let msg = match timer {
                        Timer::Will => DeviceMsg::FireWill,
                        Timer::Expire => DeviceMsg::Expire,
                    };
                    state.forward(&myself, client, msg).await;
                }
            }
            SupervisorMsg::Activate => {
                state.activate().await?;
                if state.active {
                    state.drain_pending(&myself).await;
                } else if !state.ctx.devices.leads_shard(state.shard) {
                    for (_, msg) in state.pending.drain(..) {
                        msg.refuse();
                    }
                }
            }
            SupervisorMsg::Deactivate { leader } => state.deactivate(leader),
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
                if let Some(client) = state.forget(cell.get_id()) {
                    state.succeed(&myself, client, false).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(client) = state.forget(cell.get_id()) {
                    state.ctx.metrics.actor_restarts.inc();
                    tracing::error!(message = "device actor failed; restarting from stored state", client = %client, error = %err);
                    // The slot (and an attached connection) survive; the new actor picks
                    // them up in pre_start.
                    state.succeed(&myself, client, true).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
