//! `/v1/auth/...`: roles and tokens (`shared/API.md`, "Security"). Every route is admin only.
//!
//! - `PUT /v1/auth/roles/{name}` `{"admin"?, "permissions": [{"prefix", "read"?, "write"?}]}`
//!   creates or replaces a role; `DELETE` removes it; `GET /v1/auth/roles` lists them.
//! - `POST /v1/auth/tokens` `{"role", "ttl_s"?}` → `{"id", "token", ...}`: the secret is
//!   drawn here, answered once, and only its SHA-256 is proposed; `GET /v1/auth/tokens` lists
//!   ids, roles and expiries, never secrets; `DELETE /v1/auth/tokens/{id}` revokes one.
//!
//! Lists are read from this node's applied table. A change answers once this node has applied
//! it too, so the new token works here at once (other nodes: once they apply its `index`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mirrorkv_storage::auth::{MAX_TOKEN_ID_BYTES, MAX_TOKEN_TTL_S};
use mirrorkv_storage::{AuthCommand, Command, CommandResult, Permission, Role, TokenRecord};
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::{now_ms, token_sha256, Principal};
use crate::error::ApiError;
use crate::kv::{body_error, finish, WRITE_LEVEL};
use crate::schema::{
    PermissionView, RoleChanged, RoleList, RoleView, TokenCreated, TokenList, TokenRevoked,
    TokenView,
};
use crate::state::ApiState;

/// The read level label of the list routes: this node's applied state.
const LOCAL_LEVEL: &str = "stale";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PermissionBody {
    prefix: String,
    #[serde(default)]
    read: bool,
    #[serde(default)]
    write: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    permissions: Vec<PermissionBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    role: String,
    ttl_s: Option<u64>,
}

fn path_text(path: Result<Path<String>, PathRejection>, what: &str) -> Result<String, ApiError> {
    path.map(|Path(text)| text)
        .map_err(|e| ApiError::InvalidArgument(format!("malformed {what}: {e}")))
}

fn json_body<T: serde::de::DeserializeOwned>(
    state: &ApiState,
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| body_error(state, e))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidArgument(format!("the body must be {shape}: {e}")))
}

/// Propose `command`, wait until this node applied it, and answer its index.
async fn change(state: &ApiState, command: AuthCommand) -> Result<u64, ApiError> {
    let command = Command::Auth(command);
    command.validate(&state.config.command_limits())?;
    let deadline = Instant::now() + state.config.request_timeout();
    let response = state.node.write(command, deadline).await?;
    match response.result {
        CommandResult::Nothing => {}
        CommandResult::Refused(refusal) => return Err(ApiError::from(&refusal)),
        other => {
            return Err(ApiError::Internal(format!(
                "an auth command applied as {other:?}"
            )))
        }
    }
    mirrorkv_coordinator::read::wait_applied(&state.node, response.index, deadline).await?;
    Ok(response.index)
}

/// `change`, answered with the body `answer` makes of its index, for `finish`.
async fn change_answered<T: serde::Serialize>(
    state: &ApiState,
    command: AuthCommand,
    answer: impl FnOnce(u64) -> T,
) -> Result<(Option<u64>, Response), ApiError> {
    let index = change(state, command).await?;
    Ok((Some(index), Json(answer(index)).into_response()))
}

/// `PUT /v1/auth/roles/{name}` → `{"name", "index"}`.
#[utoipa::path(
    put,
    path = "/v1/auth/roles/{name}",
    tag = "auth",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "1 to 64 bytes of letters, digits, `_`, `-`, `.`")),
    request_body(content = RoleBody),
    responses(
        (status = 200, description = "Set (created or replaced)", body = crate::schema::RoleChanged),
    ),
)]
pub async fn put_role(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        principal.require_admin("change roles")?;
        let name = path_text(path, "role name")?;
        let body: RoleBody = json_body(
            &state,
            body,
            r#"{"admin": BOOL, "permissions": [{"prefix": P, "read": BOOL, "write": BOOL}]}"#,
        )?;
        let role = Role {
            admin: body.admin,
            permissions: body
                .permissions
                .into_iter()
                .map(|p| Permission {
                    prefix: p.prefix,
                    read: p.read,
                    write: p.write,
                })
                .collect(),
        };
        let command = AuthCommand::PutRole {
            name: name.clone(),
            role,
        };
        change_answered(&state, command, |index| RoleChanged { name, index }).await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

/// `DELETE /v1/auth/roles/{name}` → `{"name", "index"}`.
#[utoipa::path(
    delete,
    path = "/v1/auth/roles/{name}",
    tag = "auth",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 200, description = "Deleted; its tokens allow nothing until a role of that name exists again", body = crate::schema::RoleChanged),
        (status = 404, description = "not_found: no such role", body = crate::schema::ErrorBody),
    ),
)]
pub async fn delete_role(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        principal.require_admin("change roles")?;
        let name = path_text(path, "role name")?;
        let command = AuthCommand::DeleteRole { name: name.clone() };
        change_answered(&state, command, |index| RoleChanged { name, index }).await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

fn role_json(name: &str, role: &Role) -> RoleView {
    let permissions = (role.permissions.iter())
        .map(|p| PermissionView {
            prefix: p.prefix.clone(),
            read: p.read,
            write: p.write,
        })
        .collect();
    RoleView {
        name: name.to_string(),
        admin: role.admin,
        permissions,
    }
}

/// `GET /v1/auth/roles` → `{"roles": [{"name", "admin", "permissions"}]}`.
#[utoipa::path(
    get,
    path = "/v1/auth/roles",
    tag = "auth",
    responses((status = 200, description = "Every role (this node's applied state)", body = crate::schema::RoleList)),
)]
pub async fn list_roles(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let result = principal.require_admin("list roles").map(|()| {
        let table = state.node.reader.auth().read();
        let roles = table.roles().map(|(n, r)| role_json(n, r)).collect();
        (None, Json(RoleList { roles }).into_response())
    });
    finish(&state, LOCAL_LEVEL, result)
}

