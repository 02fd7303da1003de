//! Raft groups on this node (openraft 0.9, storage v2): one meta group (group 0) and
//! `raft.shards` shard groups (1..=S). Durable device state is written by proposing a
//! [`Command`] to the device's shard and is readable from the shard's data tree once
//! applied.
//!
//! Owns: the type configuration, the sled log store and state machine of every group, the
//! device-to-shard map (a stable FNV-1a hash of the device id), start-up (a fresh data
//! directory initializes each group with this node as its only voter) and shutdown.
//! Must not touch: MQTT or shadow semantics; it stores the commands it is given.
//!
//! The shard count is fixed at creation: it is recorded in the data directory and a node
//! configured with another count refuses to start (devices would change shards).

mod log_store;
pub mod machine;
mod network;
mod session_store;
pub mod sessions;
mod state_machine;
mod types;

#[cfg(test)]
mod suite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};

pub use log_store::LogStore;
pub use network::LocalOnly;
pub use session_store::SessionStore;
pub use state_machine::StateMachine;
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
    #[error("raft group {group}: {reason}")]
    Group { group: GroupId, reason: String },
}

/// Why a write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node does not lead the group (it cannot accept writes now).
    #[error("raft group {0} has no leader on this node")]
    NotLeader(GroupId),
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

/// A command waiting for its group's next proposal: its ticket, and where its answer goes.
type Pending = (u64, Command, Reply);

struct Group {
    raft: Raft,
    data: sled::Tree,
    /// To the group's proposer task, which batches what arrives while a proposal is in
    /// flight into the next log entry. The lock hands out tickets in channel order.
    proposals: parking_lot::Mutex<(u64, mpsc::UnboundedSender<Pending>)>,
    /// The highest ticket whose command has been applied (or has failed).
    done: watch::Receiver<u64>,
    /// See [`StateMachine::access_epoch`].
    access_epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// A submitted command's place in its group's order (see [`Groups::settled`]).
pub type Ticket = u64;

/// Most commands in one log entry.
const MAX_BATCH: usize = 1024;

/// Proposes what arrives for one group: one proposal in flight; commands that arrive
/// meanwhile go together into the next entry. openraft 0.9 appends and flushes each
/// client write before taking the next, so without this every command would cost a flush.
async fn proposer(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    done: watch::Sender<u64>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics.raft_batch.observe(batch.len() as f64);
        let last = batch.last().map_or(0, |p| p.0);
        let mut cmds = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (_, c, r) in batch.drain(..) {
            cmds.push(c);
            replies.push(r);
        }
        let single = cmds.len() == 1;
        let cmd = if single {
            cmds.into_iter().next().unwrap_or(Command::Batch(Vec::new()))
        } else {
            Command::Batch(cmds)
        };
        let res = match raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(WriteError::NotLeader(group))
            }
            Err(e) => Err(WriteError::Unavailable { group, reason: e.to_string() }),
        };
        // `Groups::write` counts its own writes, with their latency.
        let finish = |r: Reply, res: Result<Response, WriteError>| {
            if !matches!(r, Reply::Response(_)) {
                let label = if res.is_ok() { "applied" } else { "error" };
                metrics.raft_writes.with_label_values(&[label]).inc();
            }
            r.send(res);
        };
        match res {
            Ok(Response::Batch(answers)) if !single && answers.len() == replies.len() => {
                for (r, a) in replies.into_iter().zip(answers) {
                    finish(r, Ok(a));
                }
            }
            Ok(answer) if single => {
                for r in replies {
                    finish(r, Ok(answer.clone()));
                }
            }
            Ok(other) => {
                let reason = format!("unexpected answer to a batch: {other:?}");
                for r in replies {
                    finish(r, Err(WriteError::Unavailable { group, reason: reason.clone() }));
                }
            }
            Err(e) => {
                for r in replies {
                    finish(r, Err(e.clone()));
                }
            }
        }
        done.send_replace(last);
    }
}

