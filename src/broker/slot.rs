//! The routing entry of one session: where deliveries for it go right now. The connection
//! is preferred; a persistent session without one goes to its device actor.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::ActorRef;
use tokio::sync::oneshot;

use super::message::Delivery;
use super::outq::ConnQueue;
use crate::device::DeviceMsg;
use crate::mqtt::ReasonCode;
use crate::session::{Inflight, SessionRecord};

/// Orders from a device actor to the connection attached to it.
#[derive(Debug)]
pub enum Control {
    /// A newer connection took the session: send DISCONNECT 0x8E (v5), hand back the
    /// live state and close without detaching.
    TakeOver { reply: oneshot::Sender<LiveState> },
    /// Close with this reason (administrative action, shutdown).
    Kick(ReasonCode),
    /// The session's shard is now led by another node: re-attach there (the connection
    /// keeps its socket and window), or if that fails send DISCONNECT 0x9C (v5) with
    /// `server` as Server Reference and close without detaching (the session is served
    /// there from the replicated state). `record`: a clean session's state, which lives
    /// in the evicted actor's memory only.
    Redirect { server: Option<String>, record: Option<Box<SessionRecord>> },
}

/// The live part of a session that a connection hands back when it ends.
#[derive(Debug, Default)]
pub struct LiveState {
    pub inflight: Vec<Inflight>,
    pub pending: Vec<Delivery>,
    pub awaiting_rel: Vec<u16>,
    /// Stored entries the client completed lately: their removal may still be on its
    /// way to the actor, which must not deliver them again.
    pub done: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct Route {
    /// The attached connection's delivery queue.
    pub conn: Option<Arc<ConnQueue>>,
    pub actor: Option<ActorRef<DeviceMsg>>,
    /// The session outlives its connection (session expiry > 0).
    pub persistent: bool,
}

/// One session's routing entry, shared by the router (read on every delivery), the
/// connection and the device actor (which alone changes it).
#[derive(Debug)]
pub struct SessionSlot {
    pub client_id: Arc<str>,
    route: RwLock<Route>,
    /// Next sequence number for the session's stored messages (offline queue and
    /// in-flight journal share one order). Set by the device actor when it starts.
    pub next_seq: AtomicU64,
    /// Ticket of the session's last write submitted to its shard
    /// (`crate::raft::Groups::submit`): an actor waits for it before reading the shard,
    /// since its predecessor's writes may not be applied yet. Device actor only.
    pub last_write: AtomicU64,
    /// Shadow and jobs requests for this thing not yet served by its device actor
    /// (`crate::device::RequestPermit`).
    pub requests: std::sync::atomic::AtomicU32,
    /// A clean session's record, which lives in memory only: kept here while its actor
    /// is not running, unless it is blank (`SessionRecord::is_blank`). Written only by
    /// the device actor.
    parked: parking_lot::Mutex<Option<Box<SessionRecord>>>,
}

impl SessionSlot {
    pub fn new(client_id: Arc<str>) -> Self {
        SessionSlot {
            client_id,
            route: RwLock::new(Route::default()),
            next_seq: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            requests: std::sync::atomic::AtomicU32::new(0),
            parked: parking_lot::Mutex::new(None),
        }
    }

    /// Keeps (or with `None`, forgets) a clean session's record. Device actor only.
    pub fn park(&self, record: Option<SessionRecord>) {
        *self.parked.lock() = record.map(Box::new);
    }

    /// The parked record of a clean session, if any.
    pub fn parked(&self) -> Option<SessionRecord> {
        self.parked.lock().as_deref().cloned()
    }

    pub fn route(&self) -> parking_lot::RwLockReadGuard<'_, Route> {
        self.route.read()
    }

    /// Only the device actor calls this.
    pub fn route_mut(&self) -> parking_lot::RwLockWriteGuard<'_, Route> {
        self.route.write()
    }

    pub fn is_online(&self) -> bool {
        self.route.read().conn.is_some()
    }

    pub fn actor(&self) -> Option<ActorRef<DeviceMsg>> {
        self.route.read().actor.clone()
    }
}

/// Trie key: a slot compared by identity.
#[derive(Debug, Clone)]
pub struct SlotRef(pub Arc<SessionSlot>);

impl PartialEq for SlotRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
