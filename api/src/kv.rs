//! Single-key routes: `PUT`, `GET`, `DELETE /v1/kv/{key}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mirrorkv_storage::{Command, CommandResult, LeaseAttach, Precondition, RangeRequest};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::blocking;
use crate::error::ApiError;
use crate::schema::{RangePage, WriteAnswer, FLAG_NO, FLAG_YES};
use crate::state::ApiState;
use crate::values;
use mirrorkv_coordinator::watch::interval::prefix_end;
use mirrorkv_coordinator::ReadLevel;
use mirrorkv_coordinator::ReadRequest;
use mirrorkv_storage::changes::KeyFilter;

/// The level reported on write responses: writes always go through the log.
pub const WRITE_LEVEL: &str = "strong";

pub type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

pub fn params(query: Params) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(map)| map)
        .map_err(|e| ApiError::InvalidArgument(format!("malformed query string: {e}")))
}

pub fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|value| {
            value.parse::<u64>().map_err(|_| {
                ApiError::InvalidArgument(format!(
                    "{name} must be a non-negative integer, got {value:?}"
                ))
            })
        })
        .transpose()
}

fn parse_bool(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None => Ok(false),
        Some(text) if FLAG_NO.contains(&text) => Ok(false),
        Some(text) if FLAG_YES.contains(&text) => Ok(true),
        Some(other) => Err(ApiError::InvalidArgument(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

/// The read parameters of a request (`consistency`, `min_index`, `max_staleness_ms`).
pub fn read_request(params: &HashMap<String, String>) -> Result<ReadRequest, ApiError> {
    let level = match params.get("consistency") {
        Some(value) => value
            .parse::<ReadLevel>()
            .map_err(ApiError::InvalidArgument)?,
        None => ReadLevel::default(),
    };
    Ok(ReadRequest {
        level,
        min_index: parse_u64(params, "min_index")?,
        max_staleness_ms: parse_u64(params, "max_staleness_ms")?,
    })
}

/// Check a key from a path or a body against the limits.
pub fn check_key(state: &ApiState, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the key must not be empty".into(),
        ));
    }
    if key.len() > state.config.max_key_bytes {
        return Err(ApiError::TooLarge(format!(
            "key of {} bytes exceeds max_key_bytes={}",
            key.len(),
            state.config.max_key_bytes
        )));
    }
    Ok(())
}

fn path_key(
    state: &ApiState,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::InvalidArgument(format!("bad key in path: {e}")))?;
    check_key(state, &key)?;
    Ok(key)
}

fn header_value(value: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&value.to_string())
        .expect("numbers and level names are valid header values")
}

/// Add the `X-Mirrorkv-*` headers every KV response carries. Numbers go straight into header
/// values and the level is a static string: this runs on every KV request.
pub fn add_kv_headers(
    state: &ApiState,
    response: &mut Response,
    level: &'static str,
    index: Option<u64>,
) {
    let index = match index {
        Some(index) => index,
        None => state.node.reader.applied_index().unwrap_or(0),
    };
    let leader = state.node.leader();
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-mirrorkv-index"),
        HeaderValue::from(index),
    );
    headers.insert(
        HeaderName::from_static("x-mirrorkv-consistency"),
        HeaderValue::from_static(level),
    );
    headers.insert(
        HeaderName::from_static("x-mirrorkv-node"),
        HeaderValue::from(state.node.id),
    );
    if let Some(leader) = leader {
        headers.insert(
            HeaderName::from_static("x-mirrorkv-leader"),
            HeaderValue::from(leader),
        );
    }
    if let Some(ms) = state.node.last_contact_ms_under(leader) {
        headers.insert(
            HeaderName::from_static("x-mirrorkv-last-contact-ms"),
            HeaderValue::from(ms),
        );
    }
}

/// Turn a handler result into a response carrying the KV headers.
pub fn finish(
    state: &ApiState,
    level: &'static str,
    result: Result<(Option<u64>, Response), ApiError>,
) -> Response {
    let (index, mut response) = match result {
        Ok((index, response)) => (index, response),
        Err(e) => (None, e.into_response()),
    };
    add_kv_headers(state, &mut response, level, index);
    response
}

