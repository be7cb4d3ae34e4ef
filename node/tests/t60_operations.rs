//! Operating a live cluster: growing it with `--join`, promoting and removing members while a
//! client writes, rolling restarts, backup and restore, `/metrics`, and `mirrorkv ctl`.
//! Every test starts real `mirrorkv` processes on 127.0.0.1 with OS-chosen ports.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    assert_no_acked_write_lost, http, metric_sample as sample, mirrorkv, scan_all, wait_for,
    Cluster, Writer, DEADLINE,
};
use serde_json::{json, Value};

/// Longest any test here waits for a condition that needs a bulk transfer (a 100k-key
/// snapshot, a promotion).
const BULK_DEADLINE: Duration = Duration::from_secs(120);

/// The value stored under preloaded key number `i`.
fn preload_value(i: usize) -> String {
    format!("{i:06}-{}", "v".repeat(40))
}

/// Write keys `k/000000`.. `k/{count-1}` in transactions of 125 puts, from 4 clients at once.
/// Returns key → (value, mod_index).
async fn preload(cluster: &Cluster, count: usize) -> BTreeMap<String, (String, u64)> {
    const PER_TXN: usize = 125;
    const CLIENTS: usize = 4;
    let http = http();
    let apis: Vec<String> = cluster.ids().iter().map(|&id| cluster.api(id)).collect();
    let batches: Vec<Vec<usize>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(PER_TXN)
        .map(|c| c.to_vec())
        .collect();
    let batches = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (http, apis, batches) = (http.clone(), apis.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            loop {
                let Some(batch) = batches.lock().unwrap().pop() else {
                    return written;
                };
                let success: Vec<Value> = batch
                    .iter()
                    .map(|&i| json!({"put": {"key": format!("k/{i:06}"), "value": preload_value(i)}}))
                    .collect();
                let api = &apis[client % apis.len()];
                let response = http
                    .post(format!("{api}/v1/txn"))
                    .json(&json!({"success": success}))
                    .send()
                    .await
                    .expect("txn sent");
                assert_eq!(response.status(), 200, "preload txn");
                let body: Value = response.json().await.expect("txn answer");
                let index = body["index"].as_u64().expect("txn index");
                written.extend(batch.into_iter().map(|i| (i, index)));
            }
        }));
    }
    let mut expected = BTreeMap::new();
    for task in tasks {
        for (i, index) in task.await.expect("preload task") {
            expected.insert(format!("k/{i:06}"), (preload_value(i), index));
        }
    }
    assert_eq!(expected.len(), count);
    expected
}

async fn cluster_json(http: &reqwest::Client, api: &str) -> Value {
    http.get(format!("{api}/v1/cluster"))
        .send()
        .await
        .expect("cluster request")
        .json()
        .await
        .expect("cluster JSON")
}

/// Wait until the commit index that node `api` reports has grown by more than `entries`.
async fn wait_for_commits(http: &reqwest::Client, api: &str, entries: u64, what: &str) {
    let baseline = cluster_json(http, api).await["commit_index"]
        .as_u64()
        .unwrap_or(0);
    wait_for(what, DEADLINE, || async {
        let info = cluster_json(http, api).await;
        (info["commit_index"].as_u64()? > baseline + entries).then_some(())
    })
    .await;
}

