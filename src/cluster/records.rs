//! What the meta group keeps about the cluster: its members (addresses and states) and
//! the placement of every group (its voters, the preferred leader first).
//!
//! Owns: the record types, their keys (`dnode\0{id}`, `dplace\0{group}`, big-endian so
//! they list in order) and the pure apply logic of [`ClusterCommand`]. Every write is
//! compare-and-set on the record's version, or (registration) idempotent, so a retried
//! command never applies twice.

use serde::{Deserialize, Serialize};

use super::wire::{MemberInfo, NodeId};
use crate::raft::machine::{Kv, Write};
use crate::raft::{GroupId, Response};
use crate::store::{decode, encode, StoreError};

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Registered; catching up with the meta group before it gets replicas.
    Joining,
    /// Serving and eligible for replicas and leaders.
    Active,
    /// Leaders and (where other nodes can take them) replicas are moving away.
    Draining,
    /// Out of the cluster for good: a tombstone, so the id cannot come back.
    Removed,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Draining => "draining",
            MemberState::Removed => "removed",
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub info: MemberInfo,
    pub state: MemberState,
    /// Bumped by every write of the record.
    pub version: u64,
}

/// A group's placement: its voters, the preferred leader first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub voters: Vec<NodeId>,
    pub version: u64,
}

/// Commands on the cluster's records (meta group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Adds a member in `state`, or updates a known member's addresses (its state kept).
    /// A removed member stays removed: the answer is a conflict.
    Register { info: MemberInfo, state: MemberState },
    /// Sets a member's state if its version is still `expect`.
    SetState { id: NodeId, state: MemberState, expect: u64 },
    /// Sets a group's placement if its version is still `expect` (`None`: none yet).
    PutPlacement { group: GroupId, voters: Vec<NodeId>, expect: Option<u64> },
}

const MEMBER_PREFIX: &[u8] = b"dnode\0";
const PLACEMENT_PREFIX: &[u8] = b"dplace\0";

fn member_key(id: NodeId) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn placement_key(group: GroupId) -> Vec<u8> {
    let mut k = PLACEMENT_PREFIX.to_vec();
    k.extend_from_slice(&group.to_be_bytes());
    k
}

pub fn read_member(kv: &impl Kv, id: NodeId) -> Result<Option<Member>, StoreError> {
    kv.get(&member_key(id))?.map(|v| decode(&v)).transpose()
}

pub fn read_placement(kv: &impl Kv, group: GroupId) -> Result<Option<Placement>, StoreError> {
    kv.get(&placement_key(group))?.map(|v| decode(&v)).transpose()
}

fn scan<T: serde::de::DeserializeOwned>(kv: &impl Kv, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
    let mut keys = Vec::new();
    kv.scan_keys(prefix, &mut |k| {
        keys.push(k.to_vec());
        true
    })?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(v) = kv.get(&k)? {
            out.push(decode(&v)?);
        }
    }
    Ok(out)
}

/// Every member, removed ones included, by id.
pub fn members(kv: &impl Kv) -> Result<Vec<Member>, StoreError> {
    scan(kv, MEMBER_PREFIX)
}

/// Every stored placement, by group.
pub fn placements(kv: &impl Kv) -> Result<Vec<(GroupId, Placement)>, StoreError> {
    let mut keys = Vec::new();
    kv.scan_keys(PLACEMENT_PREFIX, &mut |k| {
        keys.push(k.to_vec());
        true
    })?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(g) = k.strip_prefix(PLACEMENT_PREFIX).and_then(|b| b.try_into().ok()) else {
            continue;
        };
        if let Some(v) = kv.get(&k)? {
            out.push((GroupId::from_be_bytes(g), decode(&v)?));
        }
    }
    Ok(out)
}

