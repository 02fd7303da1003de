//! The Raft log of one group on sled: entries keyed by big-endian index in one tree, vote,
//! committed id and last purged id in another. Values are versioned postcard.
//!
//! Appends are made durable through the store's group-commit flusher, so the appends of
//! every group and the session store share one `flush_async`; openraft is told an append
//! is on disk only after that flush.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::TypeConfig;
use crate::store::{decode, encode, Store, StoreError};

type NodeId = u64;
type SResult<T> = Result<T, StorageError<NodeId>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

fn io_read(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::from(e)
}

/// One group's log. Cloning shares the trees (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    store: Store,
}

impl LogStore {
    /// Opens the log of `group` (trees `raft.{group}.log` and `raft.{group}.meta`).
    pub fn open(store: &Store, group: u32) -> Result<LogStore, StoreError> {
        let db = store.db();
        Ok(LogStore {
            log: db.open_tree(format!("raft.{group}.log")).map_err(sled_err)?,
            meta: db.open_tree(format!("raft.{group}.meta")).map_err(sled_err)?,
            store: store.clone(),
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.meta.get(key).map_err(sled_err)?.map(|v| decode(&v)).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), StoreError> {
        self.meta.insert(key, encode(v)?).map_err(sled_err)?;
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        match self.log.last().map_err(sled_err)? {
            Some((_, v)) => Ok(Some(*decode::<Entry<TypeConfig>>(&v)?.get_log_id())),
            None => Ok(None),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.store.durable().await.unwrap_or(Err(StoreError::Closed))
    }
}

fn bound(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let range = (bound(range.start_bound()), bound(range.end_bound()));
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>(range) {
            let (_, v) = kv.map_err(|e| io_read(sled_err(e)))?;
            out.push(decode(&v).map_err(io_read)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(PURGED).map_err(io_read)?;
        let last = self.last_entry_id().map_err(io_read)?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        let res = match self.put_meta(VOTE, vote) {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        res.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE).map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        // Not flushed on its own: it rides on the next flush. After a crash openraft
        // re-applies from an older committed id, which the state machine tolerates.
        self.put_meta(COMMITTED, &committed).map_err(io_write)
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED).map_err(io_read)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.get_log_id().index.to_be_bytes(), encode(&e).map_err(io_write)?);
        }
        self.log.apply_batch(batch).map_err(|e| io_write(sled_err(e)))?;
        let durable = self.store.durable();
        tokio::spawn(async move {
            let res = durable.await.unwrap_or(Err(StoreError::Closed));
            callback.log_io_completed(res.map_err(std::io::Error::other));
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = kv.map_err(|e| io_write(sled_err(e)))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| io_write(sled_err(e)))?;
        self.flush().await.map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        // The purge mark first: a crash between the two leaves extra entries, never a
        // log that claims entries it no longer has.
        self.put_meta(PURGED, &log_id).map_err(io_write)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = kv.map_err(|e| io_write(sled_err(e)))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| io_write(sled_err(e)))?;
        Ok(())
    }
}
