//! The `watch` workload: writers on every node put unique values (and now and then delete)
//! under `watch/`; watchers stream `GET /v1/watch?prefix=watch/` from several nodes, drop
//! their connection at random times and resume from (last index seen + 1), on the same node
//! or another when theirs cannot serve. Everything they receive is recorded as it came.
//!
//! The watchers speak the HTTP contract themselves, not through `mirrorkv-client`'s `Watch`:
//! that one drops repeated events by itself, which would hide the very bug this checks.
//!
//! `judge_watch` then checks, per watcher, that its events are exactly the changes of the log
//! under `watch/` over the indexes it covered: strictly increasing indexes (no duplicate, no
//! reorder), no gap (every change any watcher saw, and every acknowledged write, in its range
//! is there), no phantom (every value was written by a write that did not certainly fail, at
//! the acknowledged index if acknowledged), every key's `prev_mod_index` the index of its
//! previous change, progress marks never going back and never behind an event already sent,
//! and every watcher caught up to the final index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::workloads::{ClientContext, InvariantReport};

/// The prefix every write of the workload is under.
pub const PREFIX: &str = "watch/";
/// Keys written (a few, so each key has a long chain of changes).
const KEYS: u64 = 5;

/// One write of the workload and what its client learned.
#[derive(Debug, Clone, Serialize)]
pub struct WriteRecord {
    pub key: String,
    /// The value put; `None` for a delete.
    pub value: Option<String>,
    pub outcome: WriteOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WriteOutcome {
    /// Acknowledged at this index; for a delete, `changed` says whether the key existed.
    Ok { index: u64, changed: bool },
    /// May or may not have been applied.
    Unknown,
    /// Certainly not applied.
    Fail,
}

/// One writer: puts `slot-counter` values (a delete every tenth operation) until `stop`.
pub async fn writer(slot: u64, ctx: ClientContext, writes: Arc<Mutex<Vec<WriteRecord>>>) {
    let mut next_at = tokio::time::Instant::now();
    for counter in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        let client = &ctx.clients[(counter as usize + slot as usize) % ctx.clients.len()];
        let key = format!("{PREFIX}{}", (counter + slot) % KEYS);
        let (value, answer) = if counter % 10 == 9 {
            let answer = tokio::time::timeout(ctx.timeout, client.delete(&key)).await;
            (None, answer.map(|a| a.map(|d| (d.index, d.deleted))))
        } else {
            let value = format!("{slot}-{counter}");
            let answer = tokio::time::timeout(ctx.timeout, client.put(&key, value.clone())).await;
            (Some(value), answer.map(|a| a.map(|p| (p.index, true))))
        };
        let outcome = match answer {
            Ok(Ok((index, changed))) => WriteOutcome::Ok { index, changed },
            Ok(Err(e)) if !e.write_may_have_applied() => WriteOutcome::Fail,
            _ => WriteOutcome::Unknown,
        };
        writes.lock().expect("writes").push(WriteRecord {
            key,
            value,
            outcome,
        });
    }
}

/// What a watcher received, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Item {
    Event {
        index: u64,
        key: String,
        /// `None` for a delete.
        value: Option<String>,
        prev_mod_index: Option<u64>,
    },
    Progress(u64),
}

/// One connection of a watcher.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// The node (position in the cluster's node list) it was opened on.
    pub node: usize,
    pub from_index: u64,
    pub items: Vec<Item>,
    /// How it ended: `dropped` (by the watcher), or what the node or the network did.
    pub end: String,
}

/// Everything one watcher received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatcherLog {
    pub id: usize,
    pub sessions: Vec<Session>,
}

/// How a watcher runs.
#[derive(Clone)]
pub struct WatcherConfig {
    pub id: usize,
    pub apis: Vec<String>,
    /// The first index to watch from (before the first write).
    pub from_index: u64,
    pub seed: u64,
    /// Once set, the watcher stops as soon as it covered this index (or at `deadline`).
    pub final_index: Arc<Mutex<Option<(u64, Instant)>>>,
    /// A planted bug, for the checker's own test: drop the first event after each resume.
    pub drop_after_resume: bool,
    /// HTTPS, for a secure cluster.
    pub tls: crate::cluster::ClientAccess,
}

