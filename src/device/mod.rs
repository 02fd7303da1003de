//! Device actors: one supervised ractor actor per client id, the single writer of that
//! session's durable state (subscriptions, offline queue, will, expiry).
//!
//! Owns: [`DeviceActor`] (attach/detach with session takeover, subscribe/unsubscribe,
//! offline enqueue and drain acknowledgement, wills, expiry, idle stop),
//! [`DeviceSupervisor`] (spawns actors on demand, restarts failed ones from stored state,
//! runs will and expiry timers, restores sessions at start-up) and [`Devices`], the handle
//! connections use. In a cluster, `remote` reaches the actors of devices whose shard
//! another node leads (shadows, jobs) and `attached` serves a connection on one node
//! from its actor on another (attach, subscribe, deliveries, takeover, re-attach after a
//! leader change). Must not touch: sockets or the wire codec; the live in-flight window
//! runs in the connection while one is attached.

mod actor;
mod attached;
pub mod remote;
mod session_wire;
mod supervisor;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{ActorRef, MessagingErr, RpcReplyPort};
use tokio::sync::oneshot;

pub use actor::DeviceActor;
pub use attached::{DETACH_WAIT, PROBE_EVERY};
pub use remote::{LeaderCalls, Remote};
pub use supervisor::{watch_leadership, DeviceSupervisor, SupervisorMsg};

use crate::broker::{ConnQueue, Delivery, LiveState, Router, SessionSlot};
use crate::config::MqttConfig;
use crate::jobs::{Jobs, JobsCall, Outcome};
use crate::mqtt::{ReasonCode, SubOptions};
use crate::raft::{Groups, SessionStore};
use crate::session::{Inflight, SessionRecord, StoredWill};
use crate::shadow::{Reply, RequestTopic, Shadows};
use crate::store::{DurableAck, Store, StoreError};
use crate::telemetry::Metrics;

/// How long a connection waits for its device actor.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures talking to a device actor.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The actor or its supervisor is not running (node shutting down, or restarting it).
    #[error("device actor unavailable")]
    Unavailable,
    /// The actor did not answer in time.
    #[error("device actor timed out")]
    Timeout,
    /// The actor could not store the change.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a connection brings when it attaches to its session.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub conn: Arc<ConnQueue>,
    pub clean_start: bool,
    /// Granted session expiry in seconds.
    pub expiry_secs: u32,
    pub will: Option<StoredWill>,
    /// Set when a live connection re-attaches because its session's actor moved to
    /// another node (a leader change).
    pub resume: Option<Box<Resume>>,
}

/// What a live connection brings when it re-attaches to its session's new actor. It
/// keeps its socket, packet ids and window: nothing in it is sent again (MQTT resends
/// only on a new connection), so the new actor delivers only what the connection does
/// not hold, and stores the window as the session's in-flight state.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The connection's unacknowledged deliveries.
    pub inflight: Vec<Inflight>,
    /// Stored entries waiting in the connection for a window slot.
    pub pending_seqs: Vec<u64>,
    pub awaiting_rel: Vec<u16>,
    /// A clean session's state, handed over by the evicted actor (it is not in the
    /// shard); `None` for a persistent session, which the new actor reads.
    pub record: Option<SessionRecord>,
}

/// What the session gives the connection back.
#[derive(Debug)]
pub struct AttachReply {
    pub slot: Arc<SessionSlot>,
    pub session_present: bool,
    /// Unacknowledged messages to send again (DUP) or to release, in order.
    pub inflight: Vec<Inflight>,
    /// Offline-queued messages to deliver, in order.
    pub queued: Vec<Delivery>,
    pub awaiting_rel: Vec<u16>,
    /// Resolves when the session record is durable (persistent sessions).
    pub durable: Option<DurableAck>,
}

/// Per-filter result of a SUBSCRIBE.
#[derive(Debug)]
pub struct SubscribeReply {
    pub codes: Vec<ReasonCode>,
    /// Retained messages to send after the SUBACK.
    pub retained: Vec<Delivery>,
    pub durable: Option<DurableAck>,
}

