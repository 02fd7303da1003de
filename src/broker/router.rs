//! The router: one per node. `publish` matches under a read lock, then hands each delivery
//! to its session without holding the trie lock.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio::sync::oneshot;

use super::message::{now_ms, Delivery, Message, StoredMessage};
use super::outq::{ConnQueue, Offer};
use super::retained::{RetainLimits, Retained};
use super::slot::{SessionSlot, SlotRef};
use super::trie::{Entry, SharedKey, Trie};
use crate::device::{DeviceMsg, Devices};
use crate::mqtt::{topic, QoS, SubOptions};
use crate::raft::SessionStore;
use crate::store::{DurableAck, Store, StoreError};
use crate::telemetry::{DropReason, Metrics};

/// Up to this many matches, overlapping subscriptions are merged by a linear scan.
const LINEAR_DEDUP: usize = 16;

/// Something a QoS 1/2 publisher's acknowledgement waits for.
#[derive(Debug)]
pub enum AckWait {
    /// Durable writes the message caused (offline queues, journal, retained) are on disk.
    Durable(DurableAck),
    /// A subscriber whose backlog was at its limit has room again (flow control).
    Room(Arc<ConnQueue>),
}

impl AckWait {
    /// Waits for it; an error means the message may not be acknowledged as stored.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self {
            AckWait::Durable(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
            AckWait::Room(q) => {
                q.room().await;
                Ok(())
            }
        }
    }
}

/// Carries messages to the other nodes of a cluster (`crate::cluster::forward`): told
/// which filters this node's trie holds, it sends a message to each peer that
/// announced a matching filter. Absent on a single node.
pub trait Forwarder: Send + Sync + 'static {
    /// A subscription to the non-shared `filter` was added here; returns the route
    /// change a peer must have confirmed for the subscription to be in effect there.
    fn subscribed(&self, filter: &str) -> u64;
    /// Resolves once every peer that is up confirmed route change `seq` (false: one
    /// did not in time).
    fn confirmed(&self, seq: u64) -> futures_util::future::BoxFuture<'static, bool>;
    /// A subscription to the non-shared `filter` was removed here.
    fn unsubscribed(&self, filter: &str);
    /// Whether any peer has a filter matching `topic`.
    fn has_routes(&self, topic: &str) -> bool;
    /// Sends `msg` to every peer with a matching filter; for QoS 1/2, `acks` gets what
    /// the publisher's acknowledgement must wait for (the peer's answer, once what the
    /// message caused there is durable). Returns the number of peers.
    /// `skip` gets the shards whose persistent sessions must not be delivered to here
    /// now (their restore here is not complete: they get it when it is).
    fn forward(&self, msg: &Arc<Message>, acks: &mut Vec<AckWait>, skip: &mut Vec<u32>) -> usize;
    /// The shard of a client.
    fn shard_of(&self, client: &str) -> u32;
    /// Persistent session `client` subscribed to the non-shared `filter` (its shard's
    /// routes, which outlive this node's leadership of the shard).
    fn persistent_subscribed(&self, client: &Arc<str>, filter: &str);
    /// `client`'s subscription to `filter` went (unsubscribed or ended; idempotent).
    fn persistent_unsubscribed(&self, client: &str, filter: &str);
    /// This node starts serving `shard` (before its sessions are restored)...
    fn claim_shard(&self, shard: u32);
    /// ...and has restored them, in Raft term `term`.
    fn claimed_shard(&self, shard: u32, term: u64);
    /// This node stopped serving `shard`.
    fn release_shard(&self, shard: u32);
}

/// Which persistent sessions a message is for, by shard, in a cluster: a forwarded copy
/// expects those of some shards among its matches (the node that forwarded it learned
/// from the shards' routes that one of them subscribes), and sessions of a shard this
/// node has not finished restoring are skipped (they get the message once it has).
pub struct ShardScope<'a> {
    pub expect: &'a [u32],
    pub skip: &'a [u32],
    /// Deliver to sessions of `expect` only (a copy sent again: the others had theirs).
    pub only: bool,
    pub shard_of: &'a (dyn Fn(&str) -> u32 + Sync),
}

