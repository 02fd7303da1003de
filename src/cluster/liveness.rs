//! Which peers are down: the failure detector of MQTT across nodes.
//!
//! Owns: [`Liveness`], pure bookkeeping without I/O. Every answer a peer gives to the
//! route sync (`super::forward`, at least once a second) counts as hearing from it. A
//! peer not heard from for `cluster.node_down_ms` is declared down once; hearing from
//! it again declares it up. What a declaration causes is the caller's: the peer's
//! routes are purged, the sessions of its connections served here detach as lost (their
//! wills fire, clean ones end), and connections here served by its device actors close.
//!
//! A peer is first "heard" when it is first watched, so a node that never answered is
//! declared down one detection time after it became a member, not at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::wire::NodeId;

#[derive(Debug, Clone, Copy)]
struct Peer {
    heard: Instant,
    down: bool,
}

/// What happened to a peer at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Down(NodeId),
    Up(NodeId),
    /// It answers under a new incarnation: it restarted, and what this node had tied to
    /// its previous run (connections attached to its device actors) is gone. Found by
    /// the route exchange, not by [`Liveness`].
    Restarted(NodeId),
}

/// Last contact per peer and the down declarations made from it.
#[derive(Debug)]
pub struct Liveness {
    down_after: Duration,
    peers: HashMap<NodeId, Peer>,
}

impl Liveness {
    pub fn new(down_after: Duration) -> Liveness {
        Liveness { down_after, peers: HashMap::new() }
    }

    /// Starts watching `peer` (counts as contact); watching it again changes nothing.
    pub fn watch(&mut self, peer: NodeId, now: Instant) {
        self.peers.entry(peer).or_insert(Peer { heard: now, down: false });
    }

    /// Stops watching `peer` (it left the cluster).
    pub fn forget(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// `peer` answered: `Some(Up)` if it was down.
    pub fn heard(&mut self, peer: NodeId, now: Instant) -> Option<Change> {
        let p = self.peers.entry(peer).or_insert(Peer { heard: now, down: false });
        p.heard = p.heard.max(now);
        std::mem::take(&mut p.down).then_some(Change::Up(peer))
    }

    /// Peers not heard from for the detection time, each declared down once.
    pub fn check(&mut self, now: Instant) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| !p.down && now.saturating_duration_since(p.heard) >= self.down_after)
            .map(|(id, p)| {
                p.down = true;
                Change::Down(*id)
            })
            .collect();
        out.sort_unstable_by_key(|c| match c {
            Change::Down(n) | Change::Up(n) | Change::Restarted(n) => *n,
        });
        out
    }

    pub fn is_down(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.down)
    }

    /// Watched peers that are down.
    pub fn down(&self) -> usize {
        self.peers.values().filter(|p| p.down).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn a_silent_peer_is_declared_down_once_after_the_detection_time() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.watch(2, t0);
        l.watch(3, t0);
        assert!(l.check(t0 + T - Duration::from_millis(1)).is_empty());
        l.heard(3, t0 + Duration::from_secs(3));
        assert_eq!(l.check(t0 + T), vec![Change::Down(2)]);
        assert!(l.is_down(2) && !l.is_down(3));
        // Declared once.
        assert!(l.check(t0 + T * 3).iter().all(|c| *c != Change::Down(2)));
        assert_eq!(l.down(), 2, "3 went silent too by then");
    }

    #[test]
    fn hearing_from_a_down_peer_brings_it_up_and_the_clock_starts_again() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.watch(2, t0);
        assert_eq!(l.check(t0 + T), vec![Change::Down(2)]);
        assert_eq!(l.heard(2, t0 + T * 2), Some(Change::Up(2)));
        assert_eq!(l.heard(2, t0 + T * 2), None);
        assert!(!l.is_down(2));
        assert!(l.check(t0 + T * 2 + T / 2).is_empty());
        assert_eq!(l.check(t0 + T * 3), vec![Change::Down(2)]);
    }

    #[test]
    fn watching_again_does_not_reset_the_clock_and_forgotten_peers_are_not_declared() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.watch(2, t0);
        l.watch(2, t0 + Duration::from_secs(4));
        assert_eq!(l.check(t0 + T), vec![Change::Down(2)]);
        l.watch(4, t0);
        l.forget(4);
        assert!(l.check(t0 + T * 10).is_empty());
        // An answer older than the last one does not move the clock back.
        l.heard(2, t0 + T * 10);
        l.heard(2, t0 + T);
        assert!(l.check(t0 + T * 10 + T / 2).is_empty());
    }
}
