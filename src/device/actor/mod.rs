//! The device actor: single writer of one device's durable state (its session record,
//! offline queue, shadows and job executions), which it writes through its shard's Raft
//! group. Session writes are submitted without waiting (they apply in submission order);
//! the actor waits for them only before it reads its shard again (attach, start-up).

mod stored;
mod subscribe;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::{AttachReply, AttachRequest, DeviceCtx, DeviceError, DeviceMsg, SupervisorMsg};
use crate::broker::{now_ms, Control, Delivery, LiveState, Offer, SessionSlot, StoredMessage};
use crate::config::QueuePolicy;
use crate::mqtt::ReasonCode;
use crate::session::{SessionRecord, Stage, StoredInflight};
use crate::shadow::ShadowCache;
use crate::store::{DurableAck, StoreError};
use crate::telemetry::DropReason;

/// How long an attach waits for the connection it takes over to hand back its state.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A scheduled idle check (ractor's `send_after` task).
type IdleTimer = tokio::task::JoinHandle<Result<(), ractor::MessagingErr<DeviceMsg>>>;

/// The behaviour; all data lives in [`DeviceState`].
pub struct DeviceActor;

pub struct DeviceArgs {
    pub client: Arc<str>,
    pub slot: Arc<SessionSlot>,
    pub ctx: DeviceCtx,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub struct DeviceState {
    client: Arc<str>,
    slot: Arc<SessionSlot>,
    ctx: DeviceCtx,
    supervisor: ActorRef<SupervisorMsg>,
    record: SessionRecord,
    /// A stored record existed (so a resumed session is "present").
    exists: bool,
    /// The record is in the shard (a persistent session's), not only in the slot.
    stored: bool,
    conn_id: Option<u64>,
    /// Stored offline-queue entries (including ones being drained to a connection).
    queue_len: usize,
    /// When the last message other than a timer was handled.
    last_active: Instant,
    /// The scheduled idle check and when it fires. One at a time; aborted when the actor
    /// stops, so no timer keeps a stopped actor's mailboxes alive.
    idle_timer: Option<(Instant, IdleTimer)>,
    /// The actor has handed its slot back and is draining its mailbox: whatever it still
    /// gets goes to its successor through the supervisor.
    retired: bool,
    /// Shadows read or written while this actor runs (their state is in the shard).
    shadows: ShadowCache,
    /// Stored entries (offline queue, journal) the attached connection was given or
    /// already had: a rescan delivers only others.
    known_seqs: HashSet<u64>,
}

impl DeviceState {
    fn persistent(&self) -> bool {
        self.record.expiry_secs > 0
    }

    /// Stores the record: in the shard for a persistent session (the receiver resolves
    /// once it is committed), in the slot (memory only) for a clean one, which ends with
    /// its connection or with the node. Either way a successor actor (after idling or a
    /// panic) starts from it.
    fn save(&mut self) -> Option<DurableAck> {
        self.record.next_seq = self.slot.next_seq.load(Ordering::Relaxed);
        if self.persistent() {
            self.slot.park(None);
            let (ticket, durable) = self.ctx.sessions.put(&self.client, &self.record);
            self.wrote(ticket);
            self.stored = true;
            Some(durable)
        } else {
            // A connected clean session with nothing to remember (the common idle device)
            // parks nothing: its successor rebuilds it from the attached connection.
            let keep = !self.record.is_blank();
            self.slot.park(keep.then(|| self.record.clone()));
            // It may have been persistent before (a v5 client reconnecting with expiry 0).
            if std::mem::take(&mut self.stored) {
                self.forget_stored();
            }
            None
        }
    }

    /// Notes a write submitted to the shard: a successor reads only after it is applied.
    fn wrote(&self, ticket: crate::raft::Ticket) {
        self.slot.last_write.store(ticket, Ordering::Relaxed);
    }

    /// Waits until this session's submitted writes are applied, so reads see them.
    async fn settle(&self) {
        let ticket = self.slot.last_write.load(Ordering::Relaxed);
        self.ctx.sessions.settled(&self.client, ticket).await;
    }