/// What a watcher knows of its position: every index up to `whole` was received whole; the
/// last event's index and the keys received at it (an index may change several keys, and a
/// connection can break between them).
#[derive(Debug, Clone, Default)]
struct Position {
    whole: u64,
    last: Option<(u64, BTreeSet<String>)>,
}

impl Position {
    /// The index to resume from: the last event's, if that one may not be whole.
    fn resume_from(&self) -> u64 {
        match &self.last {
            Some((index, _)) if *index > self.whole => *index,
            _ => self.whole + 1,
        }
    }

    fn event(&mut self, index: u64, key: &str) {
        match &mut self.last {
            Some((last, keys)) if *last == index => {
                keys.insert(key.to_string());
            }
            last => {
                if let Some((previous, _)) = last {
                    self.whole = self.whole.max(*previous);
                }
                *last = Some((index, BTreeSet::from([key.to_string()])));
            }
        }
    }

    fn whole_through(&mut self, index: u64) {
        self.whole = self.whole.max(index);
    }
}

/// Run one watcher until it covered the final index (or the final deadline passed).
pub async fn watcher(config: WatcherConfig) -> WatcherLog {
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    builder = config
        .tls
        .configure(builder)
        .expect("the cluster's TLS files and token");
    let http = builder.build().expect("http client");
    let mut log = WatcherLog {
        id: config.id,
        sessions: Vec::new(),
    };
    let mut random = config.seed | 1;
    let mut next_random = move |bound: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % bound.max(1)
    };
    let mut position = Position {
        whole: config.from_index.saturating_sub(1),
        last: None,
    };
    let mut node = config.id % config.apis.len();
    loop {
        let finish = *config.final_index.lock().expect("final index");
        if let Some((final_index, deadline)) = finish {
            if position.whole >= final_index || Instant::now() >= deadline {
                return log;
            }
        }
        let from_index = position.resume_from();
        let mut session = Session {
            node,
            from_index,
            items: Vec::new(),
            end: String::new(),
        };
        let url = format!(
            "{}/v1/watch?prefix={PREFIX}&from_index={from_index}",
            config.apis[node]
        );
        let connection = Connection {
            lifetime: Duration::from_millis(300 + next_random(2700)),
            // Index `from_index` is sent again whole: the keys already received are skipped.
            resent: position
                .last
                .clone()
                .filter(|(index, _)| *index == from_index),
            drop_next: config.drop_after_resume && !log.sessions.is_empty(),
        };
        session.end = run_session(&http, &url, connection, &mut session.items).await;
        for item in &session.items {
            match item {
                Item::Event { index, key, .. } => position.event(*index, key),
                Item::Progress(index) => position.whole_through(*index),
            }
        }
        if let Some(resume) = session.end.strip_prefix("resume ") {
            position.whole_through(resume.parse::<u64>().unwrap_or(1).saturating_sub(1));
        }
        if session.end != "dropped" {
            // The node could not serve (down, cut off, not caught up): try the next one.
            node = (node + 1) % config.apis.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else if next_random(3) == 0 {
            node = next_random(config.apis.len() as u64) as usize;
        }
        log.sessions.push(session);
    }
}

/// How one connection of a watcher goes.
struct Connection {
    /// The watcher drops it after this long.
    lifetime: Duration,
    /// The index it resumes at, if that one was received in part, and the keys received.
    resent: Option<(u64, BTreeSet<String>)>,
    /// The planted bug: drop the first new event.
    drop_next: bool,
}

