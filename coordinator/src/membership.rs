//! Membership: adding mirrors, promoting them to voters, removing members — from any node.
//!
//! Every change is carried out by the leader with openraft's joint consensus, so it is safe
//! under concurrent writes; a non-leader forwards it over raft-net. Every change is idempotent
//! (adding an existing mirror with the same addresses, promoting a voter, or removing an absent
//! member is answered with the current membership), so a change whose answer was lost may be
//! retried safely. Adding a *voter* again is refused: that is what a voter whose data was lost
//! asks when it `--join`s under its old id, and it must not count as a voter with an empty log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, MembershipChange, NetError, Refusal};
use mirrorkv_storage::{NodeId, NodeInfo};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::time::Instant;

use crate::error::CoordError;
use crate::Coordinator;

/// Between retries, wait at most this long for the leader to change.
const RETRY_WAIT_MS: u64 = 50;

/// A membership change may take longer than a write (joint consensus is two log entries, and
/// a removed leader must hand over): it gets this many request timeouts.
const MEMBERSHIP_TIMEOUT_FACTOR: u32 = 3;

fn refused(refusal: Refusal, message: String) -> ForwardError {
    ForwardError::Refused { refusal, message }
}

impl Coordinator {
    /// Carry out a membership change through the current leader, from any node; the answer is
    /// the log index of the membership that holds afterwards. Every change is idempotent.
    pub async fn change_membership(
        &self,
        change: mirrorkv_raft_net::MembershipChange,
    ) -> Result<u64, CoordError> {
        through_leader(self, change).await
    }
}

/// Carry out `change` through the current leader; the answer is the log index of the
/// membership that holds afterwards.
async fn through_leader(node: &Coordinator, change: MembershipChange) -> Result<u64, CoordError> {
    let timeout = node.config.request_timeout() * MEMBERSHIP_TIMEOUT_FACTOR;
    let deadline = Instant::now() + timeout;
    loop {
        node.refuse_if_removed()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CoordError::Timeout(format!(
                "the membership change did not complete within {} ms; it is safe to retry",
                timeout.as_millis()
            )));
        }
        let tried = node.leader();
        let attempt: Option<Result<Result<u64, ForwardError>, NetError>> = match tried {
            Some(leader) if leader == node.id => {
                match tokio::time::timeout(remaining, change_as_leader(node, change.clone())).await
                {
                    Ok(answer) => Some(Ok(answer)),
                    Err(_) => None,
                }
            }
            Some(leader) => match node.member(leader) {
                Some(info) => Some(
                    node.pool
                        .client(leader, &info)
                        .membership(change.clone(), remaining)
                        .await,
                ),
                None => None,
            },
            None => None,
        };
        match attempt {
            Some(Ok(Ok(index))) => return Ok(index),
            Some(Ok(Err(ForwardError::Refused { refusal, message }))) => {
                return Err(match refusal {
                    Refusal::InvalidArgument => CoordError::InvalidArgument(message),
                    Refusal::NotFound => CoordError::NoSuchMember(message),
                    Refusal::NotCaughtUp => CoordError::NotCaughtUp(message),
                })
            }
            Some(Ok(Err(e))) => tracing::debug!(error = %e, "membership change not done; retrying"),
            Some(Err(e)) => tracing::debug!(error = %e, "forwarding a membership change failed"),
            None => {}
        }
        // Every change is idempotent, so retrying (even after a lost answer) is safe.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(RETRY_WAIT_MS));
        node.wait_for_leader_change(tried, wait).await;
    }
}

/// The membership a leader decides a change against, read once from its metrics.
struct Current {
    /// Log index of the membership.
    index: u64,
    term: u64,
    voters: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    last_log_index: u64,
    /// The log index the leader has replicated to each member, if any yet.
    matched: BTreeMap<NodeId, u64>,
}

impl Current {
    fn of(node: &Coordinator) -> Self {
        let metrics = node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        Current {
            index: metrics
                .membership_config
                .log_id()
                .as_ref()
                .map_or(0, |id| id.index),
            term: metrics.current_term,
            voters: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, info)| (*id, info.clone()))
                .collect(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            matched: metrics
                .replication
                .iter()
                .flatten()
                .filter_map(|(id, matched)| matched.map(|log_id| (*id, log_id.index)))
                .collect(),
        }
    }
}

/// Carry out `change` on this node, which should be the leader.
pub async fn change_as_leader(
    node: &Coordinator,
    change: MembershipChange,
) -> Result<u64, ForwardError> {
    if !node.is_leader() {
        return Err(ForwardError::NotLeader {
            leader: node.leader(),
        });
    }
    let current = Current::of(node);
    match change {
        MembershipChange::AddMirror { id, node: info } => {
            add_mirror(node, &current, id, info).await
        }
        MembershipChange::Promote { id } => promote(node, &current, id).await,
        MembershipChange::Remove { id } => remove(node, &current, id).await,
    }
}

