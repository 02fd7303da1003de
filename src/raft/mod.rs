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
mod state_machine;
mod types;

#[cfg(test)]
mod suite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};

pub use log_store::LogStore;
pub use network::LocalOnly;
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

struct Group {
    raft: Raft,
    data: sled::Tree,
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
    /// waits until this node leads each of them.
    pub async fn start(
        store: &Store,
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
            let log = LogStore::open(store, g)?;
            let sm = StateMachine::open(store, g)?;
            let data = sm.tree();
            let raft = Raft::new(cfg.node_id, config.clone(), LocalOnly, log, sm)
                .await
                .map_err(|e| err(e.to_string()))?;
            if !raft.is_initialized().await.map_err(|e| err(e.to_string()))? {
                let members = BTreeMap::from([(cfg.node_id, BasicNode::default())]);
                raft.initialize(members).await.map_err(|e| err(e.to_string()))?;
            }
            groups.push(Group { raft, data });
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
    /// and applied here.
    pub async fn write(&self, group: GroupId, cmd: Command) -> Result<Response, WriteError> {
        let Some(g) = self.groups.get(group as usize) else {
            return Err(WriteError::Unavailable { group, reason: "no such group".into() });
        };
        let started = Instant::now();
        let res = g.raft.client_write(cmd).await;
        self.metrics.raft_write_seconds.observe(started.elapsed().as_secs_f64());
        let out = match res {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(WriteError::NotLeader(group))
            }
            Err(e) => Err(WriteError::Unavailable { group, reason: e.to_string() }),
        };
        let label = match &out {
            Ok(Response::Conflict { .. }) => "conflict",
            Ok(_) => "applied",
            Err(_) => "error",
        };
        self.metrics.raft_writes.with_label_values(&[label]).inc();
        out
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
