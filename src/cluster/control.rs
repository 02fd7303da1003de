//! The cluster's background work, each a loop on `cluster.placement_interval_ms`:
//!
//! - **registration**: a node registers itself (its addresses) in the meta group at every
//!   start; a node that joins first asks a running node (`Request::Join`) until the meta
//!   group has added it.
//! - **address book**: member records tell the transport where peers are; removed
//!   members are forgotten (and refused at the hello).
//! - **controller** (the meta group's leader only): adopts the placement groups have
//!   when none is stored, promotes caught-up joining members to active, and moves
//!   placement toward [`super::placement::plan`] one group at a time, only once every
//!   group's membership matches its stored placement (a move in progress finishes
//!   first; a crash of any node resumes from what is stored and what the groups have).
//! - **reconciler** (every node, for each group it leads): takes one membership step
//!   toward the stored placement: add a missing node as learner; once every voter-to-be
//!   is caught up, replace the voters (joint consensus); drop nodes that are neither.
//!   The meta group also keeps every other member as a learner, so every node can read
//!   the registry, credentials and policies locally.
//! - **metrics**: group and link gauges.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::sync::watch;

use super::placement;
use super::records::{self, ClusterCommand, MemberState};
use super::transport::Class;
use super::wire::{Answer, MemberInfo, NodeId, NodeStatus, Request};
use super::Cluster;
use crate::raft::{Command, GroupId, Response};

/// A learner this many entries behind the leader (or closer) counts as caught up.
const CAUGHT_UP_LAG: u64 = 64;
/// How long the other voters keep out of an election while a leader hands off.
const HOLD_MS: u32 = 4000;
/// How long a leader waits for its successor before it takes its hand-off back.
const YIELD_MS: u64 = 3000;
/// How long a leader handing off waits for its successor to have its whole log.
const CATCH_UP_MS: u64 = 1000;

/// Runs `f` every `every` until `shutdown` flips.
pub(super) fn every<F, Fut>(every: Duration, mut shutdown: watch::Receiver<bool>, mut f: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stop {
                return;
            }
            f().await;
        }
    });
}

impl Cluster {
    /// Whether the meta group already has this node as a member (voter or learner).
    fn in_meta(&self) -> bool {
        self.groups.raft(0).is_some_and(|r| {
            r.metrics().borrow().membership_config.membership().get_node(&self.me.id).is_some()
        })
    }

