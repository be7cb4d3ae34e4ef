//! Membership: adding mirrors, promoting them to voters, removing members — from any node.
//!
//! Every change is carried out by the leader with openraft's joint consensus, so it is safe
//! under concurrent writes; a non-leader forwards it over raft-net. Every change is idempotent
//! (adding an existing mirror with the same addresses, promoting a voter, or removing an absent
//! member is answered with the current membership), so a change whose answer was lost may be
//! retried safely. Adding a *voter* again is refused: that is what a voter whose data was lost
//! asks when it `--join`s under its old id, and it must not count as a voter with an empty log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mirrorkv_raft_net::{ForwardError, MembershipChange, NetError, Refusal};
use mirrorkv_storage::{NodeId, NodeInfo};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::NodeState;

/// Between retries, wait at most this long for the leader to change.
const RETRY_WAIT_MS: u64 = 50;

/// A membership change may take longer than a write (joint consensus is two log entries, and
/// a removed leader must hand over): it gets this many request timeouts.
const MEMBERSHIP_TIMEOUT_FACTOR: u32 = 3;

/// Body of `POST /v1/cluster/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub id: NodeId,
    pub api_addr: String,
    pub raft_addr: String,
}

/// The largest length of an advertised address, in bytes.
const MAX_ADDR_BYTES: usize = 256;

pub async fn add_member(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<AddMember>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::InvalidArgument(e.body_text()))?;
    if body.id == 0 {
        return Err(ApiError::InvalidArgument("member ids are positive".into()));
    }
    for (name, addr) in [("api_addr", &body.api_addr), ("raft_addr", &body.raft_addr)] {
        if addr.is_empty() || addr.len() > MAX_ADDR_BYTES || !addr.contains(':') {
            return Err(ApiError::InvalidArgument(format!(
                "{name} must be HOST:PORT of at most {MAX_ADDR_BYTES} bytes, got {addr:?}"
            )));
        }
    }
    let node = NodeInfo {
        api_addr: body.api_addr,
        raft_addr: body.raft_addr,
    };
    let index = change(
        &state,
        MembershipChange::AddMirror {
            id: body.id,
            node: node.clone(),
        },
    )
    .await?;
    Ok(Json(json!({
        "index": index,
        "cluster_id": state.cluster_id,
        "member": {"id": body.id, "api_addr": node.api_addr, "raft_addr": node.raft_addr, "role": "mirror"},
    }))
    .into_response())
}

pub async fn promote_member(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<NodeId>,
) -> Result<Response, ApiError> {
    let index = change(&state, MembershipChange::Promote { id }).await?;
    Ok(Json(json!({"index": index, "member": {"id": id, "role": "voter"}})).into_response())
}

pub async fn remove_member(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<NodeId>,
) -> Result<Response, ApiError> {
    let index = change(&state, MembershipChange::Remove { id }).await?;
    Ok(Json(json!({"index": index, "removed": id})).into_response())
}

fn refused(refusal: Refusal, message: String) -> ForwardError {
    ForwardError::Refused { refusal, message }
}