    /// Deletes the stored record, the offline queue and the in-flight journal.
    fn forget_stored(&mut self) {
        let ticket = self.ctx.sessions.end(&self.client);
        self.wrote(ticket);
        if let Err(e) = self.ctx.store.inflight_clear(&self.client) {
            tracing::error!(message = "in-flight journal delete failed", client = %self.client, error = %e);
        }
    }

    /// Notes activity and makes sure an idle check is scheduled.
    fn touch(&mut self, myself: &ActorRef<DeviceMsg>) {
        self.last_active = Instant::now();
        self.arm_idle(myself);
    }

    /// Schedules the idle check for when the actor will have been idle long enough,
    /// unless the pending one fires by then (it re-arms itself).
    fn arm_idle(&mut self, myself: &ActorRef<DeviceMsg>) {
        if self.retired {
            return;
        }
        let now = Instant::now();
        let due = self.last_active + self.idle_after();
        if self.idle_timer.as_ref().is_some_and(|(d, _)| *d > now && *d <= due) {
            return;
        }
        if let Some((_, old)) = self.idle_timer.take() {
            old.abort();
        }
        let timer = myself.send_after(due.saturating_duration_since(now), || DeviceMsg::IdleCheck);
        self.idle_timer = Some((due, timer));
    }

    fn idle_after(&self) -> Duration {
        if self.slot.is_online() {
            Duration::from_millis(self.ctx.mqtt.actor_idle_connected_ms)
        } else {
            Duration::from_secs(self.ctx.mqtt.actor_idle_secs)
        }
    }

    /// Stops this actor without losing a message: it leaves the slot (new messages go
    /// through the supervisor, which holds them until this actor has terminated), then
    /// drains its mailbox, forwarding what is left. Its state stays in the store, and an
    /// attached connection stays attached: the next message spawns a successor.
    fn retire(&mut self, myself: &ActorRef<DeviceMsg>) {
        if self.retired {
            return;
        }
        self.retired = true;
        {
            let mut route = self.slot.route_mut();
            if route.actor.as_ref().is_some_and(|a| a.get_id() == myself.get_id()) {
                route.actor = None;
            }
            // Spawned for a message about a session that has ended meanwhile.
            if !self.exists && route.conn.is_none() {
                drop(route);
                self.ctx.devices.remove_slot(&self.slot);
            }
        }
        if myself.drain().is_err() {
            myself.stop(None);
        }
    }

    fn publish_will(&mut self) {
        if let Some(w) = self.record.will.take() {
            let msg = Arc::new(w.msg.into_message(Some(self.client.clone())));
            if let Err(e) = self.ctx.router.publish(msg) {
                tracing::error!(message = "will publish failed", client = %self.client, error = %e);
            }
        }
    }

    /// Ends the session: subscriptions, record and queue go; the slot is forgotten.
    async fn end_session(&mut self) {
        for s in std::mem::take(&mut self.record.subscriptions) {
            self.ctx.router.unsubscribe(&self.slot, &s.filter);
        }
        // A clean session that never was persistent has nothing stored.
        if std::mem::take(&mut self.stored) || self.queue_len > 0 {
            self.forget_stored();
            // A session started afresh gets a new slot, which knows nothing of this
            // write: it must be applied before the slot goes.
            self.settle().await;
        }
        self.slot.park(None);
        self.ctx.metrics.offline_queue_depth.sub(self.queue_len as i64);
        self.queue_len = 0;
        self.exists = false;
        self.record = SessionRecord::default();
        self.ctx.devices.remove_slot(&self.slot);
        self.ctx.metrics.sessions.set(self.ctx.devices.len() as i64);
    }

