//! Cluster and operations routes: `GET /v1/cluster`, `GET /health`, `GET /ready`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mirrorkv_raft_net::NodeStatus;
use mirrorkv_storage::{NodeId, NodeInfo};
use openraft::ServerState;
use serde_json::json;

use crate::error::ApiError;
use crate::state::NodeState;

/// How long `GET /v1/cluster` waits for each member's own status.
const MEMBER_STATUS_TIMEOUT_MS: u64 = 500;

/// Every member's own status, asked over raft-net in parallel; `None` for a member that did
/// not answer in time.
async fn member_statuses(
    state: &NodeState,
    members: &[(NodeId, NodeInfo)],
) -> BTreeMap<NodeId, Option<NodeStatus>> {
    let timeout = Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS);
    let asks = members.iter().map(|(id, node)| async move {
        if *id == state.id {
            return (*id, Some(state.status()));
        }
        let client = state.pool.client(*id, node);
        (*id, client.status(timeout).await.ok())
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

pub async fn cluster(State(state): State<Arc<NodeState>>) -> Response {
    let metrics = state.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: Vec<(NodeId, NodeInfo)> = membership
        .nodes()
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    let statuses = member_statuses(&state, &nodes).await;
    // Lag is measured against the leader's commit index when the leader answered, else
    // against this node's.
    let commit_index = metrics
        .current_leader
        .and_then(|leader| statuses.get(&leader).cloned().flatten())
        .map_or(state.committed_index(), |leader| leader.commit_index)
        .max(state.committed_index());
    let members: Vec<_> = nodes
        .iter()
        .map(|(id, node)| {
            let status = statuses.get(id).cloned().flatten();
            let applied = status.as_ref().map(|s| s.applied_index);
            json!({
                "id": id,
                "api_addr": node.api_addr,
                "raft_addr": node.raft_addr,
                "role": if voters.contains(id) { "voter" } else { "mirror" },
                "applied_index": applied,
                "lag": applied.map(|a| commit_index.saturating_sub(a)),
                "reachable": status.is_some(),
            })
        })
        .collect();
    let applied_index = metrics.last_applied.map_or(0, |id| id.index);
    let state_name = match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    Json(json!({
        "cluster_id": state.cluster_id,
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "commit_index": commit_index,
        "members": members,
        "node": {
            "id": state.id,
            "state": state_name,
            "last_log_index": metrics.last_log_index,
            "applied_index": applied_index,
            "snapshot_index": metrics.snapshot.map(|id| id.index),
            "purged_index": metrics.purged.map(|id| id.index),
            "last_contact_ms": state.last_contact_ms(),
        },
    }))
    .into_response()
}

pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready once the node knows a leader it has actually heard from (a leader: a quorum
/// acknowledged it within one leader lease, asked again if need be; a follower: an accepted
/// AppendEntries within one leader lease — a restarted node remembers its last leader but has
/// not heard from it) and has applied everything that leader had committed when it last heard.
pub async fn ready(State(state): State<Arc<NodeState>>) -> Response {
    if let Err(removed) = state.refuse_if_removed() {
        return ApiError::Unavailable(removed.to_string()).into_response();
    }
    let applied = match state.reader.applied_index() {
        Ok(applied) => applied,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (leader, committed) = if state.is_leader() {
        let lease_ms = state.lease.leader_lease_ms();
        if !state.leader_quorum_acked_within(lease_ms).await {
            return ApiError::Unavailable(format!(
                "this node leads, but no quorum acknowledged it in the last {lease_ms} ms"
            ))
            .into_response();
        }
        (state.id, state.committed_index())
    } else {
        let fresh_ms = state.lease.leader_lease_ms();
        match state.contact.last() {
            Some(contact) if contact.at.elapsed().as_millis() as u64 <= fresh_ms => {
                (contact.leader_id, contact.leader_commit_index)
            }
            _ => {
                return ApiError::Unavailable(format!(
                    "no contact with a leader in the last {fresh_ms} ms"
                ))
                .into_response()
            }
        }
    };
    if applied < committed {
        return ApiError::Unavailable(format!(
            "applied index {applied} is behind commit index {committed}"
        ))
        .into_response();
    }
    (
        StatusCode::OK,
        Json(json!({"status": "ready", "leader": leader, "applied_index": applied})),
    )
        .into_response()
}
