//! One proposer task per group: it turns the commands that arrive while a proposal is in
//! flight into one log entry, and finds the group's leader for them.
//!
//! openraft 0.9 appends and flushes each client write before it takes the next, so
//! without batching every command would cost a flush. One batch is in flight at a time,
//! which keeps the commands of one submitter in submission order wherever the leader is:
//!
//! - this node leads the group: `client_write`, bounded by the write timeout. A leader
//!   that has not heard from a quorum for longer than its lease (a minority side of a
//!   partition) sends one heartbeat round and, if no quorum answers within a quarter
//!   of the lease, refuses with [`WriteError::NoQuorum`] instead of waiting.
//! - another node leads it: the batch goes to that leader ([`Forward`]); a "not the
//!   leader" answer (nothing was proposed) is retried at the new leader until the write
//!   timeout, any answer whose outcome is unknown (timed out, connection lost) is not
//!   retried, so a command is never applied twice.
//! - no leader is known (an election): it waits for one until the write timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Command, GroupId, Raft, Reply, Response, WriteError};
use crate::telemetry::Metrics;

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 1024;

/// A command waiting for its group's next proposal: its ticket, the command, where its
/// answer goes, and whether it may be forwarded (commands that already were are not).
pub(super) struct Pending {
    pub ticket: u64,
    pub cmd: Command,
    pub reply: Reply,
    pub local_only: bool,
}

/// What a forwarded batch came to.
#[derive(Debug)]
pub enum ForwardError {
    /// Nothing was proposed (the peer does not lead the group, or is unreachable): the
    /// batch may be sent again, to `leader` if it is known.
    Retry { leader: Option<u64>, reason: String },
    /// The outcome is unknown or the leader refused: do not send it again.
    Failed(WriteError),
}

/// Sends a batch to another node's leader of the group (the cluster transport).
pub trait Forward: Send + Sync + 'static {
    fn forward(
        &self,
        group: GroupId,
        leader: u64,
        cmds: Vec<Command>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<Response>, ForwardError>>;
}

pub(super) struct Proposer {
    pub group: GroupId,
    pub node: u64,
    pub raft: Raft,
    pub write_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses writes.
    pub lease: Duration,
    pub forward: Arc<std::sync::OnceLock<Arc<dyn Forward>>>,
    pub metrics: Arc<Metrics>,
    /// This node is handing its leadership off (`Groups::yield_leadership`): proposals
    /// wait as during an election, so no append renews the followers' leases.
    pub yielding: Arc<std::sync::atomic::AtomicBool>,
}

