//! A group's state machine on sled: one tree holding the data (keys `d...`, written by
//! [`super::machine::apply`]) and the bookkeeping (`\0applied`, `\0membership`,
//! `\0snapshot`). Each applied entry is one atomic sled batch, data and `applied` together,
//! so after a crash the tree is at some applied index and openraft re-applies the rest of
//! the log from there.
//!
//! Snapshots: the builder takes a copy of the data when openraft asks for it (between two
//! applies, so the copy matches its `applied` id), then serializes it on its own task. The
//! tree is flushed before a snapshot is reported built, because openraft purges the log up
//! to it.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::machine;
use super::types::{Response, TypeConfig};
use crate::store::{decode, encode, Store, StoreError};

type NodeId = u64;
type SResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

const APPLIED: &[u8] = b"\0applied";
const MEMBERSHIP: &[u8] = b"\0membership";
const SNAPSHOT: &[u8] = b"\0snapshot";

fn sm_read(e: impl Into<StoreError>) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e.into())).into()
}

fn sm_write(e: impl Into<StoreError>) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e.into())).into()
}

/// A snapshot as stored and shipped: the data keys and values of the group.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The last snapshot built or installed, kept in the tree for `get_current_snapshot`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// A consistent copy of a group's state: applied id, membership and data entries.
type Copy = (Option<LogId<NodeId>>, Membership, Vec<(Vec<u8>, Vec<u8>)>);

/// Where applied changes to retained messages go: in a cluster each node's router keeps
/// its retained index in Raft order from every shard it replicates, whichever node the
/// message was published on.
#[derive(Default)]
pub struct RetainedFeed {
    hook: std::sync::OnceLock<RetainedHook>,
}

type RetainedHook = Box<dyn Fn(RetainedChange<'_>) + Send + Sync>;

/// One applied change to retained messages.
pub enum RetainedChange<'a> {
    /// The retained message of `topic` was set (`Some`) or cleared.
    Put { topic: &'a str, msg: Option<&'a crate::broker::StoredMessage> },
    /// A snapshot replaced `group`'s state: its retained messages are to be read again.
    Reset { group: u32 },
}

