//! The cluster: nodes that replicate the Raft groups over QUIC.
//!
//! Owns: the transport ([`transport`], [`wire`], [`certs`], [`faults`]), openraft's
//! network over it ([`raft_net`]), what peers are answered ([`service`]), the members and
//! placement records in the meta group ([`records`]), where voters go ([`placement`]),
//! the loops that keep membership in step with placement ([`control`]), and publishes
//! across nodes ([`routes`]: who has which filters; [`forward`]: announcing them and
//! carrying messages, handed to the broker's router as its `Forwarder`; [`liveness`]:
//! which peers are declared down), and leaving before a stop ([`Cluster::hand_off_all`]).
//! Must not touch: MQTT sessions, shadows or jobs; device calls that cross nodes come in
//! as [`wire::DeviceCall`] and are run by whatever [`service::DeviceCalls`] the node sets.
//!
//! A node without `cluster.bind` has no [`Cluster`] at all: its groups use
//! `raft::LocalOnly` and it behaves as the single node it always was.

pub mod certs;
mod control;
pub mod faults;
pub mod forward;
pub mod liveness;
mod metrics;
pub mod placement;
pub mod raft_net;
pub mod records;
pub mod routes;
pub mod service;
pub mod transport;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use tokio::sync::watch;

pub use metrics::ClusterMetrics;
pub use records::{Member, MemberState};

use crate::config::ClusterConfig;
use crate::raft::{Command, GroupId, Groups, Initial, Response, WriteError};
use records::ClusterCommand;
use service::{ClusterService, DeviceCalls, Forwarder};
use transport::{Class, Transport, TransportOptions};
use wire::{Answer, MemberInfo, NodeId, Request};

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
}