/// Carry out `change` through the current leader; the answer is the log index of the
/// membership that holds afterwards.
pub async fn change(state: &NodeState, change: MembershipChange) -> Result<u64, ApiError> {
    let timeout = state.config.request_timeout() * MEMBERSHIP_TIMEOUT_FACTOR;
    let deadline = Instant::now() + timeout;
    loop {
        state.refuse_if_removed()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::Timeout(format!(
                "the membership change did not complete within {} ms; it is safe to retry",
                timeout.as_millis()
            )));
        }
        let tried = state.leader();
        let attempt: Option<Result<Result<u64, ForwardError>, NetError>> = match tried {
            Some(leader) if leader == state.id => {
                match tokio::time::timeout(remaining, change_as_leader(state, change.clone())).await
                {
                    Ok(answer) => Some(Ok(answer)),
                    Err(_) => None,
                }
            }
            Some(leader) => match state.member(leader) {
                Some(node) => Some(
                    state
                        .pool
                        .client(leader, &node)
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
                    Refusal::InvalidArgument => ApiError::InvalidArgument(message),
                    Refusal::NotFound => ApiError::NoSuchMember(message),
                    Refusal::NotCaughtUp => ApiError::NotCaughtUp(message),
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
        state.wait_for_leader_change(tried, wait).await;
    }
}

/// Carry out `change` on this node, which should be the leader.
pub async fn change_as_leader(
    state: &NodeState,
    change: MembershipChange,
) -> Result<u64, ForwardError> {
    if !state.is_leader() {
        return Err(ForwardError::NotLeader {
            leader: state.leader(),
        });
    }
    let metrics = state.raft.metrics().borrow().clone();
    let current_index = metrics
        .membership_config
        .log_id()
        .as_ref()
        .map_or(0, |id| id.index);
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: BTreeMap<NodeId, NodeInfo> = membership
        .nodes()
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    let result = match change {
        MembershipChange::AddMirror { id, node } => {
            if voters.contains(&id) {
                // Answering "already added" here would let a voter whose data was lost come
                // back under its old id: a voter with an empty log, which can elect a leader
                // that misses committed writes. It must come back as a new mirror.
                return Err(refused(
                    Refusal::InvalidArgument,
                    format!(
                        "member {id} is a voter and cannot be added again as a mirror; a node that lost its data must not rejoin under its old id (its empty log could elect a leader missing committed writes): remove it first (DELETE /v1/cluster/members/{id}), then join it again"
                    ),
                ));
            }
            if let Some(existing) = nodes.get(&id) {
                if *existing == node {
                    return Ok(current_index);
                }
                return Err(refused(
                    Refusal::InvalidArgument,
                    format!(
                        "member {id} already exists with raft_addr {} and api_addr {}; remove it first to change its addresses",
                        existing.raft_addr, existing.api_addr
                    ),
                ));
            }
            tracing::info!(node_id = state.id, term = metrics.current_term, member = id, raft_addr = %node.raft_addr, "adding a mirror");
            state
                .raft
                .add_learner(id, node, false)
                .await
                .map(|r| r.log_id.index)
        }
        MembershipChange::Promote { id } => {
            if !nodes.contains_key(&id) {
                return Err(refused(
                    Refusal::NotFound,
                    format!("no member {id}; add it as a mirror first"),
                ));
            }
            if voters.contains(&id) {
                return Ok(current_index);
            }
            let last_log_index = metrics.last_log_index.unwrap_or(0);
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            let max_lag = state.config.promote_max_lag_entries;
            // A mirror the leader has not replicated to yet (unreachable, or just added) is
            // never promoted: a voter that cannot vote weakens the quorum.
            let Some(matched) = matched else {
                return Err(refused(
                    Refusal::NotCaughtUp,
                    format!("mirror {id} has not received any log from the leader yet; retry once it has caught up"),
                ));
            };
            let lag = last_log_index.saturating_sub(matched);
            if lag > max_lag {
                return Err(refused(
                    Refusal::NotCaughtUp,
                    format!(
                        "mirror {id} is {lag} entries behind the leader (at most {max_lag} to be promoted); retry once it has caught up"
                    ),
                ));
            }
            tracing::info!(
                node_id = state.id,
                term = metrics.current_term,
                member = id,
                lag,
                "promoting a mirror to voter"
            );
            state
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|r| r.log_id.index)
        }
        MembershipChange::Remove { id } => {
            if !nodes.contains_key(&id) {
                return Ok(current_index);
            }
            let changes = if voters.contains(&id) {
                if voters.len() == 1 {
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
                node_id = state.id,
                term = metrics.current_term,
                member = id,
                leader_removed = (id == state.id),
                "removing a member"
            );
            if id == state.id {
                return remove_self(state, changes).await;
            }
            // retain = false: a removed voter leaves the cluster instead of staying a mirror.
            state
                .raft
                .change_membership(changes, false)
                .await
                .map(|r| r.log_id.index)
        }
    };
    result.map_err(membership_error)
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
    state: &NodeState,
    changes: ChangeMembers<NodeId, NodeInfo>,
) -> Result<u64, ForwardError> {
    let gate = state.write_gate.clone();
    let raft = state.raft.clone();
    let drain_timeout = state.config.request_timeout();
    let node_id = state.id;
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

/// How long a removal probe waits for each member's status.
const REMOVAL_PROBE_TIMEOUT_MS: u64 = 500;

/// Watch for this node's removal from the cluster, until `stop`.
///
/// A removed node must not keep serving its old view (`GET /v1/cluster` listing the old
/// members, reads waiting out their deadline for entries it will never receive). It learns of
/// its removal in one of two ways:
/// - its own log holds a committed membership that does not list it (a leader that removed
///   itself; a follower that received the final membership);
/// - it has not heard from a leader for a leader lease, and a member it knows reports a
///   committed membership, newer than its own, that does not list it. The leader stops
///   replicating to a removed node once the membership without it is in the leader's log, so
///   a removed follower usually never receives that membership itself.
///
/// Only committed memberships count (index at most the reporting node's commit index): an
/// uncommitted one may still be truncated away. And only once this node has been a member: a
/// node that joins installs a snapshot whose membership predates it, and must not take that
/// for its removal (t61 caught exactly that). Once removed, the node stands for no election
/// and answers `410 removed` to every KV and cluster request (`NodeState::refuse_if_removed`),
/// and `/ready` answers 503; it stays so until it stops. To come back, it joins as a new node.
pub async fn watch_removal(state: Arc<NodeState>, stop: impl std::future::Future<Output = ()>) {
    let lease = Duration::from_millis(state.lease.leader_lease_ms());
    let mut metrics = state.raft.metrics();
    let mut last_probe: Option<Instant> = None;
    let mut was_member = false;
    tokio::pin!(stop);
    loop {
        was_member = was_member || is_member(&state);
        let evidence = match own_removal(&state) {
            _ if !was_member => None,
            Some(removed) => Some(removed),
            None if should_probe(&state, last_probe, lease) => {
                last_probe = Some(Instant::now());
                probe_removal(&state).await
            }
            None => None,
        };
        if let Some(removed) = evidence {
            let members: Vec<NodeId> = removed.members.iter().map(|(id, _)| *id).collect();
            tracing::error!(
                node_id = state.id,
                membership_index = removed.membership_index,
                ?members,
                "this node was removed from the cluster: it answers 410 to every KV and cluster request and stands for no election; to rejoin, start a new node (empty data dir, --join)"
            );
            state.raft.runtime_config().elect(false);
            state.removed.send_replace(Some(removed));
            return;
        }
        // Woken by a new membership, not by every metrics change (those come with every
        // apply); the lease-long sleep paces the probe.
        let seen = *metrics.borrow().membership_config.log_id();
        tokio::select! {
            _ = &mut stop => return,
            _ = metrics.wait_for(|m| *m.membership_config.log_id() != seen) => {}
            _ = tokio::time::sleep(lease) => {}
        }
    }
}

/// This node's membership (committed or not) lists it.
fn is_member(state: &NodeState) -> bool {
    let metrics = state.raft.metrics();
    let metrics = metrics.borrow();
    metrics
        .membership_config
        .membership()
        .get_node(&state.id)
        .is_some()
}

/// This node's own log says it was removed: its membership is committed and does not list it.
fn own_removal(state: &NodeState) -> Option<crate::state::Removed> {
    let metrics = state.raft.metrics();
    let metrics = metrics.borrow();
    let index = metrics.membership_config.log_id().as_ref()?.index;
    let membership = metrics.membership_config.membership();
    if membership.get_node(&state.id).is_some() || index > state.committed_index() {
        return None;
    }
    Some(crate::state::Removed {
        membership_index: index,
        members: membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
    })
}

/// Probe the other members when this node has not heard from a leader within a lease, at
/// most once a lease.
fn should_probe(state: &NodeState, last_probe: Option<Instant>, lease: Duration) -> bool {
    if state.is_leader() || last_probe.is_some_and(|at| at.elapsed() < lease) {
        return false;
    }
    state
        .contact
        .last()
        .is_none_or(|contact| contact.at.elapsed() >= lease)
}

/// Ask every member this node knows for its membership; evidence of removal if one reports a
/// committed membership newer than ours that does not list this node.
async fn probe_removal(state: &NodeState) -> Option<crate::state::Removed> {
    let (own_index, members): (u64, Vec<(NodeId, NodeInfo)>) = {
        let metrics = state.raft.metrics();
        let metrics = metrics.borrow();
        let own_index = metrics.membership_config.log_id().as_ref()?.index;
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != state.id)
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        (own_index, members)
    };
    let timeout = Duration::from_millis(REMOVAL_PROBE_TIMEOUT_MS);
    let asks = members
        .iter()
        .map(|(id, node)| async move { state.pool.client(*id, node).status(timeout).await });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .find(|status| {
            status.membership_index > own_index
                && status.membership_index <= status.commit_index
                && !status.members.iter().any(|(id, _)| *id == state.id)
        })
        .map(|status| crate::state::Removed {
            membership_index: status.membership_index,
            members: status.members,
        })
}
