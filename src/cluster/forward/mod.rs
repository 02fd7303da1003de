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
//! `homeport_cluster_forwarded_total`. Its clean sessions are gone with it.
//!
//! Persistent sessions are found through their shard's routes (`super::routes`), which
//! the peers keep while the shard changes leaders. A publish matching a shard's routes
//! goes to the node leading the shard now; if that node has not restored the shard yet
//! (it answers "missing"), did not answer, or no leader is known, the copy is sent
//! again, to those sessions only, to whichever node leads the shard then, until
//! [`Routing::shard_patience`] has passed; the publisher's acknowledgement waits, and
//! is an error if the patience runs out. So a message acknowledged during a hand-off or
//! after a kill -9 of the shard's leader is in the session's offline queue.
//!
//! A SUBACK waits until every peer confirmed the change that announced the filter
//! ([`Routing::wait_confirmed`], at most the RPC timeout): a publish any node reads after
//! the SUBACK was sent then reaches the subscriber. A peer that does not confirm in
//! time is marked suspect (counted in `homeport_cluster_route_confirms_total{result=
//! "late"}`) and later SUBACKs do not wait for it until its next sync succeeds.
//!
//! Not forwarded yet: shared subscriptions (a group is served by the members on the
//! node a message enters). Retained state is not forwarded: each node's retained index
//! follows its replicas of the shards (`crate::raft::RetainedFeed`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

mod reroute;

use crate::broker::{AckWait, Forwarder, Message, Router, ShardScope, StoredMessage};
use crate::cluster::liveness::{Change, Liveness};
use crate::cluster::metrics::ClusterMetrics;
use crate::cluster::routes::{LocalRoutes, PeerRoutes, RouteUpdate, ShardRoutes};
use crate::cluster::transport::{Class, Transport};
use crate::cluster::wire::{Answer, NodeId, Request, WireError, WireMessage};
use crate::mqtt::QoS;
use crate::raft::Groups;
use crate::store::StoreError;

/// Copies waiting for one peer; a full queue refuses more (counted as `overflow`).
pub const QUEUE_LIMIT: usize = 16_384;
/// Most messages in one forwarded batch.
const BATCH: usize = 512;
/// Most payload bytes in one forwarded batch (a batch carries at least one message).
const BATCH_BYTES: usize = 1 << 20;
/// How often a peer is asked whether it is up to date when nothing changed.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A copy whose routes were stale is routed again after this (times the attempt)...
const REROUTE_WAIT: Duration = Duration::from_millis(50);
/// ...at most this many times (about 0.75 s in all).
const REROUTE_TRIES: u8 = 5;
/// The longest wait between tries of a copy for a shard's persistent sessions.
const SHARD_RETRY_MAX: Duration = Duration::from_millis(250);

struct Copy {
    /// Shared by the copies for each peer; turned into a [`WireMessage`] when sent.
    msg: Arc<Message>,
    ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Times it was routed again after stale routes ([`Routing::reroute`]).
    tries: u8,
    /// The peers it was forwarded to, when more than the queue's own peer (a
    /// routed-again copy goes to none of them twice).
    sent_to: Option<Arc<[NodeId]>>,
    /// Shards whose persistent sessions this copy is for, beyond the receiver's own
    /// matches (their routes matched and the receiver leads them, as far as known).
    shards: Vec<u32>,
    /// For those sessions only (a copy sent again for them: the others had theirs).
    only: bool,
    /// Shards whose sessions this copy must not reach: each matched shard's sessions
    /// are reached through one path only (the copy to the node that leads it, as this
    /// node knows), so that a stale view of the leader costs a retry, not a duplicate.
    skip: Vec<u32>,
    /// When the message entered here; copies for shards are tried again until
    /// [`Routing::shard_patience`] after it.
    born: Instant,
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
    /// Which peers answer; declarations go to `on_change` (`super::liveness`).
    liveness: Mutex<Liveness>,
    on_change: std::sync::OnceLock<Box<dyn Fn(Change) + Send + Sync>>,
    /// Shards' leaders and which shard a client is in (weak: the groups hold the
    /// transport, which holds this).
    groups: std::sync::OnceLock<Weak<Groups>>,
    /// The shards this node has claimed and restored.
    serving: RwLock<HashSet<u32>>,
}