/// Result of routing one message.
#[derive(Debug, Default)]
pub struct Routed {
    /// Subscriptions that matched (after no-local).
    pub matched: usize,
    /// Subscriptions of this node's trie the topic matched, before no-local and
    /// offline clean sessions: none means nobody here subscribes (a stale route, for a
    /// forwarded message).
    pub found: usize,
    /// What a QoS 1/2 publisher's acknowledgement waits for: every durable write this
    /// message caused, and room at subscribers whose backlog was full.
    pub acks: Vec<AckWait>,
    /// The message asked to be retained and the retained limits refused it (it was
    /// still delivered).
    pub retain_refused: bool,
    /// A forwarded copy with a [`ShardScope`]: some of its shards had no persistent
    /// session here that matched (this node does not serve them yet, or any more).
    pub shards_missing: bool,
}

/// One session's merged matches for a message.
struct PerSession {
    slot: Arc<SessionSlot>,
    qos: QoS,
    rap: bool,
    sub_ids: Vec<u32>,
    /// Matched through at least one non-shared subscription.
    direct: bool,
    shared: Option<Arc<SharedKey>>,
}

/// Result of adding one subscription.
#[derive(Debug)]
pub struct SubscribeOutcome {
    pub existed: bool,
    /// In a cluster, the route change the peers must confirm before the SUBACK
    /// ([`Router::with_routes`]).
    pub route: Option<u64>,
}

pub struct Router {
    trie: RwLock<Trie<SlotRef>>,
    retained: RwLock<Retained>,
    /// The node-local store (the in-flight journal).
    store: Store,
    /// Retained messages are kept in the shards.
    sessions: SessionStore,
    metrics: Arc<Metrics>,
    devices: OnceLock<Arc<Devices>>,
    /// Journal QoS 1/2 deliveries to connected persistent sessions.
    durable_inflight: bool,
    /// How much clients may retain (broker-made messages are not limited).
    retain_limits: RetainLimits,
    /// The cluster's forwarding, if this node is in one.
    forwarder: OnceLock<Arc<dyn Forwarder>>,
    /// The rule engine: messages entering at this node go through it once.
    rules: OnceLock<Arc<crate::rules::engine::RuleEngine>>,
}

impl Router {
    /// Creates the router and loads retained messages from the shards.
    pub fn new(
        store: Store,
        sessions: SessionStore,
        metrics: Arc<Metrics>,
        durable_inflight: bool,
        retain_limits: RetainLimits,
    ) -> Result<Router, StoreError> {
        let mut retained = Retained::default();
        for m in sessions.retained()? {
            retained.apply(&Arc::new(m.into_message(None)));
        }
        metrics.retained.set(retained.len() as i64);
        metrics.retained_bytes.set(retained.bytes() as i64);
        Ok(Router {
            trie: RwLock::new(Trie::new()),
            retained: RwLock::new(retained),
            store,
            sessions,
            metrics,
            devices: OnceLock::new(),
            durable_inflight,
            retain_limits,
            forwarder: OnceLock::new(),
            rules: OnceLock::new(),
        })
    }

    /// An applied change to retained messages in a shard this node replicates (a
    /// cluster: published on any node; in Raft order, so every replica's index ends as
    /// the log does, whatever this node applied early from its own publishes).
    pub fn apply_retained(&self, change: crate::raft::RetainedChange<'_>) {
        use crate::raft::RetainedChange;
        let mut r = self.retained.write();
        match change {
            RetainedChange::Put { topic: _, msg: Some(m) } => {
                r.apply(&Arc::new(m.clone().into_message(None)));
            }
            RetainedChange::Put { topic, msg: None } => r.clear(topic),
            RetainedChange::Reset { group } => match self.sessions.retained() {
                Ok(all) => {
                    let mut fresh = Retained::default();
                    for m in all {
                        fresh.apply(&Arc::new(m.into_message(None)));
                    }
                    *r = fresh;
                }
                Err(e) => {
                    tracing::error!(message = "retained messages not reloaded", group, error = %e)
                }
            },
        }
        self.metrics.retained.set(r.len() as i64);
        self.metrics.retained_bytes.set(r.bytes() as i64);
    }