    async fn attach(&mut self, req: AttachRequest) -> Result<AttachReply, DeviceError> {
        // Session takeover: the older connection hands back its live state and closes.
        let old = self.slot.route().conn.clone();
        let mut live = LiveState::default();
        if let Some(resume) = &req.resume {
            // A live connection re-attaching after a leader change. If another one has
            // attached meanwhile (the client reconnected), that one has the session.
            if old.as_ref().is_some_and(|o| !Arc::ptr_eq(o, &req.conn)) {
                return Err(DeviceError::Unavailable);
            }
            // A persistent session is read from the shard; a clean one lives in memory
            // and its state came with the connection from the previous actor.
            match &resume.record {
                Some(record) if !self.stored => self.adopt(record.clone()),
                Some(_) => {}
                None if !self.stored => return Err(DeviceError::Unavailable),
                None => {}
            }
        } else if let Some(old) = old {
            let (tx, rx) = oneshot::channel();
            if old.order(Control::TakeOver { reply: tx }) {
                if let Ok(Ok(state)) = tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await {
                    live = state;
                    self.unjournal_foreign(&mut live);
                }
            }
        }
        if req.clean_start {
            for sub in std::mem::take(&mut self.record.subscriptions) {
                self.ctx.router.unsubscribe(&self.slot, &sub.filter);
            }
            let ticket = self.ctx.sessions.clear_queue(&self.client);
            self.wrote(ticket);
            self.ctx.store.inflight_clear(&self.client)?;
            self.ctx.metrics.offline_queue_depth.sub(self.queue_len as i64);
            self.queue_len = 0;
            self.record = SessionRecord { next_seq: self.record.next_seq, ..Default::default() };
            live = LiveState::default();
            self.exists = false;
        }
        let session_present = self.exists;
        self.record.expiry_secs = req.expiry_secs;
        match &req.resume {
            // The will stays the session's; it is not due while the connection lives.
            Some(_) => {
                if let Some(w) = &mut self.record.will {
                    w.at_ms = None;
                }
            }
            None => self.record.will = req.will,
        }
        self.record.disconnected_at_ms = None;

        // In-flight first (stored ones, then those handed over), then every stored
        // message not in flight (offline queue and in-flight journal, by sequence), then
        // what the old connection had pending that is not stored. Stored entries stay
        // until the client acknowledges them (`Delivered`), so a crash loses nothing.
        self.settle().await;
        let mut stored = self.ctx.sessions.queue(&self.client)?;
        stored.extend(self.ctx.store.inflight(&self.client)?);
        stored.sort_unstable_by_key(|(seq, _)| *seq);
        let stored_seqs: HashSet<u64> = stored.iter().map(|(seq, _)| *seq).collect();
        self.known_seqs.clone_from(&stored_seqs);
        let mut inflight: Vec<_> = std::mem::take(&mut self.record.inflight)
            .into_iter()
            .map(|i| i.into_inflight())
            // A journaled message no longer stored was acknowledged after this record
            // was written (the node stopped without a detach).
            .filter(|i| {
                i.stage == Stage::Released
                    || i.delivery.seq.is_none_or(|seq| stored_seqs.contains(&seq))
            })
            .collect();
        inflight.extend(live.inflight);
        let mut awaiting_rel = std::mem::take(&mut self.record.awaiting_rel);
        awaiting_rel.extend(live.awaiting_rel);
        let mut in_flight_seqs: HashSet<u64> =
            inflight.iter().filter_map(|i| i.delivery.seq).collect();
        if let Some(r) = &req.resume {
            // The connection's window is the session's in-flight state: nothing to
            // resend, and what it holds is not delivered again.
            in_flight_seqs = r.inflight.iter().filter_map(|i| i.delivery.seq).collect();
            in_flight_seqs.extend(r.pending_seqs.iter().copied());
            if let Some(top) = in_flight_seqs.iter().max() {
                self.slot.next_seq.fetch_max(top + 1, Ordering::Relaxed);
            }
            // Stored in the record (the old actor's node journaled them, not this one),
            // without the sequence numbers that name nothing stored here.
            self.record.inflight = r
                .inflight
                .iter()
                .map(|i| {
                    let mut s = StoredInflight::from(i);
                    s.seq = s.seq.filter(|seq| stored_seqs.contains(seq));
                    s
                })
                .collect();
            inflight = Vec::new();
            awaiting_rel.clone_from(&r.awaiting_rel);
            self.record.awaiting_rel.clone_from(&r.awaiting_rel);
        }
        // Completed by the old connection; the removal is on its way.
        in_flight_seqs.extend(live.done.iter().copied());
        let mut queued = Vec::new();
        for (seq, m) in stored {
            if in_flight_seqs.contains(&seq) {
                continue;
            }
            queued.push(stored::stored_delivery(seq, m));
        }
        queued.extend(live.pending.into_iter().filter(|d| d.seq.is_none()));

        {
            let mut route = self.slot.route_mut();
            route.conn = Some(req.conn.clone());
            route.persistent = self.record.expiry_secs > 0;
        }
        self.conn_id = Some(req.conn.id);
        self.exists = true;
        let durable = self.save();
        Ok(AttachReply {
            slot: self.slot.clone(),
            session_present,
            inflight,
            queued,
            awaiting_rel,
            durable,
        })
    }

