//! Membership routes: `POST /v1/cluster/members`, `POST /v1/cluster/members/{id}/promote`,
//! `DELETE /v1/cluster/members/{id}`. The changes themselves, and why each is safe to retry:
//! `mirrorkv_coordinator::membership`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mirrorkv_coordinator::MembershipChange;
use mirrorkv_storage::{NodeId, NodeInfo};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::schema::{MemberChanged, MemberRemoved, MemberView};
use crate::state::ApiState;

/// Body of `POST /v1/cluster/members`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[schema(minimum = 1)]
    pub id: NodeId,
    /// HOST:PORT clients reach the new member at.
    #[schema(pattern = "^.+:.+$", max_length = 256)]
    pub api_addr: String,
    /// HOST:PORT the other members reach it at.
    #[schema(pattern = "^.+:.+$", max_length = 256)]
    pub raft_addr: String,
}

/// A member id from the path, or why it is not one.
fn member_id(path: Result<Path<NodeId>, PathRejection>) -> Result<NodeId, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::InvalidArgument(format!("a member id is a positive integer: {e}")))
}

/// The largest length of an advertised address, in bytes.
const MAX_ADDR_BYTES: usize = 256;

#[utoipa::path(
    post,
    path = "/v1/cluster/members",
    tag = "cluster",
    request_body(content = AddMember),
    responses(
        (status = 200, description = "Added as a mirror (a non-voting member)", body = crate::schema::MemberChanged),
    ),
)]
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
    Ok(Json(MemberChanged {
        index,
        cluster_id: Some(state.node.cluster_id.clone()),
        member: MemberView {
            id: body.id,
            api_addr: Some(node.api_addr),
            raft_addr: Some(node.raft_addr),
            role: "mirror",
        },
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/v1/cluster/members/{id}/promote",
    tag = "cluster",
    params(("id" = u64, Path, minimum = 1)),
    responses(
        (status = 200, description = "Now a voter", body = crate::schema::MemberChanged),
        (status = 404, description = "not_found: no such member", body = crate::schema::ErrorBody),
        (status = 412, description = "precondition_failed: the mirror has not caught up; retry", body = crate::schema::ErrorBody),
    ),
)]
pub async fn promote_member(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<NodeId>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin("change members")?;
    let id = member_id(path)?;
    let index = state
        .node
        .change_membership(MembershipChange::Promote { id })
        .await?;
    let member = MemberView {
        id,
        api_addr: None,
        raft_addr: None,
        role: "voter",
    };
    let body = MemberChanged {
        index,
        cluster_id: None,
        member,
    };
    Ok(Json(body).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/cluster/members/{id}",
    tag = "cluster",
    params(("id" = u64, Path, minimum = 1)),
    responses(
        (status = 200, description = "Removed", body = crate::schema::MemberRemoved),
        (status = 404, description = "not_found: no such member", body = crate::schema::ErrorBody),
    ),
)]
pub async fn remove_member(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<NodeId>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin("change members")?;
    let id = member_id(path)?;
    let index = state
        .node
        .change_membership(MembershipChange::Remove { id })
        .await?;
    Ok(Json(MemberRemoved { index, removed: id }).into_response())
}