#[utoipa::path(
    get,
    path = "/v1/kv/{*key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key (it may hold `/`)"), crate::schema::ReadParams, crate::schema::BlockingParams),
    responses(
        (status = 200, description = "The value's bytes; `ETag` is its mod_index", content_type = "application/octet-stream", body = Vec<u8>,
         headers(("ETag" = String), ("X-Mirrorkv-Index" = u64), ("X-Mirrorkv-Create-Index" = u64))),
        (status = 404, description = "not_found: no such key", body = crate::schema::ErrorBody),
        (status = 412, description = "precondition_failed: this node has not caught up to min_index", body = crate::schema::ErrorBody),
    ),
)]
pub async fn get_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
    query: Params,
) -> Response {
    let parsed = params(query).and_then(|p| Ok((read_request(&p)?, p)));
    let level = parsed.as_ref().map(|(r, _)| r.level).unwrap_or_default();
    let result = async {
        let key = path_key(&state, path)?;
        principal.require_read(&key)?;
        let (request, params) = parsed?;
        if let Some((wait_index, wait)) = blocking::wait_request(&state, &params)? {
            // Changed already: answer at once, without reading the history.
            let current = state.node.reader.get(&key)?;
            if current.value.is_none_or(|r| r.mod_index <= wait_index) {
                let filter = KeyFilter::Key(key.clone());
                blocking::wait_for_change(&state, filter, wait_index, wait).await?;
            }
        }
        let deadline = Instant::now() + state.config.request_timeout();
        state.node.read_barrier(request, deadline).await?;
        let read = state.node.reader.get(&key)?;
        let Some(record) = read.value else {
            let mut response = ApiError::NotFound.into_response();
            add_kv_headers(&state, &mut response, level.as_str(), Some(read.index));
            return Ok((Some(read.index), response));
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert("etag", header_value(format!("\"{}\"", record.mod_index)));
        headers.insert(
            HeaderName::from_static("x-mirrorkv-create-index"),
            HeaderValue::from(record.create_index),
        );
        Ok((
            Some(read.index),
            (StatusCode::OK, headers, record.value).into_response(),
        ))
    }
    .await;
    finish(&state, level.as_str(), result)
}

/// The precondition of a conditional write, from `If-Match` / `If-None-Match`.
fn precondition(headers: &HeaderMap, allow_absent: bool) -> Result<Precondition, ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_string())
                    .map_err(|_| ApiError::InvalidArgument(format!("{name} is not valid text")))
            })
            .transpose()
    };
    match (text("if-match")?, text("if-none-match")?) {
        (Some(_), Some(_)) => Err(ApiError::InvalidArgument(
            "use If-Match or If-None-Match, not both".into(),
        )),
        // HTTP's `If-Match: *`: the key exists, whatever its version.
        (Some(tag), None) if tag == "*" => Ok(Precondition::Exists),
        (Some(tag), None) => {
            let digits = tag.trim_start_matches("W/").trim_matches('"');
            digits
                .parse::<u64>()
                .map(Precondition::ModIndex)
                .map_err(|_| {
                    ApiError::InvalidArgument(format!(
                        "If-Match must be a mod_index such as \"42\", or *, got {tag}"
                    ))
                })
        }
        (None, Some(tag)) if tag == "*" && allow_absent => Ok(Precondition::Absent),
        (None, Some(tag)) => Err(ApiError::InvalidArgument(format!(
            "If-None-Match supports only * on PUT, got {tag}"
        ))),
        (None, None) => Ok(Precondition::None),
    }
}

/// `?redirect=true` on a non-leader: answer 307 to the leader's API address.
fn redirect(
    state: &ApiState,
    params: &HashMap<String, String>,
    uri: &OriginalUri,
) -> Result<Option<Response>, ApiError> {
    if !parse_bool(params, "redirect")? || state.node.is_leader() {
        return Ok(None);
    }
    let leader = state
        .node
        .leader()
        .and_then(|id| state.node.member(id))
        .ok_or_else(|| ApiError::Unavailable("no leader is known to redirect to".into()))?;
    let scheme = if state.config.https { "https" } else { "http" };
    let location = format!("{scheme}://{}{}", leader.api_addr, uri.0);
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    response.headers_mut().insert(
        "location",
        HeaderValue::from_str(&location).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(Some(response))
}

/// A put's attachment to lease `id`, with this node's limit of keys per lease.
pub fn lease_attach(state: &ApiState, id: u64) -> Result<LeaseAttach, ApiError> {
    if id == 0 {
        return Err(ApiError::InvalidArgument(
            "lease must be a lease id (a positive integer), got 0".into(),
        ));
    }
    Ok(LeaseAttach {
        id,
        max_keys: state.node.leases.config.max_keys_per_lease,
    })
}

/// Wrap `command` with the request's `Idempotency-Key`, if it has one.
pub fn with_idempotency(
    state: &ApiState,
    headers: &HeaderMap,
    command: Command,
) -> Result<Command, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(command);
    };
    let key = key
        .to_str()
        .map_err(|_| ApiError::InvalidArgument("Idempotency-Key is not valid text".into()))?;
    if key.is_empty() || key.len() > state.config.max_idempotency_key_bytes {
        return Err(ApiError::InvalidArgument(format!(
            "Idempotency-Key must have 1 to {} bytes",
            state.config.max_idempotency_key_bytes
        )));
    }
    // The leader stamps its own time and window as it forms the entry
    // (`write::stamp_idempotency`); these are placeholders until then.
    let issued_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Command::Idempotent {
        key: key.to_string(),
        issued_at_ms,
        window_ms: state.node.config.idempotency_window_s.saturating_mul(1000),
        command: Box::new(command),
    })
}