    /// Registers this node; a joining node first asks its join addresses to let it in.
    /// Returns once registered (retries until then).
    pub(super) async fn register(
        self: Arc<Self>,
        state: MemberState,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut pause = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let join = self.join.lock().clone();
            let done = if !self.in_meta() && !join.is_empty() {
                self.ask_to_join(&join).await
            } else if !self.in_meta() {
                // A fresh node that neither formed nor joins: it waits for
                // `ctl cluster init` or `ctl cluster join`.
                false
            } else {
                let cmd =
                    Command::Cluster(ClusterCommand::Register { info: self.me.clone(), state });
                match self.groups.write(0, cmd).await {
                    Ok(Response::Applied) => true,
                    Ok(Response::Conflict { .. }) => {
                        tracing::error!(
                            message = "this node was removed from the cluster; it serves nothing until its data directory is replaced",
                            node = self.me.id
                        );
                        true
                    }
                    Ok(_) | Err(_) => false,
                }
            };
            if done && self.in_meta() {
                tracing::info!(message = "registered in the cluster", node = self.me.id);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|s| *s) => return,
                _ = self.kick.notified() => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn ask_to_join(&self, join: &[String]) -> bool {
        for addr in join {
            let req = Request::Join(self.me.clone());
            match self.transport.call_address(addr, req, self.rpc_timeout()).await {
                Ok((via, Answer::Joined { members })) => {
                    for m in &members {
                        self.transport.learn(m.id, &m.cluster_addr);
                    }
                    tracing::info!(
                        message = "join accepted; waiting to be added",
                        via,
                        members = members.len()
                    );
                    return true;
                }
                Ok((via, other)) => {
                    tracing::warn!(message = "unexpected join answer", via, answer = ?other)
                }
                Err(e) => {
                    tracing::warn!(message = "join attempt failed", address = %addr, error = %e)
                }
            }
        }
        false
    }

    /// Keeps the transport's address book in step with the member records.
    pub(super) fn sync_addresses(&self) {
        let Some(data) = self.groups.data(0) else { return };
        let Ok(members) = records::members(data) else { return };
        for m in members {
            if m.info.id == self.me.id {
                continue;
            }
            if m.state == MemberState::Removed {
                self.transport.forget(m.info.id);
            } else {
                self.transport.learn(m.info.id, &m.info.cluster_addr);
            }
        }
    }

    /// Every node's status (this one's included), asked in parallel.
    pub async fn gather(&self) -> Vec<(NodeId, Option<NodeStatus>)> {
        let ids: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| m.state != MemberState::Removed)
            .map(|m| m.info.id)
            .chain(std::iter::once(self.me.id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let asks = ids.iter().map(|id| {
            let t = self.transport.clone();
            let timeout = self.rpc_timeout().min(Duration::from_secs(1));
            async move {
                match t.call(*id, Class::Raft, Request::Status, timeout).await {
                    Ok(Answer::Status(s)) => Some(s),
                    _ => None,
                }
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        ids.into_iter().zip(answers).collect()
    }

    /// The meta leader's placement work for one tick.
    pub(super) async fn control(&self) {
        if !self.groups.is_leader(0) {
            return;
        }
        let Some(meta) = self.groups.data(0) else { return };
        let (Ok(members), Ok(stored)) = (records::members(meta), records::placements(meta)) else {
            return;
        };
        self.promote_joiners(&members).await;
        let statuses = self.gather().await;
        // Each group's membership as its leader (highest term) reports it.
        let mut actual: BTreeMap<GroupId, (u64, Vec<NodeId>)> = BTreeMap::new();
        for s in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
            for g in s.groups.iter().filter(|g| g.role == "leader") {
                let better = actual.get(&g.group).is_none_or(|(t, _)| g.term > *t);
                if better {
                    actual.insert(g.group, (g.term, g.voters.clone()));
                }
            }
        }
        let stored: BTreeMap<GroupId, records::Placement> = stored.into_iter().collect();
        let all: Vec<GroupId> = self.groups.ids().collect();
        let set = |v: &[NodeId]| v.iter().copied().collect::<BTreeSet<_>>();
        let mut moving = Vec::new();
        for g in &all {
            match (stored.get(g), actual.get(g)) {
                (None, Some((_, voters))) => {
                    // A group formed before placement was stored: adopt what it has.
                    let cmd = Command::Cluster(ClusterCommand::PutPlacement {
                        group: *g,
                        voters: voters.clone(),
                        expect: None,
                    });
                    let _ = self.groups.write(0, cmd).await;
                    self.metrics.membership_changes.with_label_values(&["adopt"]).inc();
                    return;
                }
                (Some(p), Some((_, voters))) if set(&p.voters) != set(voters) => moving.push(*g),
                (_, None) => moving.push(*g),
                _ => {}
            }
        }
        *self.moving.lock() = moving.clone();
        // A voter that has no member record yet (it has not registered since the cluster
        // formed) would look like a lost node: wait for it rather than plan around it.
        let known: BTreeSet<NodeId> = members.iter().map(|m| m.info.id).collect();
        if actual.values().flat_map(|(_, v)| v).any(|id| !known.contains(id)) {
            return;
        }
        let current: placement::Plan = stored.iter().map(|(g, p)| (*g, p.voters.clone())).collect();
        let states: Vec<(NodeId, MemberState)> =
            members.iter().map(|m| (m.info.id, m.state)).collect();
        let plan = placement::plan(&all, &states, &current, self.cfg.replication_factor);
        let write =
            |g: GroupId, want: Vec<NodeId>, have: &records::Placement, kind: &'static str| {
                let cmd = Command::Cluster(ClusterCommand::PutPlacement {
                    group: g,
                    voters: want.clone(),
                    expect: Some(have.version),
                });
                (cmd, (g, have.voters.clone(), want, kind))
            };
        // Leader preferences change no membership (leaders hand off one at a time on
        // their own): written even while groups move, so hand-offs aim right.
        let mut cmds = Vec::new();
        let mut moves = Vec::new();
        for g in &all {
            let (Some(want), Some(have)) = (plan.get(g), stored.get(g)) else { continue };
            if want == &have.voters {
                continue;
            }
            if set(want) == set(&have.voters) {
                cmds.push(write(*g, want.clone(), have, "leader_preference"));
            } else {
                moves.push(write(*g, want.clone(), have, "placement_move"));
            }
        }
        // One group's voters move at a time, and only once no other group is moving.
        if moving.is_empty() {
            cmds.extend(moves.into_iter().take(1));
        }
        for (cmd, (g, from, to, kind)) in cmds {
            tracing::info!(message = "placement change", group = g, ?from, ?to, kind);
            if self.groups.write(0, cmd).await.is_ok() {
                self.metrics.membership_changes.with_label_values(&[kind]).inc();
            }
        }
    }

    /// A joining member that the meta group has caught up becomes active.
    async fn promote_joiners(&self, members: &[records::Member]) {
        let Some(raft) = self.groups.raft(0) else { return };
        let m = raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        for j in members.iter().filter(|m| m.state == MemberState::Joining) {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&j.info.id).copied().flatten())
                .map(|l| l.index);
            if matched.is_some_and(|i| i + CAUGHT_UP_LAG >= last) {
                let cmd = Command::Cluster(ClusterCommand::SetState {
                    id: j.info.id,
                    state: MemberState::Active,
                    expect: j.version,
                });
                if let Ok(Response::Applied) = self.groups.write(0, cmd).await {
                    tracing::info!(message = "member active", node = j.info.id);
                }
            }
        }
    }

    /// One membership step for each group this node leads.
    pub(super) async fn reconcile(&self) {
        let Some(meta) = self.groups.data(0) else { return };
        let (Ok(members), Ok(stored)) = (records::members(meta), records::placements(meta)) else {
            return;
        };
        let info: BTreeMap<NodeId, &MemberInfo> = members
            .iter()
            .filter(|m| m.state != MemberState::Removed)
            .map(|m| (m.info.id, &m.info))
            .collect();
        let my_state = members.iter().find(|m| m.info.id == self.me.id).map(|m| m.state);
        let active = members.iter().filter(|m| m.state == MemberState::Active).count().max(1);
        let fair = self.groups.ids().count().div_ceil(active);
        let mut leading = self.groups.ids().filter(|g| self.groups.is_leader(*g)).count();
        let mut handed_off = false;
        for (g, p) in stored {
            let Some(raft) = self.groups.raft(g) else { continue };
            // A node that is out of a group's placement stops standing for election in it:
            // once removed it hears nothing more and would otherwise try forever.
            let placed = p.voters.contains(&self.me.id);
            raft.runtime_config().elect(placed && self.may_stand(g));
            let m = raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                continue;
            }
            let membership = m.membership_config.membership().clone();
            if membership.get_joint_config().len() > 1 {
                continue; // a change is being committed
            }
            // Every voter-to-be must be a known member (its record says where it is). A
            // placement naming one that has not registered yet (start-up) waits: acting on
            // the known part would shrink the group.
            if p.voters.is_empty() || p.voters.iter().any(|v| !info.contains_key(v)) {
                continue;
            }
            let voters_want: BTreeSet<NodeId> = p.voters.iter().copied().collect();
            let learners_want: BTreeSet<NodeId> = if g == 0 {
                info.keys().copied().filter(|id| !voters_want.contains(id)).collect()
            } else {
                BTreeSet::new()
            };
            let nodes: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            if !voters.contains(&self.me.id) {
                // A leader that is not a voter (it handed off, or a change left it a
                // learner) leaves the membership so that it steps down; the next leader
                // adds it back where placement wants it.
                if nodes.contains(&self.me.id) {
                    let me = BTreeSet::from([self.me.id]);
                    let leave = raft.change_membership(ChangeMembers::RemoveNodes(me), false);
                    match tokio::time::timeout(Duration::from_secs(10), leave).await {
                        Ok(Ok(_)) => {
                            tracing::info!(message = "left a group it led as a learner", group = g)
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(message = "leaving the group failed", group = g, error = %e)
                        }
                        Err(_) => {}
                    }
                }
                continue;
            }
            let step = async {
                if let Some(add) = voters_want.union(&learners_want).find(|id| !nodes.contains(id))
                {
                    let addr = info.get(add).map(|i| i.cluster_addr.clone()).unwrap_or_default();
                    tracing::info!(message = "adding learner", group = g, node = add);
                    return raft
                        .add_learner(*add, BasicNode::new(addr), false)
                        .await
                        .map(|_| "add_learner");
                }
                if voters != voters_want {
                    let last = m.last_log_index.unwrap_or(0);
                    let caught_up = voters_want.iter().all(|id| {
                        *id == self.me.id
                            || m.replication
                                .as_ref()
                                .and_then(|r| r.get(id).copied().flatten())
                                .is_some_and(|l| l.index + CAUGHT_UP_LAG >= last)
                    });
                    if !caught_up {
                        return Ok("waiting");
                    }
                    tracing::info!(message = "changing voters", group = g, from = ?voters, to = ?voters_want);
                    // Voters that leave stay as learners (dropped below unless the meta
                    // group wants them), except this leader itself: an openraft leader
                    // that is still a learner keeps leading; out entirely, it steps down.
                    let retain = voters_want.contains(&self.me.id);
                    return raft
                        .change_membership(
                            ChangeMembers::ReplaceAllVoters(voters_want.clone()),
                            retain,
                        )
                        .await
                        .map(|_| "replace_voters");
                }
                let extra: BTreeSet<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|id| !voters_want.contains(id) && !learners_want.contains(id))
                    .collect();
                if !extra.is_empty() {
                    tracing::info!(message = "removing nodes", group = g, nodes = ?extra);
                    return raft
                        .change_membership(ChangeMembers::RemoveNodes(extra), false)
                        .await
                        .map(|_| "remove_nodes");
                }
                // Leadership: the placement prefers another voter, and this node drains or
                // leads more than its share. openraft 0.9 has no leader transfer: the
                // other voters but the preferred one hold their elections, this node
                // stops heartbeats and writes until the preferred one is elected (every
                // voter stays a voter), one group at a time.
                let preferred = p.voters.first().copied();
                let hand_off = !handed_off
                    && preferred.is_some_and(|id| id != self.me.id)
                    && (my_state == Some(MemberState::Draining)
                        || (my_state == Some(MemberState::Active) && leading > fair))
                    && voters.len() >= 3
                    && self.handoff_due();
                if hand_off {
                    let last = m.last_log_index.unwrap_or(0);
                    let others_caught_up = voters.iter().filter(|v| **v != self.me.id).all(|id| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(id).copied().flatten())
                            .is_some_and(|l| l.index + CAUGHT_UP_LAG >= last)
                    });
                    let to = preferred.unwrap_or_default();
                    if others_caught_up
                        && voters.contains(&to)
                        && self.hold_others(g, &voters, to).await
                    {
                        tracing::info!(message = "handing leadership off", group = g, to = ?preferred);
                        return Ok(self.yield_to(g, raft, m.current_term, to).await);
                    }
                }
                Ok("none")
            };
            match tokio::time::timeout(Duration::from_secs(10), step).await {
                Ok(Ok(kind)) if kind != "none" && kind != "waiting" => {
                    self.metrics.membership_changes.with_label_values(&[kind]).inc();
                    if kind == "leader_handoff" {
                        handed_off = true;
                        leading = leading.saturating_sub(1);
                    }
                    if kind == "leader_handoff" || kind == "handoff_failed" {
                        *self.last_handoff.lock() = Some(std::time::Instant::now());
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(message = "membership step failed", group = g, error = %e)
                }
                Err(_) => tracing::warn!(message = "membership step timed out", group = g),
            }
        }
    }

    /// Whether this node may stand for election in `group` yet: right after start only
    /// where it is the preferred leader, so that leaders land where placement puts them
    /// instead of on whichever node started last.
    pub(super) fn may_stand(&self, group: GroupId) -> bool {
        !self.service.held(group)
            && (self.preferred.get(group as usize).copied().unwrap_or(true)
                || self.started.elapsed() >= self.stand_after)
    }

    /// Before this node stops (SIGTERM, `Node::leave`): it stops standing for election
    /// in every group and hands off each group it leads to its most caught-up voter,
    /// all at once, until none is led here or `within` has passed. Returns how many
    /// groups it still leads (a group with no other voter, or one whose successor did
    /// not win in time, is left to the election that follows the stop).
    pub async fn hand_off_all(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        self.service.leaving.store(true, std::sync::atomic::Ordering::Release);
        let mut idle_rounds = 0;
        for g in self.groups.ids() {
            if let Some(r) = self.groups.raft(g) {
                r.runtime_config().elect(false);
            }
        }
        loop {
            let led: Vec<GroupId> =
                self.groups.ids().filter(|g| self.groups.is_leader(*g)).collect();
            if led.is_empty() || tokio::time::Instant::now() >= deadline {
                return led.len();
            }
            let steps = led.iter().map(|&g| async move {
                let raft = self.groups.raft(g)?;
                let m = raft.metrics().borrow().clone();
                let voters: BTreeSet<NodeId> =
                    m.membership_config.membership().voter_ids().collect();
                let matched = |id: &NodeId| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).copied().flatten())
                        .map(|l| l.index)
                };
                let to = voters.iter().filter(|v| **v != self.me.id).max_by_key(|v| matched(v))?;
                if !self.hold_others(g, &voters, *to).await {
                    return None;
                }
                let kind = self.yield_to(g, raft, m.current_term, *to).await;
                self.metrics.membership_changes.with_label_values(&[kind]).inc();
                Some(kind)
            });
            let done =
                tokio::time::timeout_at(deadline, futures_util::future::join_all(steps)).await;
            // No group found a successor (every other voter is stopping too, or none
            // answers): trying again would only delay the stop.
            // Two rounds in a row, so that one successor that lagged gets another go.
            if done.is_ok_and(|d| d.iter().all(|k| *k != Some("leader_handoff"))) {
                idle_rounds += 1;
                if idle_rounds >= 2 {
                    return self.groups.ids().filter(|g| self.groups.is_leader(*g)).count();
                }
            } else {
                idle_rounds = 0;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Hands `group`'s leadership off ([`Groups::yield_leadership`]) and waits until
    /// another node leads it in a later term than `term`, or gives up after
    /// [`YIELD_MS`] and goes on leading. Either way heartbeats resume.
    async fn yield_to(
        &self,
        group: GroupId,
        raft: &crate::raft::Raft,
        term: u64,
        to: NodeId,
    ) -> &'static str {
        if !self.groups.yield_leadership(group) {
            return "none";
        }
        // 1. No more writes here; the successor gets everything this node has (a voter
        // refuses a candidate with a shorter log). Heartbeats drive the replication.
        let caught_up = tokio::time::timeout(Duration::from_millis(CATCH_UP_MS), async {
            loop {
                let v = raft.metrics().borrow().clone();
                let matched = v.replication.as_ref().and_then(|r| r.get(&to).copied().flatten());
                if matched.map(|l| l.index) >= v.last_log_index {
                    return;
                }
                let _ = raft.trigger().heartbeat().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        if !caught_up {
            self.groups.end_yield(group);
            tracing::info!(message = "leadership hand-off put off: the successor lags", group, to);
            return "handoff_failed";
        }
        // 2. No heartbeats either: once the voters' leader leases have run out (openraft
        // 0.9 refuses candidates before), `to` is asked to stand at once instead of
        // waiting for its own timer (the lease plus a whole election timeout).
        self.groups.stop_heartbeats(group);
        let mut m = raft.metrics();
        let (transport, lease, me) = (self.transport.clone(), self.lease, self.me.id);
        let ask = async move {
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            let r = transport
                .call(to, Class::Vote, Request::Elect { group }, Duration::from_millis(500))
                .await;
            if !matches!(r, Ok(Answer::Held)) {
                tracing::debug!(message = "asking the successor to stand failed", group, from = me, to, answer = ?r);
            }
        };
        let ask = tokio::spawn(ask);
        let handed = tokio::time::timeout(Duration::from_millis(YIELD_MS), async {
            loop {
                {
                    let v = m.borrow_and_update();
                    if v.current_term > term && v.current_leader.is_some_and(|l| l != self.me.id) {
                        return;
                    }
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok();
        ask.abort();
        self.groups.end_yield(group);
        if handed {
            "leader_handoff"
        } else {
            let v = raft.metrics().borrow().clone();
            let matched = v.replication.as_ref().and_then(|r| r.get(&to).copied().flatten());
            tracing::warn!(
                message = "leadership hand-off timed out; leading on",
                group,
                to,
                term = v.current_term,
                last_log = ?v.last_log_index,
                successor_matched = ?matched.map(|l| l.index),
            );
            "handoff_failed"
        }
    }

    /// Asks every voter of `group` but this node and `to` not to stand for a while, so
    /// that `to` is the one elected once this node steps down. All must agree.
    async fn hold_others(&self, group: GroupId, voters: &BTreeSet<NodeId>, to: NodeId) -> bool {
        let asks = voters.iter().filter(|v| **v != self.me.id && **v != to).map(|v| {
            let req = Request::Hold { group, millis: HOLD_MS };
            self.transport.call(*v, Class::Raft, req, Duration::from_millis(500))
        });
        futures_util::future::join_all(asks).await.iter().all(|r| matches!(r, Ok(Answer::Held)))
    }

    /// Leaders hand off at most one group every few seconds, so a rebalance never takes
    /// several groups' leaders away at once.
    fn handoff_due(&self) -> bool {
        self.last_handoff.lock().is_none_or(|t| t.elapsed() >= Duration::from_secs(3))
    }

    /// Refreshes the group and link gauges.
    pub(super) fn update_metrics(&self) {
        let m = &self.metrics;
        for g in self.groups.ids() {
            let Some(s) = super::service::group_status(&self.groups, g) else { continue };
            let label = g.to_string();
            let l = [label.as_str()];
            m.group_leader.with_label_values(&l).set(i64::from(s.role == "leader"));
            m.group_leader_id.with_label_values(&l).set(s.leader.unwrap_or(0) as i64);
            m.group_term.with_label_values(&l).set(s.term as i64);
            m.group_last_log.with_label_values(&l).set(s.last_log.unwrap_or(0) as i64);
            m.group_commit.with_label_values(&l).set(s.committed.unwrap_or(0) as i64);
            m.group_applied.with_label_values(&l).set(s.applied.unwrap_or(0) as i64);
            m.group_voters.with_label_values(&l).set(s.voters.len() as i64);
            if s.role == "leader" {
                let last = s.last_log.unwrap_or(0);
                for (f, matched) in &s.matched {
                    if *f == self.me.id {
                        continue;
                    }
                    let lag = last.saturating_sub(matched.unwrap_or(0));
                    m.follower_lag.with_label_values(&[&label, &f.to_string()]).set(lag as i64);
                }
                m.quorum_ack_age
                    .with_label_values(&l)
                    .set(s.quorum_ack_ms.map_or(f64::INFINITY, |ms| ms as f64 / 1000.0));
            }
        }
        for (peer, rtt, stats) in self.transport.links() {
            let p = peer.to_string();
            let l = [p.as_str()];
            m.peer_rtt.with_label_values(&l).set(rtt.as_secs_f64());
            m.peer_sent.with_label_values(&l).set(stats.udp_tx.bytes as i64);
            m.peer_received.with_label_values(&l).set(stats.udp_rx.bytes as i64);
            m.peer_lost_packets.with_label_values(&l).set(stats.path.lost_packets as i64);
        }
    }
}