/// One connection: read lines until its lifetime ends; how it ended.
async fn run_session(
    http: &reqwest::Client,
    url: &str,
    mut connection: Connection,
    items: &mut Vec<Item>,
) -> String {
    let ends_at = Instant::now() + connection.lifetime;
    let response = match tokio::time::timeout(Duration::from_secs(5), http.get(url).send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return format!("connect: {e}"),
        Err(_) => return "connect: timed out".into(),
    };
    if !response.status().is_success() {
        return format!("status {}", response.status());
    }
    let mut response = response;
    let mut buffer = Vec::new();
    loop {
        // No line for 5 s while progress comes every second: the node is gone or cut off.
        let read_until = ends_at.min(Instant::now() + Duration::from_secs(5));
        let chunk = match tokio::time::timeout_at(read_until, response.chunk()).await {
            Err(_) if Instant::now() >= ends_at => return "dropped".into(),
            Err(_) => return "silent for 5 s".into(),
            Ok(Err(e)) => return format!("broken: {e}"),
            Ok(Ok(None)) => return "closed".into(),
            Ok(Ok(Some(chunk))) => chunk,
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(line) = serde_json::from_slice::<Value>(&line) else {
                return "unreadable line".into();
            };
            if let Some(ended) = take_line(&line, &mut connection, items) {
                return ended;
            }
        }
    }
}

/// Record one line; how the stream ended if it was its last.
fn take_line(line: &Value, connection: &mut Connection, items: &mut Vec<Item>) -> Option<String> {
    if let Some(progress) = line["progress"].as_u64() {
        items.push(Item::Progress(progress));
        return None;
    }
    if line["error"].is_object() {
        return Some(match line["resume_index"].as_u64() {
            Some(resume) => format!("resume {resume}"),
            None => format!("ended: {}", line["error"]["code"]),
        });
    }
    let index = line["index"].as_u64()?;
    let key = line["key"].as_str().unwrap_or_default().to_string();
    if let Some((resent, keys)) = &mut connection.resent {
        if *resent == index && keys.remove(&key) {
            return None;
        }
    }
    if std::mem::take(&mut connection.drop_next) {
        return None;
    }
    items.push(Item::Event {
        index,
        key,
        value: line["value"].as_str().map(str::to_string),
        prev_mod_index: line["prev_mod_index"].as_u64(),
    });
    None
}

/// Every change the watchers saw: (index, key) → (value, prev_mod_index).
type Truth = BTreeMap<(u64, String), (Option<String>, Option<u64>)>;

/// Judge a watch run (see the module doc). `final_index` is the index every watcher had to
/// reach once the faults were healed.
pub fn judge_watch(
    writes: &[WriteRecord],
    logs: &[WatcherLog],
    final_index: u64,
) -> InvariantReport {
    let mut report = InvariantReport {
        attempted: writes.len(),
        acknowledged: writes
            .iter()
            .filter(|w| matches!(w.outcome, WriteOutcome::Ok { .. }))
            .count(),
        unknown: writes
            .iter()
            .filter(|w| w.outcome == WriteOutcome::Unknown)
            .count(),
        ..InvariantReport::default()
    };
    let mut truth = Truth::new();
    for log in logs {
        for item in log.sessions.iter().flat_map(|s| &s.items) {
            if let Item::Event {
                index,
                key,
                value,
                prev_mod_index,
            } = item
            {
                let seen = (value.clone(), *prev_mod_index);
                match truth.get(&(*index, key.clone())) {
                    Some(other) if *other != seen => report.bad_reads.push(format!(
                        "watchers disagree on {key} at index {index}: {other:?} and {seen:?}"
                    )),
                    Some(_) => {}
                    None => {
                        truth.insert((*index, key.clone()), seen);
                    }
                }
            }
        }
    }
    judge_truth(writes, &truth, &mut report);
    for log in logs {
        report.reads += judge_watcher(log, &truth, final_index, &mut report);
    }
    report
}

