//! The JSON bodies the API answers, as types: handlers build these, serde writes them, and
//! utoipa derives their schemas for `GET /v1/openapi.json` (`openapi.rs`) from the same
//! definitions, so the document and the answers cannot drift apart; and the query and header
//! parameters the handlers read (`ReadParams`, ...), described for the document.

use mirrorkv_coordinator::ReadLevel;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};

/// The body of every error answer (`shared/API.md`, "Errors").
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The key's current `mod_index`, null when it does not exist (412 `precondition_failed`
    /// of a conditional write only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub mod_index: Option<Option<u64>>,
    /// `"unknown"`: a write timed out and may or may not have applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The oldest index still in the change history (410 `compacted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_index: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of `invalid_argument`, `not_found`, `precondition_failed`, `too_large`,
    /// `overloaded`, `unavailable`, `stale_read`, `timeout`, `removed`,
    /// `idempotency_key_reused`, `request_timeout`, `compacted`, `unauthenticated`,
    /// `permission_denied`, `internal`.
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
    /// Whether the same request may succeed if sent again (after `Retry-After` seconds).
    pub retryable: bool,
}

/// A key with its value and versions. The value is `value` when its bytes are UTF-8, else
/// `value_base64`; neither with `keys_only`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Item {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub mod_index: u64,
    pub create_index: u64,
}

/// `GET /v1/kv?prefix=...`: a page of keys in order, read at `index`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangePage {
    pub index: u64,
    pub items: Vec<Item>,
    /// Where the next page starts (`start=` of the next request); null on the last page.
    pub next: Option<String>,
}

/// An acknowledged put or delete. Fields in alphabetical order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum WriteAnswer {
    Put {
        index: u64,
        /// The key's `mod_index` before this put; null if it did not exist.
        #[schema(required = true)]
        prev_mod_index: Option<u64>,
    },
    Delete {
        /// Whether the key existed.
        deleted: bool,
        index: u64,
    },
}

/// `POST /v1/txn`: which branch ran, at which index, and each op's result in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct TxnAnswer {
    pub succeeded: bool,
    pub index: u64,
    pub results: Vec<TxnOpAnswer>,
}

/// One op's result: `{"put": {...}}`, `{"delete": {...}}` or `{"get": item-or-null}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TxnOpAnswer {
    Put {
        #[schema(required = true)]
        prev_mod_index: Option<u64>,
    },
    Delete {
        deleted: bool,
    },
    Get(Option<Item>),
}

/// `POST /v1/lease`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseGranted {
    pub id: u64,
    pub ttl_s: u64,
    pub index: u64,
}

/// `POST /v1/lease/{id}/keepalive`: the lease now lives `ttl_s` from now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseKept {
    pub id: u64,
    pub ttl_s: u64,
}

/// `DELETE /v1/lease/{id}`: the lease and its keys are gone at `index`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseRevoked {
    pub index: u64,
    pub keys_deleted: u64,
}

/// `GET /v1/lease/{id}`: at most `max_keys_per_lease` keys, in key order, only those the
/// caller may read.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_s: u64,
    pub remaining_ms: u64,
    pub keys: Vec<String>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberStatus>,
    pub node: NodeStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberStatus {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    /// `voter` or `mirror`.
    pub role: &'static str,
    /// Known on the leader only; null elsewhere or when the member is unreachable.
    pub applied_index: Option<u64>,
    /// Entries behind the leader's last log index (leader only).
    pub lag: Option<u64>,
    pub reachable: bool,
}

/// The answering node's own view.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: &'static str,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub last_contact_ms: Option<u64>,
}

/// `GET /health`, `GET /ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (health) or `ready`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}

/// A member after a membership change.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_addr: Option<String>,
    /// `voter` or `mirror`.
    pub role: &'static str,
}

/// `POST /v1/cluster/members` and `POST /v1/cluster/members/{id}/promote`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberChanged {
    pub index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    pub member: MemberView,
}

/// `DELETE /v1/cluster/members/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberRemoved {
    pub index: u64,
    pub removed: u64,
}

/// `POST /v1/snapshot`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotTaken {
    pub index: u64,
    pub purged_index: Option<u64>,
    pub kept_entries: u64,
    pub snapshot_bytes: u64,
    pub took_ms: u64,
}

/// `GET /v1/auth/roles`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleList {
    pub roles: Vec<RoleView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub admin: bool,
    pub permissions: Vec<PermissionView>,
}

/// Read and/or write on every key that starts with `prefix` (`""`: every key).
#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionView {
    pub prefix: String,
    pub read: bool,
    pub write: bool,
}

