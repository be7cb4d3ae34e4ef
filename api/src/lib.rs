//! The HTTP API of mirrorkv (axum), as `shared/API.md` specifies it.
//!
//! Modules, one job each:
//! - [`state`]: `NodeState` (Raft handle, reader, peer pool) and `ApiConfig` (limits).
//! - [`level`]: `ReadLevel`, parsed from `?consistency=`.
//! - [`read`]: bringing the local mirror to the point a read level demands.
//! - [`read_index`]: batched leadership confirmations and the leader's read lease.
//! - [`write`]: applying a command through the leader, from any node.
//! - [`peer`]: what this node answers other nodes over raft-net (forwarded writes, read indexes).
//! - [`kv`]: single-key and range routes, idempotency keys, the `X-Mirrorkv-*` headers.
//! - [`txn`]: `POST /v1/txn`.
//! - [`values`]: values in JSON (`value` / `value_base64`).
//! - [`cluster`]: `/v1/cluster` (with every member's own progress), `/health`, `/ready`.
//! - [`membership`]: adding mirrors, promoting, removing members, forwarded to the leader.
//! - [`ops`]: `POST /v1/snapshot` and the streamed `GET /v1/backup`.
//! - [`metrics`]: `GET /metrics` (Prometheus text) and the request-counting middleware.
//! - [`limits`]: bounded connections and requests in flight (429 past the limit).
//! - [`error`]: `ApiError`, and the one mapping of errors to HTTP.
//!
//! Why: `api/DESIGN.md`.

pub mod cluster;
pub mod error;
pub mod kv;
pub mod level;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod ops;
pub mod peer;
pub mod read;
pub mod read_index;
pub mod state;
pub mod txn;
pub mod values;
pub mod write;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

pub use error::ApiError;
pub use state::{ApiConfig, NodeState};

/// The router of the whole API.
pub fn router(state: Arc<NodeState>) -> Router {
    let max_body_bytes = state.config.max_body_bytes;
    let in_flight = limits::InFlight::new(state.config.max_in_flight_requests);
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route(
            "/v1/kv/",
            get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key),
        )
        .route("/v1/kv", get(kv::range))
        .route("/v1/txn", post(txn::txn))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/cluster/members", post(membership::add_member))
        .route(
            "/v1/cluster/members/{id}/promote",
            post(membership::promote_member),
        )
        .route(
            "/v1/cluster/members/{id}",
            delete(membership::remove_member),
        )
        .route("/v1/snapshot", post(ops::snapshot))
        .route("/v1/backup", get(ops::backup))
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            in_flight,
            limits::shed_load,
        ))
        // Outermost, so requests shed with 429 are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<NodeState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = limits::LimitedListener::new(listener, state.config.max_connections);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
