//! `Watch`: a change stream (`GET /v1/watch`) that resumes by itself. When its connection
//! breaks, the node ends it (lagging, shutting down) or the node stops answering, it opens it
//! again, on the same node or the next, from where it was: no event is missed or repeated.
//!
//! Where it resumes: every index up to the last progress mark, or before a `resume_index`
//! the node gave, was received whole. The index of the last event may not be (a transaction
//! changes several keys at one index, and a connection can break between its events): the
//! stream resumes from that index and drops the events of it already received (an index
//! changes a key at most once, so the key tells them apart).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::{Call, Client, Resend};
use crate::error::ClientError;
use crate::keys::query_value;
use crate::types::{value_of, Consistency};

/// The keys a watch is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    Key(String),
    Prefix(String),
    /// `[start, end)`; `end: None` is unbounded.
    Range {
        start: String,
        end: Option<String>,
    },
}

/// Where and how a watch starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// The first index to send changes of; `None`: only changes after the watch opens.
    pub from_index: Option<u64>,
    /// The level the watch starts at (`None`: the server's default, `linearizable`, so that
    /// it never starts before a write already acknowledged).
    pub consistency: Option<Consistency>,
    /// Reopenings in a row that may fail before `next` gives up with the last error.
    pub max_reconnects: u32,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            from_index: None,
            consistency: None,
            max_reconnects: 10,
        }
    }
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    pub key: String,
    pub kind: EventKind,
    /// The key's `mod_index` before the change; `None` if it did not exist.
    pub prev_mod_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put {
        value: Vec<u8>,
        mod_index: u64,
        create_index: u64,
    },
    Delete,
}

/// What a watch gives next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    Event(Event),
    /// Every change up to this index was sent: nothing else matched.
    Progress(u64),
}

/// A change stream; see the module doc.
pub struct Watch {
    client: Client,
    path: String,
    options: WatchOptions,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    ready: VecDeque<WatchMessage>,
    /// Every index up to here was received whole.
    whole_through: Option<u64>,
    /// The index of the last event received, and the keys of its events so far.
    last_event: Option<(u64, HashSet<String>)>,
    /// Where to reopen after the node ended the stream with a `resume_index`.
    resume_at: Option<u64>,
    /// How the node ended the stream, once the events before it are given out.
    ended: Option<ClientError>,
}

impl Client {
    /// A change stream of `target` (see [`Watch`]).
    pub fn watch(&self, target: WatchTarget, options: WatchOptions) -> Watch {
        let filter = match &target {
            WatchTarget::Key(key) => format!("key={}", query_value(key)),
            WatchTarget::Prefix(prefix) => format!("prefix={}", query_value(prefix)),
            WatchTarget::Range { start, end } => match end {
                Some(end) => format!("start={}&end={}", query_value(start), query_value(end)),
                None => format!("start={}", query_value(start)),
            },
        };
        Watch {
            client: self.clone(),
            path: format!("/v1/watch?{filter}"),
            whole_through: options.from_index.map(|from| from.saturating_sub(1)),
            options,
            response: None,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            last_event: None,
            resume_at: None,
            ended: None,
        }
    }
}

