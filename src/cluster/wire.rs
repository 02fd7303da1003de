//! The cluster's wire format: what nodes say to each other over QUIC.
//!
//! Owns: the request and answer types and their framing. Every frame is postcard behind a
//! format-version byte ([`WIRE_VERSION`]); a frame of another version, or one that does not
//! decode, is a [`WireError`], never a panic. One request per QUIC stream, answered on the
//! same stream: the dialer writes a frame and finishes its side, the acceptor reads it to
//! the end (bounded by [`MAX_FRAME`]), answers and finishes.
//!
//! Must not touch: sockets (the transport moves the bytes) or what the requests mean
//! (the cluster service answers them).

use serde::{Deserialize, Serialize};

use crate::broker::StoredMessage;
use crate::mqtt::SubOptions;
use crate::raft::{Command, GroupId, Response as Applied, TypeConfig};
use crate::session::{SessionRecord, StoredWill};

/// Version of every frame's encoding. A node refuses a peer whose hello carries another.
pub const WIRE_VERSION: u8 = 2;

/// Largest frame accepted (a Raft append with its entries, a snapshot chunk).
pub const MAX_FRAME: usize = 256 << 20;

pub type NodeId = u64;

/// Why a frame or a request failed, as the peer (or the decoder) says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The frame's version byte is not ours.
    #[error("frame format version {found}, this node speaks {WIRE_VERSION}")]
    Version { found: u8 },
    /// The frame does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// No such Raft group on the peer.
    #[error("unknown raft group {0}")]
    UnknownGroup(GroupId),
    /// The peer does not lead the group; `leader` is its hint.
    #[error("not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    /// The peer leads the group but cannot reach a majority of its voters.
    #[error("raft group {0} cannot reach a majority of its voters")]
    NoQuorum(GroupId),
    /// The peer could not do it now (stopping, timed out).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was understood and refused.
    #[error("refused: {0}")]
    Refused(String),
}

/// Encodes one frame: the version byte, then postcard.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let out = vec![WIRE_VERSION];
    // Serializing our own types into a Vec cannot fail: they have no maps with non-string
    // keys that postcard refuses, and the buffer grows as needed.
    match postcard::to_extend(v, out) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(message = "frame encoding failed", error = %e);
            vec![WIRE_VERSION]
        }
    }
}

/// Decodes one frame, checking its version byte.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        None => Err(WireError::Malformed("empty frame".into())),
        Some((&WIRE_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))
        }
        Some((&found, _)) => Err(WireError::Version { found }),
    }
}

/// The first request on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster: String,
    /// The dialer.
    pub from: NodeId,
    /// Whom the dialer means to reach (0: any node, when joining through an address).
    pub to: NodeId,
    /// Changes at every start of the dialer, so a peer can tell a restart.
    pub incarnation: u64,
    /// The dialer's advertised cluster address.
    pub addr: String,
}

/// A member as the cluster knows it: addresses and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    /// Cluster (QUIC) address, `host:port`.
    pub cluster_addr: String,
    /// MQTT over TCP, if the node has that listener (`host:port` clients can dial).
    pub mqtt_addr: Option<String>,
    pub admin_addr: Option<String>,
}

/// A Raft RPC for one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(openraft::raft::AppendEntriesRequest<TypeConfig>),
    Vote(openraft::raft::VoteRequest<NodeId>),
    Snapshot(openraft::raft::InstallSnapshotRequest<TypeConfig>),
}

/// A Raft RPC's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftAnswer {
    Append(openraft::raft::AppendEntriesResponse<NodeId>),
    Vote(openraft::raft::VoteResponse<NodeId>),
    Snapshot(openraft::raft::InstallSnapshotResponse<NodeId>),
    /// The group refused or failed (openraft's own error, handed back to openraft).
    Failed(openraft::error::RaftError<NodeId>),
    /// A snapshot chunk the group refused (out of order, for another snapshot).
    SnapshotFailed(openraft::error::RaftError<NodeId, openraft::error::InstallSnapshotError>),
}

/// A call for a device's actor, which lives on its shard's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceCall {
    /// A shadow request (from an application or a client on another node): its request
    /// topic (`$aws/things/{thing}/shadow[/name/{name}]/{get|update|delete}`) and payload.
    Shadow {
        topic: String,
        payload: Vec<u8>,
    },
    /// Jobs work for a thing's device actor.
    Jobs {
        thing: String,
        call: JobsWork,
    },
    /// A connection on the calling node attaches to `client`'s session. `conn` is the
    /// connection's id on the calling node; later calls about it name it again.
    Attach {
        client: String,
        conn: u64,
        clean_start: bool,
        expiry_secs: u32,
        will: Option<Box<StoredWill>>,
        /// The connection is already live and re-attaches because the session's actor
        /// moved (a leader change): it keeps its window and socket.
        resume: Option<Box<WireResume>>,
    },
    Subscribe {
        client: String,
        conn: u64,
        filters: Vec<(String, SubOptions)>,
        id: Option<u32>,
    },
    Unsubscribe {
        client: String,
        conn: u64,
        filters: Vec<String>,
    },
    /// Offline-queue entries (by sequence number) the client acknowledged.
    Delivered {
        client: String,
        seqs: Vec<u64>,
    },
    /// The connection ended; `live` is what it had in flight and not yet written.
    Detach {
        client: String,
        conn: u64,
        live: WireLive,
        will: bool,
        expiry_secs: Option<u32>,
    },
}