async fn run_write(
    state: &ApiState,
    command: Command,
) -> Result<(Option<u64>, Response), ApiError> {
    let deadline = Instant::now() + state.config.request_timeout();
    let response = state.node.write(command, deadline).await?;
    let body = match response.result {
        CommandResult::Put { prev_mod_index } => Json(WriteAnswer::Put {
            index: response.index,
            prev_mod_index,
        }),
        CommandResult::Delete { deleted } => Json(WriteAnswer::Delete {
            deleted,
            index: response.index,
        }),
        CommandResult::PreconditionFailed { mod_index } => {
            return Ok((
                Some(response.index),
                ApiError::PreconditionFailed { mod_index }.into_response(),
            ))
        }
        CommandResult::Refused(refusal) => return Err(ApiError::from(&refusal)),
        other => {
            return Err(ApiError::Internal(format!(
                "a single-key write applied as {other:?}"
            )))
        }
    };
    Ok((Some(response.index), body.into_response()))
}

#[utoipa::path(
    put,
    path = "/v1/kv/{*key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key (it may hold `/`)"), crate::schema::PutParams, crate::schema::WriteHeaders,
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|(W/)?"?[0-9]+"?)$"#, description = "Put only if the key's mod_index is this, or `*`: if it exists (not with If-None-Match)"),
        ("If-None-Match" = Option<String>, Header, pattern = r"^\*$", description = "`*`: put only if the key does not exist")),
    request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "The value's bytes (none: the empty value)"),
    responses(
        (status = 200, description = "Put, on a quorum's disks", body = crate::schema::WriteAnswer),
        (status = 307, description = "redirect=true on a follower: the leader's address in Location"),
        (status = 404, description = "not_found: the lease does not exist", body = crate::schema::ErrorBody),
        (status = 412, description = "precondition_failed: If-Match / If-None-Match did not hold", body = crate::schema::ErrorBody),
        (status = 422, description = "idempotency_key_reused: the key came with another request", body = crate::schema::ErrorBody),
    ),
)]
pub async fn put_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    uri: OriginalUri,
    path: Result<Path<String>, PathRejection>,
    query: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let key = path_key(&state, path)?;
        principal.require_write(&key)?;
        let params = params(query)?;
        let value = body.map_err(|e| body_error(&state, e))?;
        if value.len() > state.config.max_value_bytes {
            return Err(ApiError::TooLarge(format!(
                "value of {} bytes exceeds max_value_bytes={}",
                value.len(),
                state.config.max_value_bytes
            )));
        }
        let precondition = precondition(&headers, true)?;
        let put = match parse_u64(&params, "lease")? {
            None => Command::Put {
                key,
                value: value.to_vec(),
                precondition,
            },
            Some(id) => Command::PutLeased {
                key,
                value: value.to_vec(),
                precondition,
                lease: lease_attach(&state, id)?,
            },
        };
        let command = with_idempotency(&state, &headers, put)?;
        // Only a request that is valid here is redirected.
        if let Some(response) = redirect(&state, &params, &uri)? {
            return Ok((None, response));
        }
        run_write(&state, command).await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

#[utoipa::path(
    delete,
    path = "/v1/kv/{*key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key (it may hold `/`)"), crate::schema::WriteParams, crate::schema::WriteHeaders,
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|(W/)?"?[0-9]+"?)$"#, description = "Delete only if the key's mod_index is this, or `*`: if it exists")),
    responses(
        (status = 200, description = "Deleted (or it did not exist: deleted=false)", body = crate::schema::WriteAnswer),
        (status = 307, description = "redirect=true on a follower: the leader's address in Location"),
        (status = 412, description = "precondition_failed: If-Match did not hold", body = crate::schema::ErrorBody),
        (status = 422, description = "idempotency_key_reused: the key came with another request", body = crate::schema::ErrorBody),
    ),
)]
pub async fn delete_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    uri: OriginalUri,
    path: Result<Path<String>, PathRejection>,
    query: Params,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let key = path_key(&state, path)?;
        principal.require_write(&key)?;
        let params = params(query)?;
        let precondition = precondition(&headers, false)?;
        let command = with_idempotency(&state, &headers, Command::Delete { key, precondition })?;
        if let Some(response) = redirect(&state, &params, &uri)? {
            return Ok((None, response));
        }
        run_write(&state, command).await
    }
    .await;
    finish(&state, WRITE_LEVEL, result)
}

