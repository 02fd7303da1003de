//! What a node answers its peers: Raft RPCs dispatched to their group, writes forwarded
//! to this node as leader, read indexes, joins, status and device calls. Also the
//! forwarding side ([`Forwarder`]): how this node's proposers hand a batch to the leader
//! elsewhere.
//!
//! Must not touch: the wire format (`wire`) or connections (`transport`).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use openraft::ServerState;

use super::records::{self, ClusterCommand, MemberState};
use super::transport::{CallError, Class, Service, Transport};
use super::wire::{
    Answer, ConnAnswer, ConnCall, DeviceAnswer, DeviceCall, GroupStatus, MemberInfo, NodeId,
    NodeStatus, RaftAnswer, RaftRpc, Request, WireError,
};
use crate::raft::{Command, Forward, ForwardError, GroupId, Groups, Response, WriteError};

/// Runs device calls that arrive from peers (the device actors' side).
pub trait DeviceCalls: Send + Sync + 'static {
    /// A call from node `from` for a device actor here.
    fn call(
        &self,
        from: NodeId,
        call: DeviceCall,
    ) -> BoxFuture<'static, Result<DeviceAnswer, WireError>>;
    /// A call from a device actor's node for a connection here.
    fn conn(&self, call: ConnCall) -> BoxFuture<'static, Result<ConnAnswer, WireError>>;
}

/// The service behind this node's transport. It holds the groups weakly: the groups'
/// forwarder holds the transport, which holds this service, and the groups must be
/// dropped at shutdown (they hold the data directory's lock).
pub struct ClusterService {
    /// Routes and forwarded publishes.
    pub routing: Arc<super::forward::Routing>,
    /// Set once the groups exist (peers' requests before that get "starting").
    pub groups: OnceLock<Weak<Groups>>,
    pub incarnation: u64,
    /// Whether this node is on the majority side of the meta group (set with the
    /// cluster's loops).
    pub ready: OnceLock<Arc<dyn Fn() -> bool + Send + Sync>>,
    pub devices: OnceLock<Arc<dyn DeviceCalls>>,
    /// Groups this node must not stand for election in, until when (`Request::Hold`).
    pub holds: Arc<parking_lot::Mutex<std::collections::HashMap<GroupId, std::time::Instant>>>,
    /// This node is stopping (`Cluster::hand_off_all`): it stands for election nowhere.
    pub leaving: Arc<std::sync::atomic::AtomicBool>,
}

impl ClusterService {
    /// Whether a hold keeps this node from standing in `group` now.
    pub fn held(&self, group: GroupId) -> bool {
        if self.leaving.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        let mut h = self.holds.lock();
        match h.get(&group) {
            Some(until) if std::time::Instant::now() < *until => true,
            Some(_) => {
                h.remove(&group);
                false
            }
            None => false,
        }
    }
}

pub(crate) fn wire_error(e: WriteError, groups: &Groups) -> WireError {
    match e {
        WriteError::NotLeader(group) => {
            WireError::NotLeader { group, leader: groups.leader(group) }
        }
        WriteError::NoQuorum(group) => WireError::NoQuorum(group),
        WriteError::Unavailable { reason, .. } => WireError::Unavailable(reason),
    }
}

/// One group's state as this node sees it.
pub fn group_status(groups: &Groups, group: GroupId) -> Option<GroupStatus> {
    let raft = groups.raft(group)?;
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "stopped",
        ServerState::Follower if voters.contains(&m.id) => "follower",
        ServerState::Follower | ServerState::Learner => "learner",
    };
    let matched = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
        .unwrap_or_default();
    Some(GroupStatus {
        group,
        initialized: m.last_log_index.is_some() || !voters.is_empty(),
        role: role.into(),
        leader: m.current_leader,
        term: m.current_term,
        last_log: m.last_log_index,
        // openraft 0.9's metrics carry no commit index; what is applied was committed.
        committed: m.last_applied.map(|l| l.index),
        applied: m.last_applied.map(|l| l.index),
        voters,
        learners,
        matched,
        quorum_ack_ms: if m.state == ServerState::Leader {
            m.millis_since_quorum_ack
        } else {
            None
        },
    })
}

impl ClusterService {
    fn status(&self, groups: &Groups) -> NodeStatus {
        NodeStatus {
            id: groups.node(),
            incarnation: self.incarnation,
            ready: self.ready.get().is_some_and(|r| r()),
            groups: groups.ids().filter_map(|g| group_status(groups, g)).collect(),
        }
    }
}

