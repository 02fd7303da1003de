//! Copies sent again: a forwarded copy that found nobody where it went (the routes
//! were stale) or that was meant for a shard's persistent sessions and did not reach
//! them (the shard was changing leaders). Part of [`super::Routing`]; the rules are in
//! the parent module's docs.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::{Copy, Routing, REROUTE_TRIES, REROUTE_WAIT, SHARD_RETRY_MAX};
use crate::broker::{AckWait, ShardScope};
use crate::cluster::wire::NodeId;
use crate::store::StoreError;

impl Routing {
    /// A QoS 1/2 copy that `Copy::sent_to`'s peers all matched nothing with (their
    /// routes here were stale: the subscriber's session moved, say in a leadership
    /// hand-off, and the new node's announcement had not arrived). After a short wait
    /// it is routed again: here, if the session moved here, else to the peers that now
    /// announce a matching filter and were not sent it yet. The publisher's
    /// acknowledgement waits; after [`REROUTE_TRIES`] waits with no match anywhere it
    /// is an error, never a silent loss.
    pub(super) fn reroute(
        self: Arc<Self>,
        copy: Copy,
        peer: NodeId,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.reroute_once(copy, peer))
    }

    async fn reroute_once(self: Arc<Self>, mut copy: Copy, peer: NodeId) {
        if !copy.shards.is_empty() {
            return self.reroute_shards(copy, peer).await;
        }
        let Some(ack) = copy.ack.take() else { return };
        tokio::time::sleep(REROUTE_WAIT * u32::from(copy.tries)).await;
        copy.tries += 1;
        if let Some(router) = self.router.get().and_then(Weak::upgrade) {
            let routed = match self.groups().filter(|_| !copy.skip.is_empty()) {
                // Sessions of the shards another path reaches are not this copy's.
                Some(g) => {
                    let shard_of = |c: &str| g.shard_of(c);
                    let scope = ShardScope {
                        expect: &[],
                        skip: &copy.skip,
                        only: false,
                        shard_of: &shard_of,
                    };
                    router.publish_forwarded_scoped(copy.msg.clone(), &scope)
                }
                None => router.publish_forwarded(copy.msg.clone()),
            };
            drop(router);
            if routed.found > 0 {
                let result = stored(routed.acks, self.timeout / 2).await;
                self.metrics.forwarded.with_label_values(&["rerouted"]).inc();
                let _ = ack.send(result);
                return;
            }
        }
        let nodes: Vec<NodeId> = self
            .peers
            .read()
            .nodes_for(&copy.msg.topic)
            .into_iter()
            .filter(|n| !copy.sent_to.as_deref().unwrap_or(&[peer]).contains(n))
            .collect();
        if nodes.is_empty() {
            if copy.tries > REROUTE_TRIES {
                self.metrics.forwarded.with_label_values(&["unmatched"]).inc();
                let e = "the subscribers' routes moved and were not found again";
                let _ = ack.send(Err(StoreError::Unavailable(e.into())));
            } else {
                copy.ack = Some(ack);
                tokio::spawn(self.reroute(copy, peer));
            }
            return;
        }
        self.metrics.forwarded.with_label_values(&["rerouted"]).inc();
        let only = [peer];
        let before = copy.sent_to.as_deref().unwrap_or(&only);
        let sent_to: Option<Arc<[NodeId]>> = Some(before.iter().chain(&nodes).copied().collect());
        let mut waits = Vec::new();
        let mut result = Ok(());
        for n in nodes {
            let (tx, rx) = oneshot::channel();
            let c = Copy {
                msg: copy.msg.clone(),
                ack: Some(tx),
                tries: copy.tries,
                sent_to: sent_to.clone(),
                shards: Vec::new(),
                only: false,
                skip: copy.skip.clone(),
                born: copy.born,
            };
            if self.queue(n).try_send(c).is_ok() {
                waits.push(rx);
            } else {
                self.metrics.forwarded.with_label_values(&["overflow"]).inc();
                result = Err(StoreError::Unavailable(format!("node {n}: forward queue full")));
            }
        }
        let _ = ack.send(answered(waits, result).await);
    }

    /// A QoS 1/2 copy for persistent sessions of `copy.shards` that did not reach
    /// them: the receiver `peer` had not restored the shard, did not answer, its queue
    /// was full, or no leader was known. After a short wait each shard still matched is
    /// tried where it is served now: here (those sessions only), or with a copy for
    /// them only to its leader (which tries again the same way if it misses). Nodes
    /// that now announce a match and got no copy get one (as [`Routing::reroute`]
    /// does). The acknowledgement waits for all of it; past the patience it is an error.
    async fn reroute_shards(self: Arc<Self>, mut copy: Copy, peer: NodeId) {
        let Some(ack) = copy.ack.take() else { return };
        let wait = (REROUTE_WAIT * u32::from(copy.tries)).min(SHARD_RETRY_MAX);
        tokio::time::sleep(wait).await;
        copy.tries = copy.tries.saturating_add(1);
        let (matched, new_nodes) = {
            let p = self.peers.read();
            let only = [peer];
            let before = copy.sent_to.as_deref().unwrap_or(&only);
            let nodes: Vec<NodeId> = if copy.only {
                Vec::new()
            } else {
                p.nodes_for(&copy.msg.topic).into_iter().filter(|n| !before.contains(n)).collect()
            };
            (p.shards_for(&copy.msg.topic), nodes)
        };
        let mut local = Vec::new();
        let mut remote: Vec<(NodeId, Vec<u32>)> = new_nodes.iter().map(|&n| (n, vec![])).collect();
        let mut pending = Vec::new();
        for &s in &copy.shards {
            let serving = self.serving.read().contains(&s);
            match self.shard_leader(s) {
                Some(l) if l == self.me && serving => local.push(s),
                // Its routes went (unsubscribed, the session ended): nobody to reach.
                _ if !serving && !matched.contains(&s) => {}
                Some(l) if l != self.me => match remote.iter_mut().find(|(n, _)| *n == l) {
                    Some((_, v)) => v.push(s),
                    None => remote.push((l, vec![s])),
                },
                _ => pending.push(s),
            }
        }
        let mut waits = Vec::new();
        let mut result = Ok(());
        if !local.is_empty() {
            if let (Some(router), Some(g)) =
                (self.router.get().and_then(Weak::upgrade), self.groups())
            {
                let acks = {
                    let shard_of = |c: &str| g.shard_of(c);
                    let scope =
                        ShardScope { expect: &local, skip: &[], only: true, shard_of: &shard_of };
                    router.publish_forwarded_scoped(copy.msg.clone(), &scope).acks
                };
                drop(router);
                result = stored(acks, self.timeout / 2).await;
            }
        }
        let late = copy.born.elapsed() >= self.shard_patience();
        if late && !(remote.is_empty() && pending.is_empty()) {
            self.metrics.forwarded.with_label_values(&["unmatched"]).inc();
            let e = "the subscribers' shard was not served anywhere in time";
            let _ = ack.send(Err(StoreError::Unavailable(e.into())));
            return;
        }
        if !remote.is_empty() || !pending.is_empty() {
            self.metrics.forwarded.with_label_values(&["rerouted"]).inc();
        }
        let only = [peer];
        let before = copy.sent_to.as_deref().unwrap_or(&only);
        let sent_to: Option<Arc<[NodeId]>> =
            Some(before.iter().chain(&new_nodes).copied().collect());
        for (n, shards) in remote {
            let (tx, rx) = oneshot::channel();
            let full = new_nodes.contains(&n);
            // A full copy skips every shard another path reaches.
            let skip = copy
                .skip
                .iter()
                .chain(&copy.shards)
                .copied()
                .filter(|s| !shards.contains(s))
                .collect();
            let c = Copy {
                msg: copy.msg.clone(),
                ack: Some(tx),
                tries: copy.tries,
                sent_to: sent_to.clone(),
                only: !full,
                shards,
                skip,
                born: copy.born,
            };
            match self.queue(n).try_send(c) {
                Ok(()) => waits.push(rx),
                Err(e) => {
                    self.metrics.forwarded.with_label_values(&["overflow"]).inc();
                    let mut c = match e {
                        mpsc::error::TrySendError::Full(c)
                        | mpsc::error::TrySendError::Closed(c) => c,
                    };
                    if c.shards.is_empty() {
                        result =
                            Err(StoreError::Unavailable(format!("node {n}: forward queue full")));
                    } else {
                        // Tried again after a wait, as if the node had not answered.
                        c.only = true;
                        let (tx, rx) = oneshot::channel();
                        c.ack = Some(tx);
                        waits.push(rx);
                        tokio::spawn(self.clone().reroute(c, n));
                    }
                }
            }
        }
        if !pending.is_empty() {
            let (tx, rx) = oneshot::channel();
            let c = Copy {
                msg: copy.msg.clone(),
                ack: Some(tx),
                tries: copy.tries,
                sent_to: sent_to.clone(),
                shards: pending,
                only: true,
                skip: Vec::new(),
                born: copy.born,
            };
            waits.push(rx);
            tokio::spawn(self.clone().reroute(c, self.me));
        }
        let _ = ack.send(answered(waits, result).await);
    }
}

/// Waits for the durable writes among `acks`, each for at most `within`: the last
/// failure, if any.
async fn stored(acks: Vec<AckWait>, within: std::time::Duration) -> Result<(), StoreError> {
    let mut result = Ok(());
    for a in acks.into_iter().filter(|a| matches!(a, AckWait::Durable(_))) {
        match tokio::time::timeout(within, a.wait()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(StoreError::Unavailable("not stored in time".into())),
        }
    }
    result
}

/// The answers for copies sent on: `result` unless one of them failed.
async fn answered(
    waits: Vec<oneshot::Receiver<Result<(), StoreError>>>,
    mut result: Result<(), StoreError>,
) -> Result<(), StoreError> {
    for w in waits {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(StoreError::Unavailable("forward queue closed".into())),
        }
    }
    result
}
