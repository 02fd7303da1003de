//! Cluster endpoints: `GET /api/cluster` (this node, members with their health, every
//! group with its voters, learners, leader, term and replication lag, moves in
//! progress), `GET /api/cluster/members`, `GET /api/cluster/shards`, `POST
//! /api/cluster/init`, `POST /api/cluster/join`, `POST
//! /api/cluster/members/{id}/drain|undrain`, `DELETE /api/cluster/members/{id}`, and the
//! fault layer (`GET|PUT|DELETE /api/cluster/faults`, only on a node started with
//! `cluster.fault_injection`). A single node answers 404 `not_clustered`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{parse, ApiError};
use super::{error, AdminState};
use crate::cluster::faults::LinkFaults;
use crate::cluster::wire::NodeStatus;
use crate::cluster::{Cluster, ControlError, MemberState};

/// A member as the cluster knows it, and whether it answered just now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: u64,
    pub state: MemberState,
    pub cluster_addr: String,
    pub mqtt_addr: Option<String>,
    pub admin_addr: Option<String>,
    /// It answered a status request within a second.
    pub reachable: bool,
    /// Its own view: on the majority side of the meta group.
    pub ready: Option<bool>,
    /// Groups it leads now.
    pub leads: Vec<u32>,
}

/// One follower's replication on a group's leader.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FollowerLag {
    pub node: u64,
    /// Last log index the leader knows the follower holds.
    pub matched: Option<u64>,
    /// Entries behind the leader's last log.
    pub lag: u64,
}

/// One Raft group across the cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardView {
    pub group: u32,
    /// "meta" or "shard".
    pub kind: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Stored placement (the preferred leader first); voters move toward it.
    pub placement: Vec<u64>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub followers: Vec<FollowerLag>,
    /// Milliseconds since a quorum last acknowledged the leader.
    pub quorum_ack_ms: Option<u64>,
    /// Membership differs from placement: a move is under way.
    pub moving: bool,
}

/// `GET /api/cluster`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub cluster: String,
    /// The node that answered.
    pub node: u64,
    /// On the majority side of the meta group.
    pub healthy: bool,
    pub replication_factor: usize,
    pub members: Vec<MemberView>,
    pub groups: Vec<ShardView>,
    /// Groups whose membership is being moved toward their placement.
    pub moving: Vec<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct JoinRequest {
    /// The cluster address (`host:port`) of any member.
    pub address: Option<String>,
}

/// Faults on the link to one peer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerFaults {
    pub peer: u64,
    #[serde(flatten)]
    pub faults: LinkFaults,
}

/// Why a cluster request was refused; answered as a JSON error.
pub enum Fail {
    NotClustered,
    FaultsOff,
    Bad(String),
    Control(ControlError),
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::NotClustered => error(
                StatusCode::NOT_FOUND,
                "not_clustered",
                "this node is a single node (no cluster.bind)",
            ),
            Fail::FaultsOff => error(
                StatusCode::FORBIDDEN,
                "fault_injection_off",
                "start the node with cluster.fault_injection = true to inject faults",
            ),
            Fail::Bad(m) => error(StatusCode::BAD_REQUEST, "bad_request", &m),
            Fail::Control(ControlError::NoSuchMember(id)) => {
                error(StatusCode::NOT_FOUND, "not_found", &format!("no member {id}"))
            }
            Fail::Control(ControlError::Refused(m)) => error(StatusCode::CONFLICT, "refused", &m),
            Fail::Control(ControlError::Write(e)) => {
                error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string())
            }
        }
    }
}

fn cluster(s: &AdminState) -> Result<Arc<Cluster>, Fail> {
    s.cluster.get().cloned().ok_or(Fail::NotClustered)
}

