//! Sessions whose connection and device actor are on different nodes: a client may
//! connect to any node, and its session is served by its device actor on the shard's
//! leader (the remote `DeviceRef` of the cluster design).
//!
//! Two halves, one per node:
//!
//! - **The connection's node** keeps a [`RemoteConn`] per such connection. SUBSCRIBE,
//!   UNSUBSCRIBE, acknowledged offline-queue entries and the detach go to the actor's
//!   node as [`DeviceCall`]s (the casts in order, through one sender task per
//!   connection); deliveries and orders come back as [`ConnCall`]s into the connection's
//!   own queue. If the shard's leader changes and the actor's node is not the new one
//!   (it died, or was cut off), the connection is closed with DISCONNECT 0x9C naming the
//!   new leader: the client reconnects anywhere and attaches to the new actor.
//! - **The actor's node** attaches a [`Proxy`] in the connection's place: a delivery
//!   queue like a local connection's, which the router and the actor fill as usual
//!   (journal, flow control and takeover included), and a pump task that ships what it
//!   holds to the connection's node in numbered batches (a retried batch is not
//!   delivered twice) and forwards the actor's orders. When the connection's node says
//!   the connection is gone and no detach follows within [`DETACH_WAIT`], or it cannot
//!   be reached, the pump detaches the session as a lost connection (the will fires).
//!   An idle pump probes the connection every [`PROBE_EVERY`].
//!
//! Subscriptions stay in the actor's node's trie: a publish that enters the cluster on
//! that node reaches the client wherever it is connected. Routing publishes that enter
//! on other nodes is the next step (routes across nodes).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::session_wire::{
    codes, delivery_from_wire, delivery_to_wire, inflight_from_wire, inflight_to_wire,
    live_from_wire, live_to_wire, resume_from_wire, resume_to_wire,
};
use super::{AttachReply, AttachRequest, DeviceError, DeviceMsg, Devices, SubscribeReply};
use crate::broker::{next_conn_id, ConnQueue, Control, Delivery, LiveState, SessionSlot};
use crate::cluster::wire::{ConnAnswer, ConnCall, DeviceAnswer, DeviceCall, WireError, WireOrder};
use crate::mqtt::{ReasonCode, SubOptions};
use crate::raft::GroupId;

/// How often an idle pump asks whether its connection still exists.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long a pump waits for the detach of a connection its node says is gone.
pub const DETACH_WAIT: Duration = Duration::from_secs(3);
/// How long a connection waits for its old actor's eviction after its shard's leader
/// changed, before it re-attaches on its own (`Devices::rehome`).
pub const REHOME_AFTER: Duration = Duration::from_secs(1);
/// How long a stopping node's pump waits for its actor to evict the session.
const EVICT_WAIT: Duration = Duration::from_secs(1);
/// Attempts of one batch before the connection's node counts as unreachable.
const ATTEMPTS: u32 = 3;
/// How long the connection's node waits for its connection to hand over a session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A connection on this node attached to a device actor on `node`.
pub(super) struct RemoteConn {
    pub node: u64,
    /// When this node first saw another node lead the shard.
    moved_at: Mutex<Option<Instant>>,
    pub shard: GroupId,
    pub queue: Arc<ConnQueue>,
    pub slot: Arc<SessionSlot>,
    /// The last batch delivered into the queue.
    last_batch: AtomicU64,
    /// Casts for the actor, sent in order by one task.
    casts: mpsc::UnboundedSender<DeviceCall>,
}

/// A connection on `node` that this node's device actor serves.
pub(super) struct Proxy {
    queue: Arc<ConnQueue>,
    /// Set by the connection's detach; the pump finishes it.
    detach: Mutex<Option<Detached>>,
    /// The connection's node was declared down: the pump ends the session as lost.
    node_down: std::sync::atomic::AtomicBool,
}

struct Detached {
    live: LiveState,
    will: bool,
    expiry: Option<u32>,
    /// Still queued in the proxy when the detach came.
    rest: VecDeque<Delivery>,
}

fn unavailable(e: impl std::fmt::Display) -> WireError {
    WireError::Unavailable(e.to_string())
}

/// The connection's node: calls for the actor.
impl Devices {
    fn remote_of(&self, conn: u64) -> Option<(u64, mpsc::UnboundedSender<DeviceCall>)> {
        self.remote_conns.get(&conn).map(|r| (r.node, r.casts.clone()))
    }

