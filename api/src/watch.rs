//! `GET /v1/watch`: change streams, NDJSON or Server-Sent Events, and the key filter that
//! watches and blocking reads share.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use mirrorkv_coordinator::watch::{StreamEnd, WatchEvent, WatchItem, WatchStream};
use mirrorkv_storage::changes::{Change, ChangeKind, KeyFilter};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::kv::{self, Params};
use crate::schema::{ErrorDetail, WatchChange, WatchLine};
use crate::state::ApiState;
use crate::values;

/// How the events of a stream are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `application/x-ndjson`: one JSON object a line.
    Ndjson,
    /// `text/event-stream`: `data:` lines, with `id:` on the last event of each index.
    Sse,
}

/// The keys a watch or a blocking range read is about: `key`, `prefix`, or `start` (and
/// `end`, exclusive, unbounded if absent).
pub fn filter(state: &ApiState, params: &HashMap<String, String>) -> Result<KeyFilter, ApiError> {
    let (key, prefix, start, end) = (
        params.get("key"),
        params.get("prefix"),
        params.get("start"),
        params.get("end"),
    );
    let filter = match (key, prefix, start) {
        (Some(key), None, None) if end.is_none() => {
            kv::check_key(state, key)?;
            KeyFilter::Key(key.clone())
        }
        (None, Some(prefix), None) if end.is_none() => KeyFilter::Prefix(prefix.clone()),
        (None, None, Some(start)) => KeyFilter::Range {
            start: start.clone(),
            end: end.cloned(),
        },
        _ => {
            return Err(ApiError::InvalidArgument(
                "give exactly one of key=K, prefix=P, or start=A (with end=B, exclusive)".into(),
            ))
        }
    };
    for bound in [prefix, start, end].into_iter().flatten() {
        if bound.len() > state.config.max_key_bytes {
            return Err(ApiError::TooLarge(format!(
                "a key bound of {} bytes exceeds max_key_bytes={}",
                bound.len(),
                state.config.max_key_bytes
            )));
        }
    }
    Ok(filter)
}

/// `GET /v1/watch?key=K | prefix=P | start=A&end=B [&from_index=N] [&consistency=...]`.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "watch",
    params(crate::schema::WatchParams, crate::schema::ReadParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "SSE: resume after this index")),
    responses(
        (status = 200, description = "A stream of changes that does not end on its own: one JSON object a line (application/x-ndjson), or SSE with Accept: text/event-stream",
         content((crate::schema::WatchLine = "application/x-ndjson"), (String = "text/event-stream"))),
        (status = 410, description = "compacted: from_index is older than the kept history; re-read, then watch from the read's index + 1", body = crate::schema::ErrorBody),
        (status = 412, description = "precondition_failed: this node has not caught up to min_index", body = crate::schema::ErrorBody),
    ),
)]
pub async fn watch(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    query: Params,
) -> Response {
    let parsed = kv::params(query).and_then(|p| Ok((kv::read_request(&p)?, p)));
    let level = parsed.as_ref().map(|(r, _)| r.level).unwrap_or_default();
    let format = match headers.get("accept").and_then(|v| v.to_str().ok()) {
        Some(accept) if accept.contains("text/event-stream") => Format::Sse,
        _ => Format::Ndjson,
    };
    let result = async {
        let (request, params) = parsed?;
        let filter = filter(&state, &params)?;
        // One key: refused outright. A prefix or range: only the keys it may read are sent.
        if let KeyFilter::Key(key) = &filter {
            principal.require_read(key)?;
        }
        let from_index = from_index(&headers, &params, format)?;
        let deadline = Instant::now() + state.config.request_timeout();
        state.node.read_barrier(request, deadline).await?;
        let from_index = match from_index {
            Some(from_index) => from_index.max(1),
            None => state.node.reader.applied_index()? + 1,
        };
        let compact_index = state.node.reader.history_compact_index()?;
        if from_index <= compact_index {
            return Err(compacted(from_index, compact_index));
        }
        let stream = state.node.watch_stream(filter, from_index)?;
        Ok((
            Some(from_index - 1),
            stream_response(&state, stream, format, principal),
        ))
    }
    .await;
    kv::finish(&state, level.as_str(), result)
}

/// `from_index`, or after an SSE client's `Last-Event-ID` (the last index it received whole).
fn from_index(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    format: Format,
) -> Result<Option<u64>, ApiError> {
    let parse = |name: &str, text: &str| {
        text.trim().parse::<u64>().map_err(|_| {
            ApiError::InvalidArgument(format!(
                "{name} must be a non-negative integer, got {text:?}"
            ))
        })
    };
    if let Some(text) = params.get("from_index") {
        return Ok(Some(parse("from_index", text)?));
    }
    match headers.get("last-event-id").map(|v| v.to_str()) {
        Some(Ok(text)) if format == Format::Sse => Ok(Some(parse("Last-Event-ID", text)? + 1)),
        _ => Ok(None),
    }
}

fn compacted(from_index: u64, compact_index: u64) -> ApiError {
    ApiError::Compacted {
        message: format!(
            "changes from index {from_index} are no longer kept on this node; it keeps those after index {compact_index}: re-read the keys, then watch from the read's index + 1"
        ),
        compact_index,
    }
}

