//! Membership: adding mirrors, promoting them to voters, removing members — from any node.
//!
//! Every change is carried out by the leader with openraft's joint consensus, so it is safe
//! under concurrent writes; a non-leader forwards it over raft-net. Every change is idempotent
//! (adding an existing mirror with the same addresses, promoting a voter, or removing an absent
//! member is answered with the current membership), so a change whose answer was lost may be
//! retried safely.

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
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::Timeout(format!(
                "the membership change did not complete within {} ms; it is safe to retry",
                timeout.as_millis()
            )));
        }
        let attempt: Option<Result<Result<u64, ForwardError>, NetError>> = match state.leader() {
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
        state.wait_for_change(wait).await;
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
            // retain = false: a removed voter leaves the cluster instead of staying a mirror.
            // A removed leader keeps leading until the new membership is committed, then steps
            // down and the remaining voters elect a leader among themselves.
            state
                .raft
                .change_membership(changes, false)
                .await
                .map(|r| r.log_id.index)
        }
    };
    result.map_err(|e| match e {
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
    })
}
