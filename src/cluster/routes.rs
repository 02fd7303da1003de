//! Routes between nodes: which topic filters each node has subscribers for.
//!
//! Owns: this node's announced filters ([`LocalRoutes`]: a count per filter, numbered
//! changes since the node started, and the update a peer needs given what it last
//! confirmed) and the peers' filters ([`PeerRoutes`]: per peer the incarnation and
//! sequence it is at, and one trie of every peer's filters to match a topic against).
//! Pure: no I/O; `super::forward` carries the updates and the forwarded messages.
//!
//! Shard routes: the filters of persistent sessions are also announced per shard, by
//! the node that leads the shard, under the Raft term in which it started serving it
//! (`RouteOp::ShardSet`, then per-filter changes). A receiver keeps a shard's set until
//! a set of a later term replaces it: not when the announcer is declared down, stops
//! leading or restarts. So while a shard changes leaders (a hand-off, a kill -9) every
//! node still knows that a persistent session of that shard wants a topic, and
//! forwards such a message to whichever node leads the shard now
//! (`super::forward`), where the session's actor stores it.
//!
//! Versioning: a node numbers its changes from 1 in each incarnation (a restart is a new
//! incarnation, chosen at random by the transport). An update is a delta `(from, ops)`
//! that applies only if the receiver is at `from - 1` of the same incarnation, or a full
//! set that replaces whatever the receiver had of that node. A receiver that cannot
//! apply a delta (a gap, an unknown incarnation: it restarted, or the sender did) says
//! so and gets the full set next. Routes stay when a link is lost (a node's routes go
//! only when it is removed): a stale route costs one forward that finds nobody, a
//! missing one a lost message.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::trie::{Entry, Trie};
use crate::mqtt::SubOptions;

/// Changes kept for peers that are behind; one further behind gets the full set.
pub const LOG_LIMIT: usize = 4096;

/// One change to a node's filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteOp {
    Add(String),
    Remove(String),
    /// The sender serves `shard` from Raft term `term` on; these are its persistent
    /// sessions' filters (replacing any set of an earlier term).
    ShardSet {
        shard: u32,
        term: u64,
        filters: Vec<String>,
    },
    /// A persistent session of `shard` (served by the sender) gained a filter...
    ShardAdd {
        shard: u32,
        filter: String,
    },
    /// ...or the shard's last persistent subscription to it went.
    ShardRemove {
        shard: u32,
        filter: String,
    },
}

/// The persistent sessions' filters of one shard, as its leader announces them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRoutes {
    pub shard: u32,
    pub term: u64,
    pub filters: Vec<String>,
}

/// What a node sends a peer about its filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteUpdate {
    /// Changes `from..from + ops.len()` (an empty `ops` asks "are you at `from - 1`?").
    Delta { incarnation: u64, from: u64, ops: Vec<RouteOp> },
    /// Every filter, as of change `seq`, and the shards the sender serves.
    Full { incarnation: u64, seq: u64, filters: Vec<String>, shards: Vec<ShardRoutes> },
}

/// A shard's persistent subscriptions on the node serving it: per filter, the clients.
#[derive(Debug, Default)]
struct LocalShard {
    /// The Raft term it was claimed in; 0 while claiming or never claimed.
    term: u64,
    claiming: bool,
    filters: HashMap<String, HashSet<Arc<str>>>,
}

/// This node's filters, with the changes peers have not all confirmed.
#[derive(Debug)]
pub struct LocalRoutes {
    incarnation: u64,
    seq: u64,
    /// Per filter: subscriptions here, and the change that announced it.
    counts: HashMap<String, (u32, u64)>,
    /// `(seq, op)`, oldest first, at most [`LOG_LIMIT`].
    log: VecDeque<(u64, RouteOp)>,
    shards: HashMap<u32, LocalShard>,
}

impl LocalRoutes {
    pub fn new(incarnation: u64) -> LocalRoutes {
        LocalRoutes {
            incarnation,
            seq: 0,
            counts: HashMap::new(),
            log: VecDeque::new(),
            shards: HashMap::new(),
        }
    }

    /// Persistent session `client` of `shard` subscribed to `filter`: true if that is
    /// a change to announce (the shard's first subscription to it, outside a claim).
    pub fn shard_add(&mut self, shard: u32, filter: &str, client: &Arc<str>) -> bool {
        let s = self.shards.entry(shard).or_default();
        let clients = s.filters.entry(filter.to_string()).or_default();
        if !clients.insert(client.clone()) || clients.len() > 1 || s.claiming {
            return false;
        }
        self.push(RouteOp::ShardAdd { shard, filter: filter.to_string() });
        true
    }