/// The streamed answer: events as they come, a progress line when quiet, and a last line
/// saying why it ended (unless the client left first).
fn stream_response(
    state: &Arc<ApiState>,
    stream: WatchStream,
    format: Format,
    principal: Principal,
) -> Response {
    let quiet_for = Duration::from_millis(state.node.watch.config.progress_ms);
    let body_state = (state.clone(), stream, false, principal);
    let body = futures::stream::unfold(
        body_state,
        move |(state, mut stream, done, principal)| async move {
            if done {
                return None;
            }
            let (chunk, done) = match stream.next(quiet_for).await {
                Ok(WatchItem::Events(mut events)) => {
                    if !principal.is_admin() {
                        events.retain(|event| principal.may_read(&event.change.key));
                    }
                    let counters = &state.node.watch.counters;
                    counters
                        .events_sent
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    (encode_events(&events, format), false)
                }
                Ok(WatchItem::Progress(index)) => (
                    encode_line(
                        &WatchLine::Progress { progress: index },
                        Some(index),
                        format,
                    ),
                    false,
                ),
                Ok(WatchItem::End(end)) => (encode_end(end, stream.resume_index(), format), true),
                Err(e) => {
                    let error = ApiError::from(e);
                    tracing::warn!(error = %error, "a watch stream failed");
                    let line = error_line(&error, stream.resume_index());
                    (encode_line(&line, None, format), true)
                }
            };
            Some((
                Ok::<Bytes, Infallible>(chunk),
                (state, stream, done, principal),
            ))
        },
    );
    let content_type = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn encode_events(events: &[Arc<WatchEvent>], format: Format) -> Bytes {
    let mut chunk = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let line = event.encoded_with(|change| {
            let mut line = serde_json::to_vec(&event_json(change)).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        });
        match format {
            Format::Ndjson => chunk.extend_from_slice(&line),
            Format::Sse => {
                // `id:` only once an index is whole: a client resuming after `Last-Event-ID`
                // must not miss the rest of a transaction's events.
                let index = event.change.index;
                let last_of_index = events.get(i + 1).is_none_or(|e| e.change.index != index);
                if last_of_index {
                    chunk.extend_from_slice(format!("id: {index}\n").as_bytes());
                }
                chunk.extend_from_slice(b"data: ");
                chunk.extend_from_slice(&line);
                chunk.push(b'\n');
            }
        }
    }
    Bytes::from(chunk)
}

/// One change as the contract writes it.
fn event_json(change: &Change) -> WatchChange {
    let (kind, (value, value_base64), mod_index, create_index) = match &change.kind {
        ChangeKind::Put {
            value,
            mod_index,
            create_index,
        } => (
            "put",
            values::split_value(value),
            Some(*mod_index),
            Some(*create_index),
        ),
        ChangeKind::Delete => ("delete", (None, None), None, None),
    };
    WatchChange {
        index: change.index,
        kind,
        key: change.key.clone(),
        value,
        value_base64,
        mod_index,
        create_index,
        prev_mod_index: change.prev_mod_index,
    }
}

fn encode_line(line: &WatchLine, id: Option<u64>, format: Format) -> Bytes {
    let json = serde_json::to_string(line).unwrap_or_default();
    Bytes::from(match format {
        Format::Ndjson => format!("{json}\n"),
        Format::Sse => match id {
            Some(id) => format!("id: {id}\ndata: {json}\n\n"),
            None => format!("data: {json}\n\n"),
        },
    })
}

/// The last line of a stream the server ends.
fn encode_end(end: StreamEnd, resume_index: u64, format: Format) -> Bytes {
    let (code, message, retryable, extra) = match end {
        StreamEnd::Lagging { resume_index } => (
            "lagging",
            format!("this client fell more than watch_buffer_events behind; resume from index {resume_index}"),
            true,
            ("resume_index", resume_index),
        ),
        StreamEnd::Compacted { compact_index } => (
            "compacted",
            format!("the changes this stream needed next are no longer kept on this node (it keeps those after index {compact_index}): re-read the keys, then watch from the read's index + 1"),
            false,
            ("compact_index", compact_index),
        ),
        StreamEnd::Closed => (
            "unavailable",
            format!("the node is shutting down; resume from index {resume_index} here later or on another node"),
            true,
            ("resume_index", resume_index),
        ),
    };
    let (resume_index, compact_index) = match extra {
        ("compact_index", index) => (None, Some(index)),
        (_, index) => (Some(index), None),
    };
    let line = WatchLine::Error {
        error: ErrorDetail {
            code,
            message,
            retryable,
        },
        resume_index,
        compact_index,
    };
    encode_line(&line, None, format)
}

fn error_line(error: &ApiError, resume_index: u64) -> WatchLine {
    WatchLine::Error {
        error: ErrorDetail {
            code: "internal",
            message: error.to_string(),
            retryable: true,
        },
        resume_index: Some(resume_index),
        compact_index: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn sse_marks_only_whole_indexes_with_an_id() {
        let change = |index, key: &str| {
            Arc::new(WatchEvent::new(Change {
                index,
                key: key.into(),
                kind: ChangeKind::Delete,
                prev_mod_index: Some(1),
            }))
        };
        let events = [change(5, "a"), change(5, "b"), change(6, "a")];
        let text = String::from_utf8(encode_events(&events, Format::Sse).to_vec()).unwrap();
        assert_eq!(text.matches("id: 5\n").count(), 1);
        let id5 = text.find("id: 5").unwrap();
        assert!(
            text[..id5].contains(r#""key":"a""#),
            "the id comes after index 5's first event"
        );
        assert!(text[id5..].starts_with("id: 5\ndata: {") && text[id5..].contains(r#""key":"b""#));
        let ndjson = String::from_utf8(encode_events(&events, Format::Ndjson).to_vec()).unwrap();
        assert_eq!(ndjson.lines().count(), 3);
        let first: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"index": 5, "type": "delete", "key": "a", "prev_mod_index": 1})
        );
    }
}
