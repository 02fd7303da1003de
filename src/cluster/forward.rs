//! Publishes across nodes: route announcements to the peers and forwarded messages.
//!
//! Owns: [`Routing`], this node's [`crate::broker::Forwarder`]. The router tells it when
//! a non-shared filter gains its first or loses its last subscription here; one sync
//! task per peer sends the peer what it has not confirmed (`super::routes`: deltas, or
//! the full set after a gap or a restart on either side) as soon as something changes
//! and every second regardless (an empty delta, so a peer that restarted is noticed).
//! A publish that enters this node is matched once against the peers' filters; each
//! peer with a match gets one copy through its forward queue, whose task sends the
//! queue in batches, one batch in flight, so the peer routes them in the order they
//! were published here. The peer matches a copy in its own trie only and answers once
//! what the batch caused there (offline queues, journal) is durable; a QoS 1/2
//! publisher's acknowledgement waits for that answer.
//!
//! A peer that answers that a copy's writes failed (or were not confirmed within half
//! the RPC timeout) makes the publisher's acknowledgement an error, as a local failed
//! write does. A peer that does not answer (down, partitioned: the transport's
//! timeout) or whose queue is full does not hold publishers hostage: their
//! acknowledgement proceeds and the copies are counted as `failed` / `overflow` in
//! `homeport_cluster_forwarded_total`. Its sessions' actors move to live nodes with the
//! shards (their routes come back from there); what was published for them meanwhile
//! and not stored is lost to them (issue 20: routes of offline persistent sessions from
//! the replicated shard state).
//!
//! A SUBACK waits until every peer confirmed the change that announced the filter
//! ([`Routing::wait_confirmed`], at most the RPC timeout): a publish any node reads after
//! the SUBACK was sent then reaches the subscriber. A peer that does not confirm in
//! time is marked suspect (counted in `homeport_cluster_route_confirms_total{result=
//! "late"}`) and later SUBACKs do not wait for it until its next sync succeeds.
//!
//! Not forwarded yet: shared subscriptions (a group is served by the members on the
//! node a message enters) and retained state (each node's retained index is loaded
//! from its replicas and updated by the publishes entering it).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use super::metrics::ClusterMetrics;
use super::routes::{LocalRoutes, PeerRoutes, RouteUpdate};
use super::transport::{Class, Transport};
use super::wire::{Answer, NodeId, Request, WireError, WireMessage};
use crate::broker::{AckWait, Forwarder, Message, Router, StoredMessage};
use crate::mqtt::QoS;
use crate::store::StoreError;

/// Copies waiting for one peer; a full queue refuses more (counted as `overflow`).
pub const QUEUE_LIMIT: usize = 16_384;
/// Most messages in one forwarded batch.
const BATCH: usize = 512;
/// Most payload bytes in one forwarded batch (a batch carries at least one message).
const BATCH_BYTES: usize = 1 << 20;
/// How often a peer is asked whether it is up to date when nothing changed.
const SYNC_EVERY: Duration = Duration::from_secs(1);

struct Copy {
    msg: WireMessage,
    ack: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Routes and forwarding of one node.
pub struct Routing {
    me: NodeId,
    local: Mutex<LocalRoutes>,
    peers: RwLock<PeerRoutes>,
    /// The latest local change's number (wakes the sync tasks).
    changed: watch::Sender<u64>,
    /// Weak: the transport holds the service, which holds this.
    transport: Weak<Transport>,
    timeout: Duration,
    metrics: Arc<ClusterMetrics>,
    queues: Mutex<HashMap<NodeId, mpsc::Sender<Copy>>>,
    synced: Mutex<HashMap<NodeId, watch::Sender<bool>>>,
    /// Per peer: the local change it confirmed, and whether its last sync failed (a
    /// suspect peer does not hold SUBACKs up).
    progress: watch::Sender<HashMap<NodeId, (Option<u64>, bool)>>,
    router: std::sync::OnceLock<Weak<Router>>,
}

impl Routing {
    pub fn new(
        transport: Arc<Transport>,
        timeout: Duration,
        metrics: Arc<ClusterMetrics>,
    ) -> Arc<Routing> {
        Arc::new(Routing {
            me: transport.node(),
            local: Mutex::new(LocalRoutes::new(transport.incarnation())),
            peers: RwLock::new(PeerRoutes::default()),
            changed: watch::channel(0).0,
            transport: Arc::downgrade(&transport),
            timeout,
            metrics,
            queues: Mutex::new(HashMap::new()),
            synced: Mutex::new(HashMap::new()),
            progress: watch::channel(HashMap::new()).0,
            router: std::sync::OnceLock::new(),
        })
    }

    /// The router that forwarded messages are routed by here.
    pub fn set_router(&self, router: &Arc<Router>) {
        let _ = self.router.set(Arc::downgrade(router));
    }

