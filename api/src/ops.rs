//! Operations routes: `POST /v1/snapshot` (snapshot now, compact the log), `GET /v1/backup`
//! (stream a consistent point-in-time copy) and `GET /metrics`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::kv::{self, Params};
use crate::schema::SnapshotTaken;
use crate::state::ApiState;

/// Backup pieces buffered between the reading thread and the HTTP body.
const BACKUP_BUFFERED_CHUNKS: usize = 4;

/// `GET /metrics`: every metric in the Prometheus text format (`metrics::Metrics`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Every metric, Prometheus text format", content_type = "text/plain", body = String)),
)]
pub async fn metrics(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    principal.require_admin(
        "read metrics (start nodes with --metrics-public to serve them to anyone)",
    )?;
    let (content_type, body) = state.metrics.render(&state.node)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `POST /v1/snapshot`: build a snapshot of this node's applied state now and purge the log
/// behind it (`Coordinator::snapshot_now`). Acts on the node that receives it (like `etcdctl
/// defrag` per endpoint).
#[utoipa::path(
    post,
    path = "/v1/snapshot",
    tag = "operations",
    responses((status = 200, description = "A snapshot of this node, and its log purged behind it", body = crate::schema::SnapshotTaken)),
)]
pub async fn snapshot(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    principal.require_admin("build snapshots")?;
    let taken = state.node.snapshot_now().await?;
    Ok(Json(SnapshotTaken {
        index: taken.index,
        purged_index: taken.purged_index,
        kept_entries: taken.kept_entries,
        snapshot_bytes: taken.snapshot_bytes,
        took_ms: taken.took_ms,
    })
    .into_response())
}

/// `GET /v1/backup[?consistency=...]`: stream a consistent point-in-time copy of the data, in
/// the format of `mirrorkv_storage::backup`. The default level, `linearizable`, makes the copy
/// contain every write acknowledged before the request was made. Writes go on meanwhile; the
/// copy is read from one RocksDB view. `X-Mirrorkv-Index` is the copy's log index.
#[utoipa::path(
    get,
    path = "/v1/backup",
    tag = "operations",
    params(crate::schema::ReadParams),
    responses(
        (status = 200, description = "A consistent copy of the data (mirrorkv backup format)", content_type = "application/octet-stream", body = Vec<u8>,
         headers(("X-Mirrorkv-Index" = u64))),
        (status = 412, description = "precondition_failed: this node has not caught up to min_index", body = crate::schema::ErrorBody),
    ),
)]
pub async fn backup(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    query: Params,
) -> Response {
    let request = kv::params(query).and_then(|params| kv::read_request(&params));
    let level = request.as_ref().map(|r| r.level).unwrap_or_default();
    let result = async {
        principal.require_admin("take backups")?;
        let request = request?;
        let deadline = Instant::now() + state.config.request_timeout();
        state.node.read_barrier(request, deadline).await?;
        let (chunks_tx, mut chunks_rx) =
            mpsc::channel::<Result<Vec<u8>, std::io::Error>>(BACKUP_BUFFERED_CHUNKS);
        let (index_tx, index_rx) = oneshot::channel();
        let reader = state.node.reader.clone();
        let (node_id, cluster_id) = (state.node.id, state.node.cluster_id.clone());
        tokio::task::spawn_blocking(move || {
            let result = reader.write_backup(
                node_id,
                &cluster_id,
                |index| {
                    let _ = index_tx.send(index);
                },
                |bytes| chunks_tx.blocking_send(Ok(bytes)).is_ok(),
            );
            match result {
                Ok(summary) => tracing::info!(
                    node_id,
                    index = summary.index,
                    entries = summary.entries,
                    bytes = summary.bytes,
                    "backup streamed"
                ),
                Err(e) => {
                    tracing::warn!(node_id, error = %e, "backup stopped");
                    // Ends the body with an error: the client sees a truncated stream, which
                    // restore refuses.
                    let _ = chunks_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                }
            }
        });
        let index = index_rx
            .await
            .map_err(|_| ApiError::Internal("the backup did not start".into()))?;
        let stream = futures::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx));
        let mut response = Body::from_stream(stream).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(value) = header::HeaderValue::from_str(&format!(
            "attachment; filename=\"mirrorkv-{}-{index}.backup\"",
            state.node.cluster_id
        )) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
        Ok((Some(index), response))
    }
    .await;
    kv::finish(&state, level.as_str(), result)
}