/// Messages of a device actor.
pub enum DeviceMsg {
    Attach(Box<AttachRequest>, RpcReplyPort<Result<AttachReply, DeviceError>>),
    /// The connection `conn_id` ended. `will`: publish the will (abnormal end or v5
    /// DISCONNECT 0x04). `expiry_secs`: a v5 DISCONNECT may change the expiry.
    Detach {
        conn_id: u64,
        live: LiveState,
        will: bool,
        expiry_secs: Option<u32>,
    },
    Subscribe {
        filters: Vec<(String, SubOptions)>,
        id: Option<u32>,
        reply: RpcReplyPort<SubscribeReply>,
    },
    Unsubscribe {
        filters: Vec<String>,
        reply: RpcReplyPort<(Vec<ReasonCode>, Option<DurableAck>)>,
    },
    /// A message for the offline queue; `ack` resolves when it is durable.
    Enqueue(Delivery, oneshot::Sender<Result<(), StoreError>>),
    /// Offline-queued messages (by sequence number) the client acknowledged.
    Delivered(Vec<u64>),
    /// Timer: publish the will if its time has come.
    FireWill,
    /// Timer: end the session if it has expired.
    Expire,
    /// Timer: retire if idle long enough (`actor_idle_connected_ms` while a connection is
    /// attached, else `actor_idle_secs`).
    IdleCheck,
    /// A shadow request for this device (it is the thing). Replies are published; an
    /// MQTT requester gets `accepted`/`rejected` even without a subscription, an admin
    /// caller gets them through `reply` (and `rejected` is then not published).
    Shadow(Box<ShadowRequest>),
    /// Jobs work for this device: a request it published, or the service's own call.
    Jobs(Box<JobsRequest>),
    /// Fault injection for tests and chaos runs: the actor panics.
    InjectPanic,
    /// This node no longer leads the device's shard: take the session's subscriptions
    /// out of the trie, redirect its connection to `server` and stop (the state stays in
    /// the shard for the new leader's actor).
    Evict {
        server: Option<String>,
    },
    /// Timer after an attach: offline-queue entries that landed since the attach read
    /// the queue go to connection `conn_id` ([`DeviceCtx::late_writes_ms`]).
    Rescan {
        conn_id: u64,
    },
}

/// A place in a thing's bounded line of device-API requests (shadow, jobs). It is given
/// back when dropped: when the actor has served the request, or when the request is lost
/// with a failed actor, so a panic cannot leave a thing throttled for good.
pub struct RequestPermit(Arc<SessionSlot>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Which line a request stands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Shadow,
    Jobs,
}

/// A jobs call and where its answer goes.
pub struct JobsRequest {
    pub call: JobsCall,
    /// The MQTT client that published the request.
    pub requester: Option<Arc<SessionSlot>>,
    /// Whoever waits for the outcome (the scheduler).
    pub reply: Option<oneshot::Sender<Outcome>>,
    /// A device's request holds a place in the thing's line; the scheduler's do not.
    pub permit: Option<RequestPermit>,
}

/// A shadow request and where its answer goes.
pub struct ShadowRequest {
    pub topic: RequestTopic,
    pub payload: bytes::Bytes,
    /// The MQTT client that published it.
    pub requester: Option<Arc<SessionSlot>>,
    /// An in-process caller (the admin API) waiting for the replies.
    pub reply: Option<oneshot::Sender<Vec<Reply>>>,
    pub permit: Option<RequestPermit>,
}

impl DeviceMsg {
    /// Answers a message no actor can take (the node is stopping, or spawning failed):
    /// every waiting caller gets an error instead of waiting for its timeout.
    pub(crate) fn refuse(self) {
        match self {
            DeviceMsg::Attach(_, reply) => {
                let _ = reply.send(Err(DeviceError::Unavailable));
            }
            DeviceMsg::Enqueue(_, ack) => {
                let _ = ack.send(Err(StoreError::Closed));
            }
            // Dropping a reply port tells the caller; the rest are fire-and-forget.
            _ => {}
        }
    }
}