/// Add `id` at `info` as a mirror (idempotent for the same addresses).
async fn add_mirror(
    node: &Coordinator,
    current: &Current,
    id: NodeId,
    info: NodeInfo,
) -> Result<u64, ForwardError> {
    if current.voters.contains(&id) {
        // Answering "already added" here would let a voter whose data was lost come back
        // under its old id: a voter with an empty log, which can elect a leader that misses
        // committed writes. It must come back as a new mirror.
        return Err(refused(
            Refusal::InvalidArgument,
            format!(
                "member {id} is a voter and cannot be added again as a mirror; a node that lost its data must not rejoin under its old id (its empty log could elect a leader missing committed writes): remove it first (DELETE /v1/cluster/members/{id}), then join it again"
            ),
        ));
    }
    if let Some(existing) = current.nodes.get(&id) {
        if *existing == info {
            return Ok(current.index);
        }
        return Err(refused(
            Refusal::InvalidArgument,
            format!(
                "member {id} already exists with raft_addr {} and api_addr {}; remove it first to change its addresses",
                existing.raft_addr, existing.api_addr
            ),
        ));
    }
    tracing::info!(node_id = node.id, term = current.term, member = id, raft_addr = %info.raft_addr, "adding a mirror");
    node.raft
        .add_learner(id, info, false)
        .await
        .map(|r| r.log_id.index)
        .map_err(membership_error)
}

/// Promote mirror `id` to voter once it is within `promote_max_lag_entries` of the leader
/// (idempotent for a voter).
async fn promote(node: &Coordinator, current: &Current, id: NodeId) -> Result<u64, ForwardError> {
    if !current.nodes.contains_key(&id) {
        return Err(refused(
            Refusal::NotFound,
            format!("no member {id}; add it as a mirror first"),
        ));
    }
    if current.voters.contains(&id) {
        return Ok(current.index);
    }
    let max_lag = node.config.promote_max_lag_entries;
    // A mirror the leader has not replicated to yet (unreachable, or just added) is never
    // promoted: a voter that cannot vote weakens the quorum.
    let Some(&matched) = current.matched.get(&id) else {
        return Err(refused(
            Refusal::NotCaughtUp,
            format!("mirror {id} has not received any log from the leader yet; retry once it has caught up"),
        ));
    };
    let lag = current.last_log_index.saturating_sub(matched);
    if lag > max_lag {
        return Err(refused(
            Refusal::NotCaughtUp,
            format!(
                "mirror {id} is {lag} entries behind the leader (at most {max_lag} to be promoted); retry once it has caught up"
            ),
        ));
    }
    tracing::info!(
        node_id = node.id,
        term = current.term,
        member = id,
        lag,
        "promoting a mirror to voter"
    );
    node.raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map(|r| r.log_id.index)
        .map_err(membership_error)
}

/// Remove member `id` (idempotent for an absent one); the last voter stays.
async fn remove(node: &Coordinator, current: &Current, id: NodeId) -> Result<u64, ForwardError> {
    if !current.nodes.contains_key(&id) {
        return Ok(current.index);
    }
    let changes = if current.voters.contains(&id) {
        if current.voters.len() == 1 {
            return Err(refused(
                Refusal::InvalidArgument,
                format!("member {id} is the only voter; add and promote another first"),
            ));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    tracing::info!(
        node_id = node.id,
        term = current.term,
        member = id,
        leader_removed = (id == node.id),
        "removing a member"
    );
    if id == node.id {
        return remove_self(node, changes).await;
    }
    // retain = false: a removed voter leaves the cluster instead of staying a mirror.
    node.raft
        .change_membership(changes, false)
        .await
        .map(|r| r.log_id.index)
        .map_err(membership_error)
}

/// Remove this node, the leader, from the cluster without leaving any write's outcome open.
///
/// A removed leader keeps leading until the new membership is committed, then steps down; a
/// write it had appended but not yet answered by then is never answered by it (measured
/// without the gate: one `504 outcome: unknown` for each client writing through it, t66).
/// So the write gate closes first: writes arriving from now on are refused before anything is
/// appended (503 to a local client, `NotLeader` to a forwarding node: both safe to retry on
/// another node), and the writes already admitted are answered before the change is proposed.
/// If the change fails, the gate opens again.
///
/// The change runs in a task of its own: a requester that gives up (its deadline, a dropped
/// connection) must not leave the gate closed while the change is still under way, nor open
/// it while the change may still commit.
async fn remove_self(
    node: &Coordinator,
    changes: ChangeMembers<NodeId, NodeInfo>,
) -> Result<u64, ForwardError> {
    let gate = node.appender.gate.clone();
    let raft = node.raft.clone();
    let drain_timeout = node.config.request_timeout();
    let node_id = node.id;
    let removal = tokio::spawn(async move {
        let unanswered = gate.close(drain_timeout).await;
        if unanswered > 0 {
            gate.reopen();
            return Err(ForwardError::Unavailable(format!(
                "{unanswered} admitted writes were still unanswered after {} ms; the leader was not removed, retry",
                drain_timeout.as_millis()
            )));
        }
        let result = raft.change_membership(changes, false).await;
        if result.is_err() {
            gate.reopen();
        }
        tracing::info!(node_id, removed = result.is_ok(), "self-removal finished");
        result.map(|r| r.log_id.index).map_err(membership_error)
    });
    removal.await.unwrap_or_else(|e| {
        Err(ForwardError::Unavailable(format!(
            "the removal task failed: {e}"
        )))
    })
}

/// openraft's answer to a membership change, as raft-net carries it back.
fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ForwardError::NotLeader {
                leader: forward.leader_id,
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::LearnerNotFound(e),
        )) => refused(Refusal::NotFound, e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::EmptyMembership(e),
        )) => refused(Refusal::InvalidArgument, e.to_string()),
        // InProgress (another change is still being committed) and fatal errors: retryable.
        other => ForwardError::Unavailable(other.to_string()),
    }
}