    /// Takes over a clean session's state from the actor of the shard's previous leader
    /// (it lives in memory only): its subscriptions enter this node's trie.
    fn adopt(&mut self, record: SessionRecord) {
        let next_seq = self.record.next_seq.max(record.next_seq);
        self.slot.next_seq.fetch_max(next_seq, Ordering::Relaxed);
        for s in &record.subscriptions {
            self.ctx.router.subscribe(&self.slot, &s.filter, s.opts, s.id);
        }
        self.record = SessionRecord { next_seq, ..record };
        self.exists = true;
    }

    async fn detach(
        &mut self,
        myself: &ActorRef<DeviceMsg>,
        conn_id: u64,
        mut live: LiveState,
        will: bool,
        expiry: Option<u32>,
    ) -> Result<(), StoreError> {
        if self.conn_id != Some(conn_id) {
            return Ok(());
        }
        self.conn_id = None;
        self.slot.route_mut().conn = None;
        if let Some(e) = expiry {
            self.record.expiry_secs = e;
        }
        let now = now_ms();
        if !will {
            self.record.will = None;
        }
        self.hand_over_shared(&mut live);
        if !self.persistent() {
            self.publish_will();
            self.end_session().await;
            self.retire(myself);
            return Ok(());
        }
        self.slot.route_mut().persistent = true;
        self.unjournal_foreign(&mut live);
        self.record.inflight = live.inflight.iter().map(StoredInflight::from).collect();
        self.record.awaiting_rel = std::mem::take(&mut live.awaiting_rel);
        self.record.disconnected_at_ms = Some(now);
        for d in live.pending {
            // Entries drained from the queue are still stored.
            if d.seq.is_none() {
                self.enqueue(d, None);
            }
        }
        if let Some(w) = &mut self.record.will {
            let delay = w.delay_secs.min(self.record.expiry_secs);
            if delay == 0 {
                self.publish_will();
            } else {
                let at = now + u64::from(delay) * 1000;
                w.at_ms = Some(at);
                let _ = self.supervisor.cast(SupervisorMsg::Schedule {
                    client: self.client.clone(),
                    at_ms: at,
                    msg: super::supervisor::Timer::Will,
                });
            }
        }
        if let Some(at) = self.record.expires_at_ms() {
            let _ = self.supervisor.cast(SupervisorMsg::Schedule {
                client: self.client.clone(),
                at_ms: at,
                msg: super::supervisor::Timer::Expire,
            });
        }
        self.save();
        Ok(())
    }

    /// Messages this session got through a shared subscription and has not acknowledged go
    /// to another connected member of the group (MQTT 5 4.8.2). Those no other member can
    /// take stay with the session. A QoS 2 message the client already received (PUBREL
    /// stage) stays: moving it would deliver it twice.
    fn hand_over_shared(&mut self, live: &mut LiveState) {
        let router = &self.ctx.router;
        let mut moved = Vec::new();
        let mut keep = |d: &Delivery| {
            if d.shared.is_none() {
                return true;
            }
            match router.redispatch(d.clone(), &self.slot) {
                Ok(()) => {
                    moved.extend(d.seq);
                    false
                }
                Err(_) => true,
            }
        };
        live.inflight.retain(|i| i.stage == Stage::Released || keep(&i.delivery));
        live.pending.retain(&mut keep);
        self.remove_queued(moved);
    }