impl RetainedFeed {
    /// Sets where changes go (once; before, they go nowhere).
    pub fn set(&self, f: impl Fn(RetainedChange<'_>) + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(f));
    }

    fn send(&self, c: RetainedChange<'_>) {
        if let Some(h) = self.hook.get() {
            h(c);
        }
    }

    fn applied(&self, cmd: &super::types::Command) {
        use super::types::Command;
        if self.hook.get().is_none() {
            return;
        }
        match cmd {
            Command::PutRetained { topic, msg } => {
                self.send(RetainedChange::Put { topic, msg: msg.as_ref() })
            }
            Command::Batch(cmds) => cmds.iter().for_each(|c| self.applied(c)),
            _ => {}
        }
    }
}

/// One group's state machine.
pub struct StateMachine {
    group: u32,
    retained: Arc<RetainedFeed>,
    tree: sled::Tree,
    snapshots: Arc<AtomicU64>,
    /// Counts applied changes that bear on access decisions (see
    /// [`machine::touches_access`]); connections recompile their policies when it moves.
    access_epoch: Arc<AtomicU64>,
    /// Counts applied changes to rule definitions; each node's rule engine recompiles
    /// when it moves.
    rules_epoch: Arc<AtomicU64>,
}

impl StateMachine {
    /// Opens the state machine of `group` (tree `raft.{group}.sm`).
    pub fn open(store: &Store, group: u32) -> Result<StateMachine, StoreError> {
        let tree = store.db().open_tree(format!("raft.{group}.sm"))?;
        Ok(StateMachine {
            group,
            retained: Arc::new(RetainedFeed::default()),
            tree,
            snapshots: Arc::new(AtomicU64::new(0)),
            access_epoch: Arc::new(AtomicU64::new(0)),
            rules_epoch: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Sends the applied changes to retained messages to `feed`.
    pub fn feeding(mut self, feed: Arc<RetainedFeed>) -> StateMachine {
        self.retained = feed;
        self
    }

    /// The counter of applied changes to credentials, certificates, policies and the
    /// registry.
    pub fn access_epoch(&self) -> Arc<AtomicU64> {
        self.access_epoch.clone()
    }

    /// The counter of applied changes to rule definitions.
    pub fn rules_epoch(&self) -> Arc<AtomicU64> {
        self.rules_epoch.clone()
    }

    /// The data tree, for reads that do not go through Raft (a device actor reading its
    /// own shadow: it is the only writer of it).
    pub fn tree(&self) -> sled::Tree {
        self.tree.clone()
    }

    fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
        let applied = match self.tree.get(APPLIED)? {
            Some(v) => decode(&v)?,
            None => None,
        };
        let membership = match self.tree.get(MEMBERSHIP)? {
            Some(v) => decode(&v)?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    fn apply_one(&self, entry: &Entry<TypeConfig>) -> Result<Response, StoreError> {
        let mut batch = sled::Batch::default();
        let resp = match &entry.payload {
            EntryPayload::Blank => Response::Empty,
            EntryPayload::Normal(cmd) => {
                let (writes, resp) = machine::apply(&self.tree, cmd)?;
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                resp
            }
            EntryPayload::Membership(m) => {
                let stored = Membership::new(Some(entry.log_id), m.clone());
                batch.insert(MEMBERSHIP, encode(&stored)?);
                Response::Empty
            }
        };
        batch.insert(APPLIED, encode(&Some(entry.log_id))?);
        self.tree.apply_batch(batch)?;
        if matches!(&entry.payload, EntryPayload::Normal(cmd) if machine::touches_access(cmd)) {
            self.access_epoch.fetch_add(1, Ordering::Release);
        }
        if matches!(&entry.payload, EntryPayload::Normal(cmd) if machine::touches_rules(cmd)) {
            self.rules_epoch.fetch_add(1, Ordering::Release);
        }
        if let EntryPayload::Normal(cmd) = &entry.payload {
            self.retained.applied(cmd);
        }
        Ok(resp)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> SResult<(Option<LogId<NodeId>>, Membership)> {
        self.applied().map_err(sm_read)
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            let resp = self.apply_one(&e).map_err(|err| {
                StorageError::from(StorageIOError::apply(e.log_id, AnyError::new(&err)))
            })?;
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // Copied here, between applies, so data and `applied` agree.
        let copy = (|| -> Result<_, StoreError> {
            let (applied, membership) = self.applied()?;
            let mut entries = Vec::new();
            for kv in self.tree.scan_prefix(b"d") {
                let (k, v) = kv?;
                entries.push((k.to_vec(), v.to_vec()));
            }
            Ok((applied, membership, entries))
        })();
        Builder {
            tree: self.tree.clone(),
            copy,
            seq: self.snapshots.fetch_add(1, Ordering::Relaxed),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = decode(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix(b"d") {
            batch.remove(kv.map_err(sm_write)?.0);
        }
        for (k, v) in data.entries {
            batch.insert(k, v);
        }
        batch.insert(APPLIED, encode(&meta.last_log_id).map_err(sm_write)?);
        batch.insert(MEMBERSHIP, encode(&meta.last_membership).map_err(sm_write)?);
        let stored = StoredSnapshot { meta: meta.clone(), data: bytes };
        batch.insert(SNAPSHOT, encode(&stored).map_err(sm_write)?);
        self.tree.apply_batch(batch).map_err(sm_write)?;
        self.tree.flush_async().await.map_err(sm_write)?;
        self.access_epoch.fetch_add(1, Ordering::Release);
        self.rules_epoch.fetch_add(1, Ordering::Release);
        self.retained.send(RetainedChange::Reset { group: self.group });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let Some(v) = self.tree.get(SNAPSHOT).map_err(sm_read)? else { return Ok(None) };
        let s: StoredSnapshot = decode(&v).map_err(sm_read)?;
        Ok(Some(Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

/// Builds one snapshot from the copy taken by `get_snapshot_builder`.
pub struct Builder {
    tree: sled::Tree,
    copy: Result<Copy, StoreError>,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let (applied, membership, entries) = match &mut self.copy {
            Ok((a, m, e)) => (*a, m.clone(), std::mem::take(e)),
            Err(e) => return Err(sm_read(e.clone())),
        };
        let data = encode(&SnapshotData { entries }).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e)))
        })?;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("none-{}", self.seq),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let write = |e: StoreError| {
            StorageError::from(StorageIOError::write_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        };
        self.tree.insert(SNAPSHOT, encode(&stored).map_err(write)?).map_err(|e| write(e.into()))?;
        // openraft purges the log up to this snapshot next: the state it covers must be
        // on disk first.
        self.tree.flush_async().await.map_err(|e| write(e.into()))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}