async fn view(c: &Cluster) -> ClusterView {
    let statuses: BTreeMap<u64, Option<NodeStatus>> = c.gather().await.into_iter().collect();
    let placements: BTreeMap<u32, Vec<u64>> =
        c.placements().into_iter().map(|(g, p)| (g, p.voters)).collect();
    let moving = c.moving();
    let members = c
        .members()
        .into_iter()
        .map(|m| {
            let st = statuses.get(&m.info.id).and_then(|s| s.as_ref());
            MemberView {
                id: m.info.id,
                state: m.state,
                cluster_addr: m.info.cluster_addr,
                mqtt_addr: m.info.mqtt_addr,
                admin_addr: m.info.admin_addr,
                reachable: st.is_some(),
                ready: st.map(|s| s.ready),
                leads: st
                    .map(|s| {
                        s.groups.iter().filter(|g| g.role == "leader").map(|g| g.group).collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    // Each group as its leader (highest term) reports it; else as any member does.
    let mut best: BTreeMap<u32, crate::cluster::wire::GroupStatus> = BTreeMap::new();
    for s in statuses.values().flatten() {
        for g in &s.groups {
            let better = match best.get(&g.group) {
                None => g.initialized,
                Some(b) => (g.role == "leader", g.term) > (b.role == "leader", b.term),
            };
            if better {
                best.insert(g.group, g.clone());
            }
        }
    }
    let groups = best
        .into_values()
        .map(|g| {
            let last = g.last_log.unwrap_or(0);
            ShardView {
                group: g.group,
                kind: if g.group == 0 { "meta".into() } else { "shard".into() },
                leader: g.leader,
                term: g.term,
                placement: placements.get(&g.group).cloned().unwrap_or_default(),
                followers: g
                    .matched
                    .iter()
                    .filter(|(id, _)| Some(*id) != g.leader)
                    .map(|(id, m)| FollowerLag {
                        node: *id,
                        matched: *m,
                        lag: last.saturating_sub(m.unwrap_or(0)),
                    })
                    .collect(),
                voters: g.voters,
                learners: g.learners,
                last_log: g.last_log,
                applied: g.applied,
                quorum_ack_ms: g.quorum_ack_ms,
                moving: moving.contains(&g.group),
            }
        })
        .collect();
    ClusterView {
        cluster: c.config().name.clone(),
        node: c.node(),
        healthy: c.healthy(),
        replication_factor: c.config().replication_factor,
        members,
        groups,
        moving,
    }
}

/// The cluster: members, groups and moves in progress.
#[utoipa::path(get, path = "/api/cluster", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 404, body = ApiError)))]
pub async fn status(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    Ok(Json(view(&c).await).into_response())
}

/// Members with their state and health.
#[utoipa::path(get, path = "/api/cluster/members", tag = "cluster",
    responses((status = 200, body = Vec<MemberView>), (status = 404, body = ApiError)))]
pub async fn members(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    Ok(Json(view(&c).await.members).into_response())
}

/// Every group: placement, voters, learners, leader, term and follower lag.
#[utoipa::path(get, path = "/api/cluster/shards", tag = "cluster",
    responses((status = 200, body = Vec<ShardView>), (status = 404, body = ApiError)))]
pub async fn shards(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    Ok(Json(view(&c).await.groups).into_response())
}

/// Makes this fresh node the first node of a new cluster.
#[utoipa::path(post, path = "/api/cluster/init", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 409, body = ApiError)))]
pub async fn init(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    c.init().await.map_err(Fail::Control)?;
    Ok(Json(view(&c).await).into_response())
}

/// Makes this fresh node join the cluster of the member at `address`.
#[utoipa::path(post, path = "/api/cluster/join", tag = "cluster", request_body = JoinRequest,
    responses((status = 202, description = "joining; watch /api/cluster"),
        (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn join(State(s): State<AdminState>, b: axum::body::Bytes) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    let req: JoinRequest = parse(&b).map_err(Fail::Bad)?;
    let address = req.address.ok_or_else(|| Fail::Bad("address: required".into()))?;
    crate::config::check_host_port(&address).map_err(|e| Fail::Bad(format!("address: {e}")))?;
    c.join(&address).await.map_err(Fail::Control)?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"joining": address}))).into_response())
}

async fn set_state(s: AdminState, id: u64, state: MemberState) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    let m = c.set_state(id, state).await.map_err(Fail::Control)?;
    Ok(Json(serde_json::json!({"id": m.info.id, "state": m.state})).into_response())
}

/// Moves the member's leaders and (where other nodes can take them) replicas away.
#[utoipa::path(post, path = "/api/cluster/members/{id}/drain", tag = "cluster",
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, description = "draining"), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn drain(State(s): State<AdminState>, Path(id): Path<u64>) -> Result<Response, Fail> {
    set_state(s, id, MemberState::Draining).await
}