/// Every Raft group of this node. Cheap to share behind an `Arc`.
pub struct Groups {
    groups: Vec<Group>,
    metrics: Arc<Metrics>,
}

const SHARDS_KEY: &[u8] = b"shards";

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

impl Groups {
    /// Opens every group, initializing fresh ones with this node as the only voter, and
    /// waits until this node leads each of them. State machines live in `store`, logs (and
    /// votes) in `log`, which may be a separate database so that appends flush only logs.
    pub async fn start(
        store: &Store,
        log: &Store,
        cfg: &RaftConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Groups, RaftStartError> {
        let cluster = store.db().open_tree("raft.cluster").map_err(StoreError::from)?;
        match cluster.get(SHARDS_KEY).map_err(StoreError::from)? {
            Some(v) => {
                let stored: u32 = decode(&v)?;
                if stored != cfg.shards {
                    return Err(RaftStartError::ShardCountChanged {
                        stored,
                        configured: cfg.shards,
                    });
                }
            }
            None => {
                cluster.insert(SHARDS_KEY, encode(&cfg.shards)?).map_err(StoreError::from)?;
            }
        }
        let config = openraft::Config {
            cluster_name: "homeport".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after_logs),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| RaftStartError::Group { group: 0, reason: e.to_string() })?,
        );
        let mut groups = Vec::with_capacity(cfg.shards as usize + 1);
        for g in 0..=cfg.shards {
            let err = |reason: String| RaftStartError::Group { group: g, reason };
            let log_store = LogStore::open(log, g)?;
            let sm = StateMachine::open(store, g)?;
            let data = sm.tree();
            let access_epoch = sm.access_epoch();
            let raft = Raft::new(cfg.node_id, config.clone(), LocalOnly, log_store, sm)
                .await
                .map_err(|e| err(e.to_string()))?;
            if !raft.is_initialized().await.map_err(|e| err(e.to_string()))? {
                let members = BTreeMap::from([(cfg.node_id, BasicNode::default())]);
                raft.initialize(members).await.map_err(|e| err(e.to_string()))?;
            }
            let (proposals, rx) = mpsc::unbounded_channel();
            let (done_tx, done) = watch::channel(0);
            tokio::spawn(proposer(g, raft.clone(), rx, done_tx, metrics.clone()));
            groups.push(Group {
                raft,
                data,
                proposals: parking_lot::Mutex::new((0, proposals)),
                done,
                access_epoch,
            });
        }
        for (g, group) in groups.iter().enumerate() {
            // A restarted single voter elects itself after one election timeout.
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
        Ok(Groups { groups, metrics })
    }

    /// Moves whenever the meta group applies a change to credentials, certificates,
    /// policies or the registry (on any node: it counts applies, not writers).
    pub fn access_epoch(&self) -> u64 {
        self.groups[0].access_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Shard groups (not counting the meta group).
    pub fn shards(&self) -> u32 {
        (self.groups.len() - 1) as u32
    }

    /// The shard group of a device.
    pub fn shard_of(&self, device: &str) -> GroupId {
        shard_of(device, self.shards())
    }

    /// The applied data of a group, for reads by the group's single writer.
    pub fn data(&self, group: GroupId) -> Option<&sled::Tree> {
        self.groups.get(group as usize).map(|g| &g.data)
    }

    /// Proposes `cmd` to `group` and waits until it is committed (durable on a majority)
    /// and applied here. Commands of many callers share a log entry (see [`proposer`]).
    pub async fn write(&self, group: GroupId, cmd: Command) -> Result<Response, WriteError> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.submit(group, cmd, Reply::Response(tx));
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
        let Some(g) = self.groups.get(group as usize) else {
            reply.send(Err(WriteError::Unavailable { group, reason: "no such group".into() }));
            return 0;
        };
        let mut p = g.proposals.lock();
        p.0 += 1;
        let ticket = p.0;
        if let Err(e) = p.1.send((ticket, cmd, reply)) {
            let (_, _, reply) = e.0;
            reply.send(Err(WriteError::Unavailable { group, reason: "group stopped".into() }));
        }
        ticket
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
