//! Watches on real clusters: change streams (`GET /v1/watch`) and blocking reads
//! (`wait_index`), each rule of the contract's "Watch" section.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// A client without a total deadline (streams outlive one); every read below has its own.
fn stream_http() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("http client")
}

/// The lines of a streamed answer, read with a deadline each.
struct Lines {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Lines {
    async fn open(url: &str) -> Lines {
        let response = stream_http().get(url).send().await.expect("watch request");
        assert_eq!(response.status(), 200, "{url}");
        Lines {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next line, or `None` once the stream ended; panics past `within`.
    async fn next(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(
                    String::from_utf8(line)
                        .expect("UTF-8 line")
                        .trim_end()
                        .into(),
                );
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("a line within the deadline")
                .expect("stream read");
            match chunk {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return None,
            }
        }
    }

    async fn json(&mut self, within: Duration) -> Value {
        let line = self.next(within).await.expect("a line before the end");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next line that is not a progress line.
    async fn event(&mut self, within: Duration) -> Value {
        loop {
            let line = self.json(within).await;
            if line.get("progress").is_none() {
                return line;
            }
        }
    }
}

async fn put_ok(cluster: &Cluster, id: u64, key: &str, value: &str) -> u64 {
    match cluster.put(id, key, value.as_bytes()).await {
        WriteOutcome::Ok { index } => index,
        other => panic!("put {key}: {other:?}"),
    }
}

async fn delete_ok(id_api: &str, key: &str) -> u64 {
    let answer: Value = http()
        .delete(format!("{id_api}/v1/kv/{}", encode_key(key)))
        .send()
        .await
        .expect("delete")
        .json()
        .await
        .expect("delete answer");
    answer["index"].as_u64().expect("index")
}

const LINE: Duration = Duration::from_secs(10);

/// Wait until node `id` has `count` watchers registered (the blocking reads started waiting).
async fn wait_until_waiting(cluster: &Cluster, id: u64, count: u64) {
    wait_for("blocking reads waiting", DEADLINE, || async {
        let metrics = cluster.metrics(id).await;
        (metric_sample(&metrics, "mirrorkv_watchers_open") == Some(count as f64)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t81_a_stream_sends_each_change_once_in_order_and_resumes_exactly() {
    let cluster = Cluster::start(3, &["--watch-progress-ms", "200"]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let before = put_ok(&cluster, leader, "cfg/before", "old").await;
    // Linearizable start on a follower (the default): after a write acknowledged elsewhere.
    let mut stream = Lines::open(&format!("{}/v1/watch?prefix=cfg/", cluster.api(follower))).await;
    let start_index: u64 = stream.response.headers()["x-mirrorkv-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        start_index >= before,
        "the stream starts after the acknowledged write"
    );
    assert_eq!(
        stream.response.headers()["content-type"],
        "application/x-ndjson"
    );

    let a1 = put_ok(&cluster, leader, "cfg/a", "1").await;
    put_ok(&cluster, follower, "other/x", "not watched").await;
    let a2 = put_ok(&cluster, follower, "cfg/a", "2").await;
    let deleted = delete_ok(&cluster.api(leader), "cfg/a").await;
    let txn: Value = http()
        .post(format!("{}/v1/txn", cluster.api(follower)))
        .json(&json!({"compare": [], "success": [
            {"put": {"key": "cfg/b", "value_base64": "/wA="}},
            {"put": {"key": "cfg/c", "value": "3"}},
            {"put": {"key": "elsewhere", "value": "no"}}]}))
        .send()
        .await
        .expect("txn")
        .json()
        .await
        .expect("txn answer");
    let t = txn["index"].as_u64().unwrap();

    assert_eq!(
        stream.event(LINE).await,
        json!({"index": a1, "type": "put", "key": "cfg/a", "value": "1", "mod_index": a1,
               "create_index": a1, "prev_mod_index": null})
    );
    assert_eq!(
        stream.event(LINE).await,
        json!({"index": a2, "type": "put", "key": "cfg/a", "value": "2", "mod_index": a2,
               "create_index": a1, "prev_mod_index": a1})
    );
    assert_eq!(
        stream.event(LINE).await,
        json!({"index": deleted, "type": "delete", "key": "cfg/a", "prev_mod_index": a2})
    );
    let b = stream.event(LINE).await;
    assert_eq!(
        (b["index"].as_u64(), b["key"].as_str()),
        (Some(t), Some("cfg/b"))
    );
    assert_eq!(b["value_base64"], "/wA=");
    let c = stream.event(LINE).await;
    assert_eq!(
        (c["index"].as_u64(), c["key"].as_str()),
        (Some(t), Some("cfg/c"))
    );

    // Quiet now: progress lines say how current the stream is, never going back.
    let first = stream.json(LINE).await["progress"]
        .as_u64()
        .expect("progress");
    let second = stream.json(LINE).await["progress"]
        .as_u64()
        .expect("progress");
    assert!(
        first >= t && second >= first,
        "progress {first} then {second}"
    );
    drop(stream);

    // Resume from after the delete: exactly the transaction's two events, from the history.
    let url = format!(
        "{}/v1/watch?prefix=cfg/&from_index={}",
        cluster.api(leader),
        deleted + 1
    );
    let mut resumed = Lines::open(&url).await;
    assert_eq!(resumed.event(LINE).await["key"], "cfg/b");
    assert_eq!(resumed.event(LINE).await["key"], "cfg/c");
    let progress = resumed.json(LINE).await;
    assert!(progress["progress"].as_u64().unwrap() >= t, "{progress}");

    sse_and_key_watches(&cluster, leader, a1).await;
}

/// Server-Sent Events give the same events with `id:`; a key watch sees only its key.
async fn sse_and_key_watches(cluster: &Cluster, leader: u64, from: u64) {
    let response = stream_http()
        .get(format!(
            "{}/v1/watch?key=cfg/a&from_index={from}",
            cluster.api(leader)
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE watch");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut sse = Lines {
        response,
        buffer: Vec::new(),
    };
    assert_eq!(sse.next(LINE).await.unwrap(), format!("id: {from}"));
    let data = sse.next(LINE).await.unwrap();
    let event: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        (event["key"].as_str(), event["value"].as_str()),
        (Some("cfg/a"), Some("1"))
    );
    assert_eq!(sse.next(LINE).await.unwrap(), "");
    let mut keys = Vec::new();
    for _ in 0..2 {
        let _id = sse.next(LINE).await.unwrap();
        let data = sse.next(LINE).await.unwrap();
        let event: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        keys.push(event["key"].as_str().unwrap().to_string());
        sse.next(LINE).await;
    }
    assert_eq!(keys, ["cfg/a", "cfg/a"], "a key watch sees its key only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t82_a_blocking_read_wakes_on_its_key_and_times_out_otherwise() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let http = http();
    let index = put_ok(&cluster, leader, "svc/a", "1").await;
    let current = put_ok(&cluster, leader, "unrelated", "x").await;

    // Nothing changes the key: the read answers when `wait` ends, with the same state.
    let started = Instant::now();
    let answer = http
        .get(format!(
            "{}/v1/kv/svc/a?wait_index={current}&wait=1s",
            cluster.api(follower)
        ))
        .send()
        .await
        .expect("blocking read");
    let waited = started.elapsed();
    assert_eq!(answer.status(), 200);
    assert!(
        waited >= Duration::from_millis(950),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    assert_eq!(answer.headers()["etag"], format!("\"{index}\""));

    // A write to the key wakes it promptly, on another node than the writer's; an unrelated
    // write does not.
    let api = cluster.api(follower);
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let answer = http
            .get(format!("{api}/v1/kv/svc/a?wait_index={current}&wait=30s"))
            .send()
            .await
            .expect("blocking read");
        let next: u64 = answer.headers()["x-mirrorkv-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (started.elapsed(), answer.text().await.unwrap(), next)
    });
    wait_until_waiting(&cluster, follower, 1).await;
    put_ok(&cluster, leader, "unrelated", "y").await;
    let wrote_at = Instant::now();
    let changed = put_ok(&cluster, leader, "svc/a", "2").await;
    let (waited, body, next) = waiter.await.unwrap();
    assert_eq!(body, "2", "woken by the write, answered with the new value");
    assert!(next >= changed);
    assert!(
        wrote_at.elapsed() < Duration::from_secs(2) && waited < Duration::from_secs(10),
        "woken {:?} after the write",
        wrote_at.elapsed()
    );

    blocking_reads_on_missing_keys_and_prefixes(&cluster, leader, follower).await;
}

/// A blocking read on a key that does not exist answers when it is created; one on a prefix
/// when anything under it changes (a delete counts); a change already past answers at once.
async fn blocking_reads_on_missing_keys_and_prefixes(cluster: &Cluster, leader: u64, on: u64) {
    let http = http();
    let now = put_ok(cluster, leader, "marker", "0").await;
    let api = cluster.api(on);
    let client = http.clone();
    let missing = tokio::spawn(async move {
        client
            .get(format!("{api}/v1/kv/new/key?wait_index={now}&wait=30s"))
            .send()
            .await
            .expect("blocking read")
    });
    let api = cluster.api(on);
    let client = http.clone();
    let prefix = tokio::spawn(async move {
        let answer: Value = client
            .get(format!("{api}/v1/kv?prefix=svc/&wait_index={now}&wait=30s"))
            .send()
            .await
            .expect("blocking range read")
            .json()
            .await
            .unwrap();
        answer
    });
    wait_until_waiting(cluster, on, 2).await;
    let created = put_ok(cluster, leader, "new/key", "here").await;
    let missing = missing.await.unwrap();
    assert_eq!(missing.status(), 200);
    assert_eq!(missing.text().await.unwrap(), "here");
    let deleted = delete_ok(&cluster.api(leader), "svc/a").await;
    let range = prefix.await.unwrap();
    assert!(range["index"].as_u64().unwrap() >= deleted, "{range}");
    assert_eq!(range["items"], json!([]), "woken by the delete: {range}");
    // Already changed after the index given: at once.
    let started = Instant::now();
    let answer = http
        .get(format!(
            "{}/v1/kv/new/key?wait_index={}&wait=30s",
            cluster.api(on),
            created - 1
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    let bad = http
        .get(format!(
            "{}/v1/kv/x?wait_index=1&wait=soon",
            cluster.api(on)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t83_a_watch_from_before_the_history_is_410_with_its_start() {
    let cluster = Cluster::start(1, &["--watch-history-entries", "10"]).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.node_client(leader).expect("client");
    // Pruning moves in steps of 1024 entries past the window.
    let mut last = 0;
    for i in 0..1100 {
        last = client
            .put(&format!("k/{}", i % 7), b"v".to_vec())
            .await
            .expect("put")
            .index;
    }
    let answer = http()
        .get(format!(
            "{}/v1/watch?prefix=k/&from_index=1",
            cluster.api(leader)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 410);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "compacted");
    let compact = body["compact_index"].as_u64().expect("compact_index");
    assert!(
        compact >= 1024 && compact < last,
        "compact {compact}, last {last}"
    );
    // From just after it, the stream serves.
    let mut stream = Lines::open(&format!(
        "{}/v1/watch?prefix=k/&from_index={}",
        cluster.api(leader),
        compact + 1
    ))
    .await;
    assert_eq!(
        stream.event(LINE).await["index"].as_u64(),
        Some(compact + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t84_a_client_that_falls_behind_is_ended_with_where_to_resume() {
    let cluster = Cluster::start(1, &["--watch-buffer-events", "4"]).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.node_client(leader).expect("client");
    let mut stream = Lines::open(&format!("{}/v1/watch?prefix=big/", cluster.api(leader))).await;
    // Large values fill the socket buffers; then the node's queue of 4 events overflows.
    let value = vec![b'x'; 256 * 1024];
    let mut written = Vec::new();
    for i in 0..200 {
        let put = client
            .put(&format!("big/{i}"), value.clone())
            .await
            .expect("put");
        written.push(put.index);
    }
    let mut seen = Vec::new();
    let resume = loop {
        let line = stream.json(LINE).await;
        if let Some(index) = line["index"].as_u64() {
            seen.push(index);
            continue;
        }
        if line.get("progress").is_some() {
            continue;
        }
        assert_eq!(line["error"]["code"], "lagging", "{line}");
        break line["resume_index"].as_u64().expect("resume_index");
    };
    assert!(
        stream.next(LINE).await.is_none(),
        "the lagging line is the last"
    );
    assert_eq!(
        seen,
        written[..seen.len()],
        "what came before is in order, without gaps"
    );
    assert_eq!(Some(&resume), written.get(seen.len()));
    // Resuming there gives the rest, each once.
    let mut rest = Lines::open(&format!(
        "{}/v1/watch?prefix=big/&from_index={resume}",
        cluster.api(leader)
    ))
    .await;
    for expected in &written[seen.len()..] {
        assert_eq!(rest.event(LINE).await["index"].as_u64(), Some(*expected));
    }
    let metrics = cluster.metrics(leader).await;
    assert_eq!(
        metric_sample(&metrics, "mirrorkv_watch_lagging_ended_total"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t85_watchers_are_limited_and_streams_end_when_the_node_stops() {
    let mut cluster = Cluster::start(1, &["--max-watchers", "2"]).await;
    let leader = cluster.wait_for_leader().await;
    let url = format!("{}/v1/watch?prefix=", cluster.api(leader));
    let first = Lines::open(&url).await;
    let mut second = Lines::open(&url).await;
    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    // A blocking read needs a place too.
    let blocked = http()
        .get(format!(
            "{}/v1/kv/k?wait_index=1&wait=1s",
            cluster.api(leader)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 429);
    let metrics = cluster.metrics(leader).await;
    assert_eq!(metric_sample(&metrics, "mirrorkv_watchers_open"), Some(2.0));
    drop(first);
    let reopened = wait_for("a place freed by a closed stream", DEADLINE, || async {
        let answer = stream_http().get(&url).send().await.ok()?;
        (answer.status() == 200).then_some(answer)
    })
    .await;
    drop(reopened);

    let index = put_ok(&cluster, leader, "k", "v").await;
    assert_eq!(second.event(LINE).await["index"].as_u64(), Some(index));
    let status = cluster.terminate(leader).await;
    assert!(
        status.success(),
        "the node stops with streams open: {status}"
    );
    let last = second.json(LINE).await;
    assert_eq!(last["error"]["code"], "unavailable", "{last}");
    assert!(last["resume_index"].as_u64().unwrap() > index, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t86_the_client_watch_resumes_across_a_killed_node_and_ctl_prints_events() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let others: Vec<String> = cluster
        .ids()
        .iter()
        .filter(|&&id| id != follower)
        .map(|&id| cluster.nodes[&id].api_addr.clone())
        .collect();
    let endpoints = [vec![cluster.nodes[&follower].api_addr.clone()], others].concat();
    let client = mirrorkv_client::Client::new(endpoints.clone()).unwrap();
    let mut watch = client.watch(
        mirrorkv_client::WatchTarget::Prefix("w/".into()),
        mirrorkv_client::WatchOptions::default(),
    );
    let writer = cluster.node_client(leader).unwrap();
    // The first message opens the stream (on the follower, the first endpoint): a progress
    // mark, as nothing was written since.
    let opened = tokio::time::timeout(LINE, watch.next())
        .await
        .expect("opened");
    assert!(
        matches!(opened, Ok(mirrorkv_client::WatchMessage::Progress(_))),
        "{opened:?}"
    );
    let mut written = vec![writer.put("w/0", "0").await.unwrap().index];
    let mut seen = Vec::new();
    while seen.is_empty() {
        let message = tokio::time::timeout(LINE, watch.next())
            .await
            .expect("an event");
        if let mirrorkv_client::WatchMessage::Event(e) = message.unwrap() {
            seen.push(e.index);
        }
    }
    cluster.kill(follower);
    for i in 1..20 {
        written.push(writer.put(&format!("w/{i}"), "x").await.unwrap().index);
    }
    while seen.len() < written.len() {
        let message = tokio::time::timeout(LINE, watch.next())
            .await
            .expect("an event within the deadline")
            .expect("the watch resumes on another node");
        if let mirrorkv_client::WatchMessage::Event(e) = message {
            seen.push(e.index);
        }
    }
    assert_eq!(
        seen, written,
        "every write once, in order, across the node's death"
    );

    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--endpoints", &endpoints[1]];
        all.extend_from_slice(args);
        let (ok, out, stderr) = mirrorkv(&all, None);
        assert!(ok, "ctl {args:?}: {stderr}");
        String::from_utf8(out).unwrap()
    };
    let from = written[1].to_string();
    let text = ctl(&[
        "watch",
        "--prefix",
        "w/",
        "--from-index",
        &from,
        "--max-events",
        "2",
    ]);
    assert_eq!(
        text,
        format!("{} put w/1 x\n{} put w/2 x\n", written[1], written[2])
    );
    let json_out = ctl(&[
        "watch",
        "w/3",
        "--from-index",
        &from,
        "--max-events",
        "1",
        "--json",
    ]);
    let event: Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!(
        (
            event["key"].as_str(),
            event["type"].as_str(),
            event["index"].as_u64()
        ),
        (Some("w/3"), Some("put"), Some(written[3]))
    );
}

/// A follower that falls behind the leader's log installs a snapshot while a stream is open on
/// it: the stream either carries on with every change in order or ends with `compacted`; it
/// never skips. (The contract's rule for snapshot installs; the hub's unit test
/// `a_snapshot_install_ends_synced_watchers_as_compacted_and_close_ends_all` covers the hub
/// alone, this the whole path: raft-net, the install, storage's listener, the API.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t87_a_snapshot_install_under_an_open_stream_ends_it_as_compacted_never_skips() {
    let threshold_entries = 50;
    let cluster = Cluster::start_with_proxies(
        3,
        &[
            "--snapshot-threshold-entries",
            &threshold_entries.to_string(),
            "--request-timeout-ms",
            "2000",
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.running().iter().find(|&&id| id != leader).unwrap();
    let mut stream = Lines::open(&format!("{}/v1/watch?prefix=s/", cluster.api(follower))).await;
    let mut written = vec![(
        put_ok(&cluster, leader, "s/first", "v").await,
        "s/first".to_string(),
    )];
    assert_eq!(
        stream.event(LINE).await["index"].as_u64(),
        Some(written[0].0)
    );
    let follower_last_log = cluster.node_view(follower).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap();

    // Cut off (its API still answers), the follower falls far behind; the leader snapshots and
    // purges past it, so only a snapshot can bring it back.
    cluster.isolate(follower);
    for i in 0..threshold_entries * 6 {
        let key = format!("s/{i}");
        written.push((put_ok(&cluster, leader, &key, "v").await, key));
    }
    wait_for(
        "the leader to purge past the follower",
        DEADLINE,
        || async {
            let purged = cluster.node_view(leader).await?["purged_index"].as_u64()?;
            (purged > follower_last_log).then_some(())
        },
    )
    .await;
    cluster.heal();
    wait_applied(&cluster, follower, written.last().unwrap().0).await;
    let log = std::fs::read_to_string(&cluster.nodes[&follower].log_path).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "the follower caught up through a snapshot"
    );

    // Whatever came is exactly the next writes in order; then either all of them or the end.
    let mut next = 1;
    let ended = loop {
        let Some(line) = stream.next(LINE).await else {
            panic!("the stream ended without a last line after {next} events");
        };
        let line: Value = serde_json::from_str(&line).unwrap();
        if line.get("progress").is_some() {
            continue;
        }
        if let Some(error) = line.get("error") {
            break Some((error["code"].clone(), line["compact_index"].as_u64()));
        }
        let (index, key) = &written[next];
        assert_eq!(
            (line["index"].as_u64(), line["key"].as_str()),
            (Some(*index), Some(key.as_str())),
            "event {next} after the first"
        );
        next += 1;
        if next == written.len() {
            break None;
        }
    };
    println!("t87: {next} events in order, then {ended:?}");
    if let Some((code, compact_index)) = ended {
        assert_eq!(code, "compacted");
        let compact_index = compact_index.expect("compact_index");
        assert!(
            compact_index >= written[next - 1].0,
            "compact_index {compact_index} must cover the events sent ({})",
            written[next - 1].0
        );
        assert!(
            stream.next(LINE).await.is_none(),
            "nothing after the last line"
        );
    }
}