/// Test 1: a 3-node cluster with 100k keys grows a 4th node with `--join`; it catches up (by
/// snapshot, then log), is checked key by key, is promoted, and then the *leader* is removed,
/// while a client keeps writing. No acknowledged write is lost and the client sees no error that
/// is not retryable.
/// t61, continued: remove the leader while `writer` writes through every node; no
/// acknowledged write is lost and the preloaded keys (`expected`) are all there.
async fn t61_remove_the_leader_under_writes(
    cluster: &mut Cluster,
    http: &reqwest::Client,
    writer: Writer,
    expected: BTreeMap<String, (String, u64)>,
) {
    // Remove the leader: leadership passes to the remaining voters.
    let leader = cluster.wait_for_leader().await;
    let staying: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    writer.set_endpoints(staying.iter().map(|&id| cluster.api(id)).collect());
    let via = staying[0];
    let response = http
        .delete(format!("{}/v1/cluster/members/{leader}", cluster.api(via)))
        .send()
        .await
        .expect("remove request");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert!(cluster.terminate(leader).await.success());
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // Let the client write through the new leader for a moment, then stop it.
    wait_for_commits(
        http,
        &cluster.api(new_leader),
        20,
        "writes under the new leader",
    )
    .await;
    let report = writer.finish().await;

    let info = cluster_json(http, &cluster.api(new_leader)).await;
    let members = info["members"].as_array().unwrap();
    let ids: Vec<u64> = members.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, staying, "{info}");
    for member in members {
        assert_eq!(member["role"], "voter", "{info}");
        assert!(member["applied_index"].as_u64().is_some(), "{info}");
        assert!(member["lag"].as_u64().is_some(), "{info}");
    }
    let state = scan_all(http, &cluster.api(4), "w/", "linearizable").await;
    assert_no_acked_write_lost(&report, &state);
    let preloaded = scan_all(http, &cluster.api(staying[1]), "k/", "linearizable").await;
    assert_eq!(preloaded, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t61_join_100k_keys_promote_and_remove_the_leader_under_writes() {
    let mut cluster = Cluster::start(3, &["--snapshot-threshold-entries", "500"]).await;
    let leader = cluster.wait_for_leader().await;
    let http = http();
    let load_started = Instant::now();
    let expected = preload(&cluster, 100_000).await;
    eprintln!("loaded 100000 keys in {:?}", load_started.elapsed());

    let writer = Writer::start(
        "w/",
        cluster.ids().iter().map(|&id| cluster.api(id)).collect(),
        100_000,
        Duration::from_secs(300),
    );

    // A snapshot on demand on the leader; with the automatic policy (every 500 entries) the
    // log behind it is purged, so a new member must start from a snapshot.
    let snapshot: Value = http
        .post(format!("{}/v1/snapshot", cluster.api(leader)))
        .send()
        .await
        .expect("snapshot request")
        .json()
        .await
        .expect("snapshot answer");
    assert!(snapshot["index"].as_u64().unwrap() > 0, "{snapshot}");
    assert!(
        snapshot["purged_index"].as_u64().unwrap_or(0) > 0,
        "{snapshot}"
    );

    // The size of a backup of this data set (reported, not asserted on).
    let backup = http
        .get(format!(
            "{}/v1/backup?consistency=stale",
            cluster.api(leader)
        ))
        .send()
        .await
        .expect("backup request");
    assert_eq!(backup.status(), 200);
    let backup_bytes = backup.bytes().await.expect("backup body").len();
    eprintln!("backup of 100000 keys: {backup_bytes} bytes");

    let join_via = cluster.nodes[&2].api_addr.clone();
    cluster.add_node(4, &["--join", &join_via]);
    let join_started = Instant::now();
    cluster.restart(4).await;
    cluster.wait_ready(4).await;
    let caught_up = join_started.elapsed();
    eprintln!("node 4 joined and caught up with 100000 keys in {caught_up:?}");

    // Key by key, from node 4's own mirror.
    let mirror = scan_all(&http, &cluster.api(4), "k/", "stale").await;
    assert_eq!(
        mirror.len(),
        expected.len(),
        "node 4 holds every preloaded key"
    );
    for (key, (value, mod_index)) in &expected {
        assert_eq!(
            mirror.get(key),
            Some(&(value.clone(), *mod_index)),
            "key {key} on node 4"
        );
    }
    let metrics = cluster.metrics(4).await;
    assert!(
        sample(&metrics, "mirrorkv_snapshots_installed_total").unwrap_or(0.0) >= 1.0,
        "node 4 caught up through a snapshot"
    );
    // A mirror serves linearizable reads through the read-index path.
    assert_eq!(
        cluster.get(4, "k/000042", "linearizable").await,
        Ok(Some(preload_value(42).into_bytes()))
    );
    let info = cluster_json(&http, &cluster.api(1)).await;
    let member4 = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 4)
        .cloned()
        .expect("node 4 is a member");
    assert_eq!(member4["role"], "mirror", "{info}");

    // Promote: refused (retryably) while far behind, done once caught up.
    wait_for("node 4 to be promoted", BULK_DEADLINE, || async {
        let response = http
            .post(format!("{}/v1/cluster/members/4/promote", cluster.api(3)))
            .send()
            .await
            .ok()?;
        if response.status() == 200 {
            return Some(());
        }
        let body: Value = response.json().await.ok()?;
        assert_eq!(
            body["error"]["retryable"], true,
            "promotion refusal: {body}"
        );
        None
    })
    .await;

    t61_remove_the_leader_under_writes(&mut cluster, &http, writer, expected).await;
}

/// Test 2: every node of a 5-node cluster is restarted in turn (SIGTERM, start again, wait
/// until ready) under a write load; no acknowledged write is lost and no error is
/// non-retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t62_rolling_restart_of_5_nodes_under_writes() {
    let mut cluster = Cluster::start(5, &[]).await;
    cluster.wait_for_leader().await;
    let writer = Writer::start(
        "r/",
        cluster.ids().iter().map(|&id| cluster.api(id)).collect(),
        100_000,
        Duration::from_secs(300),
    );
    let http = http();
    for id in cluster.ids() {
        let leader = cluster.wait_for_leader().await;
        eprintln!("restarting node {id} (leader: {leader})");
        let status = cluster.terminate(id).await;
        assert!(status.success(), "node {id} stopped cleanly: {status}");
        cluster.restart(id).await;
        cluster.wait_ready(id).await;
    }
    cluster.wait_for_leader().await;
    let report = writer.finish().await;
    for id in cluster.ids() {
        let state = scan_all(&http, &cluster.api(id), "r/", "linearizable").await;
        assert_no_acked_write_lost(&report, &state);
    }
}

