//! Routes between nodes: which topic filters each node has subscribers for.
//!
//! Owns: this node's announced filters ([`LocalRoutes`]: a count per filter, numbered
//! changes since the node started, and the update a peer needs given what it last
//! confirmed) and the peers' filters ([`PeerRoutes`]: per peer the incarnation and
//! sequence it is at, and one trie of every peer's filters to match a topic against).
//! Pure: no I/O; `super::forward` carries the updates and the forwarded messages.
//!
//! Versioning: a node numbers its changes from 1 in each incarnation (a restart is a new
//! incarnation, chosen at random by the transport). An update is a delta `(from, ops)`
//! that applies only if the receiver is at `from - 1` of the same incarnation, or a full
//! set that replaces whatever the receiver had of that node. A receiver that cannot
//! apply a delta (a gap, an unknown incarnation: it restarted, or the sender did) says
//! so and gets the full set next. Routes stay when a link is lost (a node's routes go
//! only when it is removed): a stale route costs one forward that finds nobody, a
//! missing one a lost message.

use std::collections::{BTreeSet, HashMap, VecDeque};

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
}

/// What a node sends a peer about its filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteUpdate {
    /// Changes `from..from + ops.len()` (an empty `ops` asks "are you at `from - 1`?").
    Delta { incarnation: u64, from: u64, ops: Vec<RouteOp> },
    /// Every filter, as of change `seq`.
    Full { incarnation: u64, seq: u64, filters: Vec<String> },
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
}

impl LocalRoutes {
    pub fn new(incarnation: u64) -> LocalRoutes {
        LocalRoutes { incarnation, seq: 0, counts: HashMap::new(), log: VecDeque::new() }
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

/// The peers' filters.
#[derive(Debug, Default)]
pub struct PeerRoutes {
    peers: HashMap<u64, Peer>,
    trie: Trie<u64>,
}

impl PeerRoutes {
    /// Applies `node`'s update. Some(seq): the change the receiver is now at (to
    /// confirm); None: it cannot be applied, the full set is needed.
    pub fn apply(&mut self, node: u64, update: RouteUpdate) -> Option<u64> {
        match update {
            RouteUpdate::Full { incarnation, seq, filters } => {
                self.purge(node);
                let filters: BTreeSet<String> = filters.into_iter().collect();
                for f in &filters {
                    self.trie.insert(f, None, entry(node));
                }
                self.peers.insert(node, Peer { incarnation, seq, filters });
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
                    }
                }
                Some(peer.seq)
            }
        }
    }

    /// Whether `update` comes from a new run of `node`: it announces a full set under
    /// another incarnation than the one this node knows.
    pub fn restarted(&self, node: u64, update: &RouteUpdate) -> bool {
        match (update, self.peers.get(&node)) {
            (RouteUpdate::Full { incarnation, .. }, Some(p)) => p.incarnation != *incarnation,
            _ => false,
        }
    }

    /// Forgets `node`'s filters (it was removed from the cluster).
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

    /// How many filters the peers have announced, over all peers.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }
}

fn entry(node: u64) -> Entry<u64> {
    Entry { key: node, opts: SubOptions::qos(crate::mqtt::QoS::AtMostOnce), id: None }
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
}