/// Applies one cluster command: the writes and the answer.
pub fn apply(kv: &impl Kv, cmd: &ClusterCommand) -> Result<(Vec<Write>, Response), StoreError> {
    match cmd {
        ClusterCommand::Register { info, state } => {
            let old = read_member(kv, info.id)?;
            let member = match old {
                Some(m) if m.state == MemberState::Removed => {
                    return Ok((Vec::new(), Response::Conflict { found: Some(m.version) }))
                }
                Some(m) if &m.info == info => return Ok((Vec::new(), Response::Applied)),
                Some(m) => Member { info: info.clone(), state: m.state, version: m.version + 1 },
                None => Member { info: info.clone(), state: *state, version: 1 },
            };
            Ok((vec![(member_key(info.id), Some(encode(&member)?))], Response::Applied))
        }
        ClusterCommand::SetState { id, state, expect } => {
            let Some(old) = read_member(kv, *id)? else {
                return Ok((Vec::new(), Response::Conflict { found: None }));
            };
            if old.version != *expect || old.state == MemberState::Removed {
                return Ok((Vec::new(), Response::Conflict { found: Some(old.version) }));
            }
            let m = Member { state: *state, version: old.version + 1, ..old };
            Ok((vec![(member_key(*id), Some(encode(&m)?))], Response::Applied))
        }
        ClusterCommand::PutPlacement { group, voters, expect } => {
            let found = read_placement(kv, *group)?.map(|p| p.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            let p = Placement { voters: voters.clone(), version: found.unwrap_or(0) + 1 };
            Ok((vec![(placement_key(*group), Some(encode(&p)?))], Response::Applied))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn run(kv: &mut BTreeMap<Vec<u8>, Vec<u8>>, cmd: &ClusterCommand) -> Response {
        let (writes, resp) = apply(kv, cmd).unwrap();
        for (k, v) in writes {
            match v {
                Some(v) => kv.insert(k, v),
                None => kv.remove(&k),
            };
        }
        resp
    }

    fn info(id: NodeId, addr: &str) -> MemberInfo {
        MemberInfo { id, cluster_addr: addr.into(), mqtt_addr: None, admin_addr: None }
    }

    #[test]
    fn registration_is_idempotent_and_a_removed_member_stays_removed() {
        let mut kv = BTreeMap::new();
        let reg = |id, addr: &str, state| ClusterCommand::Register { info: info(id, addr), state };
        assert_eq!(run(&mut kv, &reg(2, "h:2", MemberState::Joining)), Response::Applied);
        assert_eq!(run(&mut kv, &reg(2, "h:2", MemberState::Active)), Response::Applied);
        let m = read_member(&kv, 2).unwrap().unwrap();
        assert_eq!((m.state, m.version), (MemberState::Joining, 1), "state kept, no new version");
        // A new address updates the record, not the state.
        run(&mut kv, &reg(2, "h:22", MemberState::Active));
        let m = read_member(&kv, 2).unwrap().unwrap();
        assert_eq!(
            (m.info.cluster_addr.as_str(), m.state, m.version),
            ("h:22", MemberState::Joining, 2)
        );
        let set = |state, expect| ClusterCommand::SetState { id: 2, state, expect };
        assert_eq!(
            run(&mut kv, &set(MemberState::Active, 1)),
            Response::Conflict { found: Some(2) }
        );
        assert_eq!(run(&mut kv, &set(MemberState::Removed, 2)), Response::Applied);
        assert_eq!(
            run(&mut kv, &reg(2, "h:2", MemberState::Active)),
            Response::Conflict { found: Some(3) }
        );
        assert_eq!(
            run(&mut kv, &set(MemberState::Active, 3)),
            Response::Conflict { found: Some(3) }
        );
        run(&mut kv, &reg(1, "h:1", MemberState::Active));
        let ids: Vec<_> = members(&kv).unwrap().iter().map(|m| m.info.id).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn placements_are_compare_and_set() {
        let mut kv = BTreeMap::new();
        let put = |group, voters: &[NodeId], expect| ClusterCommand::PutPlacement {
            group,
            voters: voters.to_vec(),
            expect,
        };
        assert_eq!(run(&mut kv, &put(3, &[1, 2, 3], None)), Response::Applied);
        assert_eq!(run(&mut kv, &put(3, &[1, 2], None)), Response::Conflict { found: Some(1) });
        assert_eq!(run(&mut kv, &put(3, &[2, 1, 3], Some(1))), Response::Applied);
        assert_eq!(run(&mut kv, &put(0, &[1], None)), Response::Applied);
        let all = placements(&kv).unwrap();
        assert_eq!(all.iter().map(|(g, _)| *g).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(all[1].1, Placement { voters: vec![2, 1, 3], version: 2 });
    }
}
