//! The Raft type configuration shared by every group, and the commands the groups apply.
//!
//! Commands are data, not code: the state machine applies them deterministically, so every
//! replica that applies the same log holds the same state. Each command names the version
//! it expects to replace (compare-and-set), which keeps a stale writer (an actor on a node
//! that lost leadership, say) from overwriting a newer value.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::auth::records::{AuditEntry, AuthKey, AuthRecord};
use crate::broker::StoredMessage;
use crate::jobs::model::{Execution, Job};
use crate::registry::{Group, Thing};
use crate::session::SessionRecord;

openraft::declare_raft_types!(
    /// Type configuration of every Homeport Raft group (meta and shards).
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft group's handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Index of a Raft group on a node: 0 is the meta group, 1..=S are the shards.
pub type GroupId = u32;

/// The stored form of a shadow (see `crate::shadow`): the document as JSON text (postcard
/// cannot carry free-form JSON), its version, and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredShadow {
    pub version: u64,
    /// Milliseconds since the Unix epoch of the last accepted write.
    pub updated_ms: u64,
    /// `None` once deleted: the tombstone keeps the version so that a shadow created again
    /// soon after continues from it, as AWS IoT does.
    pub doc: Option<String>,
}

/// A command for a group's state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Writes (or with `value.doc == None`, deletes) one shadow, if its stored version is
    /// still `expect` (`None`: no shadow record at all). Shard groups.
    PutShadow { thing: String, name: String, expect: Option<u64>, value: StoredShadow },
    /// Writes a job definition if its stored version is still `expect`, and its target
    /// list if given (only at creation). Meta group.
    PutJob { expect: Option<u64>, value: Job, targets: Option<Vec<String>> },
    /// Writes one job execution if its stored version is still `expect`, keeping the
    /// per-job and timeout indexes in step. Shard groups.
    PutExecution { expect: Option<u64>, value: Execution },
    /// Writes (`Some`) or deletes (`None`) a registered thing if its stored version is
    /// still `expect`, keeping the group membership index in step. Meta group.
    PutThing { name: String, expect: Option<u64>, value: Option<Thing> },
    /// Writes or deletes a thing group. Meta group.
    PutGroup { name: String, expect: Option<u64>, value: Option<Group> },
    /// Writes a persistent session's record. Shard groups.
    PutSession { client: String, value: SessionRecord },
    /// Deletes a session's record and its whole offline queue. Shard groups.
    EndSession { client: String },
    /// Appends a message to a session's offline queue under `seq`, first removing the
    /// oldest entry if `drop_oldest` (the queue is at its limit). Shard groups.
    Enqueue { client: String, seq: u64, msg: StoredMessage, drop_oldest: bool },
    /// Removes entries from a session's offline queue (acknowledged or handed over).
    Dequeue { client: String, seqs: Vec<u64> },
    /// Removes a session's whole offline queue (clean start). Shard groups.
    ClearQueue { client: String },
    /// Sets (`Some`) or clears the retained message of `topic`. The shard group of the
    /// topic.
    PutRetained { topic: String, msg: Option<StoredMessage> },
    /// Writes or deletes an identity or access record (credential, CA or device
    /// certificate, policy, attachment, admin token) if its stored version is still
    /// `expect`. Meta group.
    PutAuth { key: AuthKey, expect: Option<u64>, value: Option<AuthRecord> },
    /// Appends to the audit log, dropping the entry `keep` behind the new one. Meta group.
    Audit { entry: AuditEntry, keep: u64 },
    /// Cluster members and group placement (`crate::cluster::records`). Meta group.
    Cluster(crate::cluster::records::ClusterCommand),
    /// Many proposers' commands in one log entry (one append, one flush), applied in
    /// order; each sees the writes of those before it.
    Batch(Vec<Command>),
    /// Writes (`Some`) or deletes a rule definition if its stored version is still
    /// `expect`. Meta group. (After `Batch`: variants keep their wire numbers.)
    PutRule { name: String, expect: Option<u64>, value: Option<crate::rules::store::RuleDef> },
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    Empty,
    /// The write was applied.
    Applied,
    /// The stored version was not the expected one; nothing changed.
    Conflict { found: Option<u64> },
    /// The answers to a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}