    /// `client`'s subscription to `filter` went (unsubscribed, session ended): true if
    /// it was the shard's last to that filter and that is a change to announce.
    pub fn shard_remove(&mut self, shard: u32, filter: &str, client: &str) -> bool {
        let Some(s) = self.shards.get_mut(&shard) else { return false };
        let Some(clients) = s.filters.get_mut(filter) else { return false };
        if !clients.remove(client) || !clients.is_empty() {
            return false;
        }
        s.filters.remove(filter);
        if s.claiming {
            return false;
        }
        self.push(RouteOp::ShardRemove { shard, filter: filter.to_string() });
        true
    }

    /// This node starts serving `shard`: its subscriptions are gathered afresh (the
    /// restore adds them) and announced together by [`LocalRoutes::shard_claimed`].
    pub fn shard_claim(&mut self, shard: u32) {
        self.shards.insert(shard, LocalShard { term: 0, claiming: true, filters: HashMap::new() });
    }

    /// The claim of `shard` in Raft term `term` is complete: one change announces the
    /// whole set.
    pub fn shard_claimed(&mut self, shard: u32, term: u64) {
        let s = self.shards.entry(shard).or_default();
        s.claiming = false;
        s.term = term;
        let filters = s.filters.keys().cloned().collect();
        self.push(RouteOp::ShardSet { shard, term, filters });
    }

    /// This node stopped serving `shard`. Nothing is announced: the peers keep the set
    /// until the next leader's replaces it. Returns the set as last claimed (term and
    /// filters), for this node to keep as the peers do.
    pub fn shard_release(&mut self, shard: u32) -> Option<ShardRoutes> {
        let s = self.shards.remove(&shard)?;
        (!s.claiming && s.term > 0).then(|| ShardRoutes {
            shard,
            term: s.term,
            filters: s.filters.into_keys().collect(),
        })
    }

    /// Whether this node serves `shard` (claimed and restored).
    pub fn serves(&self, shard: u32) -> bool {
        self.shards.get(&shard).is_some_and(|s| !s.claiming && s.term > 0)
    }

    /// The number of the latest change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// One more subscription to `filter`: whether the filter is new here (a change),
    /// and the change that announced it (a subscription is in effect on a peer once
    /// the peer confirmed that change).
    pub fn add(&mut self, filter: &str) -> (bool, u64) {
        if let Some((n, at)) = self.counts.get_mut(filter) {
            *n += 1;
            return (false, *at);
        }
        self.push(RouteOp::Add(filter.to_string()));
        self.counts.insert(filter.to_string(), (1, self.seq));
        (true, self.seq)
    }

    /// One subscription to `filter` fewer; true if it was the last (a change).
    pub fn remove(&mut self, filter: &str) -> bool {
        let Some((n, _)) = self.counts.get_mut(filter) else { return false };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.counts.remove(filter);
        self.push(RouteOp::Remove(filter.to_string()));
        true
    }

    fn push(&mut self, op: RouteOp) {
        self.seq += 1;
        self.log.push_back((self.seq, op));
        while self.log.len() > LOG_LIMIT {
            self.log.pop_front();
        }
    }

    /// What a peer that confirmed change `acked` (None: nothing, or it asked for the
    /// full set) needs next. A peer that is up to date gets an empty delta, which it
    /// answers with where it is (so a restarted peer is noticed).
    pub fn update_for(&self, acked: Option<u64>) -> RouteUpdate {
        let full = || RouteUpdate::Full {
            incarnation: self.incarnation,
            seq: self.seq,
            filters: self.counts.keys().cloned().collect(),
            shards: self
                .shards
                .iter()
                .filter(|(_, s)| !s.claiming && s.term > 0)
                .map(|(&shard, s)| ShardRoutes {
                    shard,
                    term: s.term,
                    filters: s.filters.keys().cloned().collect(),
                })
                .collect(),
        };
        let Some(acked) = acked.filter(|a| *a <= self.seq) else { return full() };
        let from = acked + 1;
        let oldest = self.log.front().map_or(self.seq + 1, |(s, _)| *s);
        if from < oldest {
            return full();
        }
        let ops = self.log.iter().filter(|(s, _)| *s >= from).map(|(_, op)| op.clone()).collect();
        RouteUpdate::Delta { incarnation: self.incarnation, from, ops }
    }
}

#[derive(Debug)]
struct Peer {
    incarnation: u64,
    seq: u64,
    filters: BTreeSet<String>,
}

