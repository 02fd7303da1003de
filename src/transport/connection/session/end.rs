//! The end of a live session and its move: re-attaching to the session's actor on a
//! new shard leader (`resume`), handing back what the connection holds (`live_state`,
//! `detach`) and closing with the reason the end calls for (`finish`).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{Conn, End, RECENT_DONE, RESUME_WITHIN};
use crate::broker::LiveState;
use crate::device::{AttachRequest, Resume};
use crate::mqtt::{Disconnect, Packet, Properties, ReasonCode};
use crate::session::{Outgoing, SessionRecord};
use crate::transport::connection::presence;
use crate::transport::connection::DeviceIo;

impl Conn {
    /// The session's actor moved to another node (its shard's leader changed): attach to
    /// the new one, keeping the socket, the window and its packet ids. Tried until
    /// [`RESUME_WITHIN`] while the shard has no leader yet; false if it cannot be done
    /// (a clean session whose state was lost with its node, or the client connected
    /// again elsewhere), and the connection then closes with DISCONNECT 0x9C.
    pub(super) async fn resume(&mut self, record: Option<Box<SessionRecord>>) -> bool {
        let expiry_secs = self.expiry_update.unwrap_or(self.neg.expiry_secs);
        if expiry_secs == 0 && record.is_none() {
            // A clean session whose state was lost with its actor's node.
            self.ctx.metrics.session_resumes.with_label_values(&["failed"]).inc();
            return false;
        }
        let (inflight, pending_seqs) = self.outgoing.snapshot();
        let resume = Resume {
            inflight,
            pending_seqs,
            awaiting_rel: self.incoming.awaiting(),
            record: record.map(|r| *r),
        };
        let deadline = Instant::now() + RESUME_WITHIN;
        let reply = loop {
            let req = AttachRequest {
                conn: self.queue.clone(),
                clean_start: false,
                expiry_secs,
                will: None,
                resume: Some(Box::new(resume.clone())),
            };
            match self.ctx.devices.attach(&self.client, req).await {
                Ok(r) => break r,
                Err(e) if Instant::now() >= deadline => {
                    tracing::info!(message = "session resume failed", client = %self.client, error = %e);
                    self.ctx.metrics.session_resumes.with_label_values(&["failed"]).inc();
                    return false;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if let Some(d) = reply.durable {
            if !matches!(d.await, Ok(Ok(()))) {
                self.ctx.metrics.session_resumes.with_label_values(&["failed"]).inc();
                return false;
            }
        }
        self.slot = reply.slot;
        self.client = self.slot.client_id.clone();
        for d in reply.queued {
            self.deliver(d);
        }
        self.ctx.metrics.session_resumes.with_label_values(&["resumed"]).inc();
        tracing::debug!(message = "session resumed on its new actor", client = %self.client);
        true
    }

    /// Ends the live session: the queue closes, and what is in flight or waiting, and
    /// what was still queued, goes back in order.
    /// Tells the session which stored entries the client completed, and remembers the
    /// latest of them for a takeover (`LiveState::done`): that call may reach the actor
    /// after the takeover's attach read the journal.
    pub(super) fn flush_delivered(&mut self) {
        if self.delivered.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.delivered);
        self.recent_done.extend(seqs.iter().copied());
        while self.recent_done.len() > RECENT_DONE {
            self.recent_done.pop_front();
        }
        self.ctx.devices.delivered(&self.slot, self.queue.id, seqs);
    }

    pub(super) fn live_state(&mut self) -> LiveState {
        let outgoing = std::mem::replace(&mut self.outgoing, Outgoing::new(1));
        let (inflight, mut pending) = outgoing.into_parts();
        pending.extend(self.queue.close());
        let done = Vec::from(std::mem::take(&mut self.recent_done));
        LiveState { inflight, pending, awaiting_rel: self.incoming.awaiting(), done }
    }

    pub(super) fn detach(&mut self, live: LiveState, will: bool) {
        self.ctx.devices.detach(&self.slot, self.queue.id, live, will, self.expiry_update);
    }

    pub(super) async fn finish<S: DeviceIo>(&mut self, io: &mut S, end: End) {
        let (reason, label, will, aws) = match &end {
            End::Client { will } => (None, "normal", *will, "CLIENT_INITIATED_DISCONNECT"),
            // `Idle` never gets here: `serve_connection` hibernates on it.
            End::Io | End::Idle => (None, "connection_lost", true, "CONNECTION_LOST"),
            End::Violation(code, label) => (Some(*code), *label, true, "CLIENT_ERROR"),
            End::KeepAlive => (
                Some(ReasonCode::KeepAliveTimeout),
                "keep_alive_timeout",
                true,
                "MQTT_KEEP_ALIVE_TIMEOUT",
            ),
            End::TakenOver(_) => (
                Some(ReasonCode::SessionTakenOver),
                "session_taken_over",
                false,
                "DUPLICATE_CLIENTID",
            ),
            End::Shutdown => (
                Some(ReasonCode::ServerShuttingDown),
                "server_shutting_down",
                true,
                "SERVER_INITIATED_DISCONNECT",
            ),
            End::Kicked(code) => {
                (Some(*code), "administrative_action", true, "SERVER_INITIATED_DISCONNECT")
            }
            End::Left(_) => (
                Some(ReasonCode::UseAnotherServer),
                "use_another_server",
                true,
                "SERVER_INITIATED_DISCONNECT",
            ),
            End::Redirected(_) => (
                Some(ReasonCode::UseAnotherServer),
                "use_another_server",
                false,
                "SERVER_INITIATED_DISCONNECT",
            ),
        };
        let m = &self.ctx.metrics;
        m.disconnects.with_label_values(&[label]).inc();
        if let End::Violation(..) = &end {
            m.protocol_errors.with_label_values(&[label]).inc();
        }
        if let (Some(code), true) = (reason, self.neg.protocol.is_v5()) {
            let mut properties = Properties::default();
            if let End::Redirected(server) | End::Left(server) = &end {
                properties.server_reference.clone_from(server);
            }
            let d = Packet::Disconnect(Disconnect { reason: code, properties });
            self.out.packet(&d, m);
        }
        if !self.out.buf.is_empty() {
            let buf = std::mem::take(&mut self.out.buf);
            let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&buf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        tracing::debug!(message = "client disconnected", client = %self.client, reason = label);
        self.flush_delivered();
        let (router, client) = (&self.ctx.router, &self.client);
        presence::disconnected(router, client, &self.publisher, self.queue.id, aws, label);
        let live = self.live_state();
        match end {
            End::TakenOver(reply) => {
                let _ = reply.send(live);
            }
            // The session's actor is gone from this node; the new leader has it.
            End::Redirected(_) => {}
            _ => self.detach(live, will),
        }
    }
}
