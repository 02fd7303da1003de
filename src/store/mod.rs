//! Durable storage on sled: persistent session records, offline queues, in-flight journals
//! and retained messages, plus the group-commit flusher.
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

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

pub use codec::{decode, encode, FORMAT_VERSION};

use crate::broker::StoredMessage;
use crate::session::SessionRecord;
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
    sessions: sled::Tree,
    queues: sled::Tree,
    /// QoS 1/2 messages handed to a connected persistent session and not yet acknowledged
    /// by the client, keyed like `queues` and numbered from the same sequence.
    inflight: sled::Tree,
    retained: sled::Tree,
    flush: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
    /// Reports closed once the flusher has exited and released the database.
    closed: tokio::sync::watch::Receiver<()>,
}

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

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(&v)).transpose()
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its flusher on the current runtime.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let sessions = db.open_tree("sessions")?;
        let queues = db.open_tree("queues")?;
        let inflight = db.open_tree("inflight")?;
        let retained = db.open_tree("retained")?;
        let (flush, closed) = flusher::spawn(db.clone(), metrics);
        Ok(Store { db, sessions, queues, inflight, retained, flush, closed })
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

    /// Flushes now and waits (used at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn put_session(&self, client: &str, rec: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.insert(client.as_bytes(), encode(rec)?)?;
        Ok(())
    }

    pub fn get_session(&self, client: &str) -> Result<Option<SessionRecord>, StoreError> {
        get(&self.sessions, client.as_bytes())
    }

    /// Every stored session. A record that does not decode is reported, not skipped.
    pub fn sessions(&self) -> Result<Vec<(String, SessionRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let id = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Codec("session key is not UTF-8".into()))?;
            out.push((id, decode(&v)?));
        }
        Ok(out)
    }

    /// Deletes a session record, its whole offline queue and its in-flight journal.
    pub fn delete_session(&self, client: &str) -> Result<(), StoreError> {
        self.sessions.remove(client.as_bytes())?;
        self.queue_clear(client)?;
        self.inflight_clear(client)?;
        Ok(())
    }

    pub fn queue_push(
        &self,
        client: &str,
        seq: u64,
        msg: &StoredMessage,
    ) -> Result<(), StoreError> {
        self.queues.insert(queue_key(client, seq), encode(msg)?)?;
        Ok(())
    }

    /// Queued messages of `client` in order, with their sequence numbers.
    pub fn queue(&self, client: &str) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
        list(&self.queues, client)
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
    /// (first sequence, last sequence, length) of `client`'s queue.
    pub fn queue_bounds(&self, client: &str) -> Result<Option<(u64, u64, usize)>, StoreError> {
        let prefix = queue_prefix(client);
        let seq_of = |k: &[u8]| seq_of(&prefix, k);
        let mut it = self.queues.scan_prefix(&prefix).keys();
        let Some(first) = it.next().transpose()? else {
            return Ok(None);
        };
        let len = 1 + self.queues.scan_prefix(&prefix).keys().skip(1).count();
        let last = self.queues.scan_prefix(&prefix).keys().next_back().transpose()?;
        let first = seq_of(&first)?;
        let last = last.map(|k| seq_of(&k)).transpose()?.unwrap_or(first);
        Ok(Some((first, last, len)))
    }

    /// Removes one queued message; false if it was not there.
    pub fn queue_remove(&self, client: &str, seq: u64) -> Result<bool, StoreError> {
        Ok(self.queues.remove(queue_key(client, seq))?.is_some())
    }

    /// Removes the oldest queued message of `client`; false if the queue is empty.
    pub fn queue_pop_front(&self, client: &str) -> Result<bool, StoreError> {
        match self.queues.scan_prefix(queue_prefix(client)).keys().next().transpose()? {
            Some(k) => Ok(self.queues.remove(k)?.is_some()),
            None => Ok(false),
        }
    }

    /// Removes and counts every queued message of `client`.
    pub fn queue_clear(&self, client: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for k in self.queues.scan_prefix(queue_prefix(client)).keys() {
            self.queues.remove(k?)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn put_retained(&self, topic: &str, msg: &StoredMessage) -> Result<(), StoreError> {
        self.retained.insert(topic.as_bytes(), encode(msg)?)?;
        Ok(())
    }

    pub fn delete_retained(&self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic.as_bytes())?;
        Ok(())
    }

    pub fn retained(&self) -> Result<Vec<StoredMessage>, StoreError> {
        self.retained.iter().values().map(|v| decode(&v?)).collect()
    }
}

impl Store {
    /// Hands `ack` to the flusher: it receives the result of the next flush.
    pub fn durable_to(&self, ack: oneshot::Sender<Result<(), StoreError>>) {
        if let Err(e) = self.flush.send(ack) {
            let _ = e.0.send(Err(StoreError::Closed));
        }
    }
}

impl Store {
    /// Messages in all offline queues (for the depth gauge at start-up).
    pub fn queued_total(&self) -> usize {
        self.queues.len()
    }
}