    /// Deletes acknowledged (or handed-over) messages from the in-flight journal (local)
    /// or the offline queue (in the shard); one sequence numbers both.
    fn remove_queued(&mut self, seqs: Vec<u64>) {
        let mut queued = Vec::new();
        for seq in seqs {
            match self.ctx.store.inflight_remove(&self.client, seq) {
                Ok(true) => {}
                Ok(false) => queued.push(seq),
                Err(e) => tracing::error!(message = "journal remove failed", error = %e),
            }
        }
        if queued.is_empty() {
            return;
        }
        let n = queued.len().min(self.queue_len);
        self.queue_len -= n;
        self.ctx.metrics.offline_queue_depth.sub(n as i64);
        let ticket = self.ctx.sessions.dequeue(&self.client, queued);
        self.wrote(ticket);
    }

    /// [`DeviceState::enqueue`] for a publisher that waits: refused (the publisher is
    /// told it was not stored, and may send it again) once this node no longer leads
    /// the session's shard. The actor of the shard's new leader numbers the queue from
    /// what it read, and an entry numbered here could collide with one of its own.
    fn enqueue_serving(&mut self, d: Delivery, ack: oneshot::Sender<Result<(), StoreError>>) {
        let shard = self.ctx.groups.shard_of(&self.client);
        if !self.ctx.groups.is_leader(shard) {
            self.ctx.metrics.dropped(DropReason::SessionMoved);
            let _ = ack.send(Err(StoreError::Closed));
            return;
        }
        self.enqueue(d, Some(ack));
    }

    /// Appends to the offline queue, applying the queue limit. `ack` (a publisher's
    /// acknowledgement) resolves once the message is committed, or at once if it is
    /// dropped by policy (each drop is counted).
    fn enqueue(&mut self, d: Delivery, ack: Option<oneshot::Sender<Result<(), StoreError>>>) {
        let m = &self.ctx.metrics;
        let dropped = |ack: Option<oneshot::Sender<_>>| {
            if let Some(a) = ack {
                let _ = a.send(Ok(()));
            }
        };
        if d.msg.expired(now_ms()) {
            m.dropped(DropReason::Expired);
            return dropped(ack);
        }
        let full = self.queue_len >= self.ctx.mqtt.offline_queue_limit;
        if full && self.ctx.mqtt.offline_queue_policy == QueuePolicy::RejectNew {
            m.dropped(DropReason::OfflineQueueRejectNew);
            return dropped(ack);
        }
        let drop_oldest = full && self.queue_len > 0;
        if drop_oldest {
            // The shard removes the oldest entry in the same command.
            m.dropped(DropReason::OfflineQueueDropOldest);
        } else {
            self.queue_len += 1;
            m.offline_queue_depth.inc();
        }
        let seq = self.slot.next_seq.fetch_add(1, Ordering::Relaxed);
        let ticket =
            self.ctx.sessions.enqueue(&self.client, seq, StoredMessage::from(&d), drop_oldest, ack);
        self.wrote(ticket);
    }
}

impl Actor for DeviceActor {
    type Msg = DeviceMsg;
    type State = DeviceState;
    type Arguments = DeviceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DeviceMsg>,
        args: DeviceArgs,
    ) -> Result<DeviceState, ActorProcessingErr> {
        // A predecessor (retired, or failed) may have left writes not yet applied.
        let ticket = args.slot.last_write.load(Ordering::Relaxed);
        args.ctx.sessions.settled(&args.client, ticket).await;
        let stored_record = args.ctx.sessions.get(&args.client)?;
        let stored = stored_record.is_some();
        let record = stored_record.or_else(|| args.slot.parked());
        // A clean session parks no blank record, but its attached connection says it
        // exists.
        let exists = record.is_some() || args.slot.is_online();
        let record = record.unwrap_or_default();
        let (mut next_seq, queue_len) = match args.ctx.sessions.queue_bounds(&args.client)? {
            Some((_, last, len)) => (record.next_seq.max(last + 1), len),
            None => (record.next_seq, 0),
        };
        if let Some(last) = args.ctx.store.inflight_last(&args.client)? {
            next_seq = next_seq.max(last + 1);
        }
        // A restarted actor may find the slot already further on.
        args.slot.next_seq.fetch_max(next_seq, Ordering::Relaxed);
        let mut record = record;
        record.next_seq = args.slot.next_seq.load(Ordering::Relaxed);
        // After a restart (panic) the connection may still be attached.
        let conn_id = {
            let mut route = args.slot.route_mut();
            route.actor = Some(myself.clone());
            route.conn.as_ref().map(|c| c.id)
        };
        let state = DeviceState {
            client: args.client,
            slot: args.slot,
            ctx: args.ctx,
            supervisor: args.supervisor,
            record,
            exists,
            stored,
            conn_id,
            queue_len,
            last_active: Instant::now(),
            idle_timer: None,
            retired: false,
            shadows: ShadowCache::new(),
            known_seqs: HashSet::new(),
        };
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<DeviceMsg>,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, timer)) = state.idle_timer.take() {
            timer.abort();
        }
        let mut route = state.slot.route_mut();
        if route.actor.as_ref().is_some_and(|a| a.get_id() == myself.get_id()) {
            route.actor = None;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DeviceMsg>,
        msg: DeviceMsg,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        if state.retired {
            // Sent before this actor left its slot: its successor takes it.
            if !matches!(msg, DeviceMsg::IdleCheck) {
                state.ctx.devices.cast(&state.client, None, msg);
            }
            return Ok(());
        }
        let timer = matches!(msg, DeviceMsg::IdleCheck);
        let res = self.handle_msg(&myself, msg, state).await;
        if !timer {
            // After the message: it may have attached or detached a connection, which
            // changes how long the actor idles.
            state.touch(&myself);
        }
        res
    }
}