/// Everything a device actor needs from its node.
#[derive(Clone)]
pub struct DeviceCtx {
    pub shadows: Arc<Shadows>,
    pub jobs: Arc<Jobs>,
    pub router: Arc<Router>,
    /// The node-local store (the in-flight journal).
    pub store: Store,
    /// Session records and offline queues in the shards.
    pub sessions: SessionStore,
    pub metrics: Arc<Metrics>,
    pub mqtt: Arc<MqttConfig>,
    pub devices: Arc<Devices>,
    pub groups: Arc<Groups>,
    /// Extra wait before the will of a session that was connected to another node fires
    /// when its shard moves here (0 on a single node).
    pub session_grace_ms: u64,
    /// In a cluster, how long a write the shard's previous leader submitted may still
    /// land (`cluster.write_timeout_ms`; 0 on a single node): a persistent session
    /// attached here looks at its offline queue again within it.
    pub late_writes_ms: u64,
}

/// Where a device's actor runs, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Local,
    Remote(u64),
    /// The shard has no leader now (an election, or this node is cut off).
    Unknown,
}

/// Session slots by client id and the supervisor: what connections use to reach devices.
#[derive(Default)]
pub struct Devices {
    slots: DashMap<Arc<str>, Arc<SessionSlot>>,
    /// The node is shutting down (`wake_connections`): pumps of proxied sessions end.
    stopping: std::sync::atomic::AtomicBool,
    /// The node is leaving (drain, SIGTERM in a cluster): connections here are sent to
    /// other nodes and new ones are refused with a Server Reference.
    leaving: std::sync::atomic::AtomicBool,
    /// Detaches of connections here sent to their actors' nodes and not yet answered
    /// (a leaving node waits for them: they carry what the connection still held).
    detaching: Arc<std::sync::atomic::AtomicUsize>,
    /// One per shard group, in shard order (shard 1 first).
    supervisors: OnceLock<Vec<ActorRef<SupervisorMsg>>>,
    /// Set in a cluster: who leads each shard, and how to reach the others.
    groups: OnceLock<Arc<Groups>>,
    remote: OnceLock<Arc<dyn Remote>>,
    /// For delivering answers of remote calls to a requester here (weak: the router
    /// holds this).
    router: OnceLock<Weak<Router>>,
    /// Connections here whose device actor runs on another node, by connection id.
    remote_conns: DashMap<u64, attached::RemoteConn>,
    /// Connections of other nodes served by actors here, by (node, connection id).
    proxies: DashMap<(u64, u64), Arc<attached::Proxy>>,
}