/// Makes a draining member active again.
#[utoipa::path(post, path = "/api/cluster/members/{id}/undrain", tag = "cluster",
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, description = "active"), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn undrain(State(s): State<AdminState>, Path(id): Path<u64>) -> Result<Response, Fail> {
    set_state(s, id, MemberState::Active).await
}

/// Removes a member for good (refused while it would leave a group without a majority).
#[utoipa::path(delete, path = "/api/cluster/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, description = "removed"), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn remove(State(s): State<AdminState>, Path(id): Path<u64>) -> Result<Response, Fail> {
    set_state(s, id, MemberState::Removed).await
}

/// A digest of one group's data on this node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupDigest {
    pub group: u32,
    /// FNV-1a over the group's keys and values in key order (hex).
    pub digest: String,
    /// The log index the digest was taken at.
    pub applied: Option<u64>,
    /// This node is a voter or learner of the group (others hold no copy).
    pub member: bool,
}

/// Digests of this node's copy of every group: replicas that applied the same log have
/// the same digest (for checks after faults heal).
#[utoipa::path(get, path = "/api/cluster/digests", tag = "cluster",
    responses((status = 200, body = Vec<GroupDigest>), (status = 404, body = ApiError)))]
pub async fn digests(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = cluster(&s)?;
    let groups = c.groups();
    let out: Vec<GroupDigest> = groups
        .ids()
        .filter_map(|g| {
            let (d, applied) = groups.digest(g)?;
            let member = groups.raft(g).is_some_and(|r| {
                r.metrics().borrow().membership_config.membership().get_node(&c.node()).is_some()
            });
            Some(GroupDigest { group: g, digest: format!("{d:016x}"), applied, member })
        })
        .collect();
    Ok(Json(out).into_response())
}

fn faults_on(s: &AdminState) -> Result<Arc<Cluster>, Fail> {
    let c = cluster(s)?;
    if !c.config().fault_injection {
        return Err(Fail::FaultsOff);
    }
    Ok(c)
}

fn fault_list(c: &Cluster) -> Vec<PeerFaults> {
    c.transport
        .faults()
        .list()
        .into_iter()
        .map(|(peer, faults)| PeerFaults { peer, faults })
        .collect()
}

/// The transport faults in force on this node, by peer.
#[utoipa::path(get, path = "/api/cluster/faults", tag = "cluster",
    responses((status = 200, body = Vec<PeerFaults>), (status = 403, body = ApiError)))]
pub async fn list_faults(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = faults_on(&s)?;
    Ok(Json(fault_list(&c)).into_response())
}

/// Sets the faults of this node's link to one peer (all zero clears them).
#[utoipa::path(put, path = "/api/cluster/faults", tag = "cluster", request_body = PeerFaults,
    responses((status = 200, body = Vec<PeerFaults>), (status = 400, body = ApiError),
        (status = 403, body = ApiError)))]
pub async fn set_faults(
    State(s): State<AdminState>,
    b: axum::body::Bytes,
) -> Result<Response, Fail> {
    let c = faults_on(&s)?;
    let v: PeerFaults = parse(&b).map_err(Fail::Bad)?;
    for (name, f) in [("outbound", &v.faults.outbound), ("inbound", &v.faults.inbound)] {
        if !(0.0..=1.0).contains(&f.drop) {
            return Err(Fail::Bad(format!("{name}.drop: between 0 and 1")));
        }
    }
    if v.peer == c.node() || v.peer == 0 {
        return Err(Fail::Bad("peer: another node's id".into()));
    }
    c.transport.faults().set(v.peer, v.faults);
    Ok(Json(fault_list(&c)).into_response())
}

/// Removes every fault on this node.
#[utoipa::path(delete, path = "/api/cluster/faults", tag = "cluster",
    responses((status = 200, body = Vec<PeerFaults>), (status = 403, body = ApiError)))]
pub async fn heal(State(s): State<AdminState>) -> Result<Response, Fail> {
    let c = faults_on(&s)?;
    c.transport.faults().heal();
    Ok(Json(Vec::<PeerFaults>::new()).into_response())
}
