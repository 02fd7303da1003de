//! [`SessionStore`]: persistent MQTT session records, offline queues and retained messages,
//! kept in the shard groups. Reads come from a shard's applied data; writes are commands
//! submitted to the shard without waiting, so a device actor (the single writer of its
//! session) never blocks on Raft: its writes are applied in the order it submits them, and
//! whoever must wait (a publisher's PUBACK, a CONNACK) waits on the write's reply.
//!
//! A reader that may follow unapplied writes of an earlier writer (a successor actor
//! after a panic) first waits for the last of them with [`SessionStore::settled`].

use std::sync::Arc;

use tokio::sync::oneshot;

use super::sessions::{self, client_of, RETAINED_PREFIX, SESSION_PREFIX};
use super::{Command, GroupId, Groups, Reply, Ticket};
use crate::broker::StoredMessage;
use crate::session::SessionRecord;
use crate::store::{decode, DurableAck, StoreError};

/// Session state in the shards. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    groups: Arc<Groups>,
}

impl SessionStore {
    pub fn new(groups: Arc<Groups>) -> SessionStore {
        SessionStore { groups }
    }

    /// The shard of a client's session (and of a topic's retained message).
    pub fn shard(&self, key: &str) -> GroupId {
        self.groups.shard_of(key)
    }

    fn data(&self, group: GroupId) -> Result<&sled::Tree, StoreError> {
        self.groups.data(group).ok_or_else(|| StoreError::Unavailable(format!("no group {group}")))
    }

    /// Waits until the write with `ticket` to `client`'s shard (and all before it) is
    /// applied, so reads see it.
    pub async fn settled(&self, client: &str, ticket: Ticket) {
        self.groups.settled(self.shard(client), ticket).await;
    }

    pub fn get(&self, client: &str) -> Result<Option<SessionRecord>, StoreError> {
        sessions::read_session(self.data(self.shard(client))?, client)
    }

    /// (first sequence, last sequence, length) of a client's offline queue.
    pub fn queue_bounds(&self, client: &str) -> Result<Option<(u64, u64, usize)>, StoreError> {
        sessions::queue_bounds(self.data(self.shard(client))?, client)
    }