/// Test 3: a backup taken during writes, restored into a fresh single-node cluster, holds
/// exactly the source's data at the backup's index: every write at or before it, none after,
/// with the same mod_index. Corrupted and truncated copies are refused and leave nothing.
/// t63, continued: `backup` (taken at `index`, holding `expected`) restored into a fresh
/// single-node cluster; corrupted and truncated copies refused first.
async fn t63_restore_into_a_fresh_node(
    http: &reqwest::Client,
    backup: Vec<u8>,
    index: u64,
    expected: BTreeMap<String, (String, u64)>,
) {
    let mut restored = Cluster::start(0, &[]).await;
    restored.add_node(1, &[]);
    let node = &restored.nodes[&1];
    let file = restored.path().join("copy.backup");
    std::fs::write(&file, &backup).unwrap();

    // Corrupted (one byte flipped in the middle) and truncated copies are refused.
    let data_dir = node.data_dir.to_str().unwrap().to_string();
    let restore_args = |from: &str| {
        vec![
            "restore".to_string(),
            "--from".into(),
            from.to_string(),
            "--data-dir".into(),
            data_dir.clone(),
            "--id".into(),
            "1".into(),
            "--api-addr".into(),
            node.api_addr.clone(),
            "--raft-addr".into(),
            node.raft_addr.clone(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mirrorkv(&args, None)
    };
    let mut corrupted = backup.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0x55;
    let corrupted_file = restored.path().join("corrupted.backup");
    std::fs::write(&corrupted_file, &corrupted).unwrap();
    let (ok, _, stderr) = run(restore_args(corrupted_file.to_str().unwrap()));
    assert!(!ok && stderr.contains("corrupted"), "{stderr}");
    assert!(!node.data_dir.exists(), "nothing half-restored");
    let truncated_file = restored.path().join("truncated.backup");
    std::fs::write(&truncated_file, &backup[..backup.len() - 100]).unwrap();
    let (ok, _, stderr) = run(restore_args(truncated_file.to_str().unwrap()));
    assert!(!ok && stderr.contains("truncated"), "{stderr}");
    assert!(!node.data_dir.exists(), "nothing half-restored");

    let (ok, stdout, stderr) = run(restore_args(file.to_str().unwrap()));
    assert!(ok, "restore: {stderr}");
    eprintln!("{}", String::from_utf8_lossy(&stdout));
    restored.restart(1).await;
    restored.wait_ready(1).await;
    let mut state = scan_all(http, &restored.api(1), "k/", "linearizable").await;
    state.extend(scan_all(http, &restored.api(1), "b/", "linearizable").await);
    assert_eq!(state.len(), expected.len());
    assert_eq!(
        state, expected,
        "the restored data equals the source at index {index}"
    );
    // The new cluster takes writes after the copy's index.
    match restored.put(1, "after-restore", b"x").await {
        common::WriteOutcome::Ok { index: new_index } => assert!(new_index > index),
        other => panic!("write to the restored cluster: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t63_backup_during_writes_restores_exactly_that_index() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let http = http();
    let expected_preload = preload(&cluster, 5_000).await;
    let writer = Writer::start(
        "b/",
        cluster.ids().iter().map(|&id| cluster.api(id)).collect(),
        100_000,
        Duration::from_secs(120),
    );
    wait_for("some writes before the backup", DEADLINE, || async {
        let page: Value = http
            .get(format!(
                "{}/v1/kv?prefix=b/&limit=100&keys_only=true",
                cluster.api(1)
            ))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (page["items"].as_array()?.len() >= 50).then_some(())
    })
    .await;
    // From a follower, at the default (linearizable) level, while the writer goes on.
    let response = http
        .get(format!("{}/v1/backup", cluster.api(2)))
        .send()
        .await
        .expect("backup request");
    assert_eq!(response.status(), 200);
    let index: u64 = response.headers()["x-mirrorkv-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let backup = response.bytes().await.expect("backup body").to_vec();
    // Writes after the backup, which the copy must not contain.
    wait_for("writes after the backup", DEADLINE, || async {
        let info = cluster_json(&http, &cluster.api(1)).await;
        (info["commit_index"].as_u64()? > index + 20).then_some(())
    })
    .await;
    let report = writer.finish().await;
    assert!(report.fatal.is_empty(), "{:?}", report.fatal);
    eprintln!("backup at index {index}: {} bytes", backup.len());

    // The source's state at `index`, from the acknowledged writes and their indexes.
    let mut expected = expected_preload.clone();
    for acked in report.acked.iter().filter(|a| a.index <= index) {
        expected.insert(acked.key.clone(), (acked.value.clone(), acked.index));
    }
    assert!(
        report.acked.iter().any(|a| a.index > index),
        "writes went on after the backup"
    );

    t63_restore_into_a_fresh_node(&http, backup, index, expected).await;
}

/// Test 4: `/metrics` is valid Prometheus text, and its counters move with requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t64_metrics_parse_and_move() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let http = http();
    let scrape = |id: u64| {
        let http = http.clone();
        let url = format!("{}/metrics", cluster.api(id));
        async move {
            let response = http.get(url).send().await.expect("scrape");
            assert_eq!(response.status(), 200);
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                content_type.starts_with("text/plain; version=0.0.4"),
                "{content_type}"
            );
            response.text().await.unwrap()
        }
    };
    let before = scrape(leader).await;
    let families = prometheus_text::parse(&before).unwrap_or_else(|e| panic!("{e}\n{before}"));
    for name in [
        "mirrorkv_raft_term",
        "mirrorkv_raft_leader_id",
        "mirrorkv_raft_commit_index",
        "mirrorkv_raft_applied_index",
        "mirrorkv_replication_lag_entries",
        "mirrorkv_snapshots_built_total",
        "mirrorkv_snapshot_size_bytes",
        "mirrorkv_key_index_keys",
        "mirrorkv_key_index_bytes",
        "mirrorkv_storage_memory_bytes",
        "mirrorkv_log_entries",
        "mirrorkv_log_size_bytes",
        "mirrorkv_db_size_bytes",
    ] {
        assert!(families.contains_key(name), "{name} missing from\n{before}");
    }
    assert_eq!(
        sample(&before, "mirrorkv_raft_leader_id"),
        Some(leader as f64)
    );
    assert!(sample(&before, "mirrorkv_db_size_bytes").unwrap() > 0.0);
    // The memtables hold what was written since start, and are charged to the block cache.
    let memtables = sample(
        &before,
        r#"mirrorkv_storage_memory_bytes{kind="memtables"}"#,
    )
    .unwrap();
    let cache = sample(
        &before,
        r#"mirrorkv_storage_memory_bytes{kind="block_cache"}"#,
    )
    .unwrap();
    assert!(memtables > 0.0 && cache >= memtables, "{before}");
    for follower in cluster.ids().into_iter().filter(|&id| id != leader) {
        let series = format!("mirrorkv_replication_lag_entries{{follower=\"{follower}\"}}");
        assert!(sample(&before, &series).is_some(), "{series} in\n{before}");
    }

    let writes =
        r#"mirrorkv_http_requests_total{level="write",route="/v1/kv/{*key}",status="200"}"#;
    let stale_reads =
        r#"mirrorkv_http_requests_total{level="stale",route="/v1/kv/{*key}",status="200"}"#;
    let write_latency =
        r#"mirrorkv_http_request_duration_seconds_count{level="write",route="/v1/kv/{*key}"}"#;
    for i in 0..5 {
        assert!(matches!(
            cluster.put(leader, &format!("m{i}"), b"v").await,
            common::WriteOutcome::Ok { .. }
        ));
    }
    for i in 0..3 {
        assert!(cluster.get(leader, &format!("m{i}"), "stale").await.is_ok());
    }
    let after = scrape(leader).await;
    prometheus_text::parse(&after).unwrap_or_else(|e| panic!("{e}\n{after}"));
    let moved = |series: &str| {
        sample(&after, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0)
    };
    assert_eq!(moved(writes), 5.0, "{after}");
    assert_eq!(moved(stale_reads), 3.0, "{after}");
    assert_eq!(moved(write_latency), 5.0, "{after}");
    assert!(moved("mirrorkv_raft_applied_index") >= 5.0);
    // Five new keys, each indexed once it is applied.
    assert!(moved("mirrorkv_key_index_keys") >= 5.0, "{after}");
    assert!(sample(&after, "mirrorkv_key_index_bytes").unwrap() > 0.0);
    // Each write reached both followers in AppendEntries carrying it; heartbeats carry none.
    assert!(
        moved(r#"mirrorkv_raft_append_entries_sent_total{carrying="entries"}"#) >= 2.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            r#"mirrorkv_raft_append_entries_sent_total{carrying="none"}"#
        )
        .unwrap()
            > 0.0,
        "{after}"
    );
}

/// Test 5: `mirrorkv ctl` drives the operations end to end: keys, scans, a transaction,
/// cluster status, adding / promoting / removing a member, a snapshot, and a backup that
/// `mirrorkv restore` turns into a new cluster. The first endpoint is dead on purpose: every
/// command must fail over to the next.
/// t65, continued: a backup through ctl (at `endpoints`), restored into a fresh node, read back
/// through ctl.
async fn t65_backup_and_restore_through_ctl(cluster: &Cluster, endpoints: &str) {
    // Backup to a file through ctl, restore it, and read it back through ctl.
    let (ok, backup, stderr) = mirrorkv(&["ctl", "--endpoints", endpoints, "backup"], None);
    assert!(ok && stderr.starts_with("backup at index"), "{stderr}");
    let file = cluster.path().join("ctl.backup");
    std::fs::write(&file, &backup).unwrap();
    let mut restored = Cluster::start(0, &[]).await;
    restored.add_node(1, &[]);
    let node = &restored.nodes[&1];
    let (ok, _, stderr) = mirrorkv(
        &[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            node.data_dir.to_str().unwrap(),
            "--id",
            "1",
            "--api-addr",
            &node.api_addr,
            "--raft-addr",
            &node.raft_addr,
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let restored_api = node.api_addr.clone();
    restored.restart(1).await;
    restored.wait_ready(1).await;
    let (ok, stdout, stderr) = mirrorkv(
        &[
            "ctl",
            "--endpoints",
            &restored_api,
            "scan",
            "--prefix",
            "app/",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        String::from_utf8(stdout).unwrap(),
        "app/a = 1\napp/b = from stdin\n"
    );
}

/// `mirrorkv ctl --endpoints ENDPOINTS ARGS...`, asserted to succeed; its standard output.
fn ctl_at(endpoints: &str) -> impl Fn(&[&str]) -> String + '_ {
    move |args: &[&str]| {
        let mut all = vec!["ctl", "--endpoints", endpoints];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = mirrorkv(&all, None);
        assert!(ok, "mirrorkv ctl {args:?}: {stderr}");
        String::from_utf8(stdout).unwrap()
    }
}

/// t65, continued: membership changes, a snapshot and a backup through ctl, `dead` first in
/// its endpoints.
async fn t65_members_snapshot_and_backup_through_ctl(
    cluster: &mut Cluster,
    dead: &str,
    endpoints: &str,
) {
    let endpoints = endpoints.to_string();
    let ctl = ctl_at(&endpoints);
    // Add a mirror, start it (its --join finds itself already added), promote, remove node 1.
    cluster.add_node(4, &["--join", &cluster.nodes[&2].api_addr.clone()]);
    let (api4, raft4) = (
        cluster.nodes[&4].api_addr.clone(),
        cluster.nodes[&4].raft_addr.clone(),
    );
    let out = ctl(&[
        "member",
        "add",
        "4",
        "--api-addr",
        &api4,
        "--raft-addr",
        &raft4,
    ]);
    assert!(out.starts_with("added mirror 4"), "{out}");
    // Not started yet, so nothing replicated to it: promotion is refused, retryably.
    let (ok, _, stderr) = mirrorkv(
        &["ctl", "--endpoints", &endpoints, "member", "promote", "4"],
        None,
    );
    assert!(
        !ok && stderr.contains("precondition_failed") && stderr.contains("(retryable)"),
        "{stderr}"
    );
    cluster.restart(4).await;
    cluster.wait_ready(4).await;
    wait_for("ctl member promote 4", DEADLINE, || async {
        let (ok, stdout, _) = mirrorkv(
            &["ctl", "--endpoints", &endpoints, "member", "promote", "4"],
            None,
        );
        (ok && String::from_utf8_lossy(&stdout).starts_with("promoted 4")).then_some(())
    })
    .await;
    let endpoints = format!("{dead},{},{}", cluster.nodes[&2].api_addr, api4);
    let (ok, _, stderr) = mirrorkv(
        &["ctl", "--endpoints", &endpoints, "member", "remove", "1"],
        None,
    );
    assert!(ok, "{stderr}");
    let info: Value = serde_json::from_str(&{
        let (ok, stdout, stderr) = mirrorkv(
            &[
                "ctl",
                "--endpoints",
                &endpoints,
                "--json",
                "cluster",
                "status",
            ],
            None,
        );
        assert!(ok, "{stderr}");
        String::from_utf8(stdout).unwrap()
    })
    .unwrap();
    let ids: Vec<u64> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3, 4], "{info}");

    let (ok, stdout, stderr) = mirrorkv(&["ctl", "--endpoints", &endpoints, "snapshot"], None);
    assert!(
        ok && String::from_utf8_lossy(&stdout).starts_with("snapshot at index"),
        "{stderr}"
    );

    t65_backup_and_restore_through_ctl(cluster, &endpoints).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t65_ctl_end_to_end() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let endpoints = format!(
        "{dead},{},{}",
        cluster.nodes[&1].api_addr, cluster.nodes[&2].api_addr
    );
    let ctl = ctl_at(&endpoints);
    assert!(ctl(&["put", "app/a", "1"]).starts_with("OK index "));
    let (ok, _, stderr) = mirrorkv(
        &["ctl", "--endpoints", &endpoints, "put", "app/b"],
        Some(b"from stdin"),
    );
    assert!(ok, "{stderr}");
    assert_eq!(ctl(&["get", "app/b"]), "from stdin\n");
    assert_eq!(ctl(&["--consistency", "stale", "get", "app/a"]), "1\n");
    let got: Value = serde_json::from_str(&ctl(&["--json", "get", "app/a"])).unwrap();
    assert_eq!(got["value"], "1");
    assert!(got["mod_index"].as_u64().is_some());
    assert_eq!(
        ctl(&["scan", "--prefix", "app/"]),
        "app/a = 1\napp/b = from stdin\n"
    );

    let txn = cluster.path().join("txn.json");
    std::fs::write(
        &txn,
        r#"{"compare": [{"key": "app/a", "value": "1"}], "success": [{"put": {"key": "app/c", "value": "3"}}, {"get": {"key": "app/a"}}]}"#,
    )
    .unwrap();
    let out = ctl(&["txn", txn.to_str().unwrap()]);
    assert!(out.starts_with("SUCCEEDED"), "{out}");
    assert!(out.contains("get: app/a = 1"), "{out}");
    assert!(ctl(&["del", "app/c"]).starts_with("deleted"));
    let (ok, _, stderr) = mirrorkv(&["ctl", "--endpoints", &endpoints, "get", "app/c"], None);
    assert!(!ok && stderr.contains("not_found"), "{stderr}");

    let status = ctl(&["cluster", "status"]);
    assert!(status.contains("ID") && status.contains("LAG"), "{status}");
    assert_eq!(
        status.lines().count(),
        5,
        "header lines and one row per member:\n{status}"
    );

    t65_members_snapshot_and_backup_through_ctl(&mut cluster, &dead, &endpoints).await;
}

/// A strict reader of the Prometheus text exposition format (version 0.0.4), enough to say a
/// page is well-formed: `# HELP` / `# TYPE` lines, samples `name{label="value",...} number`,
/// every sample belonging to a declared family, histogram buckets cumulative and ending in
/// `+Inf` equal to `_count`.
mod prometheus_text {
    use std::collections::BTreeMap;

    /// Family name → its type.
    pub fn parse(page: &str) -> Result<BTreeMap<String, String>, String> {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for (n, line) in page.lines().enumerate() {
            let at = |what: &str| format!("line {}: {what}: {line}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("HELP"), Some(name), _) if valid_name(name) => {}
                    (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at("unknown type"));
                        }
                        if types.insert(name.to_string(), kind.to_string()).is_some() {
                            return Err(at("type declared twice"));
                        }
                    }
                    _ => return Err(at("malformed comment")),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|_| at("bad value"))?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(
                        rest.strip_suffix('}')
                            .ok_or_else(|| at("unclosed labels"))?,
                    )
                    .map_err(|e| at(&e))?,
                ),
                None => (series, Vec::new()),
            };
            if !valid_name(name) {
                return Err(at("bad metric name"));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            if !types.contains_key(family) {
                return Err(at("sample of an undeclared family"));
            }
            let others: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let key = format!("{family}{{{}}}", others.join(","));
            if name.ends_with("_bucket") && family != name {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or_else(|| at("bucket without le"))?;
                let le: f64 = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse().map_err(|_| at("bad le"))?
                };
                buckets.entry(key).or_default().push((le, value));
            } else if name.ends_with("_count") && family != name {
                counts.insert(key, value);
            }
        }
        for (series, bounds) in &buckets {
            if bounds
                .windows(2)
                .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            {
                return Err(format!("{series}: buckets not cumulative"));
            }
            let last = bounds.last().expect("non-empty");
            if !last.0.is_infinite() || Some(&last.1) != counts.get(series) {
                return Err(format!(
                    "{series}: +Inf bucket missing or not equal to _count"
                ));
            }
        }
        Ok(types)
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut labels = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !valid_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape".into()),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            labels.push((name.to_string(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        Ok(labels)
    }
}