/// No phantom, each acknowledged write seen, and every key's chain of `prev_mod_index`.
fn judge_truth(writes: &[WriteRecord], truth: &Truth, report: &mut InvariantReport) {
    let by_value: HashMap<&str, &WriteRecord> = writes
        .iter()
        .filter_map(|w| w.value.as_deref().map(|v| (v, w)))
        .collect();
    for ((index, key), (value, _)) in truth {
        let write = match value {
            Some(value) => by_value.get(value.as_str()).copied(),
            None => writes.iter().find(|w| {
                w.value.is_none()
                    && w.key == *key
                    && match w.outcome {
                        WriteOutcome::Ok { index: at, .. } => at == *index,
                        WriteOutcome::Unknown => true,
                        WriteOutcome::Fail => false,
                    }
            }),
        };
        match write.map(|w| (w, w.outcome)) {
            None | Some((_, WriteOutcome::Fail)) => report.unexpected.push(format!(
                "index {index}: {key} = {value:?}, which no write could have made"
            )),
            Some((w, WriteOutcome::Ok { index: at, .. })) if at != *index || w.key != *key => {
                report.unexpected.push(format!(
                    "index {index}: {key} = {value:?}, acknowledged as {} at index {at}",
                    w.key
                ))
            }
            _ => {}
        }
    }
    for w in writes {
        if let WriteOutcome::Ok {
            index,
            changed: true,
        } = w.outcome
        {
            if !truth.contains_key(&(index, w.key.clone())) {
                report.lost.push(format!(
                    "{} = {:?} acknowledged at index {index}, seen by no watcher",
                    w.key, w.value
                ));
            }
        }
    }
    // A key's previous mod_index is its last put's index; none after a delete.
    let mut last_of_key: HashMap<&str, Option<u64>> = HashMap::new();
    for ((index, key), (value, prev)) in truth {
        let now = value.is_some().then_some(*index);
        let expected = last_of_key.insert(key, now).flatten();
        if *prev != expected {
            report.bad_reads.push(format!(
                "index {index}: {key}'s prev_mod_index is {prev:?}, its previous change is at {expected:?}"
            ));
        }
    }
}

/// One watcher's order, gaps and progress; the number of events it received.
fn judge_watcher(
    log: &WatcherLog,
    truth: &Truth,
    final_index: u64,
    report: &mut InvariantReport,
) -> usize {
    let who = format!("watcher {}", log.id);
    let Some(first) = log.sessions.first() else {
        report.bad_reads.push(format!("{who} never connected"));
        return 0;
    };
    let start = first.from_index;
    let mut position = Position {
        whole: start.saturating_sub(1),
        last: None,
    };
    let mut received: BTreeSet<(u64, String)> = BTreeSet::new();
    let mut previous: Option<(u64, String)> = None;
    let mut progress = 0u64;
    for session in &log.sessions {
        if session.from_index > position.resume_from() {
            report.bad_reads.push(format!(
                "{who} resumed at {} past its position {}",
                session.from_index,
                position.resume_from()
            ));
        }
        let mut session_events_through = 0u64;
        for item in &session.items {
            match item {
                Item::Event { index, key, .. } => {
                    let at = (*index, key.clone());
                    if previous.as_ref().is_some_and(|p| *p >= at) || *index <= progress {
                        report.bad_reads.push(format!(
                            "{who}: {key} at index {index} after {previous:?} and progress {progress} (duplicate or reorder)"
                        ));
                    }
                    position.event(*index, key);
                    session_events_through = *index;
                    received.insert(at.clone());
                    previous = Some(at);
                }
                Item::Progress(at) => {
                    if *at < progress || *at < session_events_through {
                        report.bad_reads.push(format!(
                            "{who}: progress {at} after progress {progress} and an event at {session_events_through}"
                        ));
                    }
                    progress = progress.max(*at);
                    position.whole_through(*at);
                }
            }
        }
        if let Some(resume) = session.end.strip_prefix("resume ") {
            position.whole_through(resume.parse::<u64>().unwrap_or(1).saturating_sub(1));
        }
    }
    let covered = position.whole;
    if covered < final_index {
        report.bad_reads.push(format!(
            "{who} received whole up to {covered}, short of the final index {final_index}"
        ));
    }
    for (index, key) in truth.keys().filter(|(i, _)| (start..=covered).contains(i)) {
        if !received.contains(&(*index, key.clone())) {
            report.bad_reads.push(format!(
                "{who}: gap: no event for {key} at index {index}, which it covered"
            ));
        }
    }
    received.len()
}

