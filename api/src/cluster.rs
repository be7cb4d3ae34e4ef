//! Cluster and operations routes: `GET /v1/cluster`, `GET /health`, `GET /ready`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ServerState;
use serde_json::json;

use crate::error::ApiError;
use crate::state::NodeState;

pub async fn cluster(State(state): State<Arc<NodeState>>) -> Response {
    let metrics = state.raft.metrics().borrow().clone();
    let applied_index = metrics.last_applied.map_or(0, |id| id.index);
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members: Vec<_> = membership
        .nodes()
        .map(|(id, node)| {
            // The leader knows every member's replicated index; other nodes know only their own.
            let matched = if *id == state.id {
                Some(applied_index)
            } else {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(id).cloned().flatten())
                    .map(|log_id| log_id.index)
            };
            json!({
                "id": id,
                "api_addr": node.api_addr,
                "raft_addr": node.raft_addr,
                "role": if voters.contains(id) { "voter" } else { "mirror" },
                "applied_index": matched,
                "lag": matched.map(|m| last_log_index.saturating_sub(m)),
            })
        })
        .collect();
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
        "commit_index": state.committed_index(),
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

/// Ready once the node knows a leader it has actually heard from (a leader: it leads; a
/// follower: an accepted AppendEntries within one leader lease — a restarted node remembers
/// its last leader but has not heard from it) and has applied everything that leader had
/// committed when it last heard.
pub async fn ready(State(state): State<Arc<NodeState>>) -> Response {
    let applied = match state.reader.applied_index() {
        Ok(applied) => applied,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (leader, committed) = if state.is_leader() {
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
