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
//! - [`metrics`]: `GET /metrics` (Prometheus text) and `RequestTimer`, which counts requests.
//! - [`limits`]: bounded connections and requests in flight (429 past the limit).
//! - `front_door` (here): the one middleware, counting every request and shedding load.
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
            FrontDoor {
                state: state.clone(),
                in_flight,
            },
            front_door,
        ))
        .with_state(state)
}

#[derive(Clone)]
struct FrontDoor {
    state: Arc<NodeState>,
    in_flight: limits::InFlight,
}

/// The API's one middleware: count and time every request (`metrics::RequestTimer`), and shed
/// it with 429 when too many are in flight (`limits::InFlight`). One layer rather than one
/// each, because every `from_fn` layer clones and boxes services and futures per request (about
/// 1% of the machine per layer in a 64-client put profile).
async fn front_door(
    axum::extract::State(door): axum::extract::State<FrontDoor>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let timer = metrics::RequestTimer::start(&request);
    // A removed node answers every KV and cluster route (`/v1/...`) with 410 at once; /health,
    // /ready (503) and /metrics still serve.
    let removed = if request.uri().path().starts_with("/v1/") {
        door.state.refuse_if_removed().err()
    } else {
        None
    };
    let response = match (removed, door.in_flight.admit()) {
        (Some(removed), _) => axum::response::IntoResponse::into_response(removed),
        (None, Ok(_permit)) => next.run(request).await,
        (None, Err(overloaded)) => axum::response::IntoResponse::into_response(overloaded),
    };
    timer.finish(&door.state.metrics, response.status());
    response
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
