//! Lease routes (`shared/API.md`, "Leases (TTL), locks and elections"): grant, keepalive,
//! revoke, lookup. Keys are attached by `PUT /v1/kv/{key}?lease=L` and txn puts (`kv`, `txn`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mirrorkv_storage::{Command, CommandResult};
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::kv::{self, finish, with_idempotency, WRITE_LEVEL};
use crate::schema::{LeaseGranted, LeaseInfo, LeaseKept, LeaseRevoked};
use crate::state::ApiState;

/// The level label of lease routes in the request metrics: every one goes through the leader.
const LEASE_LEVEL: &str = "linearizable";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    ttl_s: u64,
}

fn lease_id(path: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let Path(text) =
        path.map_err(|e| ApiError::InvalidArgument(format!("malformed lease id: {e}")))?;
    match text.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::InvalidArgument(format!(
            "a lease id is a positive integer, got {text:?}"
        ))),
    }
}

fn not_found(id: u64) -> ApiError {
    ApiError::LeaseNotFound(format!(
        "lease {id} does not exist (never granted, revoked or expired)"
    ))
}

/// Apply a lease `command` (with the request's `Idempotency-Key`) and answer what `body` makes
/// of its result; a refusal is its error, any other result a bug.
async fn write<T: serde::Serialize>(
    state: &ApiState,
    headers: &HeaderMap,
    command: Command,
    body: impl FnOnce(u64, CommandResult) -> Result<T, CommandResult>,
) -> Result<(Option<u64>, Response), ApiError> {
    let command = with_idempotency(state, headers, command)?;
    let deadline = Instant::now() + state.config.request_timeout();
    let response = state.node.write(command, deadline).await?;
    match body(response.index, response.result) {
        Ok(body) => Ok((Some(response.index), Json(body).into_response())),
        Err(CommandResult::Refused(refusal)) => Err(ApiError::from(&refusal)),
        Err(other) => Err(ApiError::Internal(format!(
            "a lease command applied as {other:?}"
        ))),
    }
}

/// `POST /v1/lease {"ttl_s": T}` → `{"id", "ttl_s", "index"}`.
#[utoipa::path(
    post,
    path = "/v1/lease",
    tag = "leases",
    params(crate::schema::WriteHeaders),
    request_body(content = GrantBody),
    responses(
        (status = 200, description = "Granted", body = crate::schema::LeaseGranted),
        (status = 422, description = "idempotency_key_reused: the key came with another request", body = crate::schema::ErrorBody),
    ),
)]
pub async fn grant(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body.map_err(|e| kv::body_error(&state, e))?;
        let GrantBody { ttl_s } = serde_json::from_slice(&body).map_err(|e| {
            ApiError::InvalidArgument(format!("the body must be {{\"ttl_s\": SECONDS}}: {e}"))
        })?;
        let config = &state.node.leases.config;
        if !(config.min_ttl_s..=config.max_ttl_s).contains(&ttl_s) {
            return Err(ApiError::InvalidArgument(format!(
                "ttl_s must be between {} and {} (seconds), got {ttl_s}",
                config.min_ttl_s, config.max_ttl_s
            )));
        }
        let command = Command::LeaseGrant {
            ttl_ms: ttl_s * 1000,
            max_leases: config.max_leases,
        };
        write(&state, &headers, command, |index, result| match result {
            CommandResult::LeaseGranted { id, ttl_ms } => Ok(LeaseGranted {
                id,
                ttl_s: ttl_ms / 1000,
                index,
            }),
            other => Err(other),
        })
        .await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

/// `POST /v1/lease/{id}/keepalive` → `{"id", "ttl_s"}`: the lease lives `ttl_s` from now.
#[utoipa::path(
    post,
    path = "/v1/lease/{id}/keepalive",
    tag = "leases",
    params(("id" = u64, Path, minimum = 1)),
    responses(
        (status = 200, description = "Renewed: it lives ttl_s from now", body = crate::schema::LeaseKept),
        (status = 404, description = "not_found: never granted, revoked or expired", body = crate::schema::ErrorBody),
    ),
)]
pub async fn keepalive(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let id = lease_id(path)?;
        let deadline = Instant::now() + state.config.request_timeout();
        match state.node.keepalive(id, deadline).await? {
            Some(time) => {
                let body = LeaseKept {
                    id,
                    ttl_s: time.remaining_ms / 1000,
                };
                Ok((None, Json(body).into_response()))
            }
            None => Err(not_found(id)),
        }
    }
    .await;
    finish(&state, LEASE_LEVEL, result)
}

/// `DELETE /v1/lease/{id}` → `{"index", "keys_deleted"}`: the lease and its keys are gone at
/// `index`.
#[utoipa::path(
    delete,
    path = "/v1/lease/{id}",
    tag = "leases",
    params(("id" = u64, Path, minimum = 1), crate::schema::WriteHeaders),
    responses(
        (status = 200, description = "Revoked with its keys", body = crate::schema::LeaseRevoked),
        (status = 404, description = "not_found: never granted, revoked or expired", body = crate::schema::ErrorBody),
        (status = 422, description = "idempotency_key_reused: the key came with another request", body = crate::schema::ErrorBody),
    ),
)]
pub async fn revoke(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let id = lease_id(path)?;
        if !principal.is_admin() {
            // Revoking deletes every key attached: it needs the right to write each. Checked
            // on the keys attached now; a key attached later was put by someone who could.
            let deadline = Instant::now() + state.config.request_timeout();
            let max_keys = state.node.leases.config.max_keys_per_lease as usize;
            if let Some((info, _)) = state.node.lease_info(id, max_keys, deadline).await? {
                for key in &info.keys {
                    principal.require_write(key)?;
                }
            }
        }
        let command = Command::LeaseRevoke { id };
        write(&state, &headers, command, |index, result| match result {
            CommandResult::LeasesEnded { keys_deleted, .. } => Ok(LeaseRevoked {
                index,
                keys_deleted,
            }),
            other => Err(other),
        })
        .await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

/// `GET /v1/lease/{id}` → `{"id", "ttl_s", "remaining_ms", "keys"}` (at most
/// `max_keys_per_lease` keys, in key order).
#[utoipa::path(
    get,
    path = "/v1/lease/{id}",
    tag = "leases",
    params(("id" = u64, Path, minimum = 1)),
    responses(
        (status = 200, description = "The lease and its keys", body = crate::schema::LeaseInfo),
        (status = 404, description = "not_found: never granted, revoked or expired", body = crate::schema::ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let id = lease_id(path)?;
        let deadline = Instant::now() + state.config.request_timeout();
        let max_keys = state.node.leases.config.max_keys_per_lease as usize;
        match state.node.lease_info(id, max_keys, deadline).await? {
            Some((info, time)) => {
                let body = LeaseInfo {
                    id,
                    ttl_s: info.ttl_ms / 1000,
                    remaining_ms: time.remaining_ms,
                    keys: (info.keys.into_iter())
                        .filter(|k| principal.may_read(k))
                        .collect(),
                };
                Ok((None, Json(body).into_response()))
            }
            None => Err(not_found(id)),
        }
    }
    .await;
    finish(&state, LEASE_LEVEL, result)
}