    /// Connects the router to the cluster's forwarding. Called once at start-up, before
    /// any subscription exists.
    pub fn set_forwarder(&self, f: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(f);
    }

    /// The rule engine, when it runs on this node.
    pub fn rules(&self) -> Option<&Arc<crate::rules::engine::RuleEngine>> {
        self.rules.get()
    }

    /// Connects the router to the rule engine. Called once at start-up.
    pub fn set_rules(&self, rules: Arc<crate::rules::engine::RuleEngine>) {
        let _ = self.rules.set(rules);
    }

    /// Connects the router to the device actors (for offline sessions without a running
    /// actor). Called once at start-up.
    pub fn set_devices(&self, devices: Arc<Devices>) {
        let _ = self.devices.set(devices);
    }

    /// Whether any subscription matches `topic` (to skip building events nobody hears).
    pub fn has_subscribers(&self, topic: &str) -> bool {
        !self.trie.read().matches(topic, |_| true).is_empty()
            || self.forwarder.get().is_some_and(|f| f.has_routes(topic))
    }

    pub fn subscription_count(&self) -> usize {
        self.trie.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Routes a message to every matching subscriber and updates retained state.
    pub fn publish(&self, msg: Arc<Message>) -> Result<Routed, StoreError> {
        self.publish_to(msg, None, false)
    }

    /// Routes a message another node forwarded to this node's subscribers only: it is
    /// not forwarded again, and its retained state is the publishing node's business.
    pub fn publish_forwarded(&self, msg: Arc<Message>) -> Routed {
        self.route_here(&msg, None, false, Routed::default(), None)
    }

    /// [`Router::publish_forwarded`] for a copy with a [`ShardScope`]:
    /// [`Routed::shards_missing`] says whether each expected shard had a match here.
    pub fn publish_forwarded_scoped(&self, msg: Arc<Message>, scope: &ShardScope) -> Routed {
        self.route_here(&msg, None, false, Routed::default(), Some(scope))
    }

    /// Starts a claim of `shard`'s routes (a cluster; nothing on a single node).
    pub fn claim_shard(&self, shard: u32) {
        if let Some(f) = self.forwarder.get() {
            f.claim_shard(shard);
        }
    }

    /// Ends the claim of `shard` in Raft term `term`: its routes are announced.
    pub fn claimed_shard(&self, shard: u32, term: u64) {
        if let Some(f) = self.forwarder.get() {
            f.claimed_shard(shard, term);
        }
    }

    /// This node no longer serves `shard` (its routes stay with the peers).
    pub fn release_shard(&self, shard: u32) {
        if let Some(f) = self.forwarder.get() {
            f.release_shard(shard);
        }
    }

    /// Publishes a broker-made reply (shadow `accepted`, `delta`, ...; QoS 1, JSON) to its
    /// subscribers and, if given, to `requester` even when it has no matching
    /// subscription (as AWS IoT answers reserved-topic requests).
    pub fn publish_reply(
        &self,
        topic: &str,
        payload: &serde_json::Value,
        requester: Option<&Arc<SessionSlot>>,
    ) {
        if let Err(e) = self.publish_to(broker_message(topic, payload), requester, true) {
            tracing::error!(message = "reply not published", topic, error = %e);
        }
    }

    /// Delivers a broker answer to the requester alone, never to subscribers of its
    /// topic (answers that carry secrets: fleet provisioning's private keys and tokens).
    pub fn reply_to(&self, topic: &str, payload: &serde_json::Value, requester: &Arc<SessionSlot>) {
        let msg = broker_message(topic, payload);
        let d = Delivery {
            msg: msg.clone(),
            qos: msg.qos,
            retain: false,
            sub_ids: Vec::new(),
            seq: None,
            shared: None,
        };
        let mut acks = Vec::new();
        self.deliver_to(requester, d, &mut acks);
    }

    fn publish_to(
        &self,
        msg: Arc<Message>,
        requester: Option<&Arc<SessionSlot>>,
        broker_made: bool,
    ) -> Result<Routed, StoreError> {
        let mut routed = Routed::default();
        if msg.retain {
            routed.retain_refused = !self.retain(&msg, &mut routed.acks);
        }
        let sys = msg.topic.starts_with("$SYS/");
        // Each node publishes its own `$SYS` tree.
        let mut skip = Vec::new();
        let fw = self.forwarder.get().filter(|_| !sys);
        if let Some(f) = fw {
            routed.matched += f.forward(&msg, &mut routed.acks, &mut skip);
        }
        // Rules run where a message enters, once (forwarded copies skip this).
        if let Some(r) = self.rules.get().filter(|_| !sys) {
            r.on_publish(self, &msg, &mut routed);
        }
        match fw.filter(|_| !skip.is_empty()) {
            Some(f) => {
                let shard_of = |c: &str| f.shard_of(c);
                let scope =
                    ShardScope { expect: &[], skip: &skip, only: false, shard_of: &shard_of };
                Ok(self.route_here(&msg, requester, broker_made, routed, Some(&scope)))
            }
            None => Ok(self.route_here(&msg, requester, broker_made, routed, None)),
        }
    }

    /// Delivers `msg` to the matching sessions of this node's trie (and `requester`).
    fn route_here(
        &self,
        msg: &Arc<Message>,
        requester: Option<&Arc<SessionSlot>>,
        broker_made: bool,
        mut routed: Routed,
        scope: Option<&ShardScope>,
    ) -> Routed {
        let mut matches = self.trie.read().matches(&msg.topic, |s| s.0.is_online());
        // Sessions skipped below do subscribe here: the route was not stale.
        routed.found += matches.len();
        if let Some(sc) = scope {
            let shard = |m: &crate::broker::trie::Match<SlotRef>| {
                (m.group.is_none() && m.key.0.route().persistent)
                    .then(|| (sc.shard_of)(&m.key.0.client_id))
                    .filter(|s| sc.expect.contains(s) || sc.skip.contains(s))
            };
            let mut found = Vec::new();
            matches.retain(|m| match shard(m) {
                Some(s) if sc.skip.contains(&s) => false,
                Some(s) => {
                    found.push(s);
                    true
                }
                None => !sc.only,
            });
            routed.shards_missing = sc.expect.iter().any(|s| !found.contains(s));
        }
        // Overlapping subscriptions of one session: one copy at the highest QoS with all
        // subscription identifiers. Few matches (the common case) are deduplicated by a
        // linear scan; a map is built only for large fan-outs.
        let mut per_session: Vec<PerSession> = Vec::with_capacity(matches.len());
        let mut index: Option<HashMap<*const SessionSlot, usize>> =
            (matches.len() > LINEAR_DEDUP).then(HashMap::new);
        for m in matches {
            if m.opts.no_local && msg.origin.as_deref() == Some(&*m.key.0.client_id) {
                continue;
            }
            let found = match &index {
                Some(map) => map.get(&Arc::as_ptr(&m.key.0)).copied(),
                None => per_session.iter().position(|e| Arc::ptr_eq(&e.slot, &m.key.0)),
            };
            match found {
                Some(i) => {
                    let e = &mut per_session[i];
                    e.qos = e.qos.max(m.opts.qos);
                    e.rap |= m.opts.retain_as_published;
                    e.sub_ids.extend(m.id);
                    e.direct |= m.group.is_none();
                    if e.shared.is_none() {
                        e.shared = m.group;
                    }
                }
                None => {
                    if let Some(map) = &mut index {
                        map.insert(Arc::as_ptr(&m.key.0), per_session.len());
                    }
                    per_session.push(PerSession {
                        slot: m.key.0,
                        qos: m.opts.qos,
                        rap: m.opts.retain_as_published,
                        sub_ids: m.id.into_iter().collect(),
                        direct: m.group.is_none(),
                        shared: m.group,
                    });
                }
            }
        }
        if let Some(slot) = requester {
            if !per_session.iter().any(|e| Arc::ptr_eq(&e.slot, slot)) {
                per_session.push(PerSession {
                    slot: slot.clone(),
                    qos: msg.qos,
                    rap: false,
                    sub_ids: Vec::new(),
                    direct: true,
                    shared: None,
                });
            }
        }
        routed.matched += per_session.len();
        // An event nobody listens to (presence, documents) is not a lost message.
        if routed.matched == 0 && !broker_made {
            self.metrics.dropped(DropReason::NoSubscribers);
        }
        let mut journaled = false;
        for e in per_session {
            let d = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(e.qos),
                retain: e.rap && msg.retain,
                sub_ids: e.sub_ids,
                seq: None,
                // A session that also subscribed directly keeps the message for itself.
                shared: if e.direct { None } else { e.shared },
            };
            journaled |= self.deliver_to(&e.slot, d, &mut routed.acks);
        }
        if journaled {
            routed.acks.push(AckWait::Durable(self.store.durable()));
        }
        routed
    }