/// The leader removes itself five times over (6 voters down to 1) while 8 clients write
/// *through the leader* with idempotency keys, and keep doing so until it answers 410 and the
/// others have a new leader. Its write gate closes before the change is proposed, so every
/// client sees only refusals that are safe to retry (503 from the leaving leader, 410 once it
/// is removed): no `outcome: unknown`, no other error that must not be retried, and no
/// acknowledged write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t66_leader_removing_itself_under_writes_through_it_leaves_no_unknown_outcome() {
    const ROUNDS: usize = 5;
    const WRITERS: usize = 8;
    let mut cluster = Cluster::start(ROUNDS as u64 + 1, &[]).await;
    let http = http();
    for round in 0..ROUNDS {
        let leader = cluster.wait_for_leader().await;
        let staying: Vec<u64> = cluster
            .running()
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        let writers: Vec<Writer> = (0..WRITERS)
            .map(|w| {
                Writer::start(
                    &format!("rm{round}/{w}/"),
                    vec![cluster.api(leader)],
                    100_000,
                    Duration::from_secs(120),
                )
            })
            .collect();
        wait_for_commits(&http, &cluster.api(leader), 30, "writes through the leader").await;

        // The leader is asked to remove itself.
        let response = http
            .delete(format!(
                "{}/v1/cluster/members/{leader}",
                cluster.api(leader)
            ))
            .send()
            .await
            .expect("remove request");
        assert_eq!(
            response.status(),
            200,
            "round {round}: {:?}",
            response.text().await
        );
        // The writers keep writing through it (retrying its refusals) until it says it was
        // removed and the others have a leader: the old code answered the write in flight at
        // the removal `504 outcome: unknown` here, one per writer.
        wait_for("the removed leader to answer 410", DEADLINE, || async {
            let response = http
                .get(format!("{}/v1/cluster", cluster.api(leader)))
                .send()
                .await
                .ok()?;
            (response.status() == 410).then_some(())
        })
        .await;
        wait_for("a new leader among the others", DEADLINE, || async {
            let info = cluster_json(&http, &cluster.api(staying[0])).await;
            (info["leader"].as_u64()? != leader).then_some(())
        })
        .await;
        for writer in &writers {
            writer.set_endpoints(staying.iter().map(|&id| cluster.api(id)).collect());
        }
        // A removed node agrees on no leader: stop it before asking the others for theirs.
        assert!(cluster.terminate(leader).await.success());
        let new_leader = cluster.wait_for_leader().await;
        assert_ne!(new_leader, leader);
        wait_for_commits(
            &http,
            &cluster.api(new_leader),
            20,
            "writes under the new leader",
        )
        .await;
        let mut reports = Vec::new();
        for writer in writers {
            reports.push(writer.finish().await);
        }
        let state = scan_all(
            &http,
            &cluster.api(new_leader),
            &format!("rm{round}/"),
            "linearizable",
        )
        .await;
        for report in &reports {
            // Fails on any `504 outcome: unknown` (not retryable) or other non-retryable error.
            assert_no_acked_write_lost(report, &state);
        }
        let retried: usize = reports.iter().map(|r| r.retried).sum();
        eprintln!("round {round}: leader {leader} removed, {retried} writes retried");
    }
}