/// A shard's persistent filters as the latest leader announced them.
#[derive(Debug)]
struct PeerShard {
    owner: u64,
    term: u64,
    filters: BTreeSet<String>,
}

/// The peers' filters.
#[derive(Debug, Default)]
pub struct PeerRoutes {
    peers: HashMap<u64, Peer>,
    trie: Trie<u64>,
    shards: HashMap<u32, PeerShard>,
    shard_trie: Trie<u32>,
}

impl PeerRoutes {
    /// Applies `node`'s update. Some(seq): the change the receiver is now at (to
    /// confirm); None: it cannot be applied, the full set is needed.
    pub fn apply(&mut self, node: u64, update: RouteUpdate) -> Option<u64> {
        match update {
            RouteUpdate::Full { incarnation, seq, filters, shards } => {
                self.purge(node);
                let filters: BTreeSet<String> = filters.into_iter().collect();
                for f in &filters {
                    self.trie.insert(f, None, entry(node));
                }
                self.peers.insert(node, Peer { incarnation, seq, filters });
                for s in shards {
                    self.set_shard(node, s.shard, s.term, s.filters);
                }
                Some(seq)
            }
            RouteUpdate::Delta { incarnation, from, ops } => {
                let peer = self.peers.get_mut(&node)?;
                if peer.incarnation != incarnation || peer.seq + 1 != from {
                    return None;
                }
                for op in ops {
                    peer.seq += 1;
                    match op {
                        RouteOp::Add(f) => {
                            if peer.filters.insert(f.clone()) {
                                self.trie.insert(&f, None, entry(node));
                            }
                        }
                        RouteOp::Remove(f) => {
                            if peer.filters.remove(&f) {
                                self.trie.remove(&f, None, &node);
                            }
                        }
                        RouteOp::ShardSet { shard, term, filters } => {
                            Self::put_shard(
                                &mut self.shards,
                                &mut self.shard_trie,
                                node,
                                shard,
                                term,
                                filters,
                            );
                        }
                        RouteOp::ShardAdd { shard, filter } => {
                            if let Some(s) = self.shards.get_mut(&shard) {
                                if s.owner == node && s.filters.insert(filter.clone()) {
                                    self.shard_trie.insert(&filter, None, shard_entry(shard));
                                }
                            }
                        }
                        RouteOp::ShardRemove { shard, filter } => {
                            if let Some(s) = self.shards.get_mut(&shard) {
                                if s.owner == node && s.filters.remove(&filter) {
                                    self.shard_trie.remove(&filter, None, &shard);
                                }
                            }
                        }
                    }
                }
                Some(peer.seq)
            }
        }
    }

    fn set_shard(&mut self, node: u64, shard: u32, term: u64, filters: Vec<String>) {
        Self::put_shard(&mut self.shards, &mut self.shard_trie, node, shard, term, filters);
    }

    /// `node` serves `shard` from `term` on with `filters`; a set of an earlier term
    /// than the one held is ignored (a deposed leader's late or full announcement).
    fn put_shard(
        shards: &mut HashMap<u32, PeerShard>,
        trie: &mut Trie<u32>,
        node: u64,
        shard: u32,
        term: u64,
        filters: Vec<String>,
    ) {
        if shards.get(&shard).is_some_and(|s| s.term > term) {
            return;
        }
        if let Some(old) = shards.remove(&shard) {
            for f in &old.filters {
                trie.remove(f, None, &shard);
            }
        }
        let filters: BTreeSet<String> = filters.into_iter().collect();
        for f in &filters {
            trie.insert(f, None, shard_entry(shard));
        }
        shards.insert(shard, PeerShard { owner: node, term, filters });
    }

    /// This node's own set for `shard` (claimed: the peers' sets of earlier terms are
    /// stale; released: kept, as the peers keep it, until a later leader's replaces it).
    pub fn own_shard(&mut self, me: u64, routes: ShardRoutes) {
        let ShardRoutes { shard, term, filters } = routes;
        Self::put_shard(&mut self.shards, &mut self.shard_trie, me, shard, term, filters);
    }

    /// The shards with a persistent session subscribed to a filter matching `topic`,
    /// each once, in id order.
    pub fn shards_for(&self, topic: &str) -> Vec<u32> {
        if self.shard_trie.is_empty() {
            return Vec::new();
        }
        let mut shards: Vec<u32> =
            self.shard_trie.matches(topic, |_| true).into_iter().map(|m| m.key).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// The node that last announced `shard` (its leader then).
    pub fn shard_owner(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).map(|s| s.owner)
    }