impl Proposer {
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>, done: watch::Sender<u64>) {
        let mut batch: Vec<Pending> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.metrics.raft_batch.observe(batch.len() as f64);
            let last = batch.last().map_or(0, |p| p.ticket);
            let local_only = batch.iter().any(|p| p.local_only);
            let mut cmds = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for p in batch.drain(..) {
                cmds.push(p.cmd);
                replies.push(p.reply);
            }
            let res = self.propose(cmds, local_only).await;
            let n = replies.len();
            match res {
                Ok(answers) if answers.len() == n => {
                    for (r, a) in replies.into_iter().zip(answers) {
                        self.finish(r, Ok(a));
                    }
                }
                Ok(answers) => {
                    let reason = format!("{} answers to {n} commands", answers.len());
                    let e = WriteError::Unavailable { group: self.group, reason };
                    for r in replies {
                        self.finish(r, Err(e.clone()));
                    }
                }
                Err(e) => {
                    for r in replies {
                        self.finish(r, Err(e.clone()));
                    }
                }
            }
            done.send_replace(last);
        }
    }

    /// `Groups::write` counts its own writes, with their latency.
    fn finish(&self, r: Reply, res: Result<Response, WriteError>) {
        if !matches!(r, Reply::Response(_)) {
            let label = if res.is_ok() { "applied" } else { "error" };
            self.metrics.raft_writes.with_label_values(&[label]).inc();
        }
        r.send(res);
    }

    /// Proposes `cmds` as one entry wherever the leader is; one answer per command.
    async fn propose(
        &self,
        cmds: Vec<Command>,
        local_only: bool,
    ) -> Result<Vec<Response>, WriteError> {
        let group = self.group;
        let deadline = Instant::now() + self.write_timeout;
        let mut metrics = self.raft.metrics();
        let mut pause = Duration::from_millis(5);
        let mut waited_for_quorum = false;
        loop {
            let (state, leader, quorum_ms, voters) = {
                let m = metrics.borrow_and_update();
                let voters = m.membership_config.membership().voter_ids().count();
                (m.state, m.current_leader, m.millis_since_quorum_ack, voters)
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WriteError::Unavailable {
                    group,
                    reason: format!("no leader within {} ms", self.write_timeout.as_millis()),
                });
            }
            let yielding = self.yielding.load(std::sync::atomic::Ordering::Acquire);
            if state == ServerState::Leader && !yielding {
                let stale = quorum_ms.is_none_or(|ms| ms > self.lease.as_millis() as u64);
                if voters > 1 && stale {
                    // Heartbeats were off for a hand-off that did not happen, or this is
                    // the minority side: one heartbeat round tells them apart.
                    if !waited_for_quorum {
                        waited_for_quorum = true;
                        let _ = self.raft.trigger().heartbeat().await;
                        let round = (self.lease / 4).min(left);
                        let _ = tokio::time::timeout(round, async {
                            while metrics.changed().await.is_ok() {
                                let ms = metrics.borrow().millis_since_quorum_ack;
                                if ms.is_some_and(|ms| ms <= self.lease.as_millis() as u64) {
                                    return;
                                }
                            }
                        })
                        .await;
                        continue;
                    }
                    return Err(WriteError::NoQuorum(group));
                }
                return self.write_here(cmds, left).await;
            }
            match leader {
                Some(l) if l == self.node => {
                    // Leading but handing off: wait for the new leader.
                    let _ = tokio::time::timeout(
                        left.min(Duration::from_millis(50)),
                        metrics.changed(),
                    )
                    .await;
                }
                Some(_) if local_only => return Err(WriteError::NotLeader(group)),
                Some(l) => match self.forward.get() {
                    None => return Err(WriteError::NotLeader(group)),
                    Some(f) => match self
                        .forward_while_leader(f, l, cmds.clone(), left, &mut metrics)
                        .await
                    {
                        Ok(answers) => {
                            self.metrics_forwarded("ok");
                            return Ok(answers);
                        }
                        Err(ForwardError::Failed(e)) => {
                            self.metrics_forwarded("failed");
                            return Err(e);
                        }
                        Err(ForwardError::Retry { leader: hint, reason }) => {
                            self.metrics_forwarded("retry");
                            tracing::debug!(message = "forwarded write to retry", group, leader = l, ?hint, reason = %reason);
                            tokio::time::sleep(pause.min(left)).await;
                            pause = (pause * 2).min(Duration::from_millis(200));
                        }
                    },
                },
                None => {
                    // An election, or this node has not heard of a leader yet.
                    let _ = tokio::time::timeout(
                        left.min(Duration::from_millis(200)),
                        metrics.changed(),
                    )
                    .await;
                }
            }
        }
    }

    /// Forwards to `leader`, unless another leader is elected meanwhile: a leader that
    /// died takes the stream with it silently (QUIC notices only at its idle timeout),
    /// and every later batch of the group waits behind this one. The outcome is unknown
    /// then (the old leader may have committed it), so it is not retried.
    async fn forward_while_leader(
        &self,
        f: &Arc<dyn Forward>,
        leader: u64,
        cmds: Vec<Command>,
        left: Duration,
        metrics: &mut watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
    ) -> Result<Vec<Response>, ForwardError> {
        let group = self.group;
        let replaced = super::leader_replaced(metrics, leader);
        tokio::select! {
            r = f.forward(group, leader, cmds, left) => r,
            now = replaced => {
                self.metrics_forwarded("abandoned");
                Err(ForwardError::Failed(WriteError::Unavailable {
                    group,
                    reason: format!(
                        "leader {leader} was replaced by {now} while a write was forwarded to it (it may have committed)"
                    ),
                }))
            }
        }
    }

    fn metrics_forwarded(&self, result: &str) {
        self.metrics.raft_forwarded.with_label_values(&[result]).inc();
    }

    async fn write_here(
        &self,
        cmds: Vec<Command>,
        left: Duration,
    ) -> Result<Vec<Response>, WriteError> {
        let group = self.group;
        let n = cmds.len();
        let cmd = if n == 1 {
            cmds.into_iter().next().unwrap_or(Command::Batch(Vec::new()))
        } else {
            Command::Batch(cmds)
        };
        match tokio::time::timeout(left, self.raft.client_write(cmd)).await {
            Ok(Ok(r)) => match (n, r.data) {
                (1, a) => Ok(vec![a]),
                (_, Response::Batch(answers)) => Ok(answers),
                (_, other) => Err(WriteError::Unavailable {
                    group,
                    reason: format!("unexpected answer to a batch: {other:?}"),
                }),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(WriteError::NotLeader(group))
            }
            Ok(Err(e)) => Err(WriteError::Unavailable { group, reason: e.to_string() }),
            Err(_) => Err(WriteError::Unavailable {
                group,
                reason: format!(
                    "not committed within {} ms (it may still be)",
                    self.write_timeout.as_millis()
                ),
            }),
        }
    }
}