impl Routing {
    pub fn new(
        transport: Arc<Transport>,
        timeout: Duration,
        down_after: Duration,
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
            liveness: Mutex::new(Liveness::new(down_after)),
            on_change: std::sync::OnceLock::new(),
            groups: std::sync::OnceLock::new(),
            serving: RwLock::new(HashSet::new()),
        })
    }

    /// The node's Raft groups: where shards' leaders are learned.
    pub fn set_groups(&self, groups: &Arc<Groups>) {
        let _ = self.groups.set(Arc::downgrade(groups));
    }

    fn groups(&self) -> Option<Arc<Groups>> {
        self.groups.get().and_then(Weak::upgrade)
    }

    /// How long a copy for a shard's persistent sessions is tried: long enough for a
    /// dead leader's calls to time out and an election to end.
    fn shard_patience(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }

    /// Where `shard`'s sessions are served: its leader as this node's Raft sees it,
    /// else the node that last announced the shard's routes.
    fn shard_leader(&self, shard: u32) -> Option<NodeId> {
        self.groups().and_then(|g| g.leader(shard)).or_else(|| self.peers.read().shard_owner(shard))
    }

    fn shard_for(&self, client: &str) -> Option<u32> {
        self.groups().map(|g| g.shard_of(client))
    }

    /// What to do when a peer is declared down or up (once; the node's devices).
    pub fn on_peer_change(&self, f: impl Fn(Change) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    /// Declares the peers that did not answer for the detection time down: their
    /// routes are purged (a peer that comes back sends them again in full) and the
    /// node's devices hear of it. Called a few times a second.
    pub fn check_peers(&self) {
        let changes = self.liveness.lock().check(std::time::Instant::now());
        for c in changes {
            if let Change::Down(p) = c {
                tracing::warn!(
                    message = "peer declared down: no answer within cluster.node_down_ms",
                    peer = p
                );
                self.peers.write().purge(p);
                self.metrics.peer_routes.set(self.peers.read().len() as i64);
            }
            self.peer_changed(c);
        }
    }

    fn peer_changed(&self, c: Change) {
        let state = match c {
            Change::Down(_) => "down",
            Change::Restarted(_) => "restarted",
            Change::Up(p) => {
                tracing::info!(message = "peer answers again", peer = p);
                "up"
            }
        };
        self.metrics.peer_state_changes.with_label_values(&[state]).inc();
        self.metrics.peers_down.set(self.liveness.lock().down() as i64);
        if let Some(f) = self.on_change.get() {
            f(c);
        }
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
            self.liveness.lock().watch(p, std::time::Instant::now());
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
            self.liveness.lock().forget(p);
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
                    let back = self.liveness.lock().heard(peer, std::time::Instant::now());
                    if let Some(c) = back {
                        self.peer_changed(c);
                    }
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
        let (at, restarted) = {
            let mut peers = self.peers.write();
            let restarted = peers.restarted(from, &update);
            let at = peers.apply(from, update);
            self.metrics.peer_routes.set(peers.len() as i64);
            (at, restarted)
        };
        if restarted {
            tracing::info!(message = "peer restarted (new incarnation)", peer = from);
            self.peer_changed(Change::Restarted(from));
        }
        at
    }

    /// Messages a peer forwarded: routed here, answered once what they caused is
    /// durable (or the wait for room at slow subscribers ran out of time).
    pub async fn receive_publish(&self, msgs: Vec<WireMessage>) -> Result<Vec<u32>, WireError> {
        let Some(router) = self.router.get().and_then(Weak::upgrade) else {
            return Err(WireError::Unavailable("node is starting or stopping".into()));
        };
        let mut acks = Vec::new();
        let mut unmatched = Vec::new();
        let n = msgs.len() as u64;
        let groups = self.groups();
        let shard_of = |c: &str| groups.as_ref().map_or(0, |g| g.shard_of(c));
        for (i, w) in msgs.into_iter().enumerate() {
            let msg = Arc::new(w.msg.into_message(w.origin.map(Arc::from)));
            let missed = if w.shards.is_empty() && w.skip.is_empty() {
                let routed = router.publish_forwarded(msg);
                acks.extend(routed.acks);
                routed.found == 0
            } else {
                // A shard not restored here yet: its sessions get the copy sent again
                // once it is (the sender tries until then), not a part of it now.
                let (expect, mut skip): (Vec<u32>, Vec<u32>) = {
                    let serving = self.serving.read();
                    w.shards.iter().partition(|s| serving.contains(s))
                };
                let unserved = !skip.is_empty();
                skip.extend_from_slice(&w.skip);
                let scope =
                    ShardScope { expect: &expect, skip: &skip, only: w.only, shard_of: &shard_of };
                let routed = router.publish_forwarded_scoped(msg, &scope);
                acks.extend(routed.acks);
                routed.shards_missing || unserved || (w.shards.is_empty() && routed.found == 0)
            };
            if missed {
                unmatched.push(i as u32);
            }
        }
        if !unmatched.is_empty() {
            self.metrics
                .forwarded_in
                .with_label_values(&["unmatched"])
                .inc_by(unmatched.len() as u64);
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
        answer.map(|()| unmatched).map_err(WireError::Unavailable)
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
            routing: Arc::downgrade(self),
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
    /// For copies routed again (weak: the routing holds the queue this task drains).
    routing: Weak<Routing>,
    metrics: Arc<ClusterMetrics>,
    timeout: Duration,
}

impl Link {
    /// Sends `peer`'s queue in batches, one in flight, until the queue is dropped.
    async fn send_batches(self, peer: NodeId, mut rx: mpsc::Receiver<Copy>) {
        while let Some(first) = rx.recv().await {
            let mut bytes = first.msg.payload.len();
            let mut batch = vec![first];
            while batch.len() < BATCH && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(c) => {
                        bytes += c.msg.payload.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            let msgs: Vec<WireMessage> = batch
                .iter()
                .map(|c| WireMessage {
                    msg: StoredMessage::from(&*c.msg),
                    origin: c.msg.origin.as_deref().map(str::to_string),
                    shards: c.shards.clone(),
                    only: c.only,
                    skip: c.skip.clone(),
                })
                .collect();
            let n = msgs.len() as u64;
            let answer = match self.transport.upgrade() {
                Some(t) => {
                    Some(t.call(peer, Class::Data, Request::Publish(msgs), self.timeout).await)
                }
                None => None,
            };
            // The peer said the messages were not stored: their publishers hear it. A
            // peer that did not answer does not hold them hostage (see the module docs).
            let mut unmatched: &[u32] = &[];
            let (result, outcome) = match &answer {
                Some(Ok(Answer::Published { unmatched: u })) => {
                    unmatched = u;
                    ("ok", Ok(()))
                }
                Some(Ok(Answer::Error(e))) => {
                    ("refused", Err(StoreError::Unavailable(format!("node {peer}: {e}"))))
                }
                other => {
                    let other = other.as_ref().map(|a| a.as_ref().map(|a| a.error()));
                    tracing::debug!(message = "forwarded messages not confirmed", peer, answer = ?other);
                    ("failed", Ok(()))
                }
            };
            self.metrics.forwarded.with_label_values(&[result]).inc_by(n);
            let unanswered = result == "failed";
            for (i, mut c) in batch.into_iter().enumerate() {
                // Nobody there subscribes any more: the peer's routes were stale. A QoS
                // 1/2 copy is routed again if it was not everywhere it could go. One for
                // a shard's persistent sessions also if the peer did not answer: the
                // shard's next leader stores it.
                let stale = unmatched.binary_search(&(i as u32)).is_ok();
                if (stale || (unanswered && !c.shards.is_empty())) && c.ack.is_some() {
                    if let Some(r) = self.routing.upgrade() {
                        tokio::spawn(r.reroute(c, peer));
                        continue;
                    }
                }
                if let Some(a) = c.ack.take() {
                    let _ = a.send(outcome.clone());
                }
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
        let p = self.peers.read();
        !p.nodes_for(topic).is_empty() || !p.shards_for(topic).is_empty()
    }

    fn shard_of(&self, client: &str) -> u32 {
        self.shard_for(client).unwrap_or(0)
    }

    fn forward(&self, msg: &Arc<Message>, acks: &mut Vec<AckWait>, skip: &mut Vec<u32>) -> usize {
        let (nodes, shards) = {
            let p = self.peers.read();
            (p.nodes_for(&msg.topic), p.shards_for(&msg.topic))
        };
        if nodes.is_empty() && shards.is_empty() {
            return 0;
        }
        // Each node with a match gets one copy; the leader of a shard whose persistent
        // sessions match gets one too, told to expect them. A shard served here is
        // routed here; one with no leader yet, or not restored here yet, waits.
        let mut targets: Vec<(NodeId, Vec<u32>)> = nodes.into_iter().map(|n| (n, vec![])).collect();
        let mut pending = Vec::new();
        for s in shards {
            match self.shard_leader(s) {
                Some(l) if l == self.me => {
                    if !self.serving.read().contains(&s) {
                        pending.push(s);
                    }
                }
                Some(l) => match targets.iter_mut().find(|(n, _)| *n == l) {
                    Some((_, v)) => v.push(s),
                    None => targets.push((l, vec![s])),
                },
                None => pending.push(s),
            }
        }
        let acked = msg.qos != QoS::AtMostOnce;
        let born = Instant::now();
        let sent_to: Option<Arc<[NodeId]>> =
            (targets.len() > 1).then(|| targets.iter().map(|(n, _)| *n).collect());
        let reached = targets.len() + usize::from(!pending.is_empty());
        // Each matched shard's sessions are reached through one path: every other copy,
        // and this node's own trie unless it serves the shard, skips them.
        let from = skip.len();
        skip.extend(targets.iter().flat_map(|(_, v)| v.iter().copied()));
        skip.extend_from_slice(&pending);
        let all = &skip[from..];
        for (node, shards) in targets {
            // Allocates only when another path has shards.
            let others: Vec<u32> = all.iter().copied().filter(|s| !shards.contains(s)).collect();
            let ack = acked.then(|| {
                let (tx, rx) = oneshot::channel();
                acks.push(AckWait::Durable(rx));
                tx
            });
            let copy = Copy {
                msg: msg.clone(),
                ack,
                tries: 0,
                sent_to: sent_to.clone(),
                shards,
                only: false,
                skip: others,
                born,
            };
            if let Err(e) = self.queue(node).try_send(copy) {
                self.metrics.forwarded.with_label_values(&["overflow"]).inc();
                let mut copy = match e {
                    mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
                };
                if copy.ack.is_some() && !copy.shards.is_empty() {
                    // The shard's sessions are stored elsewhere or later, not dropped.
                    copy.only = true;
                    tokio::spawn(self.clone().reroute(copy, node));
                } else if let Some(a) = copy.ack {
                    let _ = a.send(Ok(()));
                }
            }
        }
        if acked && !pending.is_empty() {
            let (tx, rx) = oneshot::channel();
            acks.push(AckWait::Durable(rx));
            let copy = Copy {
                msg: msg.clone(),
                ack: Some(tx),
                tries: 0,
                sent_to,
                shards: pending,
                only: true,
                skip: Vec::new(),
                born,
            };
            tokio::spawn(self.clone().reroute(copy, self.me));
        }
        reached
    }

    fn persistent_subscribed(&self, client: &Arc<str>, filter: &str) {
        let Some(shard) = self.shard_for(client) else { return };
        let mut local = self.local.lock();
        if local.shard_add(shard, filter, client) {
            self.changed.send_replace(local.seq());
        }
    }

    fn persistent_unsubscribed(&self, client: &str, filter: &str) {
        let Some(shard) = self.shard_for(client) else { return };
        let mut local = self.local.lock();
        if local.shard_remove(shard, filter, client) {
            self.changed.send_replace(local.seq());
        }
    }

    fn claim_shard(&self, shard: u32) {
        self.serving.write().remove(&shard);
        self.local.lock().shard_claim(shard);
    }

    fn claimed_shard(&self, shard: u32, term: u64) {
        let own = ShardRoutes { shard, term, filters: Vec::new() };
        self.peers.write().own_shard(self.me, own);
        let mut local = self.local.lock();
        local.shard_claimed(shard, term);
        self.changed.send_replace(local.seq());
        self.serving.write().insert(shard);
    }

    fn release_shard(&self, shard: u32) {
        self.serving.write().remove(&shard);
        // Publishes entering here find the shard's sessions at its next leader.
        let last = self.local.lock().shard_release(shard);
        if let Some(set) = last {
            self.peers.write().own_shard(self.me, set);
        }
    }
}
