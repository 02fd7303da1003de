//! openraft's network over the cluster transport: each group's RPCs to a peer become
//! `Request::Raft { group, .. }` frames, dispatched on the peer to that group.
//!
//! Error mapping (openraft treats them differently): a peer that cannot be reached, or
//! that has no such group, is [`RPCError::Unreachable`] (openraft backs off with
//! [`PeerLink::backoff`]); no answer in time is [`RPCError::Timeout`]; a connection lost
//! mid-request is a network error (retried at once); an error the peer's group returned
//! is handed back to openraft as the peer's own error.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::transport::{CallError, Class, Transport};
use super::wire::{Answer, NodeId, RaftAnswer, RaftRpc, Request, WireError};
use crate::raft::{GroupId, TypeConfig};

/// The network factory of one group.
#[derive(Clone)]
pub struct ClusterNetwork {
    pub group: GroupId,
    pub transport: Arc<Transport>,
}

/// One group's client for one peer.
pub struct PeerLink {
    group: GroupId,
    target: NodeId,
    transport: Arc<Transport>,
}

impl RaftNetworkFactory<TypeConfig> for ClusterNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        // The membership's address is a fallback: member records (and hellos) are newer.
        if self.transport.address(target).is_none() {
            self.transport.learn(target, &node.addr);
        }
        PeerLink { group: self.group, target, transport: self.transport.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Why(String);

fn unreachable<E: std::error::Error>(why: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&Why(why)))
}

impl PeerLink {
    async fn call<E: std::error::Error>(
        &self,
        class: Class,
        action: RPCTypes,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<RaftAnswer, RPCError<NodeId, BasicNode, E>> {
        let req = Request::Raft { group: self.group, rpc };
        let ttl = option.hard_ttl();
        let res = self.transport.call(self.target, class, req, ttl).await;
        if let Err(e) = &res {
            tracing::debug!(message = "raft rpc failed", group = self.group, target = self.target, ?action, error = %e);
        }
        match res {
            Ok(Answer::Raft(a)) => Ok(a),
            Ok(other) => Err(RPCError::Network(NetworkError::new(&Why(format!(
                "unexpected answer {other:?}"
            ))))),
            Err(CallError::Unreachable { reason, .. }) => Err(unreachable(reason)),
            Err(CallError::Timeout(_)) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.transport.node(),
                target: self.target,
                timeout: ttl,
            })),
            Err(CallError::Lost { reason, .. }) => {
                Err(RPCError::Network(NetworkError::new(&Why(reason))))
            }
            Err(CallError::Remote { error: WireError::UnknownGroup(g), .. }) => {
                Err(unreachable(format!("peer {} has no group {g}", self.target)))
            }
            Err(CallError::Remote { error, .. }) => Err(unreachable(error.to_string())),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Class::Raft, RPCTypes::AppendEntries, RaftRpc::Append(rpc), &option).await?
        {
            RaftAnswer::Append(r) => Ok(r),
            RaftAnswer::Failed(e) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(RPCError::Network(NetworkError::new(&Why(format!("{other:?}"))))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let rpc = RaftRpc::Snapshot(rpc);
        match self.call(Class::Snapshot, RPCTypes::InstallSnapshot, rpc, &option).await? {
            RaftAnswer::Snapshot(r) => Ok(r),
            RaftAnswer::SnapshotFailed(e) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(RPCError::Network(NetworkError::new(&Why(format!("{other:?}"))))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Class::Vote, RPCTypes::Vote, RaftRpc::Vote(rpc), &option).await? {
            RaftAnswer::Vote(r) => Ok(r),
            RaftAnswer::Failed(e) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(RPCError::Network(NetworkError::new(&Why(format!("{other:?}"))))),
        }
    }

    /// After an unreachable peer: 100 ms, doubling to 1.6 s, then 1.6 s.
    fn backoff(&self) -> Backoff {
        let steps = (0..5).map(|i| Duration::from_millis(100 << i));
        Backoff::new(steps.chain(std::iter::repeat(Duration::from_millis(1600))))
    }
}
