//! Fault injection in the cluster transport: per peer and per direction, drop a share of
//! the frames, delay them, or cut the link (a partition). Tests switch it on directly;
//! a node started with `cluster.fault_injection = true` also takes it from the admin API
//! (`/api/cluster/faults`); the chaos tool drives that.
//!
//! Owns: the fault table and the decision for one frame ([`Faults::decide`], pure given
//! the dice). Must not touch: sockets. The transport applies the decision: a dropped
//! request is never sent (the caller waits for its timeout, as behind a real partition);
//! a dropped answer is never written (the peer waits for its timeout although the
//! request was served, as when only the way back is cut).
//!
//! "Outbound" is what this node sends to the peer (its requests and its answers to the
//! peer's requests), "inbound" what it receives from the peer. A one-way partition
//! A -> B is `outbound` on A (or `inbound` on B).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::wire::NodeId;

/// Faults on one direction of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fault {
    /// Cut: nothing gets through.
    #[serde(default)]
    pub partition: bool,
    /// Share of frames dropped, 0.0 to 1.0.
    #[serde(default)]
    pub drop: f64,
    /// Added to every frame that gets through, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

impl Fault {
    pub fn is_none(&self) -> bool {
        !self.partition && self.drop <= 0.0 && self.delay_ms == 0
    }
}

/// Faults on both directions of the link to one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkFaults {
    #[serde(default)]
    pub outbound: Fault,
    #[serde(default)]
    pub inbound: Fault,
}

/// Which way a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Delay(Duration),
    Drop,
}

/// The node's fault table. Empty (and free on the hot path: one read lock on an empty
/// map) unless a test or an operator sets faults.
#[derive(Debug, Default)]
pub struct Faults {
    links: RwLock<HashMap<NodeId, LinkFaults>>,
}

impl Faults {
    /// Sets the faults of the link to `peer` (all-zero removes them).
    pub fn set(&self, peer: NodeId, f: LinkFaults) {
        let mut links = self.links.write();
        if f.outbound.is_none() && f.inbound.is_none() {
            links.remove(&peer);
        } else {
            links.insert(peer, f);
        }
    }

    /// Cuts both directions to `peer`.
    pub fn partition(&self, peer: NodeId) {
        let cut = Fault { partition: true, ..Default::default() };
        self.set(peer, LinkFaults { outbound: cut, inbound: cut });
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.links.write().clear();
    }

    /// The faults in force, by peer.
    pub fn list(&self) -> Vec<(NodeId, LinkFaults)> {
        let mut v: Vec<_> = self.links.read().iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// What to do with a frame to or from `peer`; `dice` is a uniform draw in [0, 1).
    pub fn decide(&self, peer: NodeId, dir: Direction, dice: f64) -> Action {
        let links = self.links.read();
        let Some(l) = links.get(&peer) else { return Action::Pass };
        let f = match dir {
            Direction::Outbound => l.outbound,
            Direction::Inbound => l.inbound,
        };
        if f.partition || dice < f.drop {
            Action::Drop
        } else if f.delay_ms > 0 {
            Action::Delay(Duration::from_millis(f.delay_ms))
        } else {
            Action::Pass
        }
    }

    /// [`Faults::decide`] with a fresh draw.
    pub fn roll(&self, peer: NodeId, dir: Direction) -> Action {
        if self.links.read().is_empty() {
            return Action::Pass;
        }
        self.decide(peer, dir, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_table_per_peer_and_direction() {
        let f = Faults::default();
        assert_eq!(f.decide(2, Direction::Outbound, 0.0), Action::Pass);
        f.set(
            2,
            LinkFaults {
                outbound: Fault { partition: true, ..Default::default() },
                inbound: Fault { drop: 0.25, delay_ms: 30, partition: false },
            },
        );
        assert_eq!(f.decide(2, Direction::Outbound, 0.99), Action::Drop);
        assert_eq!(f.decide(2, Direction::Inbound, 0.1), Action::Drop);
        assert_eq!(f.decide(2, Direction::Inbound, 0.5), Action::Delay(Duration::from_millis(30)));
        assert_eq!(f.decide(3, Direction::Inbound, 0.0), Action::Pass);
        f.partition(3);
        assert_eq!(f.list().len(), 2);
        f.set(2, LinkFaults::default());
        assert_eq!(f.list().iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![3]);
        f.heal();
        assert_eq!(f.roll(3, Direction::Outbound), Action::Pass);
    }
}
