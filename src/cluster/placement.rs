//! Where each group's voters go: pure and deterministic (the same inputs give the same
//! plan on every node, which the static formation relies on).
//!
//! Rules, in order:
//! - a group has `min(replication_factor, eligible nodes)` voters, at most one per node;
//! - active members are eligible; draining ones keep the voters they have only while
//!   there are too few active members to replace them; joining and removed ones get none;
//! - sticky: a voter on an eligible node stays; missing voters go to the eligible nodes
//!   holding the fewest, ties to the lower id; excess voters leave the nodes holding the
//!   most;
//! - spread: while one active node holds two more voters than another, one voter moves;
//! - leaders: each group's first voter is its preferred leader; a group keeps its
//!   preferred leader while that node leads no more than its fair share, otherwise the
//!   voter preferred for the fewest groups so far takes it.

use std::collections::{BTreeMap, BTreeSet};

use super::records::MemberState;
use super::wire::NodeId;
use crate::raft::GroupId;

/// Voters per group (the preferred leader first).
pub type Plan = BTreeMap<GroupId, Vec<NodeId>>;

/// The placement the groups should have. `current` holds what they have (or what was
/// planned last); groups missing from it start empty.
pub fn plan(
    groups: &[GroupId],
    members: &[(NodeId, MemberState)],
    current: &Plan,
    replication_factor: usize,
) -> Plan {
    let active: BTreeSet<NodeId> =
        members.iter().filter(|(_, s)| *s == MemberState::Active).map(|(id, _)| *id).collect();
    let draining: BTreeSet<NodeId> =
        members.iter().filter(|(_, s)| *s == MemberState::Draining).map(|(id, _)| *id).collect();
    let keep_draining = active.len() < replication_factor;
    let eligible = |id: &NodeId| active.contains(id) || (keep_draining && draining.contains(id));
    let want =
        replication_factor.min(active.len() + if keep_draining { draining.len() } else { 0 });
    let mut out: Plan = BTreeMap::new();
    if want == 0 {
        for g in groups {
            out.insert(*g, current.get(g).cloned().unwrap_or_default());
        }
        return out;
    }
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|id| (*id, 0)).collect();
    for g in groups {
        for v in current.get(g).into_iter().flatten().filter(|v| eligible(v)) {
            *load.entry(*v).or_default() += 1;
        }
    }
    for g in groups {
        let mut voters: Vec<NodeId> =
            current.get(g).into_iter().flatten().copied().filter(eligible).collect();
        voters.dedup();
        while voters.len() > want {
            // The most loaded leaves (ties: the higher id); draining ones first.
            let Some((i, _)) = voters.iter().enumerate().max_by_key(|(_, v)| {
                (draining.contains(v), load.get(*v).copied().unwrap_or(0), **v)
            }) else {
                break;
            };
            let gone = voters.remove(i);
            if let Some(l) = load.get_mut(&gone) {
                *l = l.saturating_sub(1);
            }
        }
        while voters.len() < want {
            let pick = active
                .iter()
                .filter(|id| !voters.contains(id))
                .min_by_key(|id| (load.get(*id).copied().unwrap_or(0), **id));
            let Some(&id) = pick else { break };
            voters.push(id);
            *load.entry(id).or_default() += 1;
        }
        out.insert(*g, voters);
    }
    // Spread: move one voter at a time from the most to the least loaded active node.
    for _ in 0..groups.len() * replication_factor {
        let (Some((&max_id, &max)), Some((&min_id, &min))) = (
            load.iter().max_by_key(|(id, l)| (**l, std::cmp::Reverse(**id))),
            load.iter().min_by_key(|(id, l)| (**l, **id)),
        ) else {
            break;
        };
        if max <= min + 1 {
            break;
        }
        let Some(voters) = out.values_mut().find(|v| v.contains(&max_id) && !v.contains(&min_id))
        else {
            break;
        };
        for v in voters.iter_mut() {
            if *v == max_id {
                *v = min_id;
            }
        }
        *load.entry(max_id).or_default() -= 1;
        *load.entry(min_id).or_default() += 1;
    }
    // Preferred leaders, spread evenly.
    let voters_total: BTreeSet<NodeId> = out.values().flatten().copied().collect();
    let fair = groups.len().div_ceil(voters_total.len().max(1));
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for g in groups {
        let Some(voters) = out.get_mut(g) else { continue };
        if voters.is_empty() {
            continue;
        }
        let was = current.get(g).and_then(|c| c.first()).copied();
        let keep = was
            .filter(|w| voters.contains(w) && active.contains(w))
            .filter(|w| leads.get(w).copied().unwrap_or(0) < fair);
        let leader = keep.unwrap_or_else(|| {
            *voters
                .iter()
                .min_by_key(|v| (!active.contains(v), leads.get(*v).copied().unwrap_or(0), **v))
                .unwrap_or(&voters[0])
        });
        *leads.entry(leader).or_default() += 1;
        if let Some(i) = voters.iter().position(|v| *v == leader) {
            voters.swap(0, i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(ids: &[NodeId]) -> Vec<(NodeId, MemberState)> {
        ids.iter().map(|id| (*id, MemberState::Active)).collect()
    }

    fn groups(n: u32) -> Vec<GroupId> {
        (0..n).collect()
    }

    fn loads(p: &Plan) -> BTreeMap<NodeId, usize> {
        let mut l = BTreeMap::new();
        for v in p.values().flatten() {
            *l.entry(*v).or_default() += 1;
        }
        l
    }

    fn leaders(p: &Plan) -> BTreeMap<NodeId, usize> {
        let mut l = BTreeMap::new();
        for v in p.values() {
            *l.entry(v[0]).or_default() += 1;
        }
        l
    }

    #[test]
    fn three_nodes_hold_every_group_with_leaders_spread() {
        let p = plan(&groups(17), &active(&[1, 2, 3]), &Plan::new(), 3);
        assert!(p.values().all(|v| {
            let s: BTreeSet<_> = v.iter().collect();
            s.len() == 3
        }));
        let l = leaders(&p);
        let mut counts: Vec<_> = l.values().copied().collect();
        counts.sort();
        assert_eq!(counts, vec![5, 6, 6]);
        // Deterministic, and stable when planned again from itself.
        assert_eq!(p, plan(&groups(17), &active(&[1, 2, 3]), &Plan::new(), 3));
        assert_eq!(p, plan(&groups(17), &active(&[1, 2, 3]), &p, 3));
    }

    #[test]
    fn one_node_and_replication_capped_by_node_count() {
        let p = plan(&groups(3), &active(&[7]), &Plan::new(), 3);
        assert!(p.values().all(|v| v == &vec![7]));
        let p2 = plan(&groups(3), &active(&[7, 8]), &p, 3);
        assert!(p2.values().all(|v| v.len() == 2 && v.contains(&7) && v.contains(&8)));
    }

    #[test]
    fn growing_moves_few_voters_and_evens_the_load() {
        let three = plan(&groups(17), &active(&[1, 2, 3]), &Plan::new(), 3);
        let four = plan(&groups(17), &active(&[1, 2, 3, 4]), &three, 3);
        let l = loads(&four);
        let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
        assert!(max - min <= 1, "{l:?}");
        // 51 voters over 4 nodes: node 4 takes 12 or 13 of them, each one a single move.
        let moved: usize =
            three.iter().map(|(g, v)| v.iter().filter(|n| !four[g].contains(n)).count()).sum();
        assert_eq!(moved, l[&4]);
        assert!(four.values().all(|v| v.len() == 3));
    }

    #[test]
    fn draining_and_removed_nodes_lose_voters_only_when_others_can_take_them() {
        let four = plan(&groups(9), &active(&[1, 2, 3, 4]), &Plan::new(), 3);
        let mut m = active(&[1, 2, 3]);
        m.push((4, MemberState::Draining));
        let drained = plan(&groups(9), &m, &four, 3);
        assert!(drained.values().all(|v| !v.contains(&4) && v.len() == 3), "{drained:?}");
        // With three nodes a draining one keeps its voters (nobody can take them) but
        // leads nothing.
        let three = plan(&groups(9), &active(&[1, 2, 3]), &Plan::new(), 3);
        let mut m = active(&[1, 2]);
        m.push((3, MemberState::Draining));
        let kept = plan(&groups(9), &m, &three, 3);
        assert!(kept.values().all(|v| v.len() == 3 && v[0] != 3), "{kept:?}");
        let mut m = active(&[1, 2]);
        m.push((3, MemberState::Removed));
        let removed = plan(&groups(9), &m, &three, 3);
        assert!(removed.values().all(|v| v.len() == 2 && !v.contains(&3)));
    }
}