/// A removed follower says so at once: `410 removed` naming the members on every KV and
/// cluster route, `/ready` 503, `/health` 200, instead of serving its old view or waiting out
/// a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t67_a_removed_follower_answers_410_at_once() {
    let cluster = Cluster::start(4, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let http = http();
    let removed = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap();
    assert!(matches!(
        cluster.put(leader, "before", b"1").await,
        common::WriteOutcome::Ok { .. }
    ));
    let response = http
        .delete(format!(
            "{}/v1/cluster/members/{removed}",
            cluster.api(leader)
        ))
        .send()
        .await
        .expect("remove request");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    // The cluster goes on without it.
    assert!(matches!(
        cluster.put(leader, "after", b"2").await,
        common::WriteOutcome::Ok { .. }
    ));
    let api = cluster.api(removed);
    wait_for("the removed node to answer 410", DEADLINE, || async {
        let response = http.get(format!("{api}/v1/kv/before")).send().await.ok()?;
        (response.status() == 410).then_some(())
    })
    .await;
    for (method, path) in [
        ("GET", "/v1/kv/before?consistency=stale"),
        ("GET", "/v1/kv/after"),
        ("PUT", "/v1/kv/x"),
        ("GET", "/v1/kv?prefix=b"),
        ("GET", "/v1/cluster"),
        ("POST", "/v1/txn"),
    ] {
        let started = Instant::now();
        let response = http
            .request(method.parse().unwrap(), format!("{api}{path}"))
            .body("{}")
            .send()
            .await
            .expect("request");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{method} {path} answered at once"
        );
        assert_eq!(response.status(), 410, "{method} {path}");
        let body: Value = response.json().await.expect("error JSON");
        assert_eq!(body["error"]["code"], "removed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("node {removed} was removed"))
                && message.contains(&format!(
                    "{leader} (api {})",
                    cluster.nodes[&leader].api_addr
                )),
            "{message}"
        );
    }
    let ready = http.get(format!("{api}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = http.get(format!("{api}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The members that stayed do not list it.
    let info = cluster_json(&http, &cluster.api(leader)).await;
    let ids: Vec<u64> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&removed), "{info}");
}