    /// Keeps a sync task and a forward queue for each of `peers` (the members that are
    /// not removed) and forgets the routes of nodes that left.
    pub fn keep_peers(self: &Arc<Self>, peers: &[NodeId], shutdown: &watch::Receiver<bool>) {
        let mut synced = self.synced.lock();
        for &p in peers.iter().filter(|p| **p != self.me) {
            if synced.contains_key(&p) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            synced.insert(p, stop);
            // Waited for by SUBACKs from now on, until it confirms or fails a sync.
            self.progress.send_modify(|m| {
                m.entry(p).or_insert((None, false));
            });
            tokio::spawn(self.clone().sync(p, stopped, shutdown.clone()));
        }
        let gone: Vec<NodeId> = synced.keys().filter(|p| !peers.contains(p)).copied().collect();
        for p in gone {
            if let Some(stop) = synced.remove(&p) {
                let _ = stop.send(true);
            }
            self.queues.lock().remove(&p);
            self.peers.write().purge(p);
            self.progress.send_modify(|m| {
                m.remove(&p);
            });
        }
        self.metrics.peer_routes.set(self.peers.read().len() as i64);
    }

    /// Sends `peer` the changes it has not confirmed, whenever there are some and every
    /// [`SYNC_EVERY`].
    async fn sync(
        self: Arc<Self>,
        peer: NodeId,
        mut stopped: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut changed = self.changed.subscribe();
        let mut acked: Option<u64> = None;
        loop {
            let update = self.local.lock().update_for(acked);
            let up_to_date = matches!(&update, RouteUpdate::Delta { ops, .. } if ops.is_empty());
            let kind = if matches!(update, RouteUpdate::Full { .. }) { "full" } else { "delta" };
            let Some(t) = self.transport.upgrade() else { break };
            let answer = t.call(peer, Class::Raft, Request::Routes(update), self.timeout).await;
            drop(t);
            let wait = match answer {
                Ok(Answer::Routes(at)) => {
                    if !up_to_date {
                        self.metrics.route_updates.with_label_values(&[kind, "ok"]).inc();
                    }
                    let again = at.is_none();
                    acked = at;
                    self.progress.send_modify(|m| {
                        m.insert(peer, (acked, false));
                    });
                    // Asked for the full set: send it at once.
                    if again {
                        Duration::ZERO
                    } else {
                        SYNC_EVERY
                    }
                }
                _ => {
                    self.metrics.route_updates.with_label_values(&[kind, "failed"]).inc();
                    self.progress.send_modify(|m| {
                        m.insert(peer, (acked, true));
                    });
                    SYNC_EVERY / 4
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => break,
                _ = shutdown.changed() => break,
            }
        }
        // The peer's forward queue goes with it (its task ends with the queue).
        self.queues.lock().remove(&peer);
    }

    /// Waits until every peer that is not suspect confirmed local change `seq`, for at
    /// most `within`; false if one did not (it is marked suspect then, and counted).
    pub async fn wait_confirmed(&self, seq: u64, within: Duration) -> bool {
        let mut rx = self.progress.subscribe();
        let done = |m: &HashMap<NodeId, (Option<u64>, bool)>| {
            m.values().all(|(acked, suspect)| *suspect || acked.is_some_and(|a| a >= seq))
        };
        let waited = tokio::time::timeout(within, async {
            loop {
                if done(&rx.borrow_and_update()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let ok = waited.is_ok();
        if !ok {
            self.progress.send_modify(|m| {
                for (acked, suspect) in m.values_mut() {
                    if !acked.is_some_and(|a| a >= seq) {
                        *suspect = true;
                    }
                }
            });
        }
        self.metrics.route_confirms.with_label_values(&[if ok { "ok" } else { "late" }]).inc();
        ok
    }

    /// A peer's route update: where this node now is of the peer's changes.
    pub fn receive_routes(&self, from: NodeId, update: RouteUpdate) -> Option<u64> {
        let mut peers = self.peers.write();
        let at = peers.apply(from, update);
        self.metrics.peer_routes.set(peers.len() as i64);
        at
    }

    /// Messages a peer forwarded: routed here, answered once what they caused is
    /// durable (or the wait for room at slow subscribers ran out of time).
    pub async fn receive_publish(&self, msgs: Vec<WireMessage>) -> Result<(), WireError> {
        let Some(router) = self.router.get().and_then(Weak::upgrade) else {
            return Err(WireError::Unavailable("node is starting or stopping".into()));
        };
        let mut acks = Vec::new();
        let n = msgs.len() as u64;
        for w in msgs {
            let msg = Arc::new(w.msg.into_message(w.origin.map(Arc::from)));
            acks.extend(router.publish_forwarded(msg).acks);
        }
        drop(router);
        // Durable writes decide the answer; room at a slow subscriber here is flow
        // control (the copies are queued), waited for only while time is left.
        let (durable, room): (Vec<_>, Vec<_>) =
            acks.into_iter().partition(|a| matches!(a, AckWait::Durable(_)));
        let deadline = tokio::time::Instant::now() + self.timeout / 2;
        let stored = async {
            for a in durable {
                a.wait().await?;
            }
            Ok::<(), StoreError>(())
        };
        // Within the caller's timeout, so that a refusal reaches it as one.
        let (result, answer) = match tokio::time::timeout_at(deadline, stored).await {
            Ok(Ok(())) => ("ok", Ok(())),
            Ok(Err(e)) => ("error", Err(format!("a write the messages caused failed: {e}"))),
            Err(_) => ("timeout", Err("not confirmed stored in time".to_string())),
        };
        if answer.is_ok() {
            let _ = tokio::time::timeout_at(deadline, async {
                for a in room {
                    let _ = a.wait().await;
                }
            })
            .await;
        }
        self.metrics.forwarded_in.with_label_values(&[result]).inc_by(n);
        answer.map_err(WireError::Unavailable)
    }

    fn queue(self: &Arc<Self>, peer: NodeId) -> mpsc::Sender<Copy> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(&peer).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE_LIMIT);
        queues.insert(peer, tx.clone());
        let link = Link {
            transport: self.transport.clone(),
            metrics: self.metrics.clone(),
            timeout: self.timeout,
        };
        tokio::spawn(link.send_batches(peer, rx));
        tx
    }
}

/// What a forward queue's task needs (not the [`Routing`], which holds the queue).
struct Link {
    transport: Weak<Transport>,
    metrics: Arc<ClusterMetrics>,
    timeout: Duration,
}

impl Link {
    /// Sends `peer`'s queue in batches, one in flight, until the queue is dropped.
    async fn send_batches(self, peer: NodeId, mut rx: mpsc::Receiver<Copy>) {
        while let Some(first) = rx.recv().await {
            let mut bytes = first.msg.msg.payload.len();
            let mut batch = vec![first];
            while batch.len() < BATCH && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(c) => {
                        bytes += c.msg.msg.payload.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            let (msgs, acks): (Vec<_>, Vec<_>) = batch.into_iter().map(|c| (c.msg, c.ack)).unzip();
            let n = msgs.len() as u64;
            let answer = match self.transport.upgrade() {
                Some(t) => {
                    Some(t.call(peer, Class::Data, Request::Publish(msgs), self.timeout).await)
                }
                None => None,
            };
            // The peer said the messages were not stored: their publishers hear it. A
            // peer that did not answer does not hold them hostage (see the module docs).
            let (result, outcome) = match answer {
                Some(Ok(Answer::Published)) => ("ok", Ok(())),
                Some(Ok(Answer::Error(e))) => {
                    ("refused", Err(StoreError::Unavailable(format!("node {peer}: {e}"))))
                }
                other => {
                    let other = other.map(|a| a.map(|a| a.error()));
                    tracing::debug!(message = "forwarded messages not confirmed", peer, answer = ?other);
                    ("failed", Ok(()))
                }
            };
            self.metrics.forwarded.with_label_values(&[result]).inc_by(n);
            for a in acks.into_iter().flatten() {
                let _ = a.send(outcome.clone());
            }
        }
    }
}

impl Forwarder for Arc<Routing> {
    fn subscribed(&self, filter: &str) -> u64 {
        let mut local = self.local.lock();
        let (new, at) = local.add(filter);
        if new {
            self.changed.send_replace(local.seq());
        }
        at
    }

    fn confirmed(&self, seq: u64) -> futures_util::future::BoxFuture<'static, bool> {
        let (me, within) = (self.clone(), self.timeout);
        Box::pin(async move { me.wait_confirmed(seq, within).await })
    }

    fn unsubscribed(&self, filter: &str) {
        let mut local = self.local.lock();
        if local.remove(filter) {
            self.changed.send_replace(local.seq());
        }
    }

    fn has_routes(&self, topic: &str) -> bool {
        !self.peers.read().nodes_for(topic).is_empty()
    }

    fn forward(&self, msg: &Arc<Message>, acks: &mut Vec<AckWait>) -> usize {
        let nodes = self.peers.read().nodes_for(&msg.topic);
        if nodes.is_empty() {
            return 0;
        }
        let wire = WireMessage {
            msg: StoredMessage::from(&**msg),
            origin: msg.origin.as_deref().map(str::to_string),
        };
        for &node in &nodes {
            let ack = (msg.qos != QoS::AtMostOnce).then(|| {
                let (tx, rx) = oneshot::channel();
                acks.push(AckWait::Durable(rx));
                tx
            });
            let copy = Copy { msg: wire.clone(), ack };
            if let Err(e) = self.queue(node).try_send(copy) {
                self.metrics.forwarded.with_label_values(&["overflow"]).inc();
                let copy = match e {
                    mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
                };
                if let Some(a) = copy.ack {
                    let _ = a.send(Ok(()));
                }
            }
        }
        nodes.len()
    }
}