/// `n` random bytes as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buffer = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buffer)
        .map_err(|_| ApiError::Internal("the system random source failed".into()))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// Bytes of randomness in a token's secret (256 bits).
const TOKEN_SECRET_BYTES: usize = 32;
/// Bytes of randomness in a token's id (64 bits: unique, not secret).
const TOKEN_ID_BYTES: usize = 8;
const _: () = assert!(2 * TOKEN_ID_BYTES <= MAX_TOKEN_ID_BYTES);

/// `POST /v1/auth/tokens {"role", "ttl_s"?}` → 201 `{"id", "token", "role", "expires_at_ms",
/// "index"}`. The only answer that ever holds the secret.
#[utoipa::path(
    post,
    path = "/v1/auth/tokens",
    tag = "auth",
    request_body(content = TokenBody),
    responses(
        (status = 201, description = "Created; the secret is in this answer only", body = crate::schema::TokenCreated),
        (status = 404, description = "not_found: no such role", body = crate::schema::ErrorBody),
    ),
)]
pub async fn create_token(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        principal.require_admin("create tokens")?;
        let body: TokenBody = json_body(&state, body, r#"{"role": NAME, "ttl_s": SECONDS}"#)?;
        if body.ttl_s.is_some_and(|ttl| !(1..=MAX_TOKEN_TTL_S).contains(&ttl)) {
            return Err(ApiError::InvalidArgument(format!(
                "ttl_s must be between 1 and {MAX_TOKEN_TTL_S} (seconds), or absent for a token that does not expire"
            )));
        }
        let id = random_hex(TOKEN_ID_BYTES)?;
        let token = format!("mkv_{}", random_hex(TOKEN_SECRET_BYTES)?);
        let created_at_ms = now_ms();
        let record = TokenRecord {
            id: id.clone(),
            role: body.role.clone(),
            hash: token_sha256(&token),
            created_at_ms,
            expires_at_ms: body.ttl_s.map(|ttl| created_at_ms + ttl * 1000),
        };
        let expires_at_ms = record.expires_at_ms;
        let index = change(&state, AuthCommand::CreateToken(record)).await?;
        let body = TokenCreated {
            id,
            token,
            role: body.role,
            expires_at_ms,
            index,
        };
        Ok((Some(index), (StatusCode::CREATED, Json(body)).into_response()))
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

/// `GET /v1/auth/tokens` → `{"tokens": [{"id", "role", "created_at_ms", "expires_at_ms",
/// "expired"}]}`: never a secret (none is kept).
#[utoipa::path(
    get,
    path = "/v1/auth/tokens",
    tag = "auth",
    responses((status = 200, description = "Every token, never a secret", body = crate::schema::TokenList)),
)]
pub async fn list_tokens(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let result = principal.require_admin("list tokens").map(|()| {
        let now_ms = now_ms();
        let table = state.node.reader.auth().read();
        let tokens = (table.tokens())
            .map(|t| TokenView {
                id: t.id.clone(),
                role: t.role.clone(),
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                expired: t.expired_at(now_ms),
            })
            .collect();
        (None, Json(TokenList { tokens }).into_response())
    });
    finish(&state, LOCAL_LEVEL, result)
}

/// `DELETE /v1/auth/tokens/{id}` → `{"id", "index"}`: the token is refused by this node now,
/// and by every other once it applies `index`.
#[utoipa::path(
    delete,
    path = "/v1/auth/tokens/{id}",
    tag = "auth",
    params(("id" = String, Path, pattern = r"^[0-9a-f]{1,32}$")),
    responses(
        (status = 200, description = "Revoked", body = crate::schema::TokenRevoked),
        (status = 404, description = "not_found: no such token", body = crate::schema::ErrorBody),
    ),
)]
pub async fn delete_token(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        principal.require_admin("revoke tokens")?;
        let id = path_text(path, "token id")?;
        let command = AuthCommand::DeleteToken { id: id.clone() };
        change_answered(&state, command, |index| TokenRevoked { id, index }).await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}
