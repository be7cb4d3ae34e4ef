//! Operations routes: `POST /v1/snapshot` (snapshot now, compact the log) and `GET /v1/backup`
//! (stream a consistent point-in-time copy).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::kv::{self, Params};
use crate::read;
use crate::state::NodeState;

/// Longest wait for a snapshot to be built (a snapshot is proportional to the data).
const SNAPSHOT_TIMEOUT_MS: u64 = 120_000;
/// Longest wait for the log purge after the snapshot (the leader defers it while a replication
/// stream still reads those entries; the answer then reports what was purged so far).
const PURGE_WAIT_MS: u64 = 2_000;
/// Backup pieces buffered between the reading thread and the HTTP body.
const BACKUP_BUFFERED_CHUNKS: usize = 4;

/// `POST /v1/snapshot`: build a snapshot of this node's applied state now and purge the log
/// behind it, keeping the newest `max_in_snapshot_log_to_keep` entries as the automatic policy
/// does. Acts on the node that receives it (like `etcdctl defrag` per endpoint).
pub async fn snapshot(State(state): State<Arc<NodeState>>) -> Result<Response, ApiError> {
    let applied = state.reader.applied_index()?;
    let started = Instant::now();
    state
        .raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::Unavailable(format!("raft is not running: {e}")))?;
    let metrics = state
        .raft
        .wait(Some(Duration::from_millis(SNAPSHOT_TIMEOUT_MS)))
        .metrics(
            |m| m.snapshot.map_or(0, |id| id.index) >= applied,
            "snapshot built",
        )
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "no snapshot at index {applied} within {SNAPSHOT_TIMEOUT_MS} ms"
            ))
        })?;
    let snapshot_index = metrics.snapshot.map_or(0, |id| id.index);
    // The same tail the automatic policy keeps (`max_in_snapshot_log_to_keep`): a follower
    // a little behind catches up from the log instead of needing a whole snapshot.
    let kept_entries = state.raft.config().max_in_snapshot_log_to_keep;
    let purge_to = snapshot_index.saturating_sub(kept_entries);
    if purge_to > 0 {
        state
            .raft
            .trigger()
            .purge_log(purge_to)
            .await
            .map_err(|e| ApiError::Unavailable(format!("raft is not running: {e}")))?;
    }
    let purged = match state
        .raft
        .wait(Some(Duration::from_millis(PURGE_WAIT_MS)))
        .metrics(
            |m| m.purged.map_or(0, |id| id.index) >= purge_to,
            "log purged",
        )
        .await
    {
        Ok(metrics) => metrics.purged,
        Err(_) => state.raft.metrics().borrow().purged,
    };
    let snapshot_bytes = state.reader.snapshot_size_bytes()?;
    tracing::info!(node_id = state.id, snapshot_index, purged = ?purged, snapshot_bytes, "snapshot on demand");
    Ok(Json(json!({
        "index": snapshot_index,
        "purged_index": purged.map(|id| id.index),
        "kept_entries": kept_entries,
        "snapshot_bytes": snapshot_bytes,
        "took_ms": started.elapsed().as_millis() as u64,
    }))
    .into_response())
}

/// `GET /v1/backup[?consistency=...]`: stream a consistent point-in-time copy of the data, in
/// the format of `mirrorkv_storage::backup`. The default level, `linearizable`, makes the copy
/// contain every write acknowledged before the request was made. Writes go on meanwhile; the
/// copy is read from one RocksDB view. `X-Mirrorkv-Index` is the copy's log index.
pub async fn backup(State(state): State<Arc<NodeState>>, query: Params) -> Response {
    let request = kv::params(query).and_then(|params| kv::read_request(&params));
    let level = request.as_ref().map(|r| r.level).unwrap_or_default();
    let result = async {
        let request = request?;
        let deadline = Instant::now() + state.config.request_timeout();
        read::prepare(&state, request, deadline).await?;
        let (chunks_tx, mut chunks_rx) =
            mpsc::channel::<Result<Vec<u8>, std::io::Error>>(BACKUP_BUFFERED_CHUNKS);
        let (index_tx, index_rx) = oneshot::channel();
        let reader = state.reader.clone();
        let (node_id, cluster_id) = (state.id, state.cluster_id.clone());
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
            state.cluster_id
        )) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
        Ok((Some(index), response))
    }
    .await;
    kv::finish(&state, level.as_str(), result)
}
