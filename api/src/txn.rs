//! `POST /v1/txn`: compares, then the `success` or `failure` ops, atomically at one log index.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mirrorkv_storage::{Command, CommandResult, Compare, CompareTarget, Txn, TxnOp, TxnOpResult};
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::kv::{self, check_key};
use crate::schema::{TxnAnswer, TxnOpAnswer};
use crate::state::ApiState;
use crate::values;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<OpBody>,
    #[serde(default)]
    failure: Vec<OpBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    mod_index: Option<u64>,
    value: Option<String>,
    value_base64: Option<String>,
    exists: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OpBody {
    put: Option<PutBody>,
    delete: Option<KeyBody>,
    get: Option<KeyBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutBody {
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
    /// Attach the key to this lease.
    lease: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: String,
}

fn parse_compare(
    state: &ApiState,
    position: usize,
    body: CompareBody,
) -> Result<Compare, ApiError> {
    let what = format!("compare[{position}]");
    check_key(state, &body.key)?;
    let target = match (body.mod_index, body.value, body.value_base64, body.exists) {
        (Some(m), None, None, None) => CompareTarget::ModIndex(m),
        (None, Some(text), None, None) => CompareTarget::Value(text.into_bytes()),
        (None, None, Some(encoded), None) => {
            CompareTarget::Value(values::decode_value(None, Some(encoded), &what)?)
        }
        (None, None, None, Some(exists)) => CompareTarget::Exists(exists),
        _ => {
            return Err(ApiError::InvalidArgument(format!(
                "{what}: give exactly one of mod_index, value, value_base64, exists"
            )))
        }
    };
    Ok(Compare {
        key: body.key,
        target,
    })
}

fn parse_op(state: &ApiState, what: String, body: OpBody) -> Result<TxnOp, ApiError> {
    let op = match (body.put, body.delete, body.get) {
        (Some(put), None, None) => {
            let value = values::decode_value(put.value, put.value_base64, &what)?;
            if value.len() > state.config.max_value_bytes {
                return Err(ApiError::TooLarge(format!(
                    "{what}: value of {} bytes exceeds max_value_bytes={}",
                    value.len(),
                    state.config.max_value_bytes
                )));
            }
            match put.lease {
                None => TxnOp::Put {
                    key: put.key,
                    value,
                },
                Some(id) => TxnOp::PutLeased {
                    key: put.key,
                    value,
                    lease: kv::lease_attach(state, id)?,
                },
            }
        }
        (None, Some(delete), None) => TxnOp::Delete { key: delete.key },
        (None, None, Some(get)) => TxnOp::Get { key: get.key },
        _ => {
            return Err(ApiError::InvalidArgument(format!(
                "{what}: give exactly one of put, delete, get"
            )))
        }
    };
    let (TxnOp::Put { key, .. }
    | TxnOp::PutLeased { key, .. }
    | TxnOp::Delete { key }
    | TxnOp::Get { key }) = &op;
    check_key(state, key)?;
    Ok(op)
}

/// Parse and validate a transaction body. Pure apart from the limits in `state`.
fn parse_txn(state: &ApiState, body: &[u8]) -> Result<Txn, ApiError> {
    let body: TxnBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidArgument(format!("malformed transaction JSON: {e}")))?;
    let ops = body.compare.len() + body.success.len() + body.failure.len();
    if ops > state.config.max_txn_ops {
        return Err(ApiError::InvalidArgument(format!(
            "a transaction has at most {} operations (compares included), this one has {ops}",
            state.config.max_txn_ops
        )));
    }
    let compare = body
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| parse_compare(state, i, c))
        .collect::<Result<_, _>>()?;
    let success = body
        .success
        .into_iter()
        .enumerate()
        .map(|(i, op)| parse_op(state, format!("success[{i}]"), op))
        .collect::<Result<_, _>>()?;
    let failure = body
        .failure
        .into_iter()
        .enumerate()
        .map(|(i, op)| parse_op(state, format!("failure[{i}]"), op))
        .collect::<Result<_, _>>()?;
    Ok(Txn {
        compare,
        success,
        failure,
    })
}

fn result_json(result: &TxnOpResult) -> TxnOpAnswer {
    match result {
        TxnOpResult::Put { prev_mod_index } => TxnOpAnswer::Put {
            prev_mod_index: *prev_mod_index,
        },
        TxnOpResult::Delete { deleted } => TxnOpAnswer::Delete { deleted: *deleted },
        TxnOpResult::Get { key, record } => {
            TxnOpAnswer::Get(record.as_ref().map(|r| values::item(key, r, false)))
        }
    }
}

/// A transaction needs the right to read every key it compares or gets and to write every
/// key it puts or deletes, in both branches: which branch runs depends on data the principal
/// may not see.
fn authorize(principal: &Principal, txn: &Txn) -> Result<(), ApiError> {
    for compare in &txn.compare {
        principal.require_read(&compare.key)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Get { key } => principal.require_read(key)?,
            TxnOp::Put { key, .. } | TxnOp::PutLeased { key, .. } | TxnOp::Delete { key } => {
                principal.require_write(key)?
            }
        }
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    params(crate::schema::WriteHeaders),
    request_body(content = TxnBody, description = "Compares, then the success or the failure ops, at one index"),
    responses(
        (status = 200, description = "Applied; `succeeded` says which branch ran", body = crate::schema::TxnAnswer),
        (status = 404, description = "not_found: a lease a put names does not exist", body = crate::schema::ErrorBody),
        (status = 422, description = "idempotency_key_reused: the key came with another request", body = crate::schema::ErrorBody),
    ),
)]
pub async fn txn(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body.map_err(|e| kv::body_error(&state, e))?;
        let txn = parse_txn(&state, &body)?;
        authorize(&principal, &txn)?;
        let command = kv::with_idempotency(&state, &headers, Command::Txn(txn))?;
        let deadline = Instant::now() + state.config.request_timeout();
        let response = state.node.write(command, deadline).await?;
        if let CommandResult::Refused(refusal) = &response.result {
            return Err(ApiError::from(refusal));
        }
        let CommandResult::Txn { succeeded, results } = response.result else {
            return Err(ApiError::Internal(format!(
                "a transaction applied as {:?}",
                response.result
            )));
        };
        let body = TxnAnswer {
            succeeded,
            index: response.index,
            results: results.iter().map(result_json).collect(),
        };
        Ok((Some(response.index), Json(body).into_response()))
    }
    .await;
    kv::finish(&state, kv::WRITE_LEVEL, result)
}