/// One message on its way to a session's connection on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDelivery {
    pub msg: StoredMessage,
    pub sub_ids: Vec<u32>,
    pub seq: Option<u64>,
    /// The shared subscription (group, filter) it came through, if only through one.
    pub shared: Option<(String, String)>,
}

/// An unacknowledged delivery of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireInflight {
    pub pkid: u16,
    pub released: bool,
    pub delivery: WireDelivery,
}

/// What a live connection brings when it re-attaches (`crate::device::Resume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireResume {
    pub inflight: Vec<WireInflight>,
    pub pending_seqs: Vec<u64>,
    pub awaiting_rel: Vec<u16>,
    pub record: Option<SessionRecord>,
}

/// A connection's live state (`crate::broker::LiveState`) on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLive {
    pub inflight: Vec<WireInflight>,
    pub pending: Vec<WireDelivery>,
    pub awaiting_rel: Vec<u16>,
    pub done: Vec<u64>,
}

/// What the node running a session's device actor tells the node holding its
/// connection (the other direction of [`DeviceCall::Attach`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnCall {
    /// Deliveries for connection `conn`, in order. `batch` counts up per connection: a
    /// retried batch the connection already has is not delivered twice.
    Deliver { conn: u64, batch: u64, items: Vec<WireDelivery> },
    /// An order of the device actor (`crate::broker::Control`).
    Order { conn: u64, order: WireOrder },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOrder {
    /// A newer connection took the session: answered with the live state.
    TakeOver,
    /// Close with this reason code.
    Kick(u8),
    /// The session's actor moved (its shard's leader changed): re-attach, or close with
    /// DISCONNECT 0x9C naming `server`. `record`: a clean session's state, which lives
    /// in memory only.
    Redirect { server: Option<String>, record: Option<Box<SessionRecord>> },
}

/// The answer to a [`ConnCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnAnswer {
    /// Delivered (or already delivered, for a retried batch).
    Delivered,
    /// No such connection here (it ended, or this node restarted): of what was sent,
    /// only the first `taken` were delivered.
    Gone { taken: u32 },
    /// The order was given; a takeover's answer carries the live state.
    Ordered(Option<WireLive>),
}

/// Jobs work for a device actor: a request a client published, or the scheduler's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsWork {
    /// A request published on a jobs topic (`$aws/things/{thing}/jobs/...`).
    Request {
        topic: String,
        payload: Vec<u8>,
    },
    Queue {
        job_id: String,
    },
    Timeout {
        job_id: String,
    },
    Cancel {
        job_id: String,
        force: bool,
    },
}

/// A reply a device actor produced (published by the actor's node; returned to callers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReply {
    pub topic: String,
    /// JSON text (postcard cannot carry free-form JSON).
    pub payload: String,
    pub to_requester: bool,
}

/// What a device call came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceAnswer {
    Shadow(Vec<WireReply>),
    Jobs {
        ok: bool,
        replies: Vec<WireReply>,
    },
    /// The session is attached (and durable, for a persistent one).
    Attached {
        session_present: bool,
        inflight: Vec<WireInflight>,
        queued: Vec<WireDelivery>,
        awaiting_rel: Vec<u16>,
    },
    /// Per filter, the reason code; and the retained messages to send after the SUBACK.
    Subscribed {
        codes: Vec<u8>,
        retained: Vec<WireDelivery>,
    },
    Unsubscribed {
        codes: Vec<u8>,
    },
    Done,
}

/// State of one group on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: GroupId,
    /// Whether this node has any state for the group (a voter, a learner or a leftover).
    pub initialized: bool,
    /// "leader", "follower", "candidate" or "learner".
    pub role: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// On the leader: per follower, the last log index it is known to hold.
    pub matched: Vec<(NodeId, Option<u64>)>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub quorum_ack_ms: Option<u64>,
}

/// One node's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub incarnation: u64,
    pub ready: bool,
    pub groups: Vec<GroupStatus>,
}