/// Start `count` watchers from `from_index`, spread over the nodes.
pub fn spawn_watchers(
    apis: &[String],
    count: usize,
    from_index: u64,
    seed: u64,
    drop_after_resume: bool,
    final_index: &Arc<Mutex<Option<(u64, Instant)>>>,
    tls: &crate::cluster::ClientAccess,
) -> Vec<tokio::task::JoinHandle<WatcherLog>> {
    (0..count)
        .map(|id| {
            tokio::spawn(watcher(WatcherConfig {
                id,
                apis: apis.to_vec(),
                from_index,
                seed: seed.wrapping_add(id as u64 * 0x9e37_79b9),
                final_index: final_index.clone(),
                drop_after_resume,
                tls: tls.clone(),
            }))
        })
        .collect()
}

/// A watch run's watchers and writes, from its start to its judgement.
pub struct WatchRun {
    pub writes: Arc<Mutex<Vec<WriteRecord>>>,
    final_index: Arc<Mutex<Option<(u64, Instant)>>>,
    watchers: Vec<tokio::task::JoinHandle<WatcherLog>>,
}

/// How long the watchers have, once everything is healed, to cover the final index.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

impl WatchRun {
    /// Start `count` watchers from the index after what `reader` reads now (before any write).
    pub async fn start(
        apis: &[String],
        reader: &mirrorkv_client::Client,
        count: usize,
        seed: u64,
        drop_after_resume: bool,
        tls: &crate::cluster::ClientAccess,
    ) -> Result<WatchRun, String> {
        let now = reader
            .get(PREFIX)
            .await
            .map_err(|e| format!("reading the start index: {e}"))?
            .index;
        let final_index = Arc::new(Mutex::new(None));
        let watchers = spawn_watchers(
            apis,
            count,
            now + 1,
            seed,
            drop_after_resume,
            &final_index,
            tls,
        );
        Ok(WatchRun {
            writes: Arc::default(),
            final_index,
            watchers,
        })
    }

