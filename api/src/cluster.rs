//! Cluster and operations routes: `GET /v1/cluster`, `GET /health`, `GET /ready`. What they
//! report is gathered by `mirrorkv_coordinator::status`; this file only shapes it as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::ApiError;
use crate::schema::{ClusterStatus, Health, MemberStatus, NodeStatus};
use crate::state::ApiState;

#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses((status = 200, description = "Members, the leader, and this node's progress", body = crate::schema::ClusterStatus)),
)]
pub async fn cluster(State(state): State<Arc<ApiState>>) -> Response {
    let status = state.node.cluster_status().await;
    let members: Vec<_> = status
        .members
        .iter()
        .map(|member| MemberStatus {
            id: member.id,
            api_addr: member.info.api_addr.clone(),
            raft_addr: member.info.raft_addr.clone(),
            role: if member.voter { "voter" } else { "mirror" },
            applied_index: member.applied_index,
            lag: member.lag,
            reachable: member.applied_index.is_some(),
        })
        .collect();
    let own = &status.node;
    Json(ClusterStatus {
        cluster_id: state.node.cluster_id.clone(),
        leader: status.leader,
        term: status.term,
        commit_index: status.commit_index,
        members,
        node: NodeStatus {
            id: own.id,
            state: own.state,
            last_log_index: own.last_log_index,
            applied_index: own.applied_index,
            snapshot_index: own.snapshot_index,
            purged_index: own.purged_index,
            last_contact_ms: own.last_contact_ms,
        },
    })
    .into_response()
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The process answers", body = crate::schema::Health)),
)]
pub async fn health() -> Response {
    Json(Health {
        status: "ok",
        leader: None,
        applied_index: None,
    })
    .into_response()
}

/// 200 once the node is ready (`Coordinator::readiness` says when), else 503 saying why.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve: a leader is known and this node caught up", body = crate::schema::Health),
    ),
)]
pub async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    match state.node.readiness().await {
        Ok(ready) => (
            StatusCode::OK,
            Json(Health {
                status: "ready",
                leader: Some(ready.leader),
                applied_index: Some(ready.applied_index),
            }),
        )
            .into_response(),
        Err(not_ready) => ApiError::from(not_ready).into_response(),
    }
}