    /// Connections on this node served by device actors elsewhere.
    pub fn remote_attached(&self) -> usize {
        self.remote_conns.len()
    }

    /// Sessions of other nodes' connections served by this node's device actors.
    pub fn proxied(&self) -> usize {
        self.proxies.len()
    }

    /// Attaches a connection here to `client`'s session on `node`.
    pub(super) async fn attach_remote(
        &self,
        node: u64,
        client: &str,
        req: AttachRequest,
    ) -> Result<AttachReply, DeviceError> {
        let (Some(remote), Some(groups)) = (self.remote.get().cloned(), self.groups.get()) else {
            return Err(DeviceError::Unavailable);
        };
        let slot = self.slot(client);
        let conn = req.conn.id;
        let (tx, mut rx) = mpsc::unbounded_channel::<DeviceCall>();
        let sender = remote.clone();
        let detaching = self.detaching.clone();
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let detach = matches!(call, DeviceCall::Detach { .. });
                if let Err(e) = sender.call(node, call).await {
                    tracing::debug!(message = "device call to the actor's node failed", node, error = %e);
                }
                if detach {
                    detaching.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        });
        self.remote_conns.insert(
            conn,
            RemoteConn {
                node,
                moved_at: Mutex::new(None),
                shard: groups.shard_of(client),
                queue: req.conn.clone(),
                slot: slot.clone(),
                last_batch: AtomicU64::new(0),
                casts: tx,
            },
        );
        // No actor here: the route only lets answers for this client (shadow replies
        // from remote calls) reach its connection.
        slot.route_mut().conn = Some(req.conn.clone());
        let call = DeviceCall::Attach {
            client: client.to_string(),
            conn,
            clean_start: req.clean_start,
            expiry_secs: req.expiry_secs,
            will: req.will.map(Box::new),
            resume: req.resume.as_deref().map(|r| Box::new(resume_to_wire(r))),
        };
        let answer = self.leader_call(node, client, call, true).ok_or(DeviceError::Unavailable)?;
        match answer.await {
            Ok(DeviceAnswer::Attached { session_present, inflight, queued, awaiting_rel }) => {
                Ok(AttachReply {
                    slot,
                    session_present,
                    inflight: inflight.into_iter().map(inflight_from_wire).collect(),
                    queued: queued.into_iter().map(delivery_from_wire).collect(),
                    awaiting_rel,
                    durable: None,
                })
            }
            other => {
                tracing::debug!(message = "remote attach failed", client, node, answer = ?other);
                // The actor may have attached before the answer was lost: detach there
                // (its pump finds no connection here from now on). The queue stays
                // open: a connection re-attaching tries again with it.
                self.detach(&slot, conn, LiveState::default(), false, None);
                Err(DeviceError::Unavailable)
            }
        }
    }

    /// SUBSCRIBE of connection `conn` to `client`'s session, wherever its actor runs.
    pub async fn subscribe(
        &self,
        client: &Arc<str>,
        slot: &Arc<SessionSlot>,
        conn: u64,
        filters: Vec<(String, SubOptions)>,
        id: Option<u32>,
    ) -> Result<SubscribeReply, DeviceError> {
        let Some((node, _)) = self.remote_of(conn) else {
            return self
                .call(client, Some(slot), |reply| DeviceMsg::Subscribe { filters, id, reply })
                .await;
        };
        let call = DeviceCall::Subscribe { client: client.to_string(), conn, filters, id };
        let answer = self.leader_call(node, client, call, true).ok_or(DeviceError::Unavailable)?;
        match answer.await {
            Ok(DeviceAnswer::Subscribed { codes: c, retained }) => Ok(SubscribeReply {
                codes: codes(c),
                retained: retained.into_iter().map(delivery_from_wire).collect(),
                durable: None,
            }),
            _ => Err(DeviceError::Unavailable),
        }
    }

    /// UNSUBSCRIBE of connection `conn`: the reason codes and, for a local actor, the
    /// durability of the change.
    pub async fn unsubscribe(
        &self,
        client: &Arc<str>,
        slot: &Arc<SessionSlot>,
        conn: u64,
        filters: Vec<String>,
    ) -> Result<(Vec<ReasonCode>, Option<crate::store::DurableAck>), DeviceError> {
        let Some((node, _)) = self.remote_of(conn) else {
            return self
                .call(client, Some(slot), |reply| DeviceMsg::Unsubscribe { filters, reply })
                .await;
        };
        let call = DeviceCall::Unsubscribe { client: client.to_string(), conn, filters };
        let answer = self.leader_call(node, client, call, true).ok_or(DeviceError::Unavailable)?;
        match answer.await {
            Ok(DeviceAnswer::Unsubscribed { codes: c }) => Ok((codes(c), None)),
            _ => Err(DeviceError::Unavailable),
        }
    }

    /// Offline-queue entries the client of connection `conn` acknowledged.
    pub fn delivered(&self, slot: &Arc<SessionSlot>, conn: u64, seqs: Vec<u64>) {
        match self.remote_of(conn) {
            Some((_, casts)) => {
                let call = DeviceCall::Delivered { client: slot.client_id.to_string(), seqs };
                let _ = casts.send(call);
            }
            None => self.cast(&slot.client_id, Some(slot), DeviceMsg::Delivered(seqs)),
        }
    }

    /// Connection `conn` ended: its live state goes back to the session.
    pub fn detach(
        &self,
        slot: &Arc<SessionSlot>,
        conn: u64,
        live: LiveState,
        will: bool,
        expiry_secs: Option<u32>,
    ) {
        let Some((_, rc)) = self.remote_conns.remove(&conn) else {
            let msg = DeviceMsg::Detach { conn_id: conn, live, will, expiry_secs };
            return self.cast(&slot.client_id, Some(slot), msg);
        };
        self.forget_remote_route(&rc);
        let call = DeviceCall::Detach {
            client: slot.client_id.to_string(),
            conn,
            live: live_to_wire(&live),
            will,
            expiry_secs,
        };
        self.detaching.fetch_add(1, Ordering::AcqRel);
        if rc.casts.send(call).is_err() {
            self.detaching.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The connection no longer routes through this node's slot of its client.
    fn forget_remote_route(&self, rc: &RemoteConn) {
        let mut route = rc.slot.route_mut();
        if route.conn.as_ref().is_some_and(|q| Arc::ptr_eq(q, &rc.queue)) {
            route.conn = None;
        }
        let unused = route.conn.is_none() && route.actor.is_none();
        drop(route);
        if unused && !self.leads(&rc.slot.client_id) {
            self.remove_slot(&rc.slot);
        }
    }

    /// `shard` is led by `leader` now. A live old leader evicts its actors, and their
    /// connections here re-attach (with a clean session's state). Connections whose
    /// actor's node has not done so after [`REHOME_AFTER`] (it died, or is cut off) are
    /// told here: a persistent session re-attaches from the shard; a clean one's state
    /// is lost, and its connection closes with DISCONNECT 0x9C naming the new leader.
    /// Called on every leader change and every second.
    pub fn rehome(&self, shard: GroupId, leader: u64) {
        let now = Instant::now();
        let moved: Vec<u64> = self
            .remote_conns
            .iter()
            .filter(|r| r.shard == shard)
            .filter(|r| {
                let mut at = r.moved_at.lock();
                if r.node == leader {
                    *at = None;
                    return false;
                }
                now.duration_since(*at.get_or_insert(now)) >= REHOME_AFTER
            })
            .map(|r| *r.key())
            .collect();
        for conn in moved {
            if let Some((_, rc)) = self.remote_conns.remove(&conn) {
                tracing::info!(message = "session's actor lost; re-attaching its connection", client = %rc.slot.client_id, from = rc.node, to = leader);
                self.forget_remote_route(&rc);
                let server = self.mqtt_address(leader);
                rc.queue.order(Control::Redirect { server, record: None });
            }
        }
    }

    /// `node` was declared down (`cluster.node_down_ms` without an answer). Sessions of
    /// its connections served here detach as lost connections: wills fire (after their
    /// delay), clean sessions end, persistent ones go offline and queue. Connections
    /// here served by its actors are redirected: a persistent session re-attaches if
    /// its shard has a reachable leader, otherwise the client gets DISCONNECT 0x9C and
    /// reconnects (on the other side of a partition, its actor's node does the same
    /// with its session). Returns how many of each there were.
    pub fn node_down(&self, node: u64) -> (usize, usize) {
        let mut lost = 0;
        for p in self.proxies.iter().filter(|p| p.key().0 == node) {
            p.node_down.store(true, Ordering::Release);
            p.queue.nudge();
            lost += 1;
        }
        let cut = self.redirect_attached_to(node);
        if lost + cut > 0 {
            tracing::warn!(message = "node down: its connections' sessions here detach, connections to its actors close", node, sessions = lost, connections = cut);
        }
        (lost, cut)
    }

    /// Connections here attached to `node`'s actors let go of them: each re-attaches to
    /// its shard's leader, or closes with DISCONNECT 0x9C. How many there were.
    fn redirect_attached_to(&self, node: u64) -> usize {
        let cut: Vec<u64> =
            self.remote_conns.iter().filter(|r| r.node == node).map(|r| *r.key()).collect();
        for conn in &cut {
            if let Some((_, rc)) = self.remote_conns.remove(conn) {
                self.forget_remote_route(&rc);
                rc.queue.order(Control::Redirect { server: None, record: None });
            }
        }
        cut.len()
    }

    /// `node` restarted: the device actors its previous run served connections here
    /// with are gone (a node that stops while it still leads a shard, or a crash and a
    /// restart quicker than an election, leaves the shard's leader unchanged, so
    /// [`Devices::rehome`] does not see it). Those connections re-attach to their
    /// shards' leaders, or get DISCONNECT 0x9C. Sessions of its old connections served
    /// here end on their own: their pumps find the connections gone. Returns how many
    /// connections were re-pointed.
    pub fn node_restarted(&self, node: u64) -> usize {
        let cut = self.redirect_attached_to(node);
        if cut > 0 {
            tracing::info!(
                message = "peer restarted: connections attached to its old actors re-attach",
                node,
                connections = cut
            );
        }
        cut
    }

    /// A call from the actor's node for a connection here.
    pub async fn conn_call(&self, call: ConnCall) -> ConnAnswer {
        match call {
            ConnCall::Deliver { conn, batch, items } => {
                let Some(rc) = self.remote_conns.get(&conn) else {
                    return ConnAnswer::Gone { taken: 0 };
                };
                if batch <= rc.last_batch.load(Ordering::Acquire) {
                    return ConnAnswer::Delivered;
                }
                rc.last_batch.store(batch, Ordering::Release);
                for (i, w) in items.into_iter().enumerate() {
                    if let crate::broker::Offer::Closed(_) = rc.queue.offer(delivery_from_wire(w)) {
                        return ConnAnswer::Gone { taken: i as u32 };
                    }
                }
                ConnAnswer::Delivered
            }
            ConnCall::Order { conn, order } => {
                let (queue, taken_over) = match self.remote_conns.get(&conn) {
                    Some(rc) => (rc.queue.clone(), matches!(order, WireOrder::TakeOver)),
                    None => return ConnAnswer::Gone { taken: 0 },
                };
                let (tx, rx) = oneshot::channel();
                let control = match order {
                    WireOrder::TakeOver => Control::TakeOver { reply: tx },
                    WireOrder::Kick(code) => Control::Kick(
                        ReasonCode::from_u8(code).unwrap_or(ReasonCode::AdministrativeAction),
                    ),
                    WireOrder::Redirect { server, record } => Control::Redirect { server, record },
                };
                let redirect = matches!(control, Control::Redirect { .. });
                if !queue.order(control) {
                    return ConnAnswer::Gone { taken: 0 };
                }
                if taken_over || redirect {
                    // The connection ends without a detach: it is no longer attached.
                    if let Some((_, rc)) = self.remote_conns.remove(&conn) {
                        self.forget_remote_route(&rc);
                    }
                }
                if !taken_over {
                    return ConnAnswer::Ordered(None);
                }
                match tokio::time::timeout(TAKEOVER_WAIT, rx).await {
                    Ok(Ok(live)) => ConnAnswer::Ordered(Some(live_to_wire(&live))),
                    _ => ConnAnswer::Ordered(None),
                }
            }
        }
    }
}

/// The actor's node: calls from the connection's node.
impl Devices {
    /// Attaches connection `conn` of node `from` to `client`'s session here.
    pub(super) async fn serve_attach(
        self: &Arc<Self>,
        from: u64,
        call: DeviceCall,
        queue_limit: usize,
    ) -> Result<DeviceAnswer, WireError> {
        let DeviceCall::Attach { client, conn, clean_start, expiry_secs, will, resume } = call
        else {
            return Err(WireError::Refused("not an attach".into()));
        };
        if !self.leads(&client) {
            return Err(unavailable("this node does not lead the client's shard"));
        }
        // Its actors are about to stop (a connection let go of one here re-attaches to
        // the shard's next leader).
        if self.stopping() {
            return Err(unavailable("this node is stopping"));
        }
        let queue = Arc::new(ConnQueue::new(next_conn_id(), queue_limit));
        let proxy = Arc::new(Proxy {
            queue: queue.clone(),
            detach: Mutex::new(None),
            node_down: Default::default(),
        });
        self.proxies.insert((from, conn), proxy.clone());
        let resume = resume.map(|r| Box::new(resume_from_wire(*r)));
        let will = will.map(|w| *w);
        let req = AttachRequest { conn: queue.clone(), clean_start, expiry_secs, will, resume };
        let reply = match self.attach(&client, req).await {
            Ok(r) => r,
            Err(e) => {
                self.proxies.remove(&(from, conn));
                queue.close();
                return Err(unavailable(e));
            }
        };
        if let Some(d) = reply.durable {
            if !matches!(d.await, Ok(Ok(()))) {
                self.proxies.remove(&(from, conn));
                queue.close();
                let msg = DeviceMsg::Detach {
                    conn_id: queue.id,
                    live: LiveState::default(),
                    will: false,
                    expiry_secs: None,
                };
                self.cast(&reply.slot.client_id, Some(&reply.slot), msg);
                return Err(unavailable("the session record could not be stored"));
            }
        }
        if let Some(remote) = self.remote.get().cloned() {
            let pump = Pump {
                devices: Arc::downgrade(self),
                remote,
                node: from,
                conn,
                proxy,
                slot: reply.slot.clone(),
                batch: 0,
                bounced: Vec::new(),
            };
            tokio::spawn(pump.run());
        }
        Ok(DeviceAnswer::Attached {
            session_present: reply.session_present,
            inflight: reply.inflight.iter().map(inflight_to_wire).collect(),
            queued: reply.queued.iter().map(delivery_to_wire).collect(),
            awaiting_rel: reply.awaiting_rel,
        })
    }

    /// SUBSCRIBE, UNSUBSCRIBE, acknowledgements and the detach of connection `conn` of
    /// node `from`.
    pub(super) async fn serve_session(
        self: &Arc<Self>,
        from: u64,
        call: DeviceCall,
    ) -> Result<DeviceAnswer, WireError> {
        let attached = |client: &str, conn: u64| {
            if !self.leads(client) {
                return Err(unavailable("this node does not lead the client's shard"));
            }
            if !self.proxies.contains_key(&(from, conn)) {
                return Err(WireError::Refused("that connection is not attached here".into()));
            }
            let client: Arc<str> = Arc::from(client);
            let slot = self.get_slot(&client);
            Ok((client, slot))
        };
        match call {
            DeviceCall::Subscribe { client, conn, filters, id } => {
                let (client, slot) = attached(&client, conn)?;
                let r = self
                    .call(&client, slot.as_deref(), |reply| DeviceMsg::Subscribe {
                        filters,
                        id,
                        reply,
                    })
                    .await
                    .map_err(unavailable)?;
                if let Some(d) = r.durable {
                    if !matches!(d.await, Ok(Ok(()))) {
                        return Err(unavailable("the subscription could not be stored"));
                    }
                }
                Ok(DeviceAnswer::Subscribed {
                    codes: r.codes.iter().map(|c| *c as u8).collect(),
                    retained: r.retained.iter().map(delivery_to_wire).collect(),
                })
            }
            DeviceCall::Unsubscribe { client, conn, filters } => {
                let (client, slot) = attached(&client, conn)?;
                let (c, durable) = self
                    .call(&client, slot.as_deref(), |reply| DeviceMsg::Unsubscribe {
                        filters,
                        reply,
                    })
                    .await
                    .map_err(unavailable)?;
                if let Some(d) = durable {
                    if !matches!(d.await, Ok(Ok(()))) {
                        return Err(unavailable("the change could not be stored"));
                    }
                }
                Ok(DeviceAnswer::Unsubscribed { codes: c.iter().map(|c| *c as u8).collect() })
            }
            DeviceCall::Delivered { client, seqs } => {
                if self.leads(&client) {
                    let client: Arc<str> = Arc::from(client);
                    let slot = self.get_slot(&client);
                    self.cast(&client, slot.as_deref(), DeviceMsg::Delivered(seqs));
                }
                Ok(DeviceAnswer::Done)
            }
            DeviceCall::Detach { conn, live, will, expiry_secs, .. } => {
                if let Some(p) = self.proxies.get(&(from, conn)).map(|p| p.clone()) {
                    let rest = p.queue.close();
                    let live = live_from_wire(live);
                    *p.detach.lock() = Some(Detached { live, will, expiry: expiry_secs, rest });
                    p.queue.nudge();
                }
                Ok(DeviceAnswer::Done)
            }
            other => Err(WireError::Refused(format!("not a session call: {other:?}"))),
        }
    }
}

/// Ships a proxy's deliveries and orders to its connection's node.
struct Pump {
    devices: Weak<Devices>,
    remote: Arc<dyn super::Remote>,
    node: u64,
    conn: u64,
    proxy: Arc<Proxy>,
    slot: Arc<SessionSlot>,
    batch: u64,
    /// Sent, but the connection had ended: they go back with the live state.
    bounced: Vec<Delivery>,
}

/// What became of a batch.
enum Sent {
    Delivered,
    Gone,
    Unreachable,
}

impl Pump {
    async fn run(mut self) {
        let mut gone_at: Option<Instant> = None;
        let mut evicting: Option<Instant> = None;
        loop {
            let wait = match (gone_at, evicting) {
                (_, Some(_)) => EVICT_WAIT / 4,
                (Some(_), None) => DETACH_WAIT / 4,
                (None, None) => PROBE_EVERY,
            };
            let woke = tokio::time::timeout(wait, self.proxy.queue.ready()).await.is_ok();
            // The node is stopping: the connection re-attaches to the shard's next leader
            // (no will: the session goes on there), and the pump lets go of the transport.
            // It is told so at once: a node that stops while it still leads the shard (its
            // hand-off failed) may lead it again after its restart, and a leader that
            // does not change is no sign of a lost actor. The actor evicts the session,
            // as on a lost leadership, so a clean session's state goes with the order
            // (the Redirect below); without an actor, or one that does not answer in
            // time, the pump tells the connection itself.
            if self.devices.upgrade().is_none_or(|d| d.stopping()) {
                let asked = match evicting {
                    None => {
                        evicting = Some(Instant::now());
                        self.slot
                            .actor()
                            .is_some_and(|a| a.cast(DeviceMsg::Evict { server: None }).is_ok())
                    }
                    Some(at) => at.elapsed() < EVICT_WAIT,
                };
                if !asked {
                    // A clean session without an actor has its state parked in the slot.
                    let record = (!self.slot.route().persistent)
                        .then(|| Box::new(self.slot.parked().unwrap_or_default()));
                    let (items, _) = self.proxy.queue.take();
                    return self.redirect(items.into(), None, record).await;
                }
            }
            let detached = self.proxy.detach.lock().take();
            if let Some(d) = detached {
                return self.finish(d);
            }
            if self.proxy.node_down.load(Ordering::Acquire) {
                let (items, control) = self.proxy.queue.take();
                self.bounced.extend(items);
                // A newer connection elsewhere takes the session: no will.
                if let Some(Control::TakeOver { reply }) = control {
                    return self.hand_over(reply, LiveState::default());
                }
                return self.lost();
            }
            let (items, control) = self.proxy.queue.take();
            let mut items: Vec<Delivery> = items.into();
            if let Some(since) = gone_at {
                self.bounced.append(&mut items);
                self.proxy.queue.settle(0);
                if let Some(Control::TakeOver { reply }) = control {
                    return self.hand_over(reply, LiveState::default());
                }
                if since.elapsed() >= DETACH_WAIT {
                    return self.lost();
                }
                continue;
            }
            match control {
                // The deliveries taken with an order go with the live state, as on a
                // local connection.
                Some(Control::TakeOver { reply }) => {
                    self.bounced.append(&mut items);
                    let live = match self.order(WireOrder::TakeOver).await {
                        Some(ConnAnswer::Ordered(Some(w))) => live_from_wire(w),
                        _ => LiveState::default(),
                    };
                    return self.hand_over(reply, live);
                }
                Some(Control::Redirect { server, record }) => {
                    return self.redirect(items, server, record).await;
                }
                Some(Control::Kick(code)) => {
                    self.bounced.append(&mut items);
                    // Its connection detaches as it closes.
                    self.order(WireOrder::Kick(code as u8)).await;
                    self.proxy.queue.settle(0);
                    continue;
                }
                None => {}
            }
            if items.is_empty() && woke {
                self.proxy.queue.settle(0);
                continue;
            }
            let sent = self.send(&mut items).await;
            self.proxy.queue.settle(0);
            match sent {
                Sent::Delivered => {}
                Sent::Gone => gone_at = Some(Instant::now()),
                Sent::Unreachable => return self.lost(),
            }
        }
    }

    /// Sends one batch (an empty one probes); what the connection did not take is kept.
    async fn send(&mut self, items: &mut Vec<Delivery>) -> Sent {
        self.batch += 1;
        let call = ConnCall::Deliver {
            conn: self.conn,
            batch: self.batch,
            items: items.iter().map(delivery_to_wire).collect(),
        };
        for attempt in 0..ATTEMPTS {
            match self.remote.conn_call(self.node, call.clone()).await {
                Ok(ConnAnswer::Delivered) => return Sent::Delivered,
                Ok(ConnAnswer::Gone { taken }) => {
                    let taken = (taken as usize).min(items.len());
                    self.bounced.extend(items.drain(taken..));
                    return Sent::Gone;
                }
                Ok(other) => {
                    tracing::warn!(message = "unexpected answer to a delivery", answer = ?other);
                    self.bounced.append(items);
                    return Sent::Gone;
                }
                Err(e) => {
                    tracing::debug!(message = "delivery to the connection's node failed", node = self.node, attempt, error = %e);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        self.bounced.append(items);
        Sent::Unreachable
    }

    /// The connection lets go of this actor: `items` are delivered first (a connection
    /// that re-attaches keeps them), then it is told to re-attach (or close, naming
    /// `server`), and the pump ends.
    async fn redirect(
        mut self,
        mut items: Vec<Delivery>,
        server: Option<String>,
        record: Option<Box<crate::session::SessionRecord>>,
    ) {
        if !items.is_empty() {
            self.send(&mut items).await;
        }
        self.order(WireOrder::Redirect { server, record }).await;
        self.proxy.queue.close();
        self.forget();
    }

    async fn order(&self, order: WireOrder) -> Option<ConnAnswer> {
        let call = ConnCall::Order { conn: self.conn, order };
        match self.remote.conn_call(self.node, call).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::debug!(message = "order to the connection's node failed", node = self.node, error = %e);
                None
            }
        }
    }

    fn forget(&self) {
        if let Some(d) = self.devices.upgrade() {
            d.proxies.remove_if(&(self.node, self.conn), |_, p| Arc::ptr_eq(p, &self.proxy));
        }
    }

    /// A newer connection takes the session: it gets the connection's live state, then
    /// what this proxy held.
    fn hand_over(mut self, reply: oneshot::Sender<LiveState>, mut live: LiveState) {
        live.pending.append(&mut self.bounced);
        live.pending.extend(self.proxy.queue.close());
        self.forget();
        let _ = reply.send(live);
    }

    /// The connection detached: its live state, then what was sent and bounced, then
    /// what was still queued here.
    fn finish(mut self, d: Detached) {
        let mut live = d.live;
        live.pending.append(&mut self.bounced);
        live.pending.extend(d.rest);
        self.detach_actor(live, d.will, d.expiry);
    }

    /// The connection is gone without a detach, or its node cannot be reached: the
    /// session detaches as after a lost connection (its will fires).
    fn lost(mut self) {
        tracing::debug!(message = "remote connection lost", client = %self.slot.client_id, node = self.node);
        let mut live =
            LiveState { pending: std::mem::take(&mut self.bounced), ..Default::default() };
        live.pending.extend(self.proxy.queue.close());
        self.detach_actor(live, true, None);
    }

    fn detach_actor(&self, live: LiveState, will: bool, expiry_secs: Option<u32>) {
        self.forget();
        let Some(devices) = self.devices.upgrade() else { return };
        let msg = DeviceMsg::Detach { conn_id: self.proxy.queue.id, live, will, expiry_secs };
        devices.cast(&self.slot.client_id, Some(&self.slot), msg);
    }
}