    /// Hands a message that `leaving` received through a shared subscription but did not
    /// acknowledge to another connected member of the same group. Gives the delivery back
    /// if it did not come through a shared subscription or no other member is connected.
    pub fn redispatch(&self, d: Delivery, leaving: &SessionSlot) -> Result<(), Delivery> {
        let Some(key) = d.shared.clone() else {
            return Err(d);
        };
        let picked = self
            .trie
            .read()
            .pick(&key, |s| !std::ptr::eq(Arc::as_ptr(&s.0), leaving) && s.0.is_online());
        let Some(m) = picked else {
            return Err(d);
        };
        let moved = Delivery {
            qos: d.msg.qos.min(m.opts.qos),
            retain: m.opts.retain_as_published && d.msg.retain,
            sub_ids: m.id.into_iter().collect(),
            seq: None,
            shared: Some(key),
            msg: d.msg,
        };
        let mut acks = Vec::new();
        self.deliver(&m.key.0, moved, &mut acks);
        self.metrics.shared_redispatched.inc();
        Ok(())
    }

    /// Sets or clears the retained message of the topic, in memory and in the topic's
    /// shard. A QoS 1/2 publisher's acknowledgement waits until the shard has committed
    /// it. Both happen under the retained set's lock, so the shard sees the changes of one
    /// topic in the order the set did. False if a client's message would take the set
    /// past its limits: it is not retained (and counted).
    fn retain(&self, msg: &Arc<Message>, acks: &mut Vec<AckWait>) -> bool {
        let mut r = self.retained.write();
        if msg.origin.is_some() && !r.admits(msg, self.retain_limits) {
            drop(r);
            self.metrics.limit_hits.with_label_values(&["retained_messages"]).inc();
            return false;
        }
        let stored = (!msg.payload.is_empty()).then(|| StoredMessage::from(&**msg));
        let ack = (msg.qos != QoS::AtMostOnce).then(|| {
            let (tx, rx) = oneshot::channel();
            acks.push(AckWait::Durable(rx));
            tx
        });
        self.sessions.put_retained(&msg.topic, stored, ack);
        r.apply(msg);
        self.metrics.retained.set(r.len() as i64);
        self.metrics.retained_bytes.set(r.bytes() as i64);
        true
    }