impl Devices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the shard supervisors, in shard order. Called once at start-up.
    pub(crate) fn set_supervisors(&self, s: Vec<ActorRef<SupervisorMsg>>) {
        let _ = self.supervisors.set(s);
    }

    /// Makes this node a cluster member: devices whose shard another node leads are
    /// reached through `remote`. Called once at start-up.
    pub fn set_cluster(&self, groups: Arc<Groups>, remote: Arc<dyn Remote>, router: &Arc<Router>) {
        let _ = self.groups.set(groups);
        let _ = self.remote.set(remote);
        let _ = self.router.set(Arc::downgrade(router));
    }

    fn home(&self, client: &str) -> Home {
        let (Some(groups), Some(_)) = (self.groups.get(), self.remote.get()) else {
            return Home::Local;
        };
        let shard = groups.shard_of(client);
        if groups.is_leader(shard) {
            return Home::Local;
        }
        match groups.leader(shard) {
            Some(l) if l != groups.node() => Home::Remote(l),
            _ => Home::Unknown,
        }
    }

    /// Whether this node serves `shard` (leads it; a single node always does).
    pub fn leads_shard(&self, shard: crate::raft::GroupId) -> bool {
        match (self.groups.get(), self.remote.get()) {
            (Some(g), Some(_)) => g.is_leader(shard),
            _ => true,
        }
    }

    /// Whether this node runs `client`'s device actor (it leads the client's shard; a
    /// single node always does).
    pub fn leads(&self, client: &str) -> bool {
        self.home(client) == Home::Local
    }

    /// The slots of the sessions in `shard` that this node holds.
    pub(crate) fn slots_in(&self, shard: crate::raft::GroupId) -> Vec<Arc<SessionSlot>> {
        let Some(all) = self.supervisors.get() else { return Vec::new() };
        let shards = all.len() as u32;
        self.slots
            .iter()
            .filter(|s| crate::raft::shard_of(s.key(), shards) == shard)
            .map(|s| s.value().clone())
            .collect()
    }

    /// The MQTT address of `node`, as clients should dial it.
    pub fn mqtt_address(&self, node: u64) -> Option<String> {
        self.remote.get().and_then(|r| r.mqtt_address(node))
    }

    /// The slot of `client`, created if missing.
    pub fn slot(&self, client: &str) -> Arc<SessionSlot> {
        if let Some(s) = self.slots.get(client) {
            return s.clone();
        }
        self.slots
            .entry(Arc::from(client))
            .or_insert_with(|| Arc::new(SessionSlot::new(Arc::from(client))))
            .clone()
    }

    pub fn get_slot(&self, client: &str) -> Option<Arc<SessionSlot>> {
        self.slots.get(client).map(|s| s.clone())
    }

    /// Forgets `slot` if it is still the registered one.
    pub fn remove_slot(&self, slot: &Arc<SessionSlot>) {
        self.slots.remove_if(&slot.client_id, |_, s| Arc::ptr_eq(s, slot));
    }

    /// A place for one more request of `thing`, unless `limit` requests are already
    /// waiting for or being served by its device actor. Shadow and jobs requests share
    /// one count; each kind checks its own limit against it.
    pub fn permit(&self, thing: &str, limit: usize) -> Option<RequestPermit> {
        let slot = self.slot(thing);
        let before = slot.requests.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let permit = RequestPermit(slot);
        ((before as usize) < limit).then_some(permit)
    }

    /// Wakes every attached connection, so that hibernating ones see the node's
    /// shutdown (which the working ones watch for themselves).
    pub fn wake_connections(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        for slot in self.slots.iter() {
            if let Some(q) = &slot.route().conn {
                q.nudge();
            }
        }
        for rc in self.remote_conns.iter() {
            rc.queue.nudge();
        }
    }

    /// Starts or ends leaving (`Node::leave`, a drained member): v5 clients connected
    /// here get DISCONNECT 0x9C (Use another server) with a live node's address as
    /// Server Reference, 3.1.1 clients are closed; CONNECTs are refused the same way
    /// (CONNACK 0x9C, 3.1.1 return code 3) until it ends.
    pub fn set_leaving(&self, on: bool) {
        use std::sync::atomic::Ordering;
        if self.leaving.swap(on, Ordering::AcqRel) == on {
            return;
        }
        tracing::info!(
            message = if on {
                "leaving: sending clients to other nodes"
            } else {
                "accepting clients again"
            }
        );
        if on {
            self.nudge_all();
        }
    }

    /// Wakes every connection on this node (they look at the node's state again).
    pub fn nudge_all(&self) {
        for slot in self.slots.iter() {
            if let Some(q) = &slot.route().conn {
                q.nudge();
            }
        }
        // Connections served by actors elsewhere (re-attached ones are not in their
        // slot's route here).
        for rc in self.remote_conns.iter() {
            rc.queue.nudge();
        }
    }

    /// Detaches on their way to other nodes' actors.
    pub fn detaching(&self) -> usize {
        self.detaching.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The MQTT address of a node that can serve `client` instead of this one: its
    /// shard's leader if that is another node, else an active member picked by the
    /// client id (clients spread over them), else the leader of any group that is not
    /// this node (`None` on a single node, or if none is known).
    pub fn elsewhere(&self, client: &str) -> Option<String> {
        let (groups, remote) = (self.groups.get()?, self.remote.get()?);
        let me = groups.node();
        let shard_leader = groups.leader(groups.shard_of(client)).filter(|l| *l != me);
        let mut active = remote.active_peers();
        if !active.is_empty() {
            let k = groups.shard_of(client) as usize % active.len();
            active.rotate_left(k);
        }
        shard_leader
            .into_iter()
            .chain(active)
            .chain(groups.ids().filter_map(|g| groups.leader(g)).filter(|l| *l != me))
            .find_map(|n| self.mqtt_address(n))
    }

    /// Whether the node is shutting down.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sessions known to this node.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The supervisor of `client`'s shard.
    fn supervisor(&self, client: &str) -> Result<&ActorRef<SupervisorMsg>, DeviceError> {
        let all = self.supervisors.get().ok_or(DeviceError::Unavailable)?;
        let shard = crate::raft::shard_of(client, all.len() as u32);
        all.get(shard as usize - 1).ok_or(DeviceError::Unavailable)
    }

    /// Sends `msg` to `client`'s device actor: straight to the running one, else through
    /// the supervisor, which spawns one from stored state (or holds the message while a
    /// retiring actor finishes its mailbox).
    pub fn cast(&self, client: &Arc<str>, slot: Option<&SessionSlot>, msg: DeviceMsg) {
        let msg = match slot.and_then(|s| s.actor()) {
            Some(a) => match a.cast(msg) {
                Ok(()) => return,
                Err(MessagingErr::SendErr(m)) => m,
                Err(e) => {
                    tracing::error!(message = "device actor message lost", client = %client, error = %e);
                    return;
                }
            },
            None => msg,
        };
        match self.supervisor(client) {
            Ok(sup) => {
                let client = client.clone();
                if let Err(MessagingErr::SendErr(SupervisorMsg::Forward { msg, .. })) =
                    sup.cast(SupervisorMsg::Forward { client, msg })
                {
                    msg.refuse();
                }
            }
            Err(_) => msg.refuse(),
        }
    }

    /// Asks `client`'s device actor and waits for the answer (at most [`CALL_TIMEOUT`]).
    pub async fn call<T: Send + 'static>(
        &self,
        client: &Arc<str>,
        slot: Option<&SessionSlot>,
        build: impl FnOnce(RpcReplyPort<T>) -> DeviceMsg,
    ) -> Result<T, DeviceError> {
        let (tx, rx) = oneshot::channel();
        self.cast(client, slot, build(RpcReplyPort::from(tx)));
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(DeviceError::Unavailable),
            Err(_) => Err(DeviceError::Timeout),
        }
    }

    /// Attaches a connection to `client`'s session (spawning its actor if needed).
    pub async fn attach(
        &self,
        client: &str,
        req: AttachRequest,
    ) -> Result<AttachReply, DeviceError> {
        match self.home(client) {
            Home::Local => {}
            Home::Remote(node) => return self.attach_remote(node, client, req).await,
            Home::Unknown => return Err(DeviceError::Unavailable),
        }
        let client: Arc<str> = Arc::from(client);
        let slot = self.get_slot(&client);
        self.call(&client, slot.as_deref(), |reply| DeviceMsg::Attach(Box::new(req), reply)).await?
    }

    /// Hands a shadow request to the device actor of `req.topic.thing` (spawning it).
    pub fn shadow(&self, req: ShadowRequest) {
        match self.home(&req.topic.thing) {
            Home::Local => {}
            Home::Remote(node) => return self.shadow_remote(node, req),
            // Dropping the request answers an admin caller "unavailable".
            Home::Unknown => return,
        }
        let thing: Arc<str> = Arc::from(req.topic.thing.as_str());
        let slot = self.get_slot(&thing);
        self.cast(&thing, slot.as_deref(), DeviceMsg::Shadow(Box::new(req)));
    }

    /// Hands a jobs call to `thing`'s device actor (spawning it); the receiver gets the
    /// outcome once it is done.
    pub fn jobs(
        &self,
        thing: &str,
        call: JobsCall,
        requester: Option<Arc<SessionSlot>>,
        permit: Option<RequestPermit>,
    ) -> oneshot::Receiver<Outcome> {
        match self.home(thing) {
            Home::Local => {}
            Home::Remote(node) => return self.jobs_remote(node, thing, call, requester, permit),
            Home::Unknown => return oneshot::channel().1,
        }
        let (tx, rx) = oneshot::channel();
        let thing: Arc<str> = Arc::from(thing);
        let slot = self.get_slot(&thing);
        let req = JobsRequest { call, requester, reply: Some(tx), permit };
        self.cast(&thing, slot.as_deref(), DeviceMsg::Jobs(Box::new(req)));
        rx
    }

    /// Fault injection: makes `client`'s device actor panic (spawning it if it is not
    /// running). Returns false if the node has no session for `client`.
    pub fn inject_panic(&self, client: &str) -> bool {
        let Some(slot) = self.get_slot(client) else { return false };
        self.cast(&slot.client_id, Some(&slot), DeviceMsg::InjectPanic);
        true
    }
}
