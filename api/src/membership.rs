//! Membership routes: `POST /v1/cluster/members`, `POST /v1/cluster/members/{id}/promote`,
//! `DELETE /v1/cluster/members/{id}`. The changes themselves, and why each is safe to retry:
//! `mirrorkv_coordinator::membership`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mirrorkv_coordinator::MembershipChange;
use mirrorkv_storage::{NodeId, NodeInfo};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::ApiState;

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
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<AddMember>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin("change members")?;
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
    let index = state
        .node
        .change_membership(MembershipChange::AddMirror {
            id: body.id,
            node: node.clone(),
        })
        .await?;
    Ok(Json(json!({
        "index": index,
        "cluster_id": state.node.cluster_id,
        "member": {"id": body.id, "api_addr": node.api_addr, "raft_addr": node.raft_addr, "role": "mirror"},
    }))
    .into_response())
}

pub async fn promote_member(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<NodeId>,
) -> Result<Response, ApiError> {
    principal.require_admin("change members")?;
    let index = state
        .node
        .change_membership(MembershipChange::Promote { id })
        .await?;
    Ok(Json(json!({"index": index, "member": {"id": id, "role": "voter"}})).into_response())
}

pub async fn remove_member(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<NodeId>,
) -> Result<Response, ApiError> {
    principal.require_admin("change members")?;
    let index = state
        .node
        .change_membership(MembershipChange::Remove { id })
        .await?;
    Ok(Json(json!({"index": index, "removed": id})).into_response())
}
