//! Raft groups on this node (openraft 0.9, storage v2): one meta group (group 0) and
//! `raft.shards` shard groups (1..=S). Durable device state is written by proposing a
//! [`Command`] to the device's shard and is readable from the shard's data tree once
//! applied.
//!
//! Owns: the type configuration, the sled log store and state machine of every group, the
//! device-to-shard map (a stable FNV-1a hash of the device id), the proposers (batching,
//! finding the leader: [`proposer`]), start-up and shutdown. Every node runs an instance
//! of every group; membership decides which are voters, learners or idle. A fresh data
//! directory initializes its groups from [`Initial`]: this node as the only voter (a
//! single node), a static first configuration (a cluster's initial members), or nothing
//! (a node that joins and is added by the others). How peers are reached is the network
//! factory's business (`LocalOnly` on a single node, the cluster transport otherwise).
//! Must not touch: MQTT or shadow semantics; it stores the commands it is given.
//!
//! Fixed at creation and recorded in the data directory: the shard count (devices would
//! change shards), the node id and the cluster name; a node configured otherwise refuses
//! to start.

mod log_store;
pub mod machine;
mod network;
mod proposer;
mod session_store;
pub mod sessions;
mod state_machine;
mod types;

#[cfg(test)]
mod suite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftNetworkFactory, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};

pub use log_store::LogStore;
pub use network::LocalOnly;
pub use proposer::{Forward, ForwardError, MAX_BATCH};
pub use session_store::SessionStore;
pub use state_machine::{RetainedChange, RetainedFeed, StateMachine};
pub use types::{Command, GroupId, Raft, Response, StoredShadow, TypeConfig};

use crate::config::RaftConfig;
use crate::store::{decode, encode, Store, StoreError};
use crate::telemetry::Metrics;

/// Why the groups could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft.shards is {configured} but this data directory was created with {stored}")]
    ShardCountChanged { stored: u32, configured: u32 },
    #[error("node.id is {configured} but this data directory belongs to node {stored}")]
    NodeChanged { stored: u64, configured: u64 },
    #[error(
        "cluster.name is {configured:?} but this data directory belongs to cluster {stored:?}"
    )]
    ClusterChanged { stored: String, configured: String },
    #[error("raft group {group}: {reason}")]
    Group { group: GroupId, reason: String },
}

/// Why a write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node does not lead the group (it cannot accept writes now).
    #[error("raft group {0} has no leader on this node")]
    NotLeader(GroupId),
    /// This node leads the group but has not heard from a majority of its voters within
    /// the leader lease (it is on the minority side of a partition): nothing is proposed.
    #[error("raft group {0} cannot reach a majority of its voters")]
    NoQuorum(GroupId),
    /// The group is shutting down or failed.
    #[error("raft group {group} unavailable: {reason}")]
    Unavailable { group: GroupId, reason: String },
}

/// Where the outcome of a submitted command goes.
#[derive(Debug)]
pub enum Reply {
    /// Nobody waits (the write is ordered after the submitter's earlier ones all the same).
    None,
    /// The state machine's answer.
    Response(oneshot::Sender<Result<Response, WriteError>>),
    /// Only whether it is committed and applied, in the form a publisher's or a
    /// connection's acknowledgement waits for ([`crate::store::DurableAck`]).
    Durable(oneshot::Sender<Result<(), StoreError>>),
}

impl Reply {
    fn send(self, res: Result<Response, WriteError>) {
        match self {
            Reply::None => {
                if let Err(e) = res {
                    tracing::error!(message = "raft write failed", error = %e);
                }
            }
            Reply::Response(tx) => {
                let _ = tx.send(res);
            }
            Reply::Durable(tx) => {
                let _ =
                    tx.send(res.map(|_| ()).map_err(|e| StoreError::Unavailable(e.to_string())));
            }
        }
    }
}

struct Group {
    raft: Raft,
    data: sled::Tree,
    /// To the group's proposer task, which batches what arrives while a proposal is in
    /// flight into the next log entry. The lock hands out tickets in channel order.
    proposals: parking_lot::Mutex<(u64, mpsc::UnboundedSender<proposer::Pending>)>,
    /// The highest ticket whose command has been applied (or has failed).
    done: watch::Receiver<u64>,
    /// See [`StateMachine::access_epoch`].
    access_epoch: Arc<std::sync::atomic::AtomicU64>,
    /// See [`StateMachine::rules_epoch`].
    rules_epoch: Arc<std::sync::atomic::AtomicU64>,
    /// This node leads the group and is handing its leadership off
    /// ([`Groups::yield_leadership`]): no writes, no linearizable reads, no heartbeats.
    yielding: Arc<std::sync::atomic::AtomicBool>,
}