impl Watch {
    /// The next event or progress mark. Reopens the stream as needed; fails when it cannot
    /// (`max_reconnects` failures in a row), and with the node's `compacted` error when the
    /// changes it needs are gone: re-read the keys, then watch from the read's index + 1.
    pub async fn next(&mut self) -> Result<WatchMessage, ClientError> {
        let mut failures = 0u32;
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(message);
            }
            // The node ended the stream: reopen at once where it said, unless it cannot help.
            if let Some(ended) = self.ended.take() {
                if !ended.is_retryable() {
                    return Err(ended);
                }
            }
            let outcome = match self.response.is_some() {
                true => self.read_more().await,
                false => self.open().await,
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(e) if !e.is_retryable() || failures >= self.options.max_reconnects => {
                    return Err(e)
                }
                Err(_) => {
                    failures += 1;
                    // Bounded backoff: 100 ms doubling, at most 2 s.
                    let backoff_ms = (50u64 << failures.min(6)).min(2000);
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                }
            }
        }
    }

    /// The index to reopen from (`None`: from now).
    fn reopen_index(&self) -> Option<u64> {
        if let Some(resume) = self.resume_at {
            return Some(resume);
        }
        let last_event = self.last_event.as_ref().map(|(index, _)| *index);
        match (last_event, self.whole_through) {
            (Some(index), Some(whole)) if index <= whole => Some(whole + 1),
            (Some(index), _) => Some(index),
            (None, whole) => whole.map(|w| w + 1),
        }
    }

    async fn open(&mut self) -> Result<(), ClientError> {
        let mut query = Vec::new();
        if let Some(from) = self.reopen_index() {
            query.push(format!("from_index={from}"));
        }
        if let Some(level) = self.options.consistency {
            query.push(format!("consistency={}", level.as_str()));
        }
        let path = match query.is_empty() {
            true => self.path.clone(),
            false => format!("{}&{}", self.path, query.join("&")),
        };
        let client = &self.client;
        let answer = client
            .send_on(
                &client.stream_http,
                &Call::plain(Method::GET, &path, Resend::Read),
            )
            .await?;
        if !answer.status.is_success() {
            let bytes = client.read_body(answer.response).await?;
            return Err(ClientError::from_answer(answer.status, &bytes));
        }
        if self.whole_through.is_none() && self.last_event.is_none() {
            // Opened at "now": the answer's index is where the stream starts.
            self.whole_through = super::header_u64(&answer.headers, "x-mirrorkv-index");
        }
        self.resume_at = None;
        self.buffer.clear();
        self.response = Some(answer.response);
        Ok(())
    }

    /// Read from the open stream until at least one line is parsed or it ends.
    async fn read_more(&mut self) -> Result<(), ClientError> {
        let Some(response) = &mut self.response else {
            return Ok(());
        };
        let timeout = Duration::from_millis(self.client.options.timeout_ms);
        let chunk = match tokio::time::timeout(timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return self.broken("the node closed the stream".into()),
            Ok(Err(e)) => return self.broken(format!("the stream broke off: {e}")),
            Err(_) => {
                return self.broken(format!(
                    "the stream sent nothing for {} ms (timeout_ms)",
                    timeout.as_millis()
                ))
            }
        };
        if self.buffer.len() + chunk.len() > self.client.options.max_answer_bytes {
            return self.broken("a line over max_answer_bytes".into());
        }
        self.buffer.extend_from_slice(&chunk);
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(&line)
                .map_err(|e| ClientError::Decode(format!("a watch line: {e}")))?;
            self.take_line(&value)?;
        }
        Ok(())
    }

    /// The stream is gone; the next call reopens it.
    fn broken(&mut self, why: String) -> Result<(), ClientError> {
        self.response = None;
        Err(ClientError::Unreachable { last: why })
    }

    fn take_line(&mut self, line: &Value) -> Result<(), ClientError> {
        if let Some(progress) = line["progress"].as_u64() {
            self.whole_through = Some(self.whole_through.map_or(progress, |w| w.max(progress)));
            self.ready.push_back(WatchMessage::Progress(progress));
            return Ok(());
        }
        if line["error"].is_object() {
            self.response = None;
            if let Some(resume) = line["resume_index"].as_u64() {
                self.resume_at = Some(resume);
            }
            let status = match line["error"]["code"].as_str() {
                Some("compacted") => reqwest::StatusCode::GONE,
                _ => reqwest::StatusCode::SERVICE_UNAVAILABLE,
            };
            self.ended = Some(ClientError::from_answer(
                status,
                line.to_string().as_bytes(),
            ));
            return Ok(());
        }
        let event = parse_event(line)?;
        match &mut self.last_event {
            Some((index, keys)) if *index == event.index => {
                if !keys.insert(event.key.clone()) {
                    return Ok(()); // received before the stream was reopened
                }
            }
            _ => {
                if let Some((previous, _)) = &self.last_event {
                    self.whole_through = Some(*previous);
                }
                self.last_event = Some((event.index, HashSet::from([event.key.clone()])));
            }
        }
        self.ready.push_back(WatchMessage::Event(event));
        Ok(())
    }
}

fn parse_event(line: &Value) -> Result<Event, ClientError> {
    let bad = || ClientError::Decode(format!("a watch event: {line}"));
    let index = line["index"].as_u64().ok_or_else(bad)?;
    let key = line["key"].as_str().ok_or_else(bad)?.to_string();
    let kind = match line["type"].as_str() {
        Some("put") => EventKind::Put {
            value: value_of(line)?,
            mod_index: line["mod_index"].as_u64().ok_or_else(bad)?,
            create_index: line["create_index"].as_u64().ok_or_else(bad)?,
        },
        Some("delete") => EventKind::Delete,
        _ => return Err(bad()),
    };
    Ok(Event {
        index,
        key,
        kind,
        prev_mod_index: line["prev_mod_index"].as_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(watch: &mut Watch) -> Vec<(u64, String)> {
        watch
            .ready
            .drain(..)
            .filter_map(|m| match m {
                WatchMessage::Event(e) => Some((e.index, e.key)),
                WatchMessage::Progress(_) => None,
            })
            .collect()
    }

    fn put(index: u64, key: &str) -> Value {
        json!({"index": index, "type": "put", "key": key, "value": "v", "mod_index": index,
               "create_index": index, "prev_mod_index": null})
    }

    #[test]
    fn a_stream_broken_inside_an_index_resumes_there_without_repeating_a_key() {
        let client = Client::new(["127.0.0.1:1"]).unwrap();
        let mut watch = client.watch(
            WatchTarget::Prefix("p/".into()),
            WatchOptions {
                from_index: Some(3),
                ..WatchOptions::default()
            },
        );
        assert_eq!(watch.reopen_index(), Some(3));
        watch.take_line(&put(4, "p/a")).unwrap();
        watch.take_line(&put(5, "p/a")).unwrap();
        // Broken after index 5's first event: index 5 may not be whole.
        assert_eq!(watch.reopen_index(), Some(5));
        watch.take_line(&put(5, "p/a")).unwrap();
        watch.take_line(&put(5, "p/b")).unwrap();
        watch.take_line(&json!({"progress": 9})).unwrap();
        assert_eq!(watch.reopen_index(), Some(10));
        assert_eq!(
            events(&mut watch),
            [(4, "p/a".into()), (5, "p/a".into()), (5, "p/b".into())]
        );
        // The node ends it as lagging: reopen where it says.
        watch.take_line(&put(10, "p/c")).unwrap();
        let lagging = json!({"error": {"code": "lagging", "message": "m", "retryable": true},
                             "resume_index": 11});
        watch.take_line(&lagging).unwrap();
        assert_eq!(watch.reopen_index(), Some(11));
        assert!(watch.ended.as_ref().is_some_and(ClientError::is_retryable));
        let compacted = json!({"error": {"code": "compacted", "message": "m", "retryable": false},
                               "compact_index": 20});
        watch.take_line(&compacted).unwrap();
        assert_eq!(
            watch.ended.as_ref().and_then(|e| e.code()),
            Some("compacted")
        );
    }
}
