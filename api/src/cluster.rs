//! Cluster and operations routes: `GET /v1/cluster`, `GET /health`, `GET /ready`. What they
//! report is gathered by `mirrorkv_coordinator::status`; this file only shapes it as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::state::ApiState;

pub async fn cluster(State(state): State<Arc<ApiState>>) -> Response {
    let status = state.node.cluster_status().await;
    let members: Vec<_> = status
        .members
        .iter()
        .map(|member| {
            json!({
                "id": member.id,
                "api_addr": member.info.api_addr,
                "raft_addr": member.info.raft_addr,
                "role": if member.voter { "voter" } else { "mirror" },
                "applied_index": member.applied_index,
                "lag": member.lag,
                "reachable": member.applied_index.is_some(),
            })
        })
        .collect();
    let own = &status.node;
    Json(json!({
        "cluster_id": state.node.cluster_id,
        "leader": status.leader,
        "term": status.term,
        "commit_index": status.commit_index,
        "members": members,
        "node": {
            "id": own.id,
            "state": own.state,
            "last_log_index": own.last_log_index,
            "applied_index": own.applied_index,
            "snapshot_index": own.snapshot_index,
            "purged_index": own.purged_index,
            "last_contact_ms": own.last_contact_ms,
        },
    }))
    .into_response()
}

pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// 200 once the node is ready (`Coordinator::readiness` says when), else 503 saying why.
pub async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    match state.node.readiness().await {
        Ok(ready) => (
            StatusCode::OK,
            Json(json!({
                "status": "ready",
                "leader": ready.leader,
                "applied_index": ready.applied_index,
            })),
        )
            .into_response(),
        Err(not_ready) => ApiError::from(not_ready).into_response(),
    }
}