/// A submitted command's place in its group's order (see [`Groups::settled`]).
pub type Ticket = u64;

/// How a fresh data directory initializes its groups.
#[derive(Debug, Clone)]
pub enum Initial {
    /// A single node: every group has this node (at this address) as its only voter.
    Single(String),
    /// A cluster's first configuration: the voters of each group (index = group id); a
    /// group whose voters do not include this node is left for the others to add it.
    Static(Vec<BTreeMap<u64, BasicNode>>),
    /// A node that joins: nothing is initialized; the cluster adds it.
    Join,
}

/// How the groups are started.
pub struct StartOptions {
    pub node: u64,
    pub cluster: String,
    pub initial: Initial,
    /// Longest wait for a write to commit (then [`WriteError::Unavailable`]).
    pub write_timeout: Duration,
    /// Per group: whether this node should lead it. A node does not stand for election
    /// in the others until the cluster lets it (openraft 0.9 has no leader transfer).
    /// Empty: no preference.
    pub preferred: Vec<bool>,
}

/// Every Raft group of this node. Cheap to share behind an `Arc`.
pub struct Groups {
    node: u64,
    groups: Vec<Group>,
    retained: Arc<RetainedFeed>,
    metrics: Arc<Metrics>,
    forward: Arc<std::sync::OnceLock<Arc<dyn Forward>>>,
    heartbeat: Duration,
}

const SHARDS_KEY: &[u8] = b"shards";
const NODE_KEY: &[u8] = b"node";
const CLUSTER_KEY: &[u8] = b"cluster";