    /// Whether `update` comes from a new run of `node`: it announces a full set under
    /// another incarnation than the one this node knows.
    pub fn restarted(&self, node: u64, update: &RouteUpdate) -> bool {
        match (update, self.peers.get(&node)) {
            (RouteUpdate::Full { incarnation, .. }, Some(p)) => p.incarnation != *incarnation,
            _ => false,
        }
    }

    /// Forgets `node`'s filters (it was removed from the cluster or declared down). Its
    /// shard sets stay until the shards' next leaders replace them.
    pub fn purge(&mut self, node: u64) {
        if let Some(p) = self.peers.remove(&node) {
            for f in &p.filters {
                self.trie.remove(f, None, &node);
            }
        }
    }

    /// The peers with a filter matching `topic`, each once, in id order.
    pub fn nodes_for(&self, topic: &str) -> Vec<u64> {
        let mut nodes: Vec<u64> =
            self.trie.matches(topic, |_| true).into_iter().map(|m| m.key).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// How many filters the peers have announced, over all peers and shards.
    pub fn len(&self) -> usize {
        self.trie.len() + self.shard_trie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trie.is_empty() && self.shard_trie.is_empty()
    }
}

fn entry(node: u64) -> Entry<u64> {
    Entry { key: node, opts: SubOptions::qos(crate::mqtt::QoS::AtMostOnce), id: None }
}

fn shard_entry(shard: u32) -> Entry<u32> {
    Entry { key: shard, opts: SubOptions::qos(crate::mqtt::QoS::AtMostOnce), id: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_is_announced_once_and_withdrawn_with_its_last_subscription() {
        let mut l = LocalRoutes::new(7);
        assert_eq!(l.add("a/+"), (true, 1));
        assert_eq!(l.add("a/+"), (false, 1), "in effect once change 1 is confirmed");
        assert!(!l.remove("a/+"));
        assert!(l.remove("a/+"));
        assert!(!l.remove("a/+"));
        assert_eq!(l.seq(), 2);
        assert_eq!(
            l.update_for(Some(0)),
            RouteUpdate::Delta {
                incarnation: 7,
                from: 1,
                ops: vec![RouteOp::Add("a/+".into()), RouteOp::Remove("a/+".into())]
            }
        );
        assert_eq!(
            l.update_for(Some(2)),
            RouteUpdate::Delta { incarnation: 7, from: 3, ops: vec![] }
        );
    }

    #[test]
    fn deltas_apply_in_order_and_a_gap_or_new_incarnation_asks_for_the_full_set() {
        let mut l = LocalRoutes::new(1);
        let mut p = PeerRoutes::default();
        l.add("s/#");
        // Nothing known of node 2 yet: a delta cannot apply.
        assert_eq!(p.apply(2, l.update_for(Some(0))), None);
        assert_eq!(p.apply(2, l.update_for(None)), Some(1));
        assert_eq!(p.nodes_for("s/x/y"), vec![2]);
        l.add("t/1");
        l.remove("s/#");
        let lagging = l.update_for(Some(2));
        assert_eq!(p.apply(2, lagging), None, "change 2 was never applied: a gap");
        assert_eq!(p.apply(2, l.update_for(Some(1))), Some(3));
        assert_eq!(p.nodes_for("s/x"), Vec::<u64>::new());
        assert_eq!(p.nodes_for("t/1"), vec![2]);
        // The sender restarted: a new incarnation numbers from 1 again.
        let mut again = LocalRoutes::new(9);
        again.add("u");
        assert_eq!(p.apply(2, again.update_for(Some(0))), None);
        assert!(p.restarted(2, &again.update_for(None)), "a new incarnation's full set");
        assert!(!p.restarted(2, &l.update_for(None)), "the same run's full set");
        assert!(!p.restarted(5, &again.update_for(None)), "first contact");
        assert_eq!(p.apply(2, again.update_for(None)), Some(1));
        assert_eq!(p.nodes_for("t/1"), Vec::<u64>::new(), "the full set replaces the old one");
        assert_eq!(p.nodes_for("u"), vec![2]);
    }

    #[test]
    fn matches_name_each_node_once_and_purge_forgets_a_node() {
        let mut p = PeerRoutes::default();
        let full = |filters: &[&str]| RouteUpdate::Full {
            incarnation: 1,
            seq: 5,
            filters: filters.iter().map(|f| f.to_string()).collect(),
            shards: vec![],
        };
        p.apply(3, full(&["a/b", "a/+", "#"]));
        p.apply(2, full(&["a/b"]));
        assert_eq!(p.nodes_for("a/b"), vec![2, 3]);
        assert_eq!(p.nodes_for("z"), vec![3]);
        p.purge(3);
        assert_eq!(p.nodes_for("z"), Vec::<u64>::new());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_peer_too_far_behind_gets_the_full_set() {
        let mut l = LocalRoutes::new(1);
        for i in 0..LOG_LIMIT + 10 {
            l.add(&format!("f/{i}"));
        }
        assert!(matches!(l.update_for(Some(3)), RouteUpdate::Full { .. }));
        assert!(matches!(l.update_for(Some(l.seq() - 1)), RouteUpdate::Delta { .. }));
        assert!(matches!(l.update_for(Some(l.seq() + 5)), RouteUpdate::Full { .. }));
    }

    fn l2_set(term: u64) -> ShardRoutes {
        ShardRoutes { shard: 4, term, filters: vec!["t/x".into()] }
    }

    #[test]
    fn a_shards_persistent_filters_outlive_their_announcer_until_a_later_term_replaces_them() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("dev-a"), Arc::from("dev-b"));
        let mut l1 = LocalRoutes::new(1);
        let mut p = PeerRoutes::default();
        // Node 1 claims shard 4: the restore's subscriptions go out as one set.
        l1.shard_claim(4);
        assert!(!l1.shard_add(4, "s/a", &a), "gathered, not announced, while claiming");
        assert!(!l1.serves(4));
        l1.shard_claimed(4, 7);
        assert!(l1.serves(4));
        assert_eq!(p.apply(1, l1.update_for(None)), Some(1));
        assert_eq!(p.shards_for("s/a"), vec![4]);
        assert_eq!(p.shard_owner(4), Some(1));
        // Later subscriptions are deltas; a second client on the same filter is none.
        assert!(l1.shard_add(4, "s/+", &a));
        assert!(!l1.shard_add(4, "s/+", &b));
        assert_eq!(p.apply(1, l1.update_for(Some(1))), Some(2));
        assert_eq!(p.shards_for("s/b"), vec![4]);
        assert!(!l1.shard_remove(4, "s/+", &a), "b still has it");
        assert!(l1.shard_remove(4, "s/+", &b));
        assert!(!l1.shard_remove(4, "s/+", &b), "removing twice changes nothing");
        assert_eq!(p.apply(1, l1.update_for(Some(2))), Some(3));
        assert_eq!(p.shards_for("s/b"), Vec::<u32>::new());
        // Node 1 is declared down: its node routes go, the shard's set stays.
        p.purge(1);
        assert_eq!(p.shards_for("s/a"), vec![4]);
        // Node 2 claims the shard in a later term: its set replaces node 1's.
        let mut l2 = LocalRoutes::new(2);
        l2.shard_claim(4);
        l2.shard_add(4, "t/x", &a);
        l2.shard_claimed(4, 8);
        p.apply(2, l2.update_for(None));
        assert_eq!(p.shards_for("s/a"), Vec::<u32>::new());
        assert_eq!(p.shards_for("t/x"), vec![4]);
        assert_eq!(p.shard_owner(4), Some(2));
        // Node 1 comes back with its old claim (it never heard it lost the shard):
        // an earlier term, ignored; its deltas for a shard it does not own too.
        p.apply(1, l1.update_for(None));
        assert_eq!(p.shard_owner(4), Some(2));
        assert_eq!(p.shards_for("t/x"), vec![4]);
        l1.shard_add(4, "u", &b);
        assert!(p.apply(1, l1.update_for(Some(3))).is_some());
        assert_eq!(p.shards_for("u"), Vec::<u32>::new(), "not the shard's owner");
        // Released shards are not in the full set; nothing is withdrawn, and the node
        // keeps its last set as the peers do.
        let kept = l2.shard_release(4).expect("claimed in term 8");
        assert_eq!((kept.term, kept.filters), (8, vec!["t/x".to_string()]));
        let mut own = PeerRoutes::default();
        own.own_shard(2, l2_set(8));
        assert_eq!(own.shards_for("t/x"), vec![4]);
        assert!(!l2.serves(4));
        match l2.update_for(None) {
            RouteUpdate::Full { shards, .. } => assert!(shards.is_empty()),
            other => panic!("{other:?}"),
        }
        p.apply(2, l2.update_for(None));
        assert_eq!(p.shards_for("t/x"), vec![4], "kept for the next leader to replace");
    }
}
