//! The HTTP API of mirrorkv (axum), as `shared/API.md` specifies it: routes, extractors,
//! headers, limits and the one mapping of errors to HTTP. What a request *does* (writes through
//! the leader, read levels, membership) is `mirrorkv-coordinator`'s.
//!
//! Modules, one job each:
//! - [`auth`]: who a request is (`Principal`, from its bearer token) and what it may do.
//! - [`auth_routes`]: `/v1/auth/...`: roles and tokens.
//! - [`state`]: `ApiState` (the node's `Coordinator`, the limits, the metrics) and `ApiConfig`.
//! - [`kv`]: single-key and range routes, idempotency keys, the `X-Mirrorkv-*` headers.
//! - [`txn`]: `POST /v1/txn`.
//! - [`lease`]: `/v1/lease` routes: grant, keepalive, revoke, lookup.
//! - [`values`]: values in JSON (`value` / `value_base64`).
//! - [`watch`]: `GET /v1/watch` (NDJSON or SSE change streams) and the key filter.
//! - [`blocking`]: blocking reads' `wait_index` and `wait`, shared by the KV routes.
//! - [`cluster`]: `/v1/cluster` (with every member's own progress), `/health`, `/ready`.
//! - [`membership`]: the routes that add mirrors, promote and remove members.
//! - [`ops`]: `POST /v1/snapshot`, the streamed `GET /v1/backup`, `GET /metrics`.
//! - [`schema`]: the JSON bodies the API answers, as types with their schemas.
//! - [`openapi`]: every route, registered with its OpenAPI entry; `GET /v1/openapi.json`.
//! - [`metrics`]: the node's metrics (Prometheus text) and `RequestTimer`, which counts requests.
//! - [`tls`]: HTTPS (`ApiTls`), reloadable, with a handshake deadline.
//! - [`limits`]: bounded connections and requests in flight (429 past the limit).
//! - `front_door` (here): the one middleware, counting every request and shedding load.
//! - [`error`]: `ApiError`, and the one mapping of errors to HTTP.
//!
//! Why: `api/DESIGN.md`.

pub mod auth;
pub mod auth_routes;
pub mod blocking;
pub mod cluster;
pub mod error;
pub mod kv;
pub mod lease;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod schema;
pub mod state;
pub mod tls;
pub mod txn;
pub mod values;
pub mod watch;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

pub use error::ApiError;
pub use state::{ApiConfig, ApiState};
pub use tls::ApiTls;

/// The router of the whole API.
pub fn router(state: Arc<ApiState>) -> Router {
    let max_body_bytes = state.config.max_body_bytes;
    let in_flight = limits::InFlight::new(state.config.max_in_flight_requests);
    let (router, _) = openapi::routes().split_for_parts();
    router
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
    state: Arc<ApiState>,
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
        door.state
            .node
            .refuse_if_removed()
            .err()
            .map(ApiError::from)
    } else {
        None
    };
    // A blocking read waits without working: `max_watchers` bounds those, not the requests
    // in flight (which they would use up).
    let admitted = if is_blocking_read(&request) {
        Ok(None)
    } else {
        door.in_flight.admit().map(Some)
    };
    let principal = match limits::head_refusal(&request, door.state.config.max_key_bytes) {
        Some(refusal) => Err(refusal),
        None if auth::is_public(&door.state.config.auth, request.uri().path()) => {
            Ok(auth::Principal::Open)
        }
        None => auth::authenticate(&door.state, request.headers()),
    };
    let response = match (principal, removed, admitted) {
        (Err(refused), _, _) => axum::response::IntoResponse::into_response(refused),
        (Ok(_), Some(removed), _) => axum::response::IntoResponse::into_response(removed),
        (Ok(principal), None, Ok(_permit)) => match read_body(&door.state.config, request).await {
            Ok(mut request) => {
                request.extensions_mut().insert(principal);
                next.run(request).await
            }
            Err(error) => axum::response::IntoResponse::into_response(error),
        },
        (Ok(_), None, Err(overloaded)) => axum::response::IntoResponse::into_response(overloaded),
    };
    timer.finish(&door.state.metrics, response.status());
    response
}