async fn raft_call(groups: Arc<Groups>, group: GroupId, rpc: RaftRpc) -> Answer {
    let Some(raft) = groups.raft(group).cloned() else {
        return Answer::Error(WireError::UnknownGroup(group));
    };
    Answer::Raft(match rpc {
        RaftRpc::Append(r) => match raft.append_entries(r).await {
            Ok(a) => RaftAnswer::Append(a),
            Err(e) => RaftAnswer::Failed(e),
        },
        RaftRpc::Vote(r) => match raft.vote(r).await {
            Ok(a) => RaftAnswer::Vote(a),
            Err(e) => RaftAnswer::Failed(e),
        },
        RaftRpc::Snapshot(r) => match raft.install_snapshot(r).await {
            Ok(a) => RaftAnswer::Snapshot(a),
            Err(e) => RaftAnswer::SnapshotFailed(e),
        },
    })
}

/// Registers a node that asks to join and answers the members it should know.
async fn join(groups: Arc<Groups>, info: MemberInfo) -> Answer {
    let cmd = Command::Cluster(ClusterCommand::Register {
        info: info.clone(),
        state: MemberState::Joining,
    });
    match groups.write(0, cmd).await {
        Ok(Response::Applied) => {}
        Ok(Response::Conflict { .. }) => {
            return Answer::Error(WireError::Refused(format!(
                "node {} was removed from this cluster; a removed id cannot join again",
                info.id
            )))
        }
        Ok(other) => return Answer::Error(WireError::Unavailable(format!("{other:?}"))),
        Err(e) => return Answer::Error(wire_error(e, &groups)),
    }
    let members = groups
        .data(0)
        .and_then(|d| records::members(d).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.state != MemberState::Removed)
        .map(|m| m.info)
        .collect();
    Answer::Joined { members }
}

impl Service for ClusterService {
    fn admit(&self, node: NodeId) -> Result<(), String> {
        // Before the groups exist nothing says the peer was removed: it may connect (its
        // requests are answered "starting" until then).
        let Some(weak) = self.groups.get() else { return Ok(()) };
        let Some(groups) = weak.upgrade() else { return Err("node is stopping".into()) };
        let removed = groups
            .data(0)
            .and_then(|d| records::read_member(d, node).ok().flatten())
            .is_some_and(|m| m.state == MemberState::Removed);
        if removed {
            Err(format!("node {node} was removed from this cluster"))
        } else {
            Ok(())
        }
    }

