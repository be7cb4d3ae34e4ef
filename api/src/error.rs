//! `ApiError` and the one place where errors become HTTP responses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use mirrorkv_coordinator::CoordError;
use mirrorkv_storage::StorageError;

use crate::schema::{ErrorBody, ErrorDetail};

/// Everything a request can fail with. The message is safe to show a client; internals go to
/// the log only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("key not found")]
    NotFound,
    /// A lease that does not live (never granted, revoked or expired).
    #[error("{0}")]
    LeaseNotFound(String),
    #[error("precondition failed")]
    PreconditionFailed { mod_index: Option<u64> },
    #[error("{0}")]
    TooLarge(String),
    /// Load shed: too many requests in flight.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    StaleRead(String),
    /// A read (or anything without side effects) ran out of time; retrying is safe.
    #[error("{0}")]
    Timeout(String),
    /// A write ran out of time or lost its leader after it may have been appended: it may or may
    /// not have been applied.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A cluster member that does not exist.
    #[error("{0}")]
    NoSuchMember(String),
    /// A mirror is too far behind to be promoted; clears by itself as it catches up.
    #[error("{0}")]
    NotCaughtUp(String),
    /// This node was removed from the cluster: it serves nothing any more; another member does.
    #[error("{0}")]
    Removed(String),
    /// An `Idempotency-Key` reused for a different request within its window.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A request target (path and query) over `limits::max_uri_bytes` (414).
    #[error("{0}")]
    UriTooLong(String),
    /// Request headers over `limits::MAX_HEADER_BYTES` together (431).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The client did not send its request in time (`body_read_timeout_ms`).
    #[error("{0}")]
    RequestTimeout(String),
    /// Changes asked for are gone from this node's history (`from_index` too old).
    #[error("{message}")]
    Compacted { message: String, compact_index: u64 },
    /// No token, or one this node does not know (unknown, revoked, expired) (`--auth`).
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token whose role does not allow the request. Never says whether a key exists.
    #[error("{0}")]
    PermissionDenied(String),
    /// A role or token that does not exist (`/v1/auth/...`).
    #[error("{0}")]
    AuthNotFound(String),
    #[error("internal error")]
    Internal(String),
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            // Clears by itself within seconds; another node can answer meanwhile.
            StorageError::Installing => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<mirrorkv_storage::InvalidCommand> for ApiError {
    fn from(invalid: mirrorkv_storage::InvalidCommand) -> Self {
        CoordError::from(invalid).into()
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::InvalidArgument(message) => ApiError::InvalidArgument(message),
            CoordError::TooLarge(message) => ApiError::TooLarge(message),
            CoordError::Unavailable(message) => ApiError::Unavailable(message),
            CoordError::StaleRead(message) => ApiError::StaleRead(message),
            CoordError::Timeout(message) => ApiError::Timeout(message),
            CoordError::OutcomeUnknown(message) => ApiError::OutcomeUnknown(message),
            CoordError::NoSuchMember(message) => ApiError::NoSuchMember(message),
            CoordError::NotCaughtUp(message) => ApiError::NotCaughtUp(message),
            CoordError::Removed(message) => ApiError::Removed(message),
            CoordError::Overloaded(message) => ApiError::Overloaded(message),
            CoordError::Compacted {
                message,
                compact_index,
            } => ApiError::Compacted {
                message,
                compact_index,
            },
            CoordError::Storage(e) => e.into(),
        }
    }
}

impl From<&mirrorkv_storage::ApplyRefusal> for ApiError {
    fn from(refusal: &mirrorkv_storage::ApplyRefusal) -> Self {
        match refusal {
            mirrorkv_storage::ApplyRefusal::ResponseTooLarge { .. } => {
                ApiError::TooLarge(refusal.to_string())
            }
            mirrorkv_storage::ApplyRefusal::NestedCommand => {
                ApiError::InvalidArgument(refusal.to_string())
            }
            mirrorkv_storage::ApplyRefusal::IdempotencyKeyReused => {
                ApiError::IdempotencyKeyReused(refusal.to_string())
            }
            mirrorkv_storage::ApplyRefusal::LeaseNotFound { .. } => {
                ApiError::LeaseNotFound(refusal.to_string())
            }
            // Waiting can help: leases expire.
            mirrorkv_storage::ApplyRefusal::TooManyLeases { .. } => {
                ApiError::Overloaded(refusal.to_string())
            }
            mirrorkv_storage::ApplyRefusal::TooManyKeysOnLease { .. } => {
                ApiError::TooLarge(refusal.to_string())
            }
            mirrorkv_storage::ApplyRefusal::NotAlone => ApiError::Internal(refusal.to_string()),
            mirrorkv_storage::ApplyRefusal::RoleNotFound { .. }
            | mirrorkv_storage::ApplyRefusal::TokenNotFound { .. } => {
                ApiError::AuthNotFound(refusal.to_string())
            }
            mirrorkv_storage::ApplyRefusal::TooManyRoles { .. }
            | mirrorkv_storage::ApplyRefusal::TooManyTokens { .. } => {
                ApiError::TooLarge(refusal.to_string())
            }
            // Drawn at random: a retry draws anew.
            mirrorkv_storage::ApplyRefusal::TokenExists { .. } => {
                ApiError::Unavailable(refusal.to_string())
            }
        }
    }
}

/// Seconds a client should wait before retrying a 503 or 429.
const RETRY_AFTER_S: &str = "1";

impl ApiError {
    fn status_code_retryable(&self) -> (StatusCode, &'static str, bool) {
        match self {
            ApiError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument", false),
            ApiError::NotFound | ApiError::LeaseNotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found", false)
            }
            ApiError::PreconditionFailed { .. } => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                false,
            ),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", false),
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded", true),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", true),
            ApiError::StaleRead(_) => (StatusCode::SERVICE_UNAVAILABLE, "stale_read", true),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout", true),
            // Retrying blindly could apply the write twice: not retryable without an
            // idempotency key or a read to check.
            ApiError::OutcomeUnknown(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout", false),
            ApiError::NoSuchMember(_) => (StatusCode::NOT_FOUND, "not_found", false),
            ApiError::NotCaughtUp(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed", true)
            }
            // Nothing was done, and another member can serve it (the message names them); this
            // node will answer the same for as long as it runs.
            ApiError::Removed(_) => (StatusCode::GONE, "removed", true),
            ApiError::IdempotencyKeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                false,
            ),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout", true),
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "too_large", false),
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_large",
                false,
            ),
            // Retrying the same request cannot help: re-read the range, then watch from its
            // index.
            ApiError::Compacted { .. } => (StatusCode::GONE, "compacted", false),
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", false),
            ApiError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied", false),
            ApiError::AuthNotFound(_) => (StatusCode::NOT_FOUND, "not_found", false),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", false),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, retryable) = self.status_code_retryable();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                retryable,
            },
            mod_index: None,
            outcome: None,
            compact_index: None,
        };
        match &self {
            ApiError::PreconditionFailed { mod_index } => body.mod_index = Some(*mod_index),
            ApiError::OutcomeUnknown(_) => body.outcome = Some("unknown".into()),
            ApiError::Compacted { compact_index, .. } => body.compact_index = Some(*compact_index),
            _ => {}
        }
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::TOO_MANY_REQUESTS
            || matches!(self, ApiError::NotCaughtUp(_))
        {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static(RETRY_AFTER_S));
        }
        response
    }
}