    /// Hands one delivery to a session: its connection if attached, else (persistent
    /// sessions, QoS > 0) its device actor for the durable offline queue. `acks` gets what
    /// the publisher's acknowledgement must wait for.
    pub fn deliver(&self, slot: &SessionSlot, d: Delivery, acks: &mut Vec<AckWait>) {
        if self.deliver_to(slot, d, acks) {
            acks.push(AckWait::Durable(self.store.durable()));
        }
    }

    /// Records a QoS 1/2 delivery to a connected persistent session in the in-flight
    /// journal, numbering it from the session's sequence. Returns it with `seq` set, and
    /// whether a write was made (the caller waits for durability once per batch).
    pub fn journal(&self, slot: &SessionSlot, mut d: Delivery) -> (Delivery, bool) {
        if !self.durable_inflight || d.qos == QoS::AtMostOnce || d.seq.is_some() {
            return (d, false);
        }
        let seq = slot.next_seq.fetch_add(1, Ordering::Relaxed);
        let stored = StoredMessage::from(&d);
        match self.store.inflight_push(&slot.client_id, seq, &stored) {
            Ok(()) => {
                d.seq = Some(seq);
                (d, true)
            }
            Err(e) => {
                tracing::error!(message = "in-flight journal write failed", error = %e);
                self.metrics.storage_errors.inc();
                (d, false)
            }
        }
    }

