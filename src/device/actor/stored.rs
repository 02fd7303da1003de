//! What a device actor's session has stored across nodes: deliveries numbered by
//! another node's journal, and offline-queue entries that land after an attach (a
//! write the shard's previous leader submitted before a hand-off).

use std::collections::HashSet;
use std::sync::Arc;

use super::DeviceState;
use crate::broker::{Delivery, LiveState, StoredMessage};

/// A stored entry (offline queue, journal) as a delivery that names it.
pub(super) fn stored_delivery(seq: u64, m: StoredMessage) -> Delivery {
    let (qos, retain) = (m.qos, m.retain);
    Delivery {
        msg: Arc::new(m.into_message(None)),
        qos,
        retain,
        sub_ids: Vec::new(),
        seq: Some(seq),
        shared: None,
    }
}

impl DeviceState {
    /// Deliveries of `live` whose sequence numbers name nothing stored on this node
    /// (the connection got them from the actor of the shard's previous leader, which
    /// journaled them in its own store) lose the number: kept in the record (in flight)
    /// or queued again (pending) instead of being taken for stored ones.
    pub(super) fn unjournal_foreign(&self, live: &mut LiveState) {
        let numbered = live.inflight.iter().filter_map(|i| i.delivery.seq);
        let numbered: Vec<u64> =
            numbered.chain(live.pending.iter().filter_map(|d| d.seq)).collect();
        if numbered.is_empty() {
            return;
        }
        let mut here: HashSet<u64> = HashSet::new();
        match self.ctx.store.inflight(&self.client) {
            Ok(j) => here.extend(j.into_iter().map(|(seq, _)| seq)),
            Err(e) => {
                tracing::warn!(message = "journal not read", client = %self.client, error = %e)
            }
        }
        match self.ctx.sessions.queue(&self.client) {
            Ok(q) => here.extend(q.into_iter().map(|(seq, _)| seq)),
            Err(e) => {
                tracing::warn!(message = "offline queue not read", client = %self.client, error = %e)
            }
        }
        for i in &mut live.inflight {
            i.delivery.seq = i.delivery.seq.filter(|s| here.contains(s));
        }
        for d in &mut live.pending {
            d.seq = d.seq.filter(|s| here.contains(s));
        }
    }

    /// Offline-queue entries that landed after the attach read the queue go to the
    /// connection (after the ones it was given: a late entry is out of order).
    pub(super) fn rescan(&mut self, conn_id: u64) {
        if self.conn_id != Some(conn_id) || !self.persistent() {
            return;
        }
        let Some(conn) = self.slot.route().conn.clone() else { return };
        let stored = match self.ctx.sessions.queue(&self.client) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(message = "offline queue not read again", client = %self.client, error = %e);
                return;
            }
        };
        for (seq, m) in stored {
            if !self.known_seqs.insert(seq) {
                continue;
            }
            tracing::info!(message = "offline-queue entry that landed after the attach delivered", client = %self.client, seq);
            self.ctx.metrics.late_queue_entries.inc();
            // Counted as queued until the client acknowledges it (`remove_queued`).
            self.queue_len += 1;
            self.ctx.metrics.offline_queue_depth.inc();
            if let crate::broker::Offer::Closed(_) = conn.offer(stored_delivery(seq, m)) {
                return;
            }
        }
    }
}