/// A read with `wait_index`: it may wait for minutes.
fn is_blocking_read(request: &axum::extract::Request) -> bool {
    request.method() == axum::http::Method::GET
        && request
            .uri()
            .query()
            .is_some_and(|query| query.split('&').any(|p| p.starts_with("wait_index=")))
}

/// The request with its whole body read, within `body_read_timeout_ms` and `max_body_bytes`:
/// a client sending its body slowly cannot hold a handler (and a connection) for long.
async fn read_body(
    config: &ApiConfig,
    request: axum::extract::Request,
) -> Result<axum::extract::Request, ApiError> {
    use axum::body::HttpBody;
    if request.body().size_hint().exact() == Some(0) {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    let timeout = std::time::Duration::from_millis(config.body_read_timeout_ms);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, config.max_body_bytes)).await {
        Ok(Ok(bytes)) => Ok(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::TooLarge(format!(
                    "request body exceeds max_body_bytes={}",
                    config.max_body_bytes
                ))
            } else {
                ApiError::InvalidArgument(format!("could not read the request body: {e}"))
            })
        }
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within body_read_timeout_ms={}",
            config.body_read_timeout_ms
        ))),
    }
}

/// Serve the API on `listener` until `shutdown` resolves; in-flight requests finish first.
/// HTTP/1.1 with keep-alive, over TLS when `tls` is set; each connection has the deadlines of
/// `limits` (idle, header, body, write) and, with TLS, of its handshake.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    tls: Option<Arc<ApiTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::ServiceExt;
    let config = &state.config;
    let mut listener = limits::LimitedListener::new(
        listener,
        config.max_connections,
        limits::ConnDeadlines {
            idle_timeout_ms: config.idle_timeout_ms,
            write_timeout_ms: config.write_timeout_ms,
            closed: state.metrics.connections_closed.clone(),
        },
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_millis(
            config.header_read_timeout_ms,
        ))
        .max_buf_size(limits::MAX_HEAD_BUFFER_BYTES)
        .keep_alive(true);
    let closed = state.metrics.connections_closed.clone();
    let watch = state.node.watch.clone();
    let router = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            stream = listener.accept() => stream,
            () = &mut shutdown => break,
        };
        let busy = stream.busy_counter();
        let router = router.clone();
        let service = hyper::service::service_fn(move |request| {
            let busy = limits::Busy::enter(&busy);
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(busy);
                response
            }
        });
        let connection = Connection {
            http: http.clone(),
            graceful: graceful.watcher(),
            closed: closed.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(stream, service));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let timeout = std::time::Duration::from_millis(tls.handshake_timeout_ms);
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection.serve(stream, service).await,
                        Ok(Err(e)) => {
                            connection.closed.with_label_values(&["tls"]).inc();
                            tracing::debug!(error = %e, "API TLS handshake failed");
                        }
                        Err(_) => {
                            connection.closed.with_label_values(&["handshake"]).inc();
                            tracing::debug!(
                                timeout_ms = timeout.as_millis() as u64,
                                "API TLS handshake not finished in time"
                            );
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    // Streams would never finish by themselves: each ends with a line saying where to resume,
    // and blocking reads answer now.
    watch.close();
    // Stops keep-alive on every connection and waits for their requests to finish.
    graceful.shutdown().await;
    Ok(())
}

/// What serving one accepted connection needs.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    graceful: hyper_util::server::graceful::Watcher,
    /// Connections closed on a deadline, by reason.
    closed: prometheus::IntCounterVec,
}

impl Connection {
    /// Serve HTTP/1.1 on `io` (plain or TLS) until the connection ends.
    async fn serve<I, S>(self, io: I, service: S)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = axum::response::Response,
                Error = std::convert::Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let connection = self.graceful.watch(
            self.http
                .serve_connection(hyper_util::rt::TokioIo::new(io), service),
        );
        if let Err(e) = connection.await {
            if e.is_timeout() {
                self.closed.with_label_values(&["header"]).inc();
            }
            tracing::debug!(error = %e, "API connection ended");
        }
    }
}