/// What one node asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First on every connection; answered with [`Answer::Welcome`] or a refusal.
    Hello(Hello),
    Raft {
        group: GroupId,
        rpc: RaftRpc,
    },
    /// Commands for a group this node does not lead, in order; the leader proposes them
    /// as one log entry and answers once they are committed and applied.
    Propose {
        group: GroupId,
        cmds: Vec<Command>,
    },
    /// A linearizable read point: the leader confirms its leadership with a quorum and
    /// answers the log index a reader must have applied.
    ReadIndex {
        group: GroupId,
    },
    /// A new node asks to become a member (sent to any member; forwarded to the meta
    /// group's leader).
    Join(MemberInfo),
    /// The node's view of itself and its groups.
    Status,
    /// Do not stand for election in `group` for `millis` (a leader hands the group to
    /// another voter: only that one may stand).
    Hold {
        group: GroupId,
        millis: u32,
    },
    Device(DeviceCall),
    /// Stand for election in `group` now: the leader has stopped heartbeats to hand the
    /// group to this node (answered [`Answer::Held`] once the election has started).
    Elect {
        group: GroupId,
    },
    /// For a connection on this node whose session's actor runs on the caller.
    Conn(ConnCall),
    /// The caller's topic filters changed (`super::routes`); answered [`Answer::Routes`].
    Routes(super::routes::RouteUpdate),
    /// Messages published on the caller that match filters this node announced, in the
    /// order they were published there; answered [`Answer::Published`] once what they
    /// caused here is durable.
    Publish(Vec<WireMessage>),
}

/// A message forwarded to a node with matching subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    pub msg: StoredMessage,
    /// The publisher's client id (for no-local subscriptions).
    pub origin: Option<String>,
    /// Shards whose persistent sessions the sender expects here (their routes matched
    /// and this node leads them as far as the sender knows): a message none of whose
    /// sessions in one of them matched is answered as unmatched.
    pub shards: Vec<u32>,
    /// Deliver to those shards' persistent sessions only (a copy sent again for them).
    pub only: bool,
    /// Shards whose persistent sessions this copy must not reach: another copy (or the
    /// sender itself) is the one that delivers to them, so none gets it twice.
    pub skip: Vec<u32>,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Welcome {
        node: NodeId,
        incarnation: u64,
    },
    Raft(RaftAnswer),
    Proposed(Vec<Applied>),
    ReadIndex(Option<u64>),
    Joined {
        members: Vec<MemberInfo>,
    },
    Status(NodeStatus),
    Held,
    Device(DeviceAnswer),
    Conn(ConnAnswer),
    /// The change of the caller's routes this node is at now; None: send the full set.
    Routes(Option<u64>),
    /// A forwarded batch was routed; `unmatched`: positions of the messages no
    /// subscription here matched, or that missed one of their shards (the caller's
    /// route was stale: the subscriber moved, or its shard is not served here yet).
    Published {
        unmatched: Vec<u32>,
    },
    Error(WireError),
}

impl Answer {
    /// The error this answer carries, if it is one.
    pub fn error(&self) -> Option<WireError> {
        match self {
            Answer::Error(e) => Some(e.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_errors() {
        let req =
            Request::Propose { group: 3, cmds: vec![Command::EndSession { client: "c".into() }] };
        let bytes = encode(&req);
        assert_eq!(bytes[0], WIRE_VERSION);
        match decode::<Request>(&bytes).unwrap() {
            Request::Propose { group: 3, cmds } => assert_eq!(cmds.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(decode::<Request>(&[]).unwrap_err(), WireError::Malformed("empty frame".into()));
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(decode::<Request>(&wrong).unwrap_err(), WireError::Version { found: 9 });
        assert!(matches!(
            decode::<Request>(&[WIRE_VERSION, 0xff, 0xff]),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(&bytes[..bytes.len() - 1]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn raft_messages_survive_postcard() {
        let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(4, 2), None);
        let bytes = encode(&Request::Raft { group: 0, rpc: RaftRpc::Vote(vote.clone()) });
        match decode::<Request>(&bytes).unwrap() {
            Request::Raft { group: 0, rpc: RaftRpc::Vote(v) } => assert_eq!(v, vote),
            other => panic!("{other:?}"),
        }
        let status = Answer::Status(NodeStatus {
            id: 1,
            incarnation: 7,
            ready: true,
            groups: vec![GroupStatus {
                group: 0,
                initialized: true,
                role: "leader".into(),
                leader: Some(1),
                term: 2,
                last_log: Some(9),
                committed: Some(9),
                applied: Some(9),
                voters: vec![1, 2, 3],
                learners: vec![],
                matched: vec![(2, Some(9)), (3, None)],
                quorum_ack_ms: Some(12),
            }],
        });
        match decode::<Answer>(&encode(&status)).unwrap() {
            Answer::Status(s) => assert_eq!(s.groups[0].matched, vec![(2, Some(9)), (3, None)]),
            other => panic!("{other:?}"),
        }
    }
}
