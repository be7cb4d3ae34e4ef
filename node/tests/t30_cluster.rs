//! A real 3-node cluster: writes through any node, reads from every node, and no acknowledged
//! write lost through `kill -9` of the leader, of all nodes, or of a follower that must then
//! catch up through a snapshot; a leader with a slow disk commits only with a quorum on disk.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_applied, wait_for, Cluster, WriteOutcome, DEADLINE};

/// Read every key through node `id` at `consistency` and compare with `expected`.
async fn assert_all_readable(
    cluster: &Cluster,
    id: u64,
    consistency: &str,
    expected: &BTreeMap<String, Vec<u8>>,
) {
    for (key, value) in expected {
        let got = cluster.get(id, key, consistency).await;
        assert_eq!(
            got,
            Ok(Some(value.clone())),
            "key {key} through node {id} at {consistency}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_write_through_each_node_read_back_through_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut expected = BTreeMap::new();
    let mut last_index = 0;
    for id in cluster.running() {
        for i in 0..10 {
            let key = format!("from-{id}/key {i}/ü");
            let value = format!("value {i} written through node {id}").into_bytes();
            match cluster.put(id, &key, &value).await {
                WriteOutcome::Ok { index } => {
                    assert!(index > last_index, "indexes of sequential writes grow");
                    last_index = index;
                }
                other => panic!("write through node {id} failed: {other:?}"),
            }
            expected.insert(key, value);
        }
    }
    for id in cluster.running() {
        // Linearizable reads from every node, followers included, see every write at once.
        assert_all_readable(&cluster, id, "linearizable", &expected).await;
    }
    for id in cluster.running() {
        wait_applied(&cluster, id, last_index).await;
        assert_all_readable(&cluster, id, "stale", &expected).await;
    }
}

/// Writers that keep writing unique keys through every node, recording what was acknowledged.
struct Writers {
    acked: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `writers` tasks, each writing up to `max_writes_each` keys round-robin through all nodes.
    /// They hold no lock on the cluster, so nodes can be killed while writes are in flight.
    fn start(cluster: &Cluster, writers: usize, max_writes_each: usize) -> Writers {
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let apis: Vec<String> = cluster.nodes.keys().map(|&id| cluster.api(id)).collect();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let apis = apis.clone();
            let http = cluster.http.clone();
            let acked = acked.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..max_writes_each {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}/{i}");
                    let value = format!("writer {w} write {i}").into_bytes();
                    let api = &apis[(i + w) % apis.len()];
                    if let WriteOutcome::Ok { .. } = common::put(&http, api, &key, &value).await {
                        acked.lock().unwrap().insert(key, value);
                    }
                }
            }));
        }
        Writers { acked, stop, tasks }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_acked(&self, at_least: usize) {
        wait_for(
            &format!("{at_least} acknowledged writes"),
            DEADLINE,
            || async { (self.acked_count() >= at_least).then_some(()) },
        )
        .await
    }

    async fn stop(self) -> BTreeMap<String, Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t32_leader_killed_during_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let old_leader = cluster.wait_for_leader().await;
    let writers = Writers::start(&cluster, 4, 5_000);
    writers.wait_acked(100).await;

    let killed_at = Instant::now();
    cluster.kill(old_leader);
    let new_leader = cluster.wait_for_leader().await;
    let election_ms = killed_at.elapsed().as_millis();
    assert_ne!(new_leader, old_leader);
    println!("t32: leader {old_leader} killed; node {new_leader} leads after {election_ms} ms");

    let acked_at_election = writers.acked_count();
    writers.wait_acked(acked_at_election + 100).await;
    let acked = writers.stop().await;

    for id in cluster.running() {
        assert_all_readable(&cluster, id, "linearizable", &acked).await;
    }
    // The killed node comes back and catches up with everything.
    cluster.restart(old_leader).await;
    cluster.wait_ready(old_leader).await;
    let leader = cluster.wait_for_leader().await;
    let commit = cluster.cluster_info(leader).await.unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    wait_applied(&cluster, old_leader, commit).await;
    assert_all_readable(&cluster, old_leader, "stale", &acked).await;
    println!(
        "t32: {} acknowledged writes all present on every node",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t33_kill_all_nodes_at_once_and_restart_loses_no_acknowledged_write() {
    // Snapshots (and log purges behind them) every few entries, so the kill lands after some:
    // each node must come back with its snapshot, its applied state and its log still fitting
    // together (`purged ≤ snapshot ≤ applied`, checked when the store opens).
    let mut cluster = Cluster::start(3, &["--snapshot-threshold-entries", "20"]).await;
    let leader = cluster.wait_for_leader().await;
    let writers = Writers::start(&cluster, 4, 5_000);
    writers.wait_acked(200).await;
    wait_for("the leader to purge its log", DEADLINE, || async {
        let purged = cluster.node_view(leader).await?["purged_index"].as_u64()?;
        (purged > 0).then_some(purged)
    })
    .await;
    // Kill every node while writes are in flight.
    for id in cluster.running() {
        cluster.kill(id);
    }
    let acked = writers.stop().await;
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.restart(id).await;
    }
    cluster.wait_for_leader().await;
    for id in cluster.running() {
        assert_all_readable(&cluster, id, "linearizable", &acked).await;
    }
    println!(
        "t33: {} acknowledged writes survived kill -9 of all nodes",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t34_follower_behind_the_snapshot_catches_up_through_a_snapshot() {
    let threshold_entries = 50;
    let mut cluster = Cluster::start(
        3,
        &[
            "--snapshot-threshold-entries",
            &threshold_entries.to_string(),
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.running().iter().find(|&&id| id != leader).unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..10 {
        let key = format!("before/{i}");
        assert!(matches!(
            cluster.put(leader, &key, b"v0").await,
            WriteOutcome::Ok { .. }
        ));
        expected.insert(key, b"v0".to_vec());
    }
    wait_applied(
        &cluster,
        follower,
        cluster.cluster_info(leader).await.unwrap()["commit_index"]
            .as_u64()
            .unwrap(),
    )
    .await;
    let follower_last_log = cluster.node_view(follower).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap();
    cluster.kill(follower);

    // Far more than the threshold, so the leader snapshots and purges past the follower's log.
    let writes = threshold_entries * 6;
    for i in 0..writes {
        let key = format!("while-down/{i}");
        let value = format!("value {i}").into_bytes();
        let leader = cluster.wait_for_leader().await;
        match cluster.put(leader, &key, &value).await {
            WriteOutcome::Ok { .. } => {}
            other => panic!("write {i} failed: {other:?}"),
        }
        expected.insert(key, value);
    }
    let leader = cluster.wait_for_leader().await;
    let purged = wait_for("the leader to purge its log", DEADLINE, || async {
        let purged = cluster.node_view(leader).await?["purged_index"].as_u64()?;
        (purged > follower_last_log).then_some(purged)
    })
    .await;
    println!("t34: follower {follower} stopped at log index {follower_last_log}; leader purged up to {purged}");

    cluster.restart(follower).await;
    let commit = cluster.cluster_info(leader).await.unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    wait_applied(&cluster, follower, commit).await;
    let view = cluster.node_view(follower).await.unwrap();
    let snapshot_index = view["snapshot_index"]
        .as_u64()
        .expect("follower holds a snapshot");
    assert!(
        snapshot_index > follower_last_log,
        "the follower's snapshot {snapshot_index} covers entries it never had in its log"
    );
    let log = std::fs::read_to_string(&cluster.nodes[&follower].log_path).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "the follower installed a snapshot from the leader"
    );
    assert_all_readable(&cluster, follower, "stale", &expected).await;
    assert_all_readable(&cluster, follower, "linearizable", &expected).await;
}

/// t35, continued on the same cluster: garbage sent to `node`'s raft port.
async fn t35_garbage_on_the_raft_port_closes_its_connection(cluster: &Cluster, node: u64) {
    use tokio::io::AsyncWriteExt;

    // Garbage on the raft port: random bytes, an HTTP request, a frame claiming 4 GiB, a frame
    // with an unknown version, a well-framed undecodable payload. Each closes its connection.
    let raft_addr = cluster.nodes[&node].raft_addr.clone();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut bad_version = Vec::new();
    bad_version.extend_from_slice(&20u32.to_be_bytes());
    bad_version.push(200);
    bad_version.extend_from_slice(&[0u8; 19]);
    let mut undecodable = Vec::new();
    undecodable.extend_from_slice(&19u32.to_be_bytes());
    undecodable.push(1);
    undecodable.extend_from_slice(&[0xffu8; 18]);
    let inputs: Vec<Vec<u8>> = vec![
        random,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        u32::MAX.to_be_bytes().to_vec(),
        bad_version,
        undecodable,
    ];
    for input in inputs {
        let mut stream = tokio::net::TcpStream::connect(&raft_addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let _ = stream.write_all(&input).await;
        // The node must close the connection: a read sees EOF or a reset within the deadline.
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            use tokio::io::AsyncReadExt;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the node closed a connection that sent garbage"
        );
    }
    // Still serving, writes forwarded through it included.
    assert!(matches!(
        cluster.put(node, "after-garbage", b"ok").await,
        WriteOutcome::Ok { .. }
    ));
    assert_eq!(
        cluster.get(node, "after-garbage", "linearizable").await,
        Ok(Some(b"ok".to_vec()))
    );
    let log = std::fs::read_to_string(&cluster.nodes[&node].log_path).unwrap();
    assert!(
        log.contains("closed raft-net connection"),
        "the node logged why it closed the connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t35_bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let cluster = Cluster::start(3, &["--max-value-bytes", "1024"]).await;
    let leader = cluster.wait_for_leader().await;
    let node = *cluster.running().iter().find(|&&id| id != leader).unwrap();
    let api = cluster.api(node);
    let error_code = |body: &str| -> (String, bool) {
        let json: serde_json::Value = serde_json::from_str(body).expect("error body is JSON");
        (
            json["error"]["code"].as_str().unwrap().to_string(),
            json["error"]["retryable"].as_bool().unwrap(),
        )
    };

    // Oversized value: 413 too_large.
    let response = cluster
        .http
        .put(format!("{api}/v1/kv/big"))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        error_code(&response.text().await.unwrap()),
        ("too_large".into(), false)
    );
    // Oversized body (over max_body_bytes too): 413. The node answers before reading the whole
    // body and closes the connection, so this request gets a client that does not pool it.
    let unpooled = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = unpooled
        .put(format!("{api}/v1/kv/huge"))
        .body(vec![b'x'; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Oversized key: 413.
    let long_key = "k".repeat(4097);
    let response = cluster
        .http
        .put(format!("{api}/v1/kv/{long_key}"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Empty key: 400 invalid_argument.
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ] {
        let response = cluster
            .http
            .request(method.clone(), format!("{api}/v1/kv/"))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{method} of an empty key");
        assert_eq!(
            error_code(&response.text().await.unwrap()).0,
            "invalid_argument"
        );
    }
    // Unknown consistency level and malformed numbers: 400.
    let response = cluster
        .http
        .get(format!("{api}/v1/kv/a?consistency=eventual"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["x-mirrorkv-node"],
        node.to_string().as_str()
    );
    let response = cluster
        .http
        .get(format!("{api}/v1/kv/a?min_index=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Bad If-Match: 400.
    let response = cluster
        .http
        .put(format!("{api}/v1/kv/a"))
        .header("if-match", "abc")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    t35_garbage_on_the_raft_port_closes_its_connection(&cluster, node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t36_sigterm_stops_a_node_gracefully_and_it_rejoins() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    assert!(matches!(
        cluster.put(leader, "before", b"1").await,
        WriteOutcome::Ok { .. }
    ));
    let status = cluster.terminate(leader).await;
    assert!(status.success(), "a SIGTERM'd node exits 0, got {status}");
    let log = std::fs::read_to_string(&cluster.nodes[&leader].log_path).unwrap();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "the node logged its shutdown"
    );
    let new_leader = cluster.wait_for_leader().await;
    assert!(matches!(
        cluster.put(new_leader, "after", b"2").await,
        WriteOutcome::Ok { .. }
    ));
    cluster.restart(leader).await;
    cluster.wait_ready(leader).await;
    let expected = BTreeMap::from([
        ("before".to_string(), b"1".to_vec()),
        ("after".to_string(), b"2".to_vec()),
    ]);
    assert_all_readable(&cluster, leader, "linearizable", &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t37_write_to_a_cut_off_leader_answers_504_outcome_unknown() {
    let cluster = Cluster::start_with_proxies(3, &["--request-timeout-ms", "1000"]).await;
    let leader = cluster.wait_for_leader().await;
    cluster.isolate(leader);
    let started = Instant::now();
    let response = cluster
        .http
        .put(format!("{}/v1/kv/lost", cluster.api(leader)))
        .body("v")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    println!("t37: a write to the cut-off leader answered {status} {body}");
    if status == 504 {
        assert_eq!(body["outcome"], "unknown", "{body}");
        assert_eq!(body["error"]["code"], "timeout");
        assert_eq!(
            body["error"]["retryable"], false,
            "retrying blindly could apply it twice"
        );
    } else {
        // It noticed it lost its followers before the write reached the log: then the write was
        // never appended and 503 says so.
        assert_eq!(status, 503, "{body}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the request timeout"
    );
    cluster.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t38_requests_over_the_in_flight_limit_are_shed_with_429() {
    let cluster = Cluster::start(
        3,
        &[
            "--max-in-flight-requests",
            "2",
            "--request-timeout-ms",
            "3000",
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let api = cluster.api(leader);
    // Five reads that wait for an index that will not come: two hold the two slots for the
    // request timeout (504), the others find no slot and are shed at once (429).
    let slow = |http: reqwest::Client, api: String| async move {
        let response = http
            .get(format!(
                "{api}/v1/kv/k?consistency=stale&min_index=1000000000"
            ))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body: serde_json::Value = response.json().await.unwrap();
        (status, retry_after, body)
    };
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(slow(cluster.http.clone(), api.clone())))
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let (status, retry_after, body) = request.await.unwrap();
        if status == 429 {
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert_eq!(body["error"]["code"], "overloaded");
            assert_eq!(body["error"]["retryable"], true);
        }
        statuses.push(status);
    }
    statuses.sort();
    assert!(
        statuses.iter().all(|s| *s == 429 || *s == 504),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 504).count() <= 2,
        "at most two requests held: {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "requests over the limit were shed: {statuses:?}"
    );
    // Slots free again: served.
    assert_eq!(cluster.get(leader, "k", "stale").await, Ok(None));
    // Shed requests are counted like any other.
    let page = cluster.metrics(leader).await;
    let shed = r#"mirrorkv_http_requests_total{level="stale",route="/v1/kv/{*key}",status="429"}"#;
    let counted =
        common::metric_sample(&page, shed).unwrap_or_else(|| panic!("no {shed} in\n{page}"));
    assert_eq!(
        counted,
        statuses.iter().filter(|s| **s == 429).count() as f64,
        "429s counted"
    );
}

/// Write `v` to `key` through node `id` and return how long the write took; panics unless it
/// was acknowledged.
async fn acknowledged_put_took(cluster: &Cluster, id: u64, key: &str) -> Duration {
    let started = Instant::now();
    let outcome = cluster.put(id, key, b"v").await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, WriteOutcome::Ok { .. }),
        "{key} through node {id}: {outcome:?}"
    );
    took
}

/// The leader replicates its new entries while its own fsync runs (vendor/openraft/PATCHED.md),
/// yet counts itself towards a commit only once that fsync is done. Node 1 has a disk that takes
/// `SLOW_SYNC_MS` per fsync of its appends as leader, and is made the leader:
/// - with both followers up, a write is acknowledged by the followers' disks without waiting
///   for the leader's;
/// - with one follower killed, a write needs the leader's disk too, so it takes at least one
///   slow fsync: nothing is acknowledged before a quorum has it on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t39_the_leader_counts_its_own_write_only_once_it_is_on_disk() {
    const SLOW_SYNC_MS: u64 = 4000;
    const MOST_ELECTIONS: usize = 20;
    let slow = SLOW_SYNC_MS.to_string();
    // Node 1 also campaigns sooner than the others (default 500-1000 ms), so that it tends to
    // win the elections below.
    let node1_args = [
        "--fault-log-sync-delay-ms",
        slow.as_str(),
        "--election-timeout-min-ms",
        "300",
        "--election-timeout-max-ms",
        "450",
    ];
    let mut cluster =
        Cluster::start_with_node_args(3, &["--request-timeout-ms", "20000"], &[(1, &node1_args)])
            .await;
    // Hand the leadership to node 1: kill whichever node leads, which leaves node 1 and one
    // other to elect a leader between them, and start it again; repeat until node 1 wins.
    let mut elections = 0;
    loop {
        let leader = cluster.wait_for_leader().await;
        if leader == 1 {
            break;
        }
        elections += 1;
        assert!(
            elections <= MOST_ELECTIONS,
            "node 1 lost {MOST_ELECTIONS} elections in a row"
        );
        // Let node 1 catch up first: only a candidate with every committed entry can win.
        let view = cluster.node_view(leader).await.expect("the leader's view");
        let applied = view["applied_index"].as_u64().expect("applied_index");
        wait_applied(&cluster, 1, applied).await;
        cluster.kill(leader);
        cluster.wait_for_leader().await;
        cluster.restart(leader).await;
        cluster.wait_ready(leader).await;
    }
    println!("t39: node 1 leads after {elections} forced elections");
    // A first write, untimed: it waits until both followers are replicated to again (one was
    // just restarted) and have it on disk.
    let WriteOutcome::Ok { index } = cluster.put(1, "warm-up", b"v").await else {
        panic!("the first write through node 1 failed");
    };
    for id in [2, 3] {
        wait_applied(&cluster, id, index).await;
    }

    let took = acknowledged_put_took(&cluster, 1, "fast-quorum").await;
    println!("t39: with both followers up, the write took {took:?}");
    assert!(
        took < Duration::from_millis(SLOW_SYNC_MS),
        "the followers' disks made the quorum; the leader's slow fsync was waited for ({took:?})"
    );

    cluster.kill(3);
    let took = acknowledged_put_took(&cluster, 1, "needs-the-leader").await;
    println!("t39: with one follower down, the write took {took:?}");
    assert_eq!(
        cluster.wait_for_leader().await,
        1,
        "node 1 led throughout, so it counted towards that commit"
    );
    assert!(
        took >= Duration::from_millis(SLOW_SYNC_MS),
        "acknowledged after {took:?}, before the leader's fsync could be done: only one of \
         three nodes had the write on disk"
    );
    for key in ["fast-quorum", "needs-the-leader"] {
        assert_eq!(
            cluster.get(2, key, "linearizable").await,
            Ok(Some(b"v".to_vec())),
            "{key} through node 2"
        );
    }
}