    /// Takes back a delivery [`Router::journal`] numbered that no connection took: it
    /// goes to the offline queue instead.
    pub fn unjournal(&self, slot: &SessionSlot, d: &mut Delivery) {
        if let Some(seq) = d.seq.take() {
            if let Err(e) = self.store.inflight_remove(&slot.client_id, seq) {
                tracing::error!(message = "in-flight journal remove failed", error = %e);
                self.metrics.storage_errors.inc();
            }
        }
    }

    /// [`Router::deliver`] without the flush wait; true if the in-flight journal was
    /// written and the caller must wait for [`Store::durable`].
    fn deliver_to(&self, slot: &SessionSlot, d: Delivery, acks: &mut Vec<AckWait>) -> bool {
        let mut journaled = false;
        let (d, tx) = {
            let route = slot.route();
            let d = match &route.conn {
                Some(conn) => {
                    let d = if route.persistent {
                        let (d, wrote) = self.journal(slot, d);
                        journaled = wrote;
                        d
                    } else {
                        d
                    };
                    match conn.offer(d) {
                        Offer::Accepted => return journaled,
                        Offer::Over => {
                            // Queued above the limit: the publisher's acknowledgement
                            // (QoS 1/2) or its reading (QoS 0) waits until this
                            // subscriber has room (flow control).
                            self.metrics.backpressure_waits.inc();
                            acks.push(AckWait::Room(conn.clone()));
                            return journaled;
                        }
                        Offer::Dropped => {
                            self.metrics.dropped(DropReason::QueueFull);
                            return journaled;
                        }
                        Offer::Closed(mut d) => {
                            // Not in the node-local journal: the next attach may be on
                            // another node. The shard's offline queue keeps it.
                            if journaled {
                                self.unjournal(slot, &mut d);
                                journaled = false;
                            }
                            d
                        }
                    }
                }
                None => d,
            };
            if !route.persistent {
                return journaled;
            }
            if d.seq.is_some() {
                // Journaled just before the connection closed: the journal holds it
                // for the next attach.
                return journaled;
            }
            if d.qos == QoS::AtMostOnce {
                self.metrics.dropped(DropReason::OfflineQos0);
                return journaled;
            }
            let (tx, rx) = oneshot::channel();
            acks.push(AckWait::Durable(rx));
            match &route.actor {
                None => (d, tx),
                Some(actor) => match actor.cast(DeviceMsg::Enqueue(d, tx)) {
                    Ok(()) => return journaled,
                    Err(ractor::MessagingErr::SendErr(DeviceMsg::Enqueue(d, tx))) => (d, tx),
                    Err(_) => return journaled,
                },
            }
        };
        // No running actor: its shard's supervisor spawns one from stored state.
        match self.devices.get() {
            Some(devices) => devices.cast(&slot.client_id, None, DeviceMsg::Enqueue(d, tx)),
            None => {
                let _ = tx.send(Err(StoreError::Closed));
            }
        }
        journaled
    }

