//! The routing entry of one session: where deliveries for it go right now. The connection
//! is preferred; a persistent session without one goes to its device actor.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use super::message::Delivery;
use crate::device::DeviceMsg;
use crate::mqtt::ReasonCode;
use crate::session::Inflight;

/// Orders from a device actor to the connection attached to it.
#[derive(Debug)]
pub enum Control {
    /// A newer connection took the session: send DISCONNECT 0x8E (v5), hand back the
    /// live state and close without detaching.
    TakeOver { reply: oneshot::Sender<LiveState> },
    /// Close with this reason (administrative action, shutdown).
    Kick(ReasonCode),
}

/// The live part of a session that a connection hands back when it ends.
#[derive(Debug, Default)]
pub struct LiveState {
    pub inflight: Vec<Inflight>,
    pub pending: Vec<Delivery>,
    pub awaiting_rel: Vec<u16>,
}

/// How to reach the connection attached to a session.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Unique per connection; stale detaches are recognised by it.
    pub id: u64,
    /// Bounded queue of deliveries, drained in batches by the connection.
    pub tx: mpsc::Sender<Delivery>,
    pub control: mpsc::UnboundedSender<Control>,
}

#[derive(Debug, Default)]
pub struct Route {
    pub conn: Option<ConnHandle>,
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
}

impl SessionSlot {
    pub fn new(client_id: Arc<str>) -> Self {
        SessionSlot { client_id, route: RwLock::new(Route::default()), next_seq: AtomicU64::new(0) }
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