/// `PUT` / `DELETE /v1/auth/roles/{name}`: done at `index`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleChanged {
    pub name: String,
    pub index: u64,
}

/// `POST /v1/auth/tokens`: the only answer that ever holds the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    /// The secret, for `Authorization: Bearer <token>`.
    pub token: String,
    pub role: String,
    /// Milliseconds since the Unix epoch; null: never expires.
    pub expires_at_ms: Option<u64>,
    pub index: u64,
}

/// `GET /v1/auth/tokens`: never a secret (none is kept).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub role: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub expired: bool,
}

/// `DELETE /v1/auth/tokens/{id}`: revoked at `index`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRevoked {
    pub id: String,
    pub index: u64,
}

/// One line of a watch stream (NDJSON), or one `data:` of an SSE event: a change, a
/// progress notice, or the error that ends the stream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum WatchLine {
    Change(WatchChange),
    /// Nothing matched up to `progress`.
    Progress {
        progress: u64,
    },
    /// The stream ends; resume with `from_index=resume_index`, or (`compacted`) re-read and
    /// watch from after the read.
    Error {
        error: ErrorDetail,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_index: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        compact_index: Option<u64>,
    },
}

/// A change to one key at `index`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatchChange {
    pub index: u64,
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mod_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    pub prev_mod_index: Option<u64>,
}

/// A string parameter that takes one of `values`, for the document.
fn one_of(values: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .into()
}

/// The read level of a read (`shared/API.md`, "Consistency levels"): the names
/// `ReadLevel` parses, from `ReadLevel::ALL`.
pub struct Consistency;

impl PartialSchema for Consistency {
    fn schema() -> RefOr<Schema> {
        one_of(ReadLevel::ALL.map(ReadLevel::as_str))
    }
}

impl ToSchema for Consistency {}

/// What a yes/no query parameter (`kv::parse_bool`) takes for yes: present, empty or not.
pub const FLAG_YES: [&str; 3] = ["true", "1", ""];
/// What it takes for no.
pub const FLAG_NO: [&str; 2] = ["false", "0"];

/// A yes/no query parameter: `FLAG_YES` or `FLAG_NO`.
pub struct Flag;

impl PartialSchema for Flag {
    fn schema() -> RefOr<Schema> {
        one_of(FLAG_YES.into_iter().chain(FLAG_NO))
    }
}

impl ToSchema for Flag {}

/// When a read may be served.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Default `linearizable`.
    pub consistency: Option<Consistency>,
    /// Serve only once this node applied at least this index (read-your-writes).
    pub min_index: Option<u64>,
    /// With `stale`: refuse (503 `stale_read`) if this node heard from the leader longer ago.
    pub max_staleness_ms: Option<u64>,
}

/// A blocking read (Consul-style): first wait for a change past `wait_index`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BlockingParams {
    /// The `X-Mirrorkv-Index` of the previous answer.
    pub wait_index: Option<u64>,
    /// `30s`, `500ms`, `5m` or seconds; at most the node's `max_wait_s`. Needs `wait_index`.
    #[param(pattern = r"^[0-9]+(ms|s|m)?$")]
    pub wait: Option<String>,
}

/// A write's options.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// On a node that is not the leader: answer 307 to the leader instead of forwarding.
    pub redirect: Option<Flag>,
}

/// A put's options.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutParams {
    /// Attach the key to this lease (deleted when the lease ends).
    #[param(minimum = 1)]
    pub lease: Option<u64>,
    /// On a node that is not the leader: answer 307 to the leader instead of forwarding.
    pub redirect: Option<Flag>,
}

/// The keys of a range: `prefix` (with an optional `start` inside it) or `start`/`end`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    pub prefix: Option<String>,
    /// Inclusive; a page's `next` goes here.
    pub start: Option<String>,
    /// Exclusive; absent: to the last key.
    pub end: Option<String>,
    /// Keys a page, 1 to the node's `max_range_limit`.
    #[param(minimum = 1)]
    pub limit: Option<u64>,
    /// Leave the values out.
    pub keys_only: Option<Flag>,
}

/// The keys a watch follows (exactly one of `key`, `prefix`, `start`), and from where.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchParams {
    pub key: Option<String>,
    pub prefix: Option<String>,
    pub start: Option<String>,
    /// Exclusive, with `start`.
    pub end: Option<String>,
    /// The first index to send; default: the next one applied.
    pub from_index: Option<u64>,
}

/// A write's headers.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct WriteHeaders {
    /// Retries with the same key within the node's window apply once (1 to
    /// `max_idempotency_key_bytes` bytes).
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 128)]
    pub idempotency_key: Option<String>,
}