    /// A client's offline queue in order, with sequence numbers.
    pub fn queue(&self, client: &str) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
        sessions::read_queue(self.data(self.shard(client))?, client)
    }

    fn submit(&self, shard_key: &str, cmd: Command, reply: Reply) -> Ticket {
        // Session writes come from device actors, which live on their shard's leader:
        // never forwarded (see `Groups::write_local`). Retained messages may be written
        // from any node.
        if matches!(cmd, Command::PutRetained { .. }) {
            self.groups.submit(self.shard(shard_key), cmd, reply)
        } else {
            self.groups.submit_local(self.shard(shard_key), cmd, reply)
        }
    }

    /// Writes a session record; the receiver resolves once it is committed.
    pub fn put(&self, client: &str, rec: &SessionRecord) -> (Ticket, DurableAck) {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::PutSession { client: client.into(), value: rec.clone() };
        (self.submit(client, cmd, Reply::Durable(tx)), rx)
    }

    /// Deletes a session record and its offline queue.
    pub fn end(&self, client: &str) -> Ticket {
        self.submit(client, Command::EndSession { client: client.into() }, Reply::None)
    }

    /// Appends to a client's offline queue (dropping its oldest entry first if
    /// `drop_oldest`); `ack`, if given, gets the outcome.
    pub fn enqueue(
        &self,
        client: &str,
        seq: u64,
        msg: StoredMessage,
        drop_oldest: bool,
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Ticket {
        let cmd = Command::Enqueue { client: client.into(), seq, msg, drop_oldest };
        self.submit(client, cmd, ack.map_or(Reply::None, Reply::Durable))
    }

    /// Removes acknowledged entries from a client's offline queue.
    pub fn dequeue(&self, client: &str, seqs: Vec<u64>) -> Ticket {
        self.submit(client, Command::Dequeue { client: client.into(), seqs }, Reply::None)
    }

    /// Empties a client's offline queue.
    pub fn clear_queue(&self, client: &str) -> Ticket {
        self.submit(client, Command::ClearQueue { client: client.into() }, Reply::None)
    }

    /// Sets or (`None`) clears the retained message of `topic`. `ack`, if given, gets the
    /// outcome. Callers submit in the order the retained set changed.
    pub fn put_retained(
        &self,
        topic: &str,
        msg: Option<StoredMessage>,
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) {
        let reply = ack.map_or(Reply::None, Reply::Durable);
        self.submit(topic, Command::PutRetained { topic: topic.into(), msg }, reply);
    }

    /// Every session stored in `shard`. A record that does not decode is an error.
    pub fn sessions_in(&self, shard: GroupId) -> Result<Vec<(String, SessionRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.data(shard)?.scan_prefix(SESSION_PREFIX) {
            let (k, v) = kv?;
            out.push((client_of(&k)?.to_string(), decode(&v)?));
        }
        Ok(out)
    }

    /// Shard groups (1..=shards).
    pub fn shards(&self) -> u32 {
        self.groups.shards()
    }

    /// Every retained message, all shards.
    pub fn retained(&self) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        for g in 1..=self.groups.shards() {
            for v in self.data(g)?.scan_prefix(RETAINED_PREFIX).values() {
                out.push(decode(&v?)?);
            }
        }
        Ok(out)
    }

    /// Messages in the offline queues of `shard` (the depth gauge at start-up).
    pub fn queued_in(&self, shard: GroupId) -> Result<usize, StoreError> {
        Ok(self.data(shard)?.scan_prefix(sessions::QUEUE_PREFIX).keys().count())
    }

    /// Moves sessions, offline queues and retained messages that an earlier release kept
    /// in plain sled trees (`sessions`, `queues`, `retained`) into the shards, then drops
    /// those trees. Returns how many values moved.
    pub async fn migrate_legacy(&self, db: &sled::Db) -> Result<usize, StoreError> {
        let names: [&[u8]; 3] = [b"sessions", b"queues", b"retained"];
        if !db.tree_names().iter().any(|n| names.contains(&n.as_ref())) {
            return Ok(0);
        }
        let mut waits = Vec::new();
        let mut reply = || {
            let (tx, rx) = oneshot::channel();
            waits.push(rx);
            Reply::Durable(tx)
        };
        let sessions = db.open_tree("sessions")?;
        for kv in sessions.iter() {
            let (k, v) = kv?;
            let client = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Codec("session key is not UTF-8".into()))?;
            let cmd = Command::PutSession { client: client.clone(), value: decode(&v)? };
            self.submit(&client, cmd, reply());
        }
        for kv in db.open_tree("queues")?.iter() {
            let (k, v) = kv?;
            let split = k.iter().position(|b| *b == 0).filter(|i| k.len() == i + 9);
            let Some(i) = split else {
                return Err(StoreError::Codec("bad legacy queue key".into()));
            };
            let client = std::str::from_utf8(&k[..i])
                .map_err(|_| StoreError::Codec("queue key is not UTF-8".into()))?;
            let seq = sessions::seq_of(&k[..=i], &k)?;
            let cmd = Command::Enqueue {
                client: client.into(),
                seq,
                msg: decode(&v)?,
                drop_oldest: false,
            };
            self.submit(client, cmd, reply());
        }
        for kv in db.open_tree("retained")?.iter() {
            let (k, v) = kv?;
            let topic = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Codec("retained key is not UTF-8".into()))?;
            let cmd = Command::PutRetained { topic: topic.clone(), msg: Some(decode(&v)?) };
            self.submit(&topic, cmd, reply());
        }
        let moved = waits.len();
        for rx in waits {
            rx.await.unwrap_or(Err(StoreError::Closed))?;
        }
        for n in names {
            db.drop_tree(n)?;
        }
        Ok(moved)
    }
}
