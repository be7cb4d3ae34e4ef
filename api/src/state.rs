//! `ApiState`: what every handler needs — the node's coordination, the HTTP limits and the
//! request metrics.

use std::sync::Arc;
use std::time::Duration;

use mirrorkv_coordinator::Coordinator;

/// Limits and timeouts of the HTTP API, each with its unit.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest request body accepted on any route.
    pub max_body_bytes: usize,
    /// HTTP connections served at once; past it the node stops accepting.
    pub max_connections: usize,
    /// Requests in flight at once; past it a request is answered 429 at once.
    pub max_in_flight_requests: usize,
    /// A connection with no request in progress and no byte moving is closed after this.
    pub idle_timeout_ms: u64,
    /// A request's head (request line and headers) must arrive within this.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this, or the answer is 408.
    pub body_read_timeout_ms: u64,
    /// A response that makes no progress (the client reads nothing) for this long closes the
    /// connection.
    pub write_timeout_ms: u64,
    /// Deadline of a request that needs the cluster (a write, a linearizable read).
    pub request_timeout_ms: u64,
    /// Longest `Idempotency-Key`.
    pub max_idempotency_key_bytes: usize,
    /// Most operations (compares included) in one transaction.
    pub max_txn_ops: usize,
    /// Default and largest `limit` of a range read.
    pub default_range_limit: usize,
    pub max_range_limit: usize,
    /// Most bytes of keys and values in one range page (it ends early, with `next`, past them;
    /// a page always holds at least one key).
    pub max_range_page_bytes: usize,
    /// The cluster's APIs serve HTTPS (`--tls-cert`): redirects name `https://`.
    pub https: bool,
    /// Tokens and roles (`--auth`).
    pub auth: AuthSettings,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            max_connections: 1024,
            max_in_flight_requests: 4096,
            idle_timeout_ms: 60_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            request_timeout_ms: 5000,
            max_idempotency_key_bytes: 128,
            max_txn_ops: 128,
            default_range_limit: 1000,
            max_range_limit: 10_000,
            max_range_page_bytes: 4 * 1024 * 1024,
            https: false,
            auth: AuthSettings::default(),
        }
    }
}

impl ApiConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// What every client command must keep, on every path into this node.
    pub fn command_limits(&self) -> mirrorkv_storage::CommandLimits {
        mirrorkv_storage::CommandLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_txn_ops: self.max_txn_ops,
            max_idempotency_key_bytes: self.max_idempotency_key_bytes,
        }
    }
}

/// Shared state of the HTTP API of one node.
pub struct ApiState {
    /// The node's coordination with its cluster: every handler's way to the log and the data.
    pub node: Arc<Coordinator>,
    pub config: ApiConfig,
    /// Request counters and latency histograms (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl ApiState {
    pub fn new(node: Arc<Coordinator>, config: ApiConfig) -> Arc<Self> {
        Arc::new(Self {
            node,
            config,
            metrics: crate::metrics::Metrics::default(),
        })
    }
}

/// Access control of the API (`--auth`).
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// Require a token on every route but `/health` and `/ready`.
    pub enabled: bool,
    /// SHA-256 of the bootstrap token (`--auth-bootstrap-token-file`): an admin known to this
    /// node alone, from its own configuration, to create the first roles and tokens.
    pub bootstrap_token_sha256: Option<[u8; 32]>,
    /// `/metrics` needs no token (`--metrics-public`).
    pub metrics_public: bool,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field("bootstrap_token", &self.bootstrap_token_sha256.is_some())
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}