/// `/v1/kv/` with nothing after it: the key is empty.
#[utoipa::path(
    method(get, put, delete),
    path = "/v1/kv/",
    tag = "kv",
    responses((status = 400, description = "invalid_argument: the key is empty", body = crate::schema::ErrorBody)),
)]
pub async fn empty_key(State(state): State<Arc<ApiState>>) -> Response {
    finish(
        &state,
        WRITE_LEVEL,
        Err(ApiError::InvalidArgument(
            "the key must not be empty".into(),
        )),
    )
}

/// Map a body that could not be read: over the limit is 413, anything else 400.
pub fn body_error(state: &ApiState, rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "request body exceeds max_body_bytes={}",
            state.config.max_body_bytes
        ))
    } else {
        ApiError::InvalidArgument(format!("could not read the request body: {rejection}"))
    }
}

/// `GET /v1/kv?prefix=P` or `?start=A&end=B`, with `limit`, `keys_only`, and the read levels.
/// A page holds only the keys the principal may read (`next` still moves past the others); a
/// blocking range needs the right to read the whole range, as its answer tells of any change
/// in it.
#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "kv",
    params(crate::schema::RangeParams, crate::schema::ReadParams, crate::schema::BlockingParams),
    responses(
        (status = 200, description = "A page of keys in order", body = crate::schema::RangePage, headers(("X-Mirrorkv-Index" = u64))),
        (status = 412, description = "precondition_failed: this node has not caught up to min_index", body = crate::schema::ErrorBody),
    ),
)]
pub async fn range(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    query: Params,
) -> Response {
    let params = params(query);
    let parsed = params
        .as_ref()
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
        .and_then(read_request);
    let level = parsed.as_ref().map(|r| r.level).unwrap_or_default();
    let result = async {
        let params = params?;
        let request = parsed?;
        let prefix = params.get("prefix");
        let (start, end): (Vec<u8>, Option<Vec<u8>>) =
            match (prefix, params.get("start"), params.get("end")) {
                (Some(_), _, Some(_)) => {
                    return Err(ApiError::InvalidArgument(
                        "use prefix (with an optional start) or start/end, not both".into(),
                    ))
                }
                (Some(prefix), start, None) => {
                    let start = match start {
                        Some(start) if start.as_bytes() > prefix.as_bytes() => {
                            start.as_bytes().to_vec()
                        }
                        _ => prefix.as_bytes().to_vec(),
                    };
                    (start, prefix_end(prefix.as_bytes()))
                }
                (None, start, end) => (
                    start.map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
                    end.map(|e| e.as_bytes().to_vec()),
                ),
            };
        let limit = match parse_u64(&params, "limit")? {
            None => state.config.default_range_limit,
            Some(limit) if limit >= 1 && limit as usize <= state.config.max_range_limit => {
                limit as usize
            }
            Some(limit) => {
                return Err(ApiError::InvalidArgument(format!(
                    "limit must be 1 to {}, got {limit}",
                    state.config.max_range_limit
                )))
            }
        };
        let keys_only = parse_bool(&params, "keys_only")?;
        if let Some((wait_index, wait)) = blocking::wait_request(&state, &params)? {
            principal.require_read_range(&start, end.as_deref())?;
            let filter = match prefix {
                Some(prefix) => KeyFilter::Prefix(prefix.clone()),
                None => KeyFilter::Range {
                    start: params.get("start").cloned().unwrap_or_default(),
                    end: params.get("end").cloned(),
                },
            };
            blocking::wait_for_change(&state, filter, wait_index, wait).await?;
        }
        let deadline = Instant::now() + state.config.request_timeout();
        state.node.read_barrier(request, deadline).await?;
        // The whole page comes from one point-in-time view of the state machine.
        let range = RangeRequest {
            start,
            end,
            max_keys: limit,
            max_bytes: state.config.max_range_page_bytes,
            keys_only,
        };
        let reader = state.node.reader.clone();
        // A page may take milliseconds to read: not on a runtime worker.
        let read = tokio::task::spawn_blocking(move || reader.range(&range))
            .await
            .map_err(|e| ApiError::Internal(format!("the range read failed: {e}")))??;
        let items = read
            .value
            .items
            .iter()
            .filter(|(key, _)| principal.may_read(key))
            .map(|(key, record)| values::item(key, record, keys_only))
            .collect();
        let body = RangePage {
            index: read.index,
            items,
            next: read.value.next,
        };
        Ok((Some(read.index), Json(body).into_response()))
    }
    .await;
    finish(&state, level.as_str(), result)
}