/// Resolves once the metrics name a leader other than `leader` (with it); never if the
/// metrics channel closes (the group is shutting down and its callers with it).
pub(crate) async fn leader_replaced(
    metrics: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
    leader: u64,
) -> u64 {
    loop {
        if let Some(now) = metrics.borrow_and_update().current_leader.filter(|n| *n != leader) {
            return now;
        }
        if metrics.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// FNV-1a, 64 bit: stable across releases and platforms (unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard group (1..=shards) of a device.
pub fn shard_of(device: &str, shards: u32) -> GroupId {
    1 + (fnv1a(device.as_bytes()) % u64::from(shards.max(1))) as GroupId
}

/// Checks (or, in a fresh directory, records) what the data directory was created for.
/// Returns whether the directory is fresh.
fn check_identity(
    store: &Store,
    cfg: &RaftConfig,
    opts: &StartOptions,
) -> Result<bool, RaftStartError> {
    let cluster = store.db().open_tree("raft.cluster").map_err(StoreError::from)?;
    let get = |k: &[u8]| cluster.get(k).map_err(StoreError::from);
    let fresh = match get(SHARDS_KEY)? {
        Some(v) => {
            let stored: u32 = decode(&v)?;
            if stored != cfg.shards {
                return Err(RaftStartError::ShardCountChanged { stored, configured: cfg.shards });
            }
            false
        }
        None => true,
    };
    match get(NODE_KEY)? {
        Some(v) => {
            let stored: u64 = decode(&v)?;
            if stored != opts.node {
                return Err(RaftStartError::NodeChanged { stored, configured: opts.node });
            }
        }
        // A directory of a release that did not record it was made by node 1 (the only
        // node id it could have; `raft.node_id` defaulted to 1).
        None if !fresh && opts.node != 1 => {
            return Err(RaftStartError::NodeChanged { stored: 1, configured: opts.node });
        }
        None => {}
    }
    if let Some(v) = get(CLUSTER_KEY)? {
        let stored: String = decode(&v)?;
        if stored != opts.cluster {
            return Err(RaftStartError::ClusterChanged {
                stored,
                configured: opts.cluster.clone(),
            });
        }
    }
    let put = |k: &[u8], v: Vec<u8>| cluster.insert(k, v).map_err(StoreError::from);
    put(SHARDS_KEY, encode(&cfg.shards)?)?;
    put(NODE_KEY, encode(&opts.node)?)?;
    put(CLUSTER_KEY, encode(&opts.cluster)?)?;
    Ok(fresh)
}

impl Groups {
    /// A single node's groups: node 1 of cluster "homeport", every group led by it.
    pub async fn start_single(
        store: &Store,
        log: &Store,
        cfg: &RaftConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Groups, RaftStartError> {
        let opts = StartOptions {
            node: 1,
            cluster: "homeport".into(),
            initial: Initial::Single(String::new()),
            write_timeout: Duration::from_secs(5),
            preferred: Vec::new(),
        };
        Groups::start(store, log, cfg, opts, |_| LocalOnly, metrics).await
    }

    /// Opens every group. A fresh directory initializes them from `opts.initial`; a single
    /// node then waits until it leads each group (a restarted single voter elects itself
    /// after one election timeout). Cluster nodes do not wait: their groups elect leaders
    /// as peers come up. State machines live in `store`, logs (and votes) in `log`, which
    /// may be a separate database so that appends flush only logs.
    pub async fn start<N: RaftNetworkFactory<TypeConfig>>(
        store: &Store,
        log: &Store,
        cfg: &RaftConfig,
        opts: StartOptions,
        network: impl Fn(GroupId) -> N,
        metrics: Arc<Metrics>,
    ) -> Result<Groups, RaftStartError> {
        let fresh = check_identity(store, cfg, &opts)?;
        let config = |g: GroupId| {
            // The same timeouts on every node: openraft's leader lease is the election
            // timeout's upper bound, and a voter refuses votes during its lease, so a
            // node with a shorter timeout would be refused by one with a longer lease
            // and lose to it. Who should lead is decided by who may stand (`elect`).
            let (min, max) = (cfg.election_timeout_ms, cfg.election_timeout_max_ms());
            openraft::Config {
                cluster_name: opts.cluster.clone(),
                heartbeat_interval: cfg.heartbeat_ms,
                election_timeout_min: min,
                election_timeout_max: max,
                max_payload_entries: cfg.max_payload_entries,
                install_snapshot_timeout: cfg.snapshot_timeout_ms,
                snapshot_max_chunk_size: cfg.snapshot_chunk_bytes,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after_logs),
                max_in_snapshot_log_to_keep: cfg.keep_logs,
                ..Default::default()
            }
            .validate()
            .map(Arc::new)
            .map_err(|e| RaftStartError::Group { group: g, reason: e.to_string() })
        };
        let forward = Arc::new(std::sync::OnceLock::new());
        let write_timeout = opts.write_timeout;
        // The lease: a leader that heard from no quorum for longer than the longest
        // election timeout may have been replaced already.
        let lease = Duration::from_millis(cfg.election_timeout_max_ms());
        let mut groups = Vec::with_capacity(cfg.shards as usize + 1);
        let retained = Arc::new(RetainedFeed::default());
        for g in 0..=cfg.shards {
            let err = |reason: String| RaftStartError::Group { group: g, reason };
            let log_store = LogStore::open(log, g)?;
            let sm = StateMachine::open(store, g)?.feeding(retained.clone());
            let data = sm.tree();
            let access_epoch = sm.access_epoch();
            let rules_epoch = sm.rules_epoch();
            let raft = Raft::new(opts.node, config(g)?, network(g), log_store, sm)
                .await
                .map_err(|e| err(e.to_string()))?;
            if !opts.preferred.get(g as usize).copied().unwrap_or(true) {
                // Not this node's group to lead: it does not stand for election until the
                // cluster lets it (`cluster::Cluster`), so the preferred node wins.
                raft.runtime_config().elect(false);
            }
            if !raft.is_initialized().await.map_err(|e| err(e.to_string()))? {
                let members = match &opts.initial {
                    Initial::Single(addr) => {
                        Some(BTreeMap::from([(opts.node, BasicNode::new(addr.clone()))]))
                    }
                    Initial::Static(per_group) => per_group
                        .get(g as usize)
                        .filter(|m| fresh && m.contains_key(&opts.node))
                        .cloned(),
                    Initial::Join => None,
                };
                if let Some(members) = members {
                    raft.initialize(members).await.map_err(|e| err(e.to_string()))?;
                }
            }
            let (proposals, rx) = mpsc::unbounded_channel();
            let (done_tx, done) = watch::channel(0);
            let yielding = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let p = proposer::Proposer {
                group: g,
                node: opts.node,
                raft: raft.clone(),
                write_timeout,
                lease,
                forward: forward.clone(),
                metrics: metrics.clone(),
                yielding: yielding.clone(),
            };
            tokio::spawn(p.run(rx, done_tx));
            groups.push(Group {
                raft,
                data,
                proposals: parking_lot::Mutex::new((0, proposals)),
                done,
                access_epoch,
                rules_epoch,
                yielding,
            });
        }
        if matches!(opts.initial, Initial::Single(_)) {
            for (g, group) in groups.iter().enumerate() {
                group
                    .raft
                    .wait(Some(Duration::from_secs(30)))
                    .state(ServerState::Leader, "single voter leads")
                    .await
                    .map_err(|e| RaftStartError::Group {
                        group: g as GroupId,
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(Groups {
            node: opts.node,
            groups,
            retained,
            metrics,
            forward,
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
        })
    }

    /// Where batches for groups led elsewhere go (set once, by the cluster).
    pub fn set_forward(&self, f: Arc<dyn Forward>) {
        let _ = self.forward.set(f);
    }

    /// This node's id.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Raft's heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Moves whenever the meta group applies a change to credentials, certificates,
    /// policies or the registry (on any node: it counts applies, not writers).
    pub fn access_epoch(&self) -> u64 {
        self.groups[0].access_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Moves whenever the meta group applies a change to rule definitions.
    pub fn rules_epoch(&self) -> u64 {
        self.groups[0].rules_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Shard groups (not counting the meta group).
    pub fn shards(&self) -> u32 {
        (self.groups.len() - 1) as u32
    }

    /// Every group id, the meta group first.
    pub fn ids(&self) -> impl Iterator<Item = GroupId> {
        0..self.groups.len() as GroupId
    }

    /// The shard group of a device.
    pub fn shard_of(&self, device: &str) -> GroupId {
        shard_of(device, self.shards())
    }

    /// The openraft handle of a group.
    pub fn raft(&self, group: GroupId) -> Option<&Raft> {
        self.groups.get(group as usize).map(|g| &g.raft)
    }

    /// Whether this node leads `group` now (as far as it knows).
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.raft(group).is_some_and(|r| r.metrics().borrow().state == ServerState::Leader)
    }

    /// Where the shards' applied changes to retained messages go.
    pub fn retained_feed(&self) -> &Arc<RetainedFeed> {
        &self.retained
    }

    /// The Raft term of `group` on this node (0 for a group it does not have).
    pub fn term(&self, group: GroupId) -> u64 {
        self.raft(group).map_or(0, |r| r.metrics().borrow().current_term)
    }

    /// The leader of `group` as this node knows it.
    pub fn leader(&self, group: GroupId) -> Option<u64> {
        self.raft(group).and_then(|r| r.metrics().borrow().current_leader)
    }

    /// Resolves once `group`'s known leader is a node other than `leader` (with that
    /// node), and never if the group does not exist. A call made to a leader that has
    /// died waits silently (QUIC notices only at its idle timeout); racing it against
    /// this ends it when the group has moved on.
    pub fn leader_replaced(
        &self,
        group: GroupId,
        leader: u64,
    ) -> impl std::future::Future<Output = u64> + Send + 'static {
        let metrics = self.raft(group).map(|r| r.metrics());
        async move {
            match metrics {
                Some(mut m) => leader_replaced(&mut m, leader).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Starts handing this node's leadership of `group` off without a membership change
    /// (openraft 0.9 has no leader transfer): writes and linearizable reads here wait,
    /// as during an election, and this node does not stand; with
    /// [`Groups::stop_heartbeats`] the followers' leases run out and one of them is
    /// elected. Every voter stays a voter throughout. Ended by [`Groups::end_yield`].
    pub fn yield_leadership(&self, group: GroupId) -> bool {
        let Some(g) = self.groups.get(group as usize) else { return false };
        if g.raft.metrics().borrow().state != ServerState::Leader {
            return false;
        }
        g.yielding.store(true, std::sync::atomic::Ordering::Release);
        g.raft.runtime_config().elect(false);
        true
    }

    /// During [`Groups::yield_leadership`]: stop heartbeats too, so the followers'
    /// leases run out.
    pub fn stop_heartbeats(&self, group: GroupId) {
        if let Some(g) = self.groups.get(group as usize) {
            g.raft.runtime_config().heartbeat(false);
        }
    }

    /// Ends [`Groups::yield_leadership`]: heartbeats again (if this node still leads, it
    /// goes on leading). Whether it may stand again is the caller's to set.
    pub fn end_yield(&self, group: GroupId) {
        if let Some(g) = self.groups.get(group as usize) {
            g.raft.runtime_config().heartbeat(true);
            g.yielding.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// Waits while this node is handing `group`'s leadership off (at most `within`).
    async fn wait_yield(&self, group: GroupId, within: Duration) {
        let Some(g) = self.groups.get(group as usize) else { return };
        let deadline = tokio::time::Instant::now() + within;
        let mut m = g.raft.metrics();
        while g.yielding.load(std::sync::atomic::Ordering::Acquire)
            && tokio::time::Instant::now() < deadline
        {
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                m.changed(),
            )
            .await;
        }
    }

    /// The applied data of a group, for reads by the group's single writer.
    pub fn data(&self, group: GroupId) -> Option<&sled::Tree> {
        self.groups.get(group as usize).map(|g| &g.data)
    }

    /// Proposes `cmd` to `group` and waits until it is committed (durable on a majority)
    /// and applied on the leader. Commands of many callers share a log entry. The leader
    /// may be another node (the write is forwarded to it).
    pub async fn write(&self, group: GroupId, cmd: Command) -> Result<Response, WriteError> {
        self.write_as(group, cmd, false).await
    }

    /// [`Groups::write`] for a group's single writers that must run on its leader (device
    /// actors): the command is never forwarded, so a writer on a node that lost the
    /// group's leadership cannot commit after the new leader's writers started. It fails
    /// with [`WriteError::NotLeader`] instead.
    pub async fn write_local(&self, group: GroupId, cmd: Command) -> Result<Response, WriteError> {
        self.write_as(group, cmd, true).await
    }

    async fn write_as(
        &self,
        group: GroupId,
        cmd: Command,
        local: bool,
    ) -> Result<Response, WriteError> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.enqueue(group, cmd, Reply::Response(tx), local);
        let out = rx.await.unwrap_or_else(|_| {
            Err(WriteError::Unavailable { group, reason: "group stopped".into() })
        });
        self.metrics.raft_write_seconds.observe(started.elapsed().as_secs_f64());
        let label = match &out {
            Ok(Response::Conflict { .. }) => "conflict",
            Ok(_) => "applied",
            Err(_) => "error",
        };
        self.metrics.raft_writes.with_label_values(&[label]).inc();
        out
    }

    /// Proposes `cmd` to `group` without waiting; the outcome goes to `reply`. Commands
    /// submitted to one group are applied in the order they were submitted, so a single
    /// writer need not wait for one write before it submits the next. Returns the
    /// command's ticket (see [`Groups::settled`]).
    pub fn submit(&self, group: GroupId, cmd: Command, reply: Reply) -> Ticket {
        self.enqueue(group, cmd, reply, false)
    }

    /// [`Groups::submit`] without forwarding (see [`Groups::write_local`]).
    pub fn submit_local(&self, group: GroupId, cmd: Command, reply: Reply) -> Ticket {
        self.enqueue(group, cmd, reply, true)
    }

    fn enqueue(&self, group: GroupId, cmd: Command, reply: Reply, local_only: bool) -> Ticket {
        let Some(g) = self.groups.get(group as usize) else {
            reply.send(Err(WriteError::Unavailable { group, reason: "no such group".into() }));
            return 0;
        };
        let mut p = g.proposals.lock();
        p.0 += 1;
        let ticket = p.0;
        let pending = proposer::Pending { ticket, cmd, reply, local_only };
        if let Err(e) = p.1.send(pending) {
            e.0.reply.send(Err(WriteError::Unavailable { group, reason: "group stopped".into() }));
        }
        ticket
    }

    /// Proposes commands another node forwarded, in order, on this node only (they are
    /// not forwarded again: if this node does not lead the group they fail with
    /// [`WriteError::NotLeader`]). One answer per command.
    pub async fn propose_forwarded(
        &self,
        group: GroupId,
        cmds: Vec<Command>,
    ) -> Result<Vec<Response>, WriteError> {
        let mut waits = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (tx, rx) = oneshot::channel();
            self.enqueue(group, cmd, Reply::Response(tx), true);
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            let res = rx.await.unwrap_or_else(|_| {
                Err(WriteError::Unavailable { group, reason: "group stopped".into() })
            });
            out.push(res?);
        }
        Ok(out)
    }

    /// Waits until the command with `ticket` (and every one submitted before it) has been
    /// applied or has failed, so that reads of the group's data see it.
    pub async fn settled(&self, group: GroupId, ticket: Ticket) {
        let Some(g) = self.groups.get(group as usize) else { return };
        let mut rx = g.done.clone();
        // An error means the proposer is gone: nothing more will be applied.
        let _ = rx.wait_for(|done| *done >= ticket).await;
    }

    /// The ticket of the last command submitted to `group`.
    pub fn last_ticket(&self, group: GroupId) -> Ticket {
        self.groups.get(group as usize).map_or(0, |g| g.proposals.lock().0)
    }

    /// Waits until every command submitted so far to any group is applied (or failed).
    pub async fn settle_all(&self) {
        for g in 0..self.groups.len() as GroupId {
            self.settled(g, self.last_ticket(g)).await;
        }
    }

    /// Waits until this node's copy of `group` has applied everything committed before
    /// the call, as confirmed by the group's leader with a quorum (a read barrier). On
    /// the leader that is `ensure_linearizable`; elsewhere `leader_read` asks the leader
    /// for its read index.
    pub async fn read_barrier(
        &self,
        group: GroupId,
        timeout: Duration,
        leader_read: impl std::future::Future<Output = Result<Option<u64>, WriteError>>,
    ) -> Result<(), WriteError> {
        let Some(raft) = self.raft(group) else {
            return Err(WriteError::Unavailable { group, reason: "no such group".into() });
        };
        let unavailable = |reason: String| WriteError::Unavailable { group, reason };
        self.wait_yield(group, timeout).await;
        let index = if self.is_leader(group) {
            match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
                Ok(Ok(id)) => id.map(|l| l.index),
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Err(_) => return Err(unavailable("read barrier timed out".into())),
            }
        } else {
            tokio::time::timeout(timeout, leader_read)
                .await
                .map_err(|_| unavailable("read index timed out".into()))??
        };
        let Some(index) = index else { return Ok(()) };
        let mut m = raft.metrics();
        let reached = tokio::time::timeout(
            timeout,
            m.wait_for(|m| m.last_applied.is_some_and(|a| a.index >= index)),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(unavailable(format!("did not apply up to {index} in time"))),
        }
    }

    /// The log index a follower must have applied to read linearizably, answered on the
    /// leader after it confirmed its leadership with a quorum.
    pub async fn read_index(&self, group: GroupId) -> Result<Option<u64>, WriteError> {
        let raft = self
            .raft(group)
            .ok_or(WriteError::Unavailable { group, reason: "no such group".into() })?;
        // A linearizable read sends a heartbeat round, which would renew the followers'
        // leases while this node is handing its leadership off.
        self.wait_yield(group, Duration::from_secs(3)).await;
        if !self.is_leader(group) {
            return Err(WriteError::NotLeader(group));
        }
        match raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map(|l| l.index)),
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(_),
            )) => Err(WriteError::NotLeader(group)),
            Err(e) => Err(WriteError::Unavailable { group, reason: e.to_string() }),
        }
    }

    /// A digest of a group's applied data (keys and values, in key order) and the log
    /// index it was taken at: replicas that applied the same log have the same digest.
    pub fn digest(&self, group: GroupId) -> Option<(u64, Option<u64>)> {
        let g = self.groups.get(group as usize)?;
        let applied = g.raft.metrics().borrow().last_applied.map(|l| l.index);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for kv in g.data.scan_prefix(b"d") {
            let (k, v) = kv.ok()?;
            for part in [&k[..], &[0xff], &v[..], &[0xfe]] {
                for b in part {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        Some((h, applied))
    }

    /// Stops every group (pending writes fail with [`WriteError::Unavailable`]).
    pub async fn shutdown(&self) {
        for (g, group) in self.groups.iter().enumerate() {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(message = "raft group shutdown failed", group = g, error = %e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_in_range() {
        // Pinned values: changing the hash would move every device to another shard.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        for id in ["a", "sensor-1", "sensor-2", "ü"] {
            let s = shard_of(id, 16);
            assert!((1..=16).contains(&s));
            assert_eq!(s, shard_of(id, 16));
        }
        assert_eq!(shard_of("anything", 1), 1);
        let spread: std::collections::HashSet<_> =
            (0..1000).map(|i| shard_of(&format!("dev-{i}"), 16)).collect();
        assert_eq!(spread.len(), 16);
    }
}
