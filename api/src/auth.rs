//! Who a request is (`Principal`, from `Authorization: Bearer <token>`), and what it may do.
//!
//! The front door authenticates every request but `/health` and `/ready` (and `/metrics` with
//! `--metrics-public`) once, with one SHA-256 and a lookup in the applied table
//! (`mirrorkv_storage::SharedAuth`): no I/O, no round trip. Each handler then asks the
//! principal for the right its resource needs (`require_read`, `require_write`,
//! `require_admin`), so a refusal is decided where the key is known, before anything is read:
//! a 403 says the same whether the key exists or not.

use std::sync::Arc;

use axum::http::HeaderMap;
use mirrorkv_storage::{Role, TokenAccess};

use crate::error::ApiError;
use crate::state::ApiState;
pub use crate::state::AuthSettings;

/// Longest `Authorization` header value looked at, in bytes; longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// `--auth` is off: every request may do everything.
    Open,
    /// The bootstrap token: an admin.
    Bootstrap,
    /// A token of the replicated table.
    Token(TokenAccess),
}

/// SHA-256 of a token's text.
pub fn token_sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Milliseconds since the Unix epoch on this node's clock (token expiry).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::Unauthenticated(format!(
        "{why}; send Authorization: Bearer <token> (this node runs with --auth)"
    ))
}

/// Whether `path` is served without a token.
pub fn is_public(settings: &AuthSettings, path: &str) -> bool {
    !settings.enabled
        || path == "/health"
        || path == "/ready"
        || path == "/v1/openapi.json"
        || (settings.metrics_public && path == "/metrics")
}

/// The principal of a request with these headers.
pub fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let settings = &state.config.auth;
    if !settings.enabled {
        return Ok(Principal::Open);
    }
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("no token"))?;
    if value.len() > MAX_TOKEN_BYTES {
        return Err(unauthenticated(&format!(
            "an Authorization header over {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthenticated("an Authorization header that is not Bearer <token>"))?;
    let hash = token_sha256(token);
    if settings
        .bootstrap_token_sha256
        .is_some_and(|bootstrap| same_hash(&bootstrap, &hash))
    {
        return Ok(Principal::Bootstrap);
    }
    match state.node.reader.auth().read().token(&hash, now_ms()) {
        Some(access) => Ok(Principal::Token(access)),
        None => Err(unauthenticated(
            "an unknown, revoked or expired token (a token created on another node is known here once this node applied its index)",
        )),
    }
}

/// Compare two hashes in time independent of where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Principal {
    fn role(&self) -> Option<&Arc<Role>> {
        match self {
            Principal::Token(access) => access.role.as_ref(),
            Principal::Open | Principal::Bootstrap => None,
        }
    }

    /// Whether this principal administers the cluster.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Open | Principal::Bootstrap => true,
            Principal::Token(_) => self.role().is_some_and(|role| role.admin),
        }
    }

    pub fn may_read(&self, key: &str) -> bool {
        self.is_admin() || self.role().is_some_and(|role| role.may_read(key))
    }

    pub fn may_write(&self, key: &str) -> bool {
        self.is_admin() || self.role().is_some_and(|role| role.may_write(key))
    }

    /// Whether this principal may read every key in `[start, end)` (`end` `None`: unbounded):
    /// one prefix it may read holds the whole range.
    pub fn may_read_range(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        if self.is_admin() {
            return true;
        }
        let Some(role) = self.role() else {
            return false;
        };
        role.permissions.iter().any(|p| {
            let prefix = p.prefix.as_bytes();
            p.read
                && start.starts_with(prefix)
                && match (
                    mirrorkv_coordinator::watch::interval::prefix_end(prefix),
                    end,
                ) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(prefix_end), Some(end)) => end <= prefix_end.as_slice(),
                }
        })
    }

    fn who(&self) -> String {
        match self {
            Principal::Open => "anyone".into(),
            Principal::Bootstrap => "the bootstrap token".into(),
            Principal::Token(access) => match &access.role {
                Some(_) => format!("token {} (role {})", access.token.id, access.token.role),
                None => format!(
                    "token {} (role {}, which does not exist)",
                    access.token.id, access.token.role
                ),
            },
        }
    }

    fn denied(&self, what: &str) -> ApiError {
        ApiError::PermissionDenied(format!("{} may not {what}", self.who()))
    }

    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        match self.is_admin() {
            true => Ok(()),
            false => Err(self.denied(&format!("{what} (admin only)"))),
        }
    }

    /// The right to read `key`. The refusal never says whether the key exists.
    pub fn require_read(&self, key: &str) -> Result<(), ApiError> {
        match self.may_read(key) {
            true => Ok(()),
            false => Err(self.denied("read this key")),
        }
    }

    pub fn require_write(&self, key: &str) -> Result<(), ApiError> {
        match self.may_write(key) {
            true => Ok(()),
            false => Err(self.denied("write this key")),
        }
    }

    pub fn require_read_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), ApiError> {
        match self.may_read_range(start, end) {
            true => Ok(()),
            false => Err(self.denied("wait on changes of keys it may not all read")),
        }
    }
}