impl DeviceActor {
    async fn handle_msg(
        &self,
        myself: &ActorRef<DeviceMsg>,
        msg: DeviceMsg,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        let myself = myself.clone();
        match msg {
            DeviceMsg::Attach(req, reply) => {
                let res = state.attach(*req).await;
                if res.is_err() {
                    state.conn_id = None;
                    state.slot.route_mut().conn = None;
                }
                // A write the shard's previous leader submitted for this session (an
                // offline-queue entry, during a leadership hand-off) may commit after
                // the queue was read: look again, soon and once it must have landed.
                if let (Ok(_), Some(conn_id), true) =
                    (&res, state.conn_id, state.persistent() && state.ctx.late_writes_ms > 0)
                {
                    for after in [1_000, state.ctx.late_writes_ms + 1_000] {
                        drop(myself.send_after(Duration::from_millis(after), move || {
                            DeviceMsg::Rescan { conn_id }
                        }));
                    }
                }
                let _ = reply.send(res);
            }
            DeviceMsg::Detach { conn_id, live, will, expiry_secs } => {
                state.detach(&myself, conn_id, live, will, expiry_secs).await?;
            }
            DeviceMsg::Subscribe { filters, id, reply } => {
                let _ = reply.send(state.subscribe(filters, id));
            }
            DeviceMsg::Unsubscribe { filters, reply } => {
                let mut codes = Vec::with_capacity(filters.len());
                for f in filters {
                    let removed = state.ctx.router.unsubscribe(&state.slot, &f);
                    state.record.subscriptions.retain(|s| s.filter != f);
                    codes.push(if removed {
                        ReasonCode::Success
                    } else {
                        ReasonCode::NoSubscriptionExisted
                    });
                }
                let durable = state.save();
                let _ = reply.send((codes, durable));
            }
            DeviceMsg::Enqueue(d, ack) => {
                let online = state.slot.route().conn.clone();
                if let Some(conn) = online {
                    // Attached meanwhile: hand it to the connection. Known window: a
                    // message routed directly to the connection after the slot went
                    // online can overtake this one (reordering across the reconnect).
                    let (d, journaled) = state.ctx.router.journal(&state.slot, d);
                    let answer = |ack: oneshot::Sender<_>| match journaled {
                        true => state.ctx.store.durable_to(ack),
                        false => drop(ack.send(Ok(()))),
                    };
                    match conn.offer(d) {
                        // Over the limit, it is still queued; this rare path does not
                        // hold the publisher back.
                        Offer::Accepted | Offer::Over => {
                            answer(ack);
                            return Ok(());
                        }
                        Offer::Dropped => {
                            state.ctx.metrics.dropped(DropReason::QueueFull);
                            answer(ack);
                            return Ok(());
                        }
                        Offer::Closed(mut d) => {
                            // Not in the node-local journal: the next attach may be on
                            // another node. The shard's offline queue keeps it.
                            if journaled {
                                state.ctx.router.unjournal(&state.slot, &mut d);
                            }
                            if d.seq.is_none() {
                                state.enqueue_serving(d, ack);
                            } else {
                                state.ctx.store.durable_to(ack);
                            }
                        }
                    }
                } else if state.persistent() {
                    state.enqueue_serving(d, ack);
                } else {
                    // The session ended meanwhile: nothing to store.
                    let _ = ack.send(Ok(()));
                }
            }
            DeviceMsg::Delivered(seqs) => state.remove_queued(seqs),
            DeviceMsg::Rescan { conn_id } => state.rescan(conn_id),
            DeviceMsg::FireWill => {
                let due =
                    state.record.will.as_ref().and_then(|w| w.at_ms).is_some_and(|t| t <= now_ms());
                if state.conn_id.is_none() && due {
                    state.publish_will();
                    state.save();
                }
            }
            DeviceMsg::Expire => {
                let due = state.record.expires_at_ms().is_some_and(|t| t <= now_ms());
                if state.conn_id.is_none() && state.exists && due {
                    state.publish_will();
                    state.end_session().await;
                    state.retire(&myself);
                }
            }
            DeviceMsg::IdleCheck => {
                // Connected or not: an idle session costs no actor (its state is stored).
                let now = Instant::now();
                if state.idle_timer.as_ref().is_some_and(|(d, _)| *d <= now) {
                    state.idle_timer = None;
                }
                if state.last_active.elapsed() >= state.idle_after() {
                    state.retire(&myself);
                } else {
                    state.arm_idle(&myself);
                }
            }
            DeviceMsg::Shadow(req) => {
                let req = *req;
                let router = state.ctx.router.clone();
                let listening = move |t: &str| router.has_subscribers(t);
                let replies = state
                    .ctx
                    .shadows
                    .handle(&mut state.shadows, &req.topic, &req.payload, now_ms(), &listening)
                    .await;
                for r in &replies {
                    let rejected = r.topic.ends_with("/rejected");
                    // An admin caller gets its rejection as the HTTP answer only.
                    if rejected && req.reply.is_some() {
                        continue;
                    }
                    let to = if r.to_requester { req.requester.as_ref() } else { None };
                    state.ctx.router.publish_reply(&r.topic, &r.payload, to);
                }
                if let Some(tx) = req.reply {
                    let _ = tx.send(replies);
                }
            }
            DeviceMsg::Jobs(req) => {
                let req = *req;
                let outcome = state.ctx.jobs.handle(&state.client, req.call, now_ms()).await;
                for r in &outcome.replies {
                    let to = if r.to_requester { req.requester.as_ref() } else { None };
                    // Rejections answer an MQTT requester only.
                    if r.topic.ends_with("/rejected") && to.is_none() {
                        continue;
                    }
                    state.ctx.router.publish_reply(&r.topic, &r.payload, to);
                }
                if let Some(tx) = req.reply {
                    let _ = tx.send(outcome);
                }
            }
            DeviceMsg::InjectPanic => panic!("injected fault in device actor {}", state.client),
            DeviceMsg::Evict { server } => {
                let filters = state.record.subscriptions.iter().map(|s| s.filter.clone()).collect();
                // A clean session's state is in memory only: it goes with the connection
                // to the new leader's actor.
                let record = (!state.persistent()).then(|| Box::new(state.record.clone()));
                super::supervisor::evict(&state.ctx, &state.slot, server, Some(filters), record);
                state.retired = true;
                myself.stop(None);
            }
        }
        Ok(())
    }
}