/// Test 8: the client crate against a real cluster: a dead first endpoint is skipped, a retry
/// with the same idempotency key answers the first write, pages are walked to the end, a
/// transaction compares and swaps, and a read carrying a write's index as `min_index` never
/// answers from a follower that has not applied it (it times out while the follower is cut off,
/// and sees the write once it is back).
/// t68, continued: read-your-writes through `client` against a follower cut off by proxies.
async fn t68_read_your_writes_on_a_cut_off_follower(
    cluster: &Cluster,
    leader: u64,
    client: &mirrorkv_client::Client,
) {
    use mirrorkv_client::{Client, ClientOptions, Consistency, ReadOptions};

    // Read-your-writes: a follower cut off from the others cannot serve past what it applied.
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.isolate(follower);
    let written = client.put("c/fresh", "new").await.unwrap();
    let stale_reader = Client::with_options(
        [cluster.nodes[&follower].api_addr.clone()],
        ClientOptions {
            timeout_ms: 10_000,
            consistency: Some(Consistency::Stale),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let without_floor = stale_reader.get("c/fresh").await.unwrap();
    assert_eq!(
        without_floor.value, None,
        "the cut-off follower has not applied it"
    );
    let at_write = ReadOptions {
        min_index: Some(written.index),
        ..ReadOptions::default()
    };
    match stale_reader.get_with("c/fresh", &at_write).await {
        Err(error) => assert_eq!(error.code(), Some("timeout"), "{error}"),
        Ok(read) => panic!("served below the write's index: {read:?}"),
    }
    cluster.heal();
    let read = wait_for(
        "the healed follower to serve the write",
        DEADLINE,
        || async { stale_reader.get_with("c/fresh", &at_write).await.ok() },
    )
    .await;
    assert!(read.index >= written.index);
    assert_eq!(read.value.unwrap().value, b"new");
    assert_eq!(read.consistency.as_deref(), Some("stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t68_the_client_crate_fails_over_retries_once_and_reads_its_writes() {
    use mirrorkv_client::{
        Client, ClientError, Compare, Range, ReadOptions, Txn, TxnOp, WriteOptions,
    };
    // A short server deadline: the read below that must wait times out in 2 s.
    let cluster = Cluster::start_with_proxies(3, &["--request-timeout-ms", "2000"]).await;
    let leader = cluster.wait_for_leader().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let client = Client::new([dead, cluster.nodes[&leader].api_addr.clone()]).unwrap();

    let keyed = WriteOptions {
        idempotency_key: Some("t68-once".into()),
        ..WriteOptions::default()
    };
    let first = client.put_with("c/once", "1", &keyed).await.unwrap();
    let again = client.put_with("c/once", "1", &keyed).await.unwrap();
    assert_eq!(again, first, "a retry answers the first attempt");
    assert!(client.seen_index() >= first.index);

    for i in 0..25 {
        client
            .put(&format!("c/k{i:02}"), format!("v{i}"))
            .await
            .unwrap();
    }
    let pages = Range {
        limit: Some(4),
        ..Range::prefix("c/k")
    };
    let one = client.range(&pages, &ReadOptions::default()).await.unwrap();
    assert_eq!(
        (one.value.items.len(), one.value.next.as_deref()),
        (4, Some("c/k04"))
    );
    let all = client
        .range_all(&Range::prefix("c/k"), 1000, &ReadOptions::default())
        .await
        .unwrap();
    let keys: Vec<String> = all.value.items.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<String> = (0..25).map(|i| format!("c/k{i:02}")).collect();
    assert_eq!(keys, expected);
    let some = client
        .range_all(&Range::prefix("c/k"), 7, &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(some.value.items.len(), 7);

    let swap = |mod_index| Txn {
        compare: vec![Compare::ModIndex {
            key: "c/once".into(),
            mod_index,
        }],
        success: vec![TxnOp::Put {
            key: "c/once".into(),
            value: b"2".to_vec(),
        }],
        failure: vec![TxnOp::Get {
            key: "c/once".into(),
        }],
    };
    assert!(client.txn(&swap(first.index)).await.unwrap().succeeded);
    assert!(!client.txn(&swap(first.index)).await.unwrap().succeeded);
    let absent = WriteOptions {
        if_absent: true,
        ..WriteOptions::default()
    };
    match client.put_with("c/once", "3", &absent).await {
        Err(ClientError::Api {
            code, mod_index, ..
        }) => {
            assert_eq!(code, "precondition_failed");
            assert!(mod_index.is_some());
        }
        other => panic!("{other:?}"),
    }

    t68_read_your_writes_on_a_cut_off_follower(&cluster, leader, &client).await;
}