    /// Adds or replaces a subscription. `filter` may be a `$share/...` filter.
    pub fn subscribe(
        &self,
        slot: &Arc<SessionSlot>,
        filter: &str,
        opts: SubOptions,
        id: Option<u32>,
    ) -> SubscribeOutcome {
        let (group, f) = match topic::parse_shared(filter) {
            Ok(Some(s)) => (Some(s.group), s.filter),
            _ => (None, filter),
        };
        let mut trie = self.trie.write();
        let existed = trie.insert(f, group, Entry { key: SlotRef(slot.clone()), opts, id });
        self.metrics.subscriptions.set(trie.len() as i64);
        // Under the trie's lock, so that announcements follow the trie's order.
        let route = match (existed, group, self.forwarder.get()) {
            (false, None, Some(fw)) => Some(fw.subscribed(f)),
            _ => None,
        };
        if let (None, Some(fw)) = (group, self.forwarder.get()) {
            if slot.route().persistent {
                fw.persistent_subscribed(&slot.client_id, f);
            }
        }
        SubscribeOutcome { existed, route }
    }

    /// What a SUBACK waits for: `durable` (the session record's write) and, in a
    /// cluster, every peer's confirmation of route change `route` (a peer that does not
    /// confirm in time is passed over, not an error).
    pub fn with_routes(
        &self,
        durable: Option<DurableAck>,
        route: Option<u64>,
    ) -> Option<DurableAck> {
        let (Some(seq), Some(fw)) = (route, self.forwarder.get()) else { return durable };
        let confirmed = fw.confirmed(seq);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let stored = match durable {
                Some(d) => d.await.unwrap_or(Err(StoreError::Closed)),
                None => Ok(()),
            };
            confirmed.await;
            let _ = tx.send(stored);
        });
        Some(rx)
    }

    /// Removes a subscription: the session unsubscribed or ended.
    pub fn unsubscribe(&self, slot: &Arc<SessionSlot>, filter: &str) -> bool {
        self.remove_subscription(slot, filter, true)
    }

    /// Takes a subscription out of this node's trie while the session lives on in its
    /// shard (it moves to the shard's next leader): its shard's routes stay.
    pub fn evict_subscription(&self, slot: &Arc<SessionSlot>, filter: &str) -> bool {
        self.remove_subscription(slot, filter, false)
    }

    fn remove_subscription(&self, slot: &Arc<SessionSlot>, filter: &str, ended: bool) -> bool {
        let (group, f) = match topic::parse_shared(filter) {
            Ok(Some(s)) => (Some(s.group), s.filter),
            _ => (None, filter),
        };
        let mut trie = self.trie.write();
        let removed = trie.remove(f, group, &SlotRef(slot.clone()));
        self.metrics.subscriptions.set(trie.len() as i64);
        if let (true, None, Some(fw)) = (removed, group, self.forwarder.get()) {
            fw.unsubscribed(f);
            if ended {
                fw.persistent_unsubscribed(&slot.client_id, f);
            }
        }
        removed
    }

    /// Retained messages for a new subscription, as deliveries with RETAIN set.
    pub fn retained_for(&self, filter: &str, qos: QoS) -> Vec<Delivery> {
        let now = now_ms();
        self.retained
            .read()
            .matching(filter)
            .into_iter()
            .filter(|m| !m.expired(now))
            .map(|m| Delivery {
                qos: m.qos.min(qos),
                msg: m,
                retain: true,
                sub_ids: Vec::new(),
                seq: None,
                shared: None,
            })
            .collect()
    }
}

/// A JSON message the broker publishes (replies, events): QoS 1, not retained.
fn broker_message(topic: &str, payload: &serde_json::Value) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: bytes::Bytes::from(payload.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        props: Default::default(),
        expires_at_ms: None,
        origin: None,
        publisher: None,
    })
}
