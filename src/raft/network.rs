//! How a group reaches its peers. A node's groups each have this node as the only voter
//! until the cluster transport (QUIC, a later issue) adds members, so no RPC is ever sent;
//! should membership name another node, every RPC to it fails as unreachable (openraft
//! backs off and retries) instead of pretending to deliver.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::types::TypeConfig;

type NodeId = u64;

/// Why an RPC could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("no cluster transport on this node: cannot reach raft peer {0}")]
pub struct NoTransport(NodeId);

/// Network factory of a node that has no cluster transport yet.
#[derive(Clone, Default)]
pub struct LocalOnly;

/// A client for one peer: every call reports the peer unreachable.
pub struct Peer(NodeId);

impl RaftNetworkFactory<TypeConfig> for LocalOnly {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer {
        Peer(target)
    }
}

impl Peer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.0)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
