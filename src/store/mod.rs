//! Node-local durable storage on sled: the database the Raft groups keep their trees in,
//! the in-flight journal (which is not replicated: see `docs/ARCHITECTURE.md`), and the
//! group-commit flusher. Session records, offline queues and retained messages are in the
//! shard groups (`crate::raft::SessionStore`).
//!
//! Owns: the keyspace (one sled tree per kind), the versioned postcard encoding of every
//! stored value (a leading format-version byte), and [`Store::durable`], which resolves once
//! every write made before the call is on disk; many waiters share one `flush_async`.
//! Must not touch: MQTT semantics (it stores what it is given) or sockets.
//!
//! sled flushes in the background by default; nothing may be acknowledged to a client
//! before `durable()` has resolved for it.

mod codec;
mod flusher;
#[cfg(test)]
mod suite;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

pub use codec::{decode, encode, FORMAT_VERSION};

use crate::broker::StoredMessage;
use crate::telemetry::Metrics;

/// Storage failures. Fatal ones (I/O, corruption) are kept apart from "not found", which
/// callers handle as `Option`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("storage: {0}")]
    Sled(String),
    /// A stored value has an unknown format version or does not decode.
    #[error("stored value does not decode: {0}")]
    Codec(String),
    /// The flusher task is gone (the node is shutting down).
    #[error("storage is closed")]
    Closed,
    /// A replicated write could not be committed (no leader, group stopped).
    #[error("replicated write failed: {0}")]
    Unavailable(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

/// A receiver that resolves when the writes made before it was issued are durable.
pub type DurableAck = oneshot::Receiver<Result<(), StoreError>>;

/// The node's store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// QoS 1/2 messages handed to a connected persistent session and not yet acknowledged
    /// by the client: client id, NUL, sequence (8 bytes, big-endian), numbered from the
    /// session's one sequence, which its offline queue (in its shard) shares.
    inflight: sled::Tree,
    flush: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
    /// Reports closed once the flusher has exited and released the database.
    closed: tokio::sync::watch::Receiver<()>,
    /// The database's directory (its lock file is `db` in it).
    dir: Arc<Path>,
}

/// The page cache used when no size is configured (tests, tools): 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

fn queue_prefix(client: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 9);
    k.extend_from_slice(client.as_bytes());
    // Client identifiers cannot contain U+0000, so it separates id and sequence.
    k.push(0);
    k
}

fn queue_key(client: &str, seq: u64) -> Vec<u8> {
    let mut k = queue_prefix(client);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Waits until no sled database holds the lock of the database in `dir`: sled releases
/// it when the last handle is dropped, which its own threads may do a little after the
/// owner's drop. Each check takes the lock (an exclusive `flock`, as sled does) and drops
/// it at once; a missing lock file is free.
pub async fn unlocked(dir: &Path) {
    use fs2::FileExt;
    let lock = dir.join("db");
    loop {
        let free = match std::fs::OpenOptions::new().read(true).write(true).open(&lock) {
            Ok(f) => f.try_lock_exclusive().is_ok(),
            Err(_) => true,
        };
        if free {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with sled's default page cache and starts its
    /// flusher on the current runtime.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES, metrics)
    }

    /// Opens (or creates) the store in `dir` with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(
        dir: &Path,
        cache_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).cache_capacity(cache_bytes).open()?;
        let inflight = db.open_tree("inflight")?;
        let (flush, closed) = flusher::spawn(db.clone(), metrics);
        Ok(Store { db, inflight, flush, closed, dir: Arc::from(dir) })
    }

    /// Resolves once every write issued before this call is flushed to disk.
    pub fn durable(&self) -> DurableAck {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.flush.send(tx) {
            let _ = e.0.send(Err(StoreError::Closed));
        }
        rx
    }

    /// The database, for subsystems that keep their own trees in it (the Raft groups).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// A future that resolves when every clone of this store is dropped and the database
    /// is closed (its directory can be opened again).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move { while rx.changed().await.is_ok() {} }
    }

    /// A future that resolves when the directory can be opened again: every clone of
    /// this store is dropped and sled has released its lock file. Trees handed out by
    /// [`Store::db`] hold the lock too, and tasks that end after the node's shutdown
    /// (the Raft groups' workers) may drop theirs a little later, so the lock file
    /// itself is asked.
    pub fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let closed = self.closed();
        let dir = self.dir.clone();
        async move {
            closed.await;
            unlocked(&dir).await;
        }
    }

    /// Flushes now and waits (used at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Records a message handed to `client`'s connection until the client acknowledges it.
    pub fn inflight_push(
        &self,
        client: &str,
        seq: u64,
        msg: &StoredMessage,
    ) -> Result<(), StoreError> {
        self.inflight.insert(queue_key(client, seq), encode(msg)?)?;
        Ok(())
    }

    /// Journaled in-flight messages of `client` in order, with their sequence numbers.
    pub fn inflight(&self, client: &str) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
        list(&self.inflight, client)
    }

    /// Removes one journaled in-flight message; false if it was not there.
    pub fn inflight_remove(&self, client: &str, seq: u64) -> Result<bool, StoreError> {
        Ok(self.inflight.remove(queue_key(client, seq))?.is_some())
    }

    /// Removes `client`'s whole in-flight journal.
    pub fn inflight_clear(&self, client: &str) -> Result<(), StoreError> {
        for k in self.inflight.scan_prefix(queue_prefix(client)).keys() {
            self.inflight.remove(k?)?;
        }
        Ok(())
    }

    /// Highest sequence number in `client`'s in-flight journal.
    pub fn inflight_last(&self, client: &str) -> Result<Option<u64>, StoreError> {
        let prefix = queue_prefix(client);
        match self.inflight.scan_prefix(&prefix).keys().next_back().transpose()? {
            Some(k) => seq_of(&prefix, &k).map(Some),
            None => Ok(None),
        }
    }
}

fn seq_of(prefix: &[u8], k: &[u8]) -> Result<u64, StoreError> {
    k.get(prefix.len()..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Codec("bad queue key".into()))
}

fn list(tree: &sled::Tree, client: &str) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
    let prefix = queue_prefix(client);
    let mut out = Vec::new();
    for kv in tree.scan_prefix(&prefix) {
        let (k, v) = kv?;
        out.push((seq_of(&prefix, &k)?, decode(&v)?));
    }
    Ok(out)
}

impl Store {
    /// Hands `ack` to the flusher: it receives the result of the next flush.
    pub fn durable_to(&self, ack: oneshot::Sender<Result<(), StoreError>>) {
        if let Err(e) = self.flush.send(ack) {
            let _ = e.0.send(Err(StoreError::Closed));
        }
    }
}