    fn handle(&self, from: NodeId, req: Request) -> BoxFuture<'static, Answer> {
        let Some(groups) = self.groups.get().and_then(Weak::upgrade) else {
            let e = WireError::Unavailable("node is starting or stopping".into());
            return async { Answer::Error(e) }.boxed();
        };
        match req {
            Request::Hello(_) => {
                async { Answer::Error(WireError::Refused("unexpected hello".into())) }.boxed()
            }
            Request::Raft { group, rpc } => raft_call(groups, group, rpc).boxed(),
            Request::Propose { group, cmds } => async move {
                if group as usize > groups.shards() as usize {
                    return Answer::Error(WireError::UnknownGroup(group));
                }
                if !groups.is_leader(group) {
                    return Answer::Error(WireError::NotLeader {
                        group,
                        leader: groups.leader(group),
                    });
                }
                match groups.propose_forwarded(group, cmds).await {
                    Ok(answers) => Answer::Proposed(answers),
                    Err(e) => Answer::Error(wire_error(e, &groups)),
                }
            }
            .boxed(),
            Request::ReadIndex { group } => async move {
                match groups.read_index(group).await {
                    Ok(i) => Answer::ReadIndex(i),
                    Err(e) => Answer::Error(wire_error(e, &groups)),
                }
            }
            .boxed(),
            Request::Join(info) => join(groups, info).boxed(),
            Request::Hold { group, millis } => {
                let Some(raft) = groups.raft(group).cloned() else {
                    return async move { Answer::Error(WireError::UnknownGroup(group)) }.boxed();
                };
                // A node that is stopping takes no part in a hand-off.
                if self.leaving.load(std::sync::atomic::Ordering::Acquire) {
                    let e = WireError::Unavailable("this node is stopping".into());
                    return async move { Answer::Error(e) }.boxed();
                }
                let until = std::time::Instant::now() + Duration::from_millis(u64::from(millis));
                self.holds.lock().insert(group, until);
                raft.runtime_config().elect(false);
                // The hold is over as soon as a leader of a later term is known (the
                // hand-off happened): should that leader fail at once, this node must be
                // free to stand, or a group of three would wait out the hold.
                let term = raft.metrics().borrow().current_term;
                let holds = self.holds.clone();
                let leaving = self.leaving.clone();
                let me = groups.node();
                tokio::spawn(async move {
                    let mut m = raft.metrics();
                    let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(until), async {
                        loop {
                            if m.borrow_and_update().current_term > term
                                && m.borrow().current_leader.is_some()
                            {
                                return;
                            }
                            if m.changed().await.is_err() {
                                return;
                            }
                        }
                    })
                    .await;
                    let mut h = holds.lock();
                    if h.get(&group) == Some(&until) {
                        h.remove(&group);
                        let voter =
                            m.borrow().membership_config.membership().voter_ids().any(|v| v == me);
                        // The reconciler sets the rest (placement) at its next tick.
                        let leaving = leaving.load(std::sync::atomic::Ordering::Acquire);
                        raft.runtime_config().elect(voter && !leaving);
                    }
                });
                async { Answer::Held }.boxed()
            }
            Request::Elect { group } => {
                let Some(raft) = groups.raft(group).cloned() else {
                    return async move { Answer::Error(WireError::UnknownGroup(group)) }.boxed();
                };
                if self.leaving.load(std::sync::atomic::Ordering::Acquire) {
                    let e = WireError::Unavailable("this node is stopping".into());
                    return async move { Answer::Error(e) }.boxed();
                }
                self.holds.lock().remove(&group);
                raft.runtime_config().elect(true);
                async move {
                    match raft.trigger().elect().await {
                        Ok(()) => Answer::Held,
                        Err(e) => Answer::Error(WireError::Unavailable(e.to_string())),
                    }
                }
                .boxed()
            }
            Request::Routes(update) => {
                let at = self.routing.receive_routes(from, update);
                async move { Answer::Routes(at) }.boxed()
            }
            Request::Publish(msgs) => {
                let routing = self.routing.clone();
                async move {
                    match routing.receive_publish(msgs).await {
                        Ok(unmatched) => Answer::Published { unmatched },
                        Err(e) => Answer::Error(e),
                    }
                }
                .boxed()
            }
            Request::Status => {
                let s = self.status(&groups);
                async move { Answer::Status(s) }.boxed()
            }
            Request::Device(call) => match self.devices.get() {
                Some(d) => {
                    let fut = d.call(from, call);
                    async move {
                        match fut.await {
                            Ok(a) => Answer::Device(a),
                            Err(e) => Answer::Error(e),
                        }
                    }
                    .boxed()
                }
                None => async { Answer::Error(WireError::Unavailable("no device runtime".into())) }
                    .boxed(),
            },
            Request::Conn(call) => match self.devices.get() {
                Some(d) => {
                    let fut = d.conn(call);
                    async move {
                        match fut.await {
                            Ok(a) => Answer::Conn(a),
                            Err(e) => Answer::Error(e),
                        }
                    }
                    .boxed()
                }
                None => async { Answer::Error(WireError::Unavailable("no device runtime".into())) }
                    .boxed(),
            },
        }
    }
}

/// Sends proposer batches to the leader on another node.
pub struct Forwarder {
    pub transport: Arc<Transport>,
}

impl Forward for Forwarder {
    fn forward(
        &self,
        group: GroupId,
        leader: u64,
        cmds: Vec<Command>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<Response>, ForwardError>> {
        let t = self.transport.clone();
        async move {
            let req = Request::Propose { group, cmds };
            match t.call(leader, Class::Data, req, timeout).await {
                Ok(Answer::Proposed(a)) => Ok(a),
                Ok(other) => Err(ForwardError::Failed(WriteError::Unavailable {
                    group,
                    reason: format!("unexpected answer {other:?}"),
                })),
                Err(CallError::Remote { error: WireError::NotLeader { leader, .. }, .. }) => {
                    Err(ForwardError::Retry { leader, reason: "not the leader".into() })
                }
                Err(CallError::Remote { error: WireError::NoQuorum(g), .. }) => {
                    Err(ForwardError::Failed(WriteError::NoQuorum(g)))
                }
                Err(CallError::Unreachable { reason, .. }) => {
                    Err(ForwardError::Retry { leader: None, reason })
                }
                Err(e) => Err(ForwardError::Failed(WriteError::Unavailable {
                    group,
                    reason: format!("forwarded to node {leader}: {e} (outcome unknown)"),
                })),
            }
        }
        .boxed()
    }
}