/// Why an operator's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no member {0}")]
    NoSuchMember(NodeId),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What a cluster node starts before its groups: the transport (the groups' network),
/// its metrics, and the service that answers peers (serving Raft RPCs as soon as the
/// groups exist).
pub struct Parts {
    pub transport: Arc<Transport>,
    pub metrics: Arc<ClusterMetrics>,
    pub service: Arc<ClusterService>,
    /// Routes and forwarded publishes (the router's `Forwarder`).
    pub routing: Arc<forward::Routing>,
}

impl Parts {
    /// Lets peers reach the groups (right after they started).
    pub fn serve(&self, groups: &Arc<Groups>) {
        let _ = self.service.groups.set(Arc::downgrade(groups));
        groups.set_forward(Arc::new(Forwarder { transport: self.transport.clone() }));
    }
}

/// Starts the transport for a cluster node (before the groups, whose network it is).
pub fn start_transport(
    cfg: &ClusterConfig,
    node: NodeId,
    metrics: &crate::telemetry::Metrics,
) -> Result<Parts, ClusterError> {
    let identity = match (&cfg.ca, &cfg.cert, &cfg.key) {
        (Some(ca), Some(cert), Some(key)) => certs::load(ca, cert, key, &cfg.name, node)?,
        _ => {
            tracing::warn!(
                message = "!!! cluster.insecure_dev: peers are NOT authenticated; any host that reaches cluster.bind can join and read everything !!!",
                bind = ?cfg.bind
            );
            certs::insecure_identity(&cfg.name, node)?
        }
    };
    let insecure = cfg.ca.is_none();
    let bind = cfg.bind.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
    let advertise = cfg.advertised().unwrap_or_else(|| bind.to_string());
    let cm = Arc::new(ClusterMetrics::new(metrics.registry()));
    let opts = TransportOptions { node, cluster: cfg.name.clone(), bind, advertise, insecure };
    let t = Transport::start(opts, &identity, cm.clone())?;
    for m in &cfg.initial_members {
        t.learn(m.id, &m.addr);
    }
    let routing = forward::Routing::new(
        t.clone(),
        Duration::from_millis(cfg.rpc_timeout_ms),
        Duration::from_millis(cfg.node_down_ms),
        cm.clone(),
    );
    let service = Arc::new(ClusterService {
        routing: routing.clone(),
        groups: std::sync::OnceLock::new(),
        incarnation: t.incarnation(),
        ready: std::sync::OnceLock::new(),
        devices: std::sync::OnceLock::new(),
        holds: Default::default(),
        leaving: Default::default(),
    });
    t.set_service(service.clone());
    Ok(Parts { transport: t, metrics: cm, service, routing })
}

/// How a fresh data directory initializes its groups, and which groups this node
/// should lead, from the configuration.
pub fn initial(cfg: &ClusterConfig, node: NodeId, groups: u32) -> (Initial, Vec<bool>) {
    let all: Vec<GroupId> = (0..groups).collect();
    if !cfg.initial_members.is_empty() {
        let members: Vec<_> =
            cfg.initial_members.iter().map(|m| (m.id, MemberState::Active)).collect();
        let addr: BTreeMap<NodeId, String> =
            cfg.initial_members.iter().map(|m| (m.id, m.addr.clone())).collect();
        let plan = placement::plan(&all, &members, &placement::Plan::new(), cfg.replication_factor);
        let per_group = all
            .iter()
            .map(|g| {
                plan.get(g)
                    .into_iter()
                    .flatten()
                    .map(|id| (*id, BasicNode::new(addr.get(id).cloned().unwrap_or_default())))
                    .collect()
            })
            .collect();
        let preferred =
            all.iter().map(|g| plan.get(g).and_then(|v| v.first()) == Some(&node)).collect();
        (Initial::Static(per_group), preferred)
    } else {
        // Joining, or waiting for `ctl cluster init` / `ctl cluster join`: a fresh node
        // never forms a cluster of its own by accident (two such nodes would be two
        // clusters). A directory that already has data (a single node's, say) starts
        // from it: that node is the first of its cluster.
        (Initial::Join, Vec::new())
    }
}

/// How device actors on other nodes are reached (see `crate::device::remote`).
pub struct DeviceLink {
    pub transport: Arc<Transport>,
    pub groups: Arc<Groups>,
    pub timeout: Duration,
    /// For attach, subscribe and unsubscribe: a takeover and a durable write may be
    /// waited for.
    pub session_timeout: Duration,
}

impl DeviceLink {
    /// One device call to `node`; the peer's error answer is the error.
    fn device(
        &self,
        node: NodeId,
        call: wire::DeviceCall,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<wire::DeviceAnswer, String>> {
        let t = self.transport.clone();
        Box::pin(async move {
            match t.call(node, Class::Data, Request::Device(call), timeout).await {
                Ok(Answer::Device(a)) => Ok(a),
                Ok(Answer::Error(e)) => Err(e.to_string()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl crate::device::Remote for DeviceLink {
    fn mqtt_address(&self, node: NodeId) -> Option<String> {
        let meta = self.groups.data(0)?;
        records::read_member(meta, node).ok().flatten().and_then(|m| m.info.mqtt_addr)
    }

    fn active_peers(&self) -> Vec<u64> {
        let Some(meta) = self.groups.data(0) else { return Vec::new() };
        let me = self.groups.node();
        records::members(meta)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.info.id != me && m.state == MemberState::Active)
            .map(|m| m.info.id)
            .collect()
    }

    fn call(
        &self,
        node: NodeId,
        call: wire::DeviceCall,
    ) -> futures_util::future::BoxFuture<'static, Result<wire::DeviceAnswer, String>> {
        self.device(node, call, self.timeout)
    }

    fn session_call(
        &self,
        node: NodeId,
        call: wire::DeviceCall,
    ) -> futures_util::future::BoxFuture<'static, Result<wire::DeviceAnswer, String>> {
        self.device(node, call, self.session_timeout)
    }

    fn conn_call(
        &self,
        node: NodeId,
        call: wire::ConnCall,
    ) -> futures_util::future::BoxFuture<'static, Result<wire::ConnAnswer, String>> {
        let (t, timeout) = (self.transport.clone(), self.timeout);
        Box::pin(async move {
            match t.call(node, Class::Data, Request::Conn(call), timeout).await {
                Ok(Answer::Conn(a)) => Ok(a),
                Ok(Answer::Error(e)) => Err(e.to_string()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Which groups this node should lead, from the placement its data directory holds (a
/// restart): the preferred leader gets the shorter election timeout. Empty for a fresh
/// directory.
pub fn preferred_from_store(store: &crate::store::Store, node: NodeId, groups: u32) -> Vec<bool> {
    let Ok(sm) = crate::raft::StateMachine::open(store, 0) else { return Vec::new() };
    let Ok(stored) = records::placements(&sm.tree()) else { return Vec::new() };
    if stored.is_empty() {
        return Vec::new();
    }
    let first: BTreeMap<GroupId, NodeId> =
        stored.into_iter().filter_map(|(g, p)| p.voters.first().map(|v| (g, *v))).collect();
    (0..groups).map(|g| first.get(&g).is_none_or(|v| *v == node)).collect()
}

/// A running cluster node's cluster side.
pub struct Cluster {
    pub transport: Arc<Transport>,
    groups: Arc<Groups>,
    cfg: ClusterConfig,
    me: MemberInfo,
    metrics: Arc<ClusterMetrics>,
    service: Arc<ClusterService>,
    /// The meta group answered a read barrier lately (this node is on the majority side).
    meta_ok: Arc<AtomicBool>,
    meta_ok_at: Arc<AtomicU64>,
    started: Instant,
    /// Groups whose membership does not match their placement yet (controller's view).
    moving: parking_lot::Mutex<Vec<GroupId>>,
    /// Addresses to join through (`cluster.join`, or `ctl cluster join`).
    join: parking_lot::Mutex<Vec<String>>,
    /// Wakes the registration loop (a join address was given).
    kick: tokio::sync::Notify,
    /// When this node last handed a group's leadership off.
    last_handoff: parking_lot::Mutex<Option<Instant>>,
    /// Groups this node should lead (empty: no preference).
    preferred: Vec<bool>,
    /// How long after start a node stands for election only where it is preferred.
    stand_after: Duration,
    /// openraft's leader lease: a voter that heard from its leader this recently
    /// refuses candidates.
    lease: Duration,
    routing: Arc<forward::Routing>,
}

impl Cluster {
    /// Answers peers and forwards writes; starts the background loops. `me` holds this
    /// node's addresses; it registers itself with `state` (active for static members
    /// and a first node, joining for a node that joins).
    pub fn start(
        parts: Parts,
        groups: Arc<Groups>,
        cfg: ClusterConfig,
        me: MemberInfo,
        preferred: Vec<bool>,
        lease: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Cluster> {
        let Parts { transport, metrics, service, routing } = parts;
        // `Groups::start` kept non-preferred groups from standing for election; after a
        // while every group may (the reconciler then keeps nodes out of groups they are
        // not placed in).
        let g2 = groups.clone();
        let stand_after = lease * 2;
        tokio::spawn(async move {
            tokio::time::sleep(stand_after).await;
            for g in g2.ids() {
                if let Some(r) = g2.raft(g) {
                    r.runtime_config().elect(true);
                }
            }
        });
        let meta_ok = Arc::new(AtomicBool::new(false));
        let ok = meta_ok.clone();
        let cfg_join = cfg.join.clone();
        let _ = service.ready.set(Arc::new(move || ok.load(Ordering::Acquire)));
        let c = Arc::new(Cluster {
            transport,
            groups,
            cfg,
            me,
            metrics,
            service,
            meta_ok,
            meta_ok_at: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            moving: parking_lot::Mutex::new(Vec::new()),
            join: parking_lot::Mutex::new(cfg_join),
            kick: tokio::sync::Notify::new(),
            last_handoff: parking_lot::Mutex::new(None),
            preferred,
            stand_after,
            lease,
            routing,
        });
        // A node the meta group already holds registers as active (its record keeps the
        // state it has); one that joins is registered as joining by the node it asks.
        tokio::spawn(c.clone().register(MemberState::Active, shutdown.clone()));
        c.keep_routing_peers(&shutdown);
        let tick = Duration::from_millis(c.cfg.placement_interval_ms);
        let s = c.clone();
        let stop = shutdown.clone();
        control::every(tick, shutdown.clone(), move || {
            let s = s.clone();
            let stop = stop.clone();
            async move {
                s.sync_addresses();
                s.update_metrics();
                s.keep_routing_peers(&stop);
            }
        });
        let s = c.clone();
        control::every(tick, shutdown.clone(), move || {
            let s = s.clone();
            async move { s.control().await }
        });
        let s = c.clone();
        control::every(tick, shutdown.clone(), move || {
            let s = s.clone();
            async move { s.reconcile().await }
        });
        let s = c.clone();
        let check = Duration::from_millis((c.cfg.node_down_ms / 10).clamp(10, 250));
        control::every(check, shutdown.clone(), move || {
            let s = s.clone();
            async move { s.routing.check_peers() }
        });
        let s = c.clone();
        control::every(Duration::from_millis(500), shutdown, move || {
            let s = s.clone();
            async move { s.check_meta().await }
        });
        c
    }

    /// Sets what runs device calls from peers (once).
    pub fn set_devices(&self, d: Arc<dyn DeviceCalls>) {
        let _ = self.service.devices.set(d);
    }

    pub fn node(&self) -> NodeId {
        self.me.id
    }

    /// Whether this node is stopping ([`Cluster::hand_off_all`] was called).
    pub fn is_leaving(&self) -> bool {
        self.service.leaving.load(Ordering::Acquire)
    }

    /// This node's groups.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.rpc_timeout_ms)
    }

    /// Confirms with the meta group's leader that this node is on the majority side.
    async fn check_meta(&self) {
        let t = self.transport.clone();
        let leader = self.groups.leader(0);
        let timeout = Duration::from_secs(1);
        let ask = async move {
            let Some(l) = leader else {
                return Err(WriteError::Unavailable { group: 0, reason: "no leader".into() });
            };
            match t.call(l, Class::Raft, Request::ReadIndex { group: 0 }, timeout).await {
                Ok(Answer::ReadIndex(i)) => Ok(i),
                Ok(_) => Err(WriteError::Unavailable { group: 0, reason: "bad answer".into() }),
                Err(e) => Err(WriteError::Unavailable { group: 0, reason: e.to_string() }),
            }
        };
        let ok = self.groups.read_barrier(0, timeout, ask).await.is_ok();
        if ok {
            self.meta_ok_at.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
        }
        let fresh = self.started.elapsed().as_millis() as u64
            - self.meta_ok_at.load(Ordering::Acquire)
            < 2000;
        self.meta_ok
            .store(ok || (fresh && self.meta_ok_at.load(Ordering::Acquire) > 0), Ordering::Release);
    }

    /// Whether this node is on the majority side of the meta group (checked twice a
    /// second); `/readyz` is false without it.
    pub fn healthy(&self) -> bool {
        self.meta_ok.load(Ordering::Acquire)
    }

    /// Route sync with every member that is not removed, and with the static members
    /// from the start (before the meta group has them).
    fn keep_routing_peers(&self, stop: &watch::Receiver<bool>) {
        let members = self.members();
        let mut peers: Vec<NodeId> =
            members.iter().filter(|m| m.state != MemberState::Removed).map(|m| m.info.id).collect();
        for m in &self.cfg.initial_members {
            if !members.iter().any(|k| k.info.id == m.id) {
                peers.push(m.id);
            }
        }
        self.routing.keep_peers(&peers, stop);
    }

    /// Members as this node's copy of the meta group has them.
    pub fn members(&self) -> Vec<Member> {
        self.groups.data(0).and_then(|d| records::members(d).ok()).unwrap_or_default()
    }

    /// Stored placements.
    pub fn placements(&self) -> Vec<(GroupId, records::Placement)> {
        self.groups.data(0).and_then(|d| records::placements(d).ok()).unwrap_or_default()
    }

    /// Groups whose membership is being changed toward their placement.
    pub fn moving(&self) -> Vec<GroupId> {
        self.moving.lock().clone()
    }

    /// Whether any group of this node has been initialized (formed or joined).
    pub async fn initialized(&self) -> bool {
        for g in self.groups.ids() {
            if let Some(r) = self.groups.raft(g) {
                if r.is_initialized().await.unwrap_or(true) {
                    return true;
                }
            }
        }
        false
    }

    /// Makes a fresh node the first node of a new cluster: every group with this node as
    /// its only voter (`ctl cluster init`).
    pub async fn init(&self) -> Result<(), ControlError> {
        if self.initialized().await {
            return Err(ControlError::Refused("this node already belongs to a cluster".into()));
        }
        if !self.join.lock().is_empty() {
            return Err(ControlError::Refused("this node is joining a cluster".into()));
        }
        let me = BTreeMap::from([(self.me.id, BasicNode::new(self.me.cluster_addr.clone()))]);
        for g in self.groups.ids() {
            let Some(r) = self.groups.raft(g) else { continue };
            if let Err(e) = r.initialize(me.clone()).await {
                return Err(ControlError::Refused(format!("group {g}: {e}")));
            }
        }
        self.kick.notify_one();
        tracing::info!(message = "initialized a new cluster", node = self.me.id);
        Ok(())
    }

    /// Makes a fresh node join the cluster that `address` (a member's cluster address)
    /// belongs to (`ctl cluster join`).
    pub async fn join(&self, address: &str) -> Result<(), ControlError> {
        crate::config::check_host_port(address)
            .map_err(|e| ControlError::Refused(format!("address: {e}")))?;
        if self.initialized().await {
            return Err(ControlError::Refused("this node already belongs to a cluster".into()));
        }
        let mut join = self.join.lock();
        if !join.iter().any(|a| a == address) {
            join.push(address.to_string());
        }
        drop(join);
        self.kick.notify_one();
        Ok(())
    }

    /// Sets a member's state (drain, undrain, remove) if the change is safe.
    pub async fn set_state(&self, id: NodeId, state: MemberState) -> Result<Member, ControlError> {
        let m = self
            .members()
            .into_iter()
            .find(|m| m.info.id == id)
            .ok_or(ControlError::NoSuchMember(id))?;
        if m.state == MemberState::Removed {
            return Err(ControlError::Refused(format!("node {id} is already removed")));
        }
        if state == MemberState::Removed {
            self.check_removal(id).await?;
        }
        let cmd = Command::Cluster(ClusterCommand::SetState { id, state, expect: m.version });
        match self.groups.write(0, cmd).await? {
            Response::Applied => Ok(Member { state, version: m.version + 1, ..m }),
            _ => Err(ControlError::Refused(format!("node {id} changed meanwhile; try again"))),
        }
    }

    /// A node may be removed only if every group it votes in keeps a majority of live
    /// voters without it.
    async fn check_removal(&self, id: NodeId) -> Result<(), ControlError> {
        let statuses = self.gather().await;
        let live: std::collections::BTreeSet<NodeId> =
            statuses.iter().filter(|(_, s)| s.is_some()).map(|(id, _)| *id).collect();
        let mut groups = BTreeMap::new();
        for s in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
            for g in s.groups.iter().filter(|g| g.role == "leader") {
                groups.insert(g.group, g.voters.clone());
            }
        }
        for g in self.groups.ids() {
            let Some(voters) = groups.get(&g) else {
                return Err(ControlError::Refused(format!(
                    "group {g} has no leader now; removing node {id} could lose its majority"
                )));
            };
            if !voters.contains(&id) {
                continue;
            }
            let rest: Vec<_> = voters.iter().filter(|v| **v != id).collect();
            let up = rest.iter().filter(|v| live.contains(v)).count();
            if rest.is_empty() || up * 2 <= rest.len() {
                return Err(ControlError::Refused(format!(
                    "group {g} would be left with {up} live voters of {}: no majority",
                    rest.len()
                )));
            }
        }
        Ok(())
    }
}