    /// Once healed: read the final index through `reader`, let the watchers cover it, judge.
    pub async fn finish(
        self,
        reader: &mirrorkv_client::Client,
    ) -> Result<(InvariantReport, Vec<WatcherLog>), String> {
        let final_index = reader
            .get(PREFIX)
            .await
            .map_err(|e| format!("reading the final index: {e}"))?
            .index;
        *self.final_index.lock().expect("final index") =
            Some((final_index, Instant::now() + CATCH_UP_DEADLINE));
        let mut logs = Vec::new();
        for watcher in self.watchers {
            logs.push(
                watcher
                    .await
                    .map_err(|e| format!("a watcher failed: {e}"))?,
            );
        }
        let writes = self.writes.lock().expect("writes").clone();
        Ok((judge_watch(&writes, &logs, final_index), logs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, key: &str, value: &str, prev: Option<u64>) -> Item {
        Item::Event {
            index,
            key: key.into(),
            value: Some(value.into()),
            prev_mod_index: prev,
        }
    }

    fn ok(key: &str, value: &str, index: u64) -> WriteRecord {
        WriteRecord {
            key: key.into(),
            value: Some(value.into()),
            outcome: WriteOutcome::Ok {
                index,
                changed: true,
            },
        }
    }

    fn session(from_index: u64, items: Vec<Item>) -> Session {
        Session {
            node: 0,
            from_index,
            items,
            end: "dropped".into(),
        }
    }

    fn writes() -> Vec<WriteRecord> {
        vec![
            ok("watch/0", "a", 3),
            ok("watch/1", "b", 4),
            ok("watch/0", "c", 6),
        ]
    }

    fn good_log(id: usize) -> WatcherLog {
        WatcherLog {
            id,
            sessions: vec![
                session(1, vec![put(3, "watch/0", "a", None), Item::Progress(3)]),
                session(
                    4,
                    vec![
                        put(4, "watch/1", "b", None),
                        put(6, "watch/0", "c", Some(3)),
                    ],
                ),
                // Dropped after index 6's event: it resumes at 6, which may not be whole.
                session(6, vec![Item::Progress(8)]),
            ],
        }
    }

    #[test]
    fn exact_streams_pass() {
        let report = judge_watch(&writes(), &[good_log(0), good_log(1)], 8);
        assert!(report.valid(), "{report:?}");
        assert_eq!(report.reads, 6);
    }

    #[test]
    fn an_event_dropped_on_resume_is_a_gap_and_a_lost_write() {
        let mut dropped = good_log(1);
        dropped.sessions[1].items.remove(0);
        let report = judge_watch(&writes(), &[good_log(0), dropped.clone()], 8);
        assert!(!report.valid());
        assert!(
            report
                .bad_reads
                .iter()
                .any(|r| r.contains("gap: no event for watch/1 at index 4")),
            "{report:?}"
        );
        let alone = judge_watch(&writes(), &[dropped], 8);
        assert!(
            alone
                .lost
                .iter()
                .any(|r| r.contains("index 4, seen by no watcher")),
            "{alone:?}"
        );
    }

    #[test]
    fn after_a_delete_a_key_has_no_previous_mod_index() {
        let mut writes = writes();
        writes.push(WriteRecord {
            key: "watch/0".into(),
            value: None,
            outcome: WriteOutcome::Ok {
                index: 7,
                changed: true,
            },
        });
        writes.push(ok("watch/0", "d", 8));
        let deleted = Item::Event {
            index: 7,
            key: "watch/0".into(),
            value: None,
            prev_mod_index: Some(6),
        };
        let mut log = good_log(0);
        log.sessions[2].items = vec![deleted, put(8, "watch/0", "d", None), Item::Progress(8)];
        let report = judge_watch(&writes, &[log.clone()], 8);
        assert!(report.valid(), "{report:?}");
        log.sessions[2].items[1] = put(8, "watch/0", "d", Some(6));
        let report = judge_watch(&writes, &[log], 8);
        assert!(report
            .bad_reads
            .iter()
            .any(|r| r.contains("prev_mod_index")));
    }

    #[test]
    fn a_resume_past_the_position_is_caught() {
        let mut skipped = good_log(0);
        skipped.sessions[2].from_index = 7;
        let report = judge_watch(&writes(), &[skipped], 8);
        assert!(report
            .bad_reads
            .iter()
            .any(|r| r.contains("past its position")));
    }

    #[test]
    fn duplicates_phantoms_wrong_chains_and_short_coverage_are_caught() {
        let mut duplicate = good_log(0);
        duplicate.sessions[1]
            .items
            .insert(0, put(3, "watch/0", "a", None));
        let report = judge_watch(&writes(), &[duplicate], 8);
        assert!(
            report.bad_reads.iter().any(|r| r.contains("duplicate")),
            "{report:?}"
        );

        let mut phantom = good_log(0);
        phantom.sessions[2]
            .items
            .insert(0, put(7, "watch/1", "never", Some(4)));
        let report = judge_watch(&writes(), &[phantom], 8);
        assert!(
            report.unexpected.iter().any(|r| r.contains("never")),
            "{report:?}"
        );

        let mut wrong_prev = good_log(0);
        wrong_prev.sessions[1].items[1] = put(6, "watch/0", "c", None);
        let report = judge_watch(&writes(), &[wrong_prev], 8);
        assert!(
            report
                .bad_reads
                .iter()
                .any(|r| r.contains("prev_mod_index")),
            "{report:?}"
        );

        let report = judge_watch(&writes(), &[good_log(0)], 20);
        assert!(report
            .bad_reads
            .iter()
            .any(|r| r.contains("short of the final")));

        let mut back = good_log(0);
        back.sessions[2].items.push(Item::Progress(5));
        let report = judge_watch(&writes(), &[back], 8);
        assert!(
            report.bad_reads.iter().any(|r| r.contains("progress 5")),
            "{report:?}"
        );
    }
}
