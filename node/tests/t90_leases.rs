//! Leases on real clusters (`shared/API.md`, "Leases (TTL), locks and elections"): keys
//! attached to a lease live while it is kept alive and are deleted, in one entry that every
//! node applies, once it runs out or is revoked; never early, also when the leader is killed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn grant(cluster: &Cluster, id: u64, ttl_s: u64) -> u64 {
    let (status, body) = send(
        http()
            .post(format!("{}/v1/lease", cluster.api(id)))
            .json(&json!({ "ttl_s": ttl_s })),
    )
    .await;
    assert_eq!(status, 200, "grant: {body}");
    assert_eq!(body["ttl_s"], ttl_s, "{body}");
    assert!(body["index"].as_u64().is_some(), "{body}");
    body["id"].as_u64().expect("lease id")
}

async fn put_leased(cluster: &Cluster, id: u64, key: &str, lease: u64) -> (u16, Value) {
    send(
        http()
            .put(format!(
                "{}/v1/kv/{}?lease={lease}",
                cluster.api(id),
                encode_key(key)
            ))
            .body("held"),
    )
    .await
}

async fn keepalive(cluster: &Cluster, id: u64, lease: u64) -> (u16, Value) {
    send(http().post(format!("{}/v1/lease/{lease}/keepalive", cluster.api(id)))).await
}

/// Whether `key` exists, read linearizably on node `id`.
async fn exists(cluster: &Cluster, id: u64, key: &str) -> bool {
    cluster
        .get(id, key, "linearizable")
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t91_a_leased_key_lives_its_ttl_with_keepalives_longer_and_goes_at_revoke() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();

    // A 2 s lease without keepalives: there at 1.5 s, gone by 3 s, on every node.
    let asked = Instant::now();
    let lease = grant(&cluster, follower, 2).await;
    let (status, body) = put_leased(&cluster, follower, "svc/a", lease).await;
    assert_eq!(status, 200, "{body}");
    let (status, info) =
        send(http().get(format!("{}/v1/lease/{lease}", cluster.api(leader)))).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["keys"], json!(["svc/a"]));
    assert_eq!(info["ttl_s"], 2);
    assert!(info["remaining_ms"].as_u64().unwrap() <= 2000, "{info}");
    tokio::time::sleep_until(asked + Duration::from_millis(1500)).await;
    assert!(exists(&cluster, leader, "svc/a").await, "gone before 1.5 s");
    let gone_at = wait_for("the key to go", Duration::from_secs(10), || async {
        (!exists(&cluster, follower, "svc/a").await).then(|| asked.elapsed())
    })
    .await;
    assert!(gone_at >= Duration::from_secs(2), "gone after {gone_at:?}");
    assert!(
        gone_at <= Duration::from_secs(3),
        "still there after {gone_at:?}"
    );
    let (status, body) = keepalive(&cluster, follower, lease).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (status, _) = send(http().get(format!("{}/v1/lease/{lease}", cluster.api(follower)))).await;
    assert_eq!(status, 404);

    // Kept alive from a follower for 10 s (five TTLs): the key stays; then it goes.
    let lease = grant(&cluster, leader, 2).await;
    let (status, body) = put_leased(&cluster, leader, "svc/b", lease).await;
    assert_eq!(status, 200, "{body}");
    let kept_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < kept_until {
        let (status, body) = keepalive(&cluster, follower, lease).await;
        assert_eq!((status, body["ttl_s"].as_u64()), (200, Some(2)), "{body}");
        assert!(
            exists(&cluster, follower, "svc/b").await,
            "gone while kept alive"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_for(
        "the key to go once not kept",
        Duration::from_secs(10),
        || async { (!exists(&cluster, leader, "svc/b").await).then_some(()) },
    )
    .await;

    // Revoke: the lease's keys are gone when the answer comes, on the node that answered.
    let lease = grant(&cluster, follower, 60).await;
    for key in ["svc/c1", "svc/c2"] {
        assert_eq!(put_leased(&cluster, leader, key, lease).await.0, 200);
    }
    // /metrics on a follower: the lease and its two keys, the keepalives its clients sent.
    let gauges = |page: &str| {
        (
            metric_sample(page, "mirrorkv_leases_live"),
            metric_sample(page, "mirrorkv_lease_keys_attached"),
        )
    };
    wait_for("the follower's lease gauges", DEADLINE, || async {
        (gauges(&cluster.metrics(follower).await) == (Some(1.0), Some(2.0))).then_some(())
    })
    .await;
    let page = cluster.metrics(follower).await;
    assert!(metric_sample(&page, "mirrorkv_lease_keepalives_total").unwrap() >= 20.0);
    assert!(metric_sample(&page, "mirrorkv_leases_ended_total").unwrap() >= 2.0);
    let (status, body) =
        send(http().delete(format!("{}/v1/lease/{lease}", cluster.api(follower)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["keys_deleted"], 2, "{body}");
    let page = cluster.metrics(follower).await;
    assert_eq!(
        gauges(&page),
        (Some(0.0), Some(0.0)),
        "applied before the answer"
    );
    let leader_page = cluster.metrics(leader).await;
    let proposed = metric_sample(&leader_page, "mirrorkv_lease_expiries_proposed_total");
    assert!(proposed.unwrap() >= 2.0, "{proposed:?}");
    assert!(!exists(&cluster, follower, "svc/c1").await);
    assert!(!exists(&cluster, follower, "svc/c2").await);
    let (status, _) =
        send(http().delete(format!("{}/v1/lease/{lease}", cluster.api(follower)))).await;
    assert_eq!(status, 404, "a second revoke finds no lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t92_bad_lease_requests_get_clear_errors_and_limits_hold() {
    let cluster = Cluster::start(
        3,
        &[
            "--max-leases",
            "2",
            "--max-keys-per-lease",
            "2",
            "--min-lease-ttl-s",
            "3",
        ],
    )
    .await;
    let node = cluster.wait_for_leader().await;
    let api = cluster.api(node);
    let post = |body: Value| http().post(format!("{api}/v1/lease")).json(&body);
    for (body, why) in [
        (json!({"ttl_s": 2}), "under --min-lease-ttl-s"),
        (json!({"ttl_s": 86_401}), "over a day"),
        (json!({"ttl": 5}), "a field that is not ttl_s"),
        (json!({"ttl_s": "5"}), "not a number"),
    ] {
        let (status, body) = send(post(body)).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_argument")),
            "{why}: {body}"
        );
    }
    let (status, body) = send(http().post(format!("{api}/v1/lease/abc/keepalive"))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = keepalive(&cluster, node, 12345).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (status, body) = put_leased(&cluster, node, "k", 12345).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lease 12345"),
        "{body}"
    );
    assert!(!exists(&cluster, node, "k").await, "nothing was written");

    // --max-keys-per-lease: a third key is refused; re-putting an attached key is not.
    let lease = grant(&cluster, node, 30).await;
    assert_eq!(put_leased(&cluster, node, "a", lease).await.0, 200);
    assert_eq!(put_leased(&cluster, node, "b", lease).await.0, 200);
    assert_eq!(put_leased(&cluster, node, "a", lease).await.0, 200);
    let (status, body) = put_leased(&cluster, node, "c", lease).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!("too_large")),
        "{body}"
    );
    // In a transaction too, and then nothing of it applies.
    let txn = json!({"success": [{"put": {"key": "d", "value": "1"}},
                                 {"put": {"key": "e", "value": "1", "lease": lease}}]});
    let (status, body) = send(http().post(format!("{api}/v1/txn")).json(&txn)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        !exists(&cluster, node, "d").await,
        "a refused transaction applied a put"
    );
    // A plain put detaches a key, which makes room.
    assert!(matches!(
        cluster.put(node, "b", b"plain").await,
        WriteOutcome::Ok { .. }
    ));
    let txn = json!({"success": [{"put": {"key": "e", "value": "1", "lease": lease}}]});
    let (status, body) = send(http().post(format!("{api}/v1/txn")).json(&txn)).await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = send(http().get(format!("{api}/v1/lease/{lease}"))).await;
    assert_eq!(info["keys"], json!(["a", "e"]), "{info}");

    // --max-leases: a third live lease is refused until one ends.
    let second = grant(&cluster, node, 30).await;
    let (status, body) = send(post(json!({"ttl_s": 30}))).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("overloaded")),
        "{body}"
    );
    let (status, _) = send(http().delete(format!("{api}/v1/lease/{second}"))).await;
    assert_eq!(status, 200);
    grant(&cluster, node, 30).await;
}

/// The events of `GET /v1/watch?prefix=P&from_index=N` on node `id` until `count` of them
/// (progress lines skipped).
async fn watch_events(
    cluster: &Cluster,
    id: u64,
    prefix: &str,
    from_index: u64,
    count: usize,
) -> Vec<Value> {
    let url = format!(
        "{}/v1/watch?prefix={prefix}&from_index={from_index}",
        cluster.api(id)
    );
    let mut response = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("watch");
    assert_eq!(response.status(), 200);
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("the events within 20 s")
            .expect("stream read")
            .expect("the stream ended early");
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).expect("a JSON line");
            if event.get("progress").is_none() {
                events.push(event);
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t93_killing_the_leader_never_ends_a_lease_early_and_every_node_deletes_the_same() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let kept = grant(&cluster, followers[0], 3).await;
    let unkept_asked = Instant::now();
    let unkept = grant(&cluster, followers[0], 8).await;
    let (_, first) = put_leased(&cluster, followers[0], "eph/kept", kept).await;
    let first_index = first["index"].as_u64().expect("put index");
    assert_eq!(
        put_leased(&cluster, followers[1], "eph/unkept", unkept)
            .await
            .0,
        200
    );

    // A client keeps `kept` alive through the followers, twice a second, as a client of a
    // dying leader would: a keepalive that fails (no leader yet) is simply sent again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let apis = followers.iter().map(|&id| cluster.api(id)).collect();
    let keeper = tokio::spawn(keep_alive(apis, kept, stop.clone()));
    // Killed after `kept`'s first TTL has passed: only keepalives (and a new leader's full
    // TTL for every lease) keep it from then on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.kill(leader);
    let killed_at = Instant::now();

    // For 7 s: the kept key is always there; the unkept one never goes before its 8 s.
    let mut unkept_gone_at = None;
    while killed_at.elapsed() < Duration::from_secs(7) {
        for &id in &followers {
            if let Ok(value) = cluster.get(id, "eph/kept", "linearizable").await {
                assert!(
                    value.is_some(),
                    "the kept-alive key was deleted (node {id})"
                );
            }
            if let Ok(None) = cluster.get(id, "eph/unkept", "linearizable").await {
                unkept_gone_at.get_or_insert(unkept_asked.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A leader change may add one TTL plus the election, never take any away.
    let gone_at = match unkept_gone_at {
        Some(at) => at,
        None => {
            wait_for("the unkept key to go", Duration::from_secs(15), || async {
                (!exists(&cluster, followers[0], "eph/unkept").await)
                    .then(|| unkept_asked.elapsed())
            })
            .await
        }
    };
    assert!(
        gone_at >= Duration::from_secs(8),
        "the unkept lease ended after {gone_at:?}"
    );
    // The bound the README states: a new leader gives a whole TTL again from when it leads,
    // so the lease lives at most the election plus one TTL past the kill (5 s for electing
    // on 2 shared cores, noticing and polling).
    let latest = (killed_at - unkept_asked) + Duration::from_secs(8 + 5);
    assert!(
        gone_at <= latest,
        "the unkept lease outlived its bound: gone after {gone_at:?}, bound {latest:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(keeper.await.unwrap() > 10, "the keeper renewed");
    wait_for(
        "the kept key to go once not kept",
        Duration::from_secs(15),
        || async { (!exists(&cluster, followers[1], "eph/kept").await).then_some(()) },
    )
    .await;

    // Every node, the restarted one too, deleted both keys at the same indexes; watchers see
    // each delete.
    cluster.restart(leader).await;
    same_deletes_everywhere(&cluster, first_index).await;
}

/// Renew `lease` through `apis` in turn, twice a second, until `stop`: a keepalive that fails
/// (no leader yet) is simply sent again, as a client of a dying leader would. How many renewed.
async fn keep_alive(
    apis: Vec<String>,
    lease: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u32 {
    let mut renewed = 0;
    for round in 0..200 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let url = format!("{}/v1/lease/{lease}/keepalive", apis[round % apis.len()]);
        match http()
            .post(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => renewed += 1,
            Ok(response) => assert_ne!(response.status(), 404, "the kept lease ended"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    renewed
}

/// Every node's history from `from_index` on holds the two deletes of `eph/`, at the same
/// indexes.
async fn same_deletes_everywhere(cluster: &Cluster, from_index: u64) {
    let mut seen = Vec::new();
    for id in cluster.ids() {
        let events = watch_events(cluster, id, "eph/", from_index, 4).await;
        let deletes: Vec<(String, u64)> = events
            .iter()
            .filter(|e| e["type"] == "delete")
            .map(|e| {
                (
                    e["key"].as_str().unwrap().to_string(),
                    e["index"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(deletes.len(), 2, "node {id}: {events:?}");
        seen.push(deletes);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

/// `mirrorkv ctl` with these endpoints and `args`; its stdout, panicking if it failed.
fn ctl(endpoints: &str, args: &[&str]) -> String {
    let mut all = vec!["ctl", "--endpoints", endpoints];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = mirrorkv(&all, None);
    assert!(ok, "ctl {args:?}: {stderr}");
    String::from_utf8(stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t94_ctl_leases_and_locks_that_hand_over_in_order_with_increasing_tokens() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let endpoints = endpoints_of(&cluster);
    let endpoints = endpoints.as_str();

    // lease grant | put --lease | get | keepalive --once | revoke.
    let id = ctl(endpoints, &["lease", "grant", "30"]).trim().to_string();
    ctl(endpoints, &["put", "svc/x", "on", "--lease", &id]);
    let info: Value =
        serde_json::from_str(&ctl(endpoints, &["--json", "lease", "get", &id])).unwrap();
    assert_eq!(
        (info["ttl_s"].as_u64(), &info["keys"]),
        (Some(30), &json!(["svc/x"])),
        "{info}"
    );
    assert!(ctl(endpoints, &["lease", "keepalive", &id, "--once"]).contains("renewed for 30 s"));
    assert!(ctl(endpoints, &["lease", "revoke", &id]).contains("1 keys deleted"));
    assert!(!mirrorkv(&["ctl", "--endpoints", endpoints, "get", "svc/x"], None).0);

    // Three `ctl lock` holders at once: their commands never overlap, and each gets a larger
    // fencing token than the one before.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("held");
    let script = format!(
        "echo start $MIRRORKV_FENCING_TOKEN >> {0}; sleep 0.3; echo end $MIRRORKV_FENCING_TOKEN >> {0}",
        log.display()
    );
    let holders: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_mirrorkv"))
                .args([
                    "ctl",
                    "--endpoints",
                    endpoints,
                    "lock",
                    "job",
                    "--ttl-s",
                    "5",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .spawn()
                .expect("ctl lock")
        })
        .collect();
    for mut holder in holders {
        assert!(holder.wait().unwrap().success());
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, u64)> = lines
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').unwrap();
            (what, token.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (i, pair) in lines.chunks(2).enumerate() {
        assert_eq!(
            (pair[0].0, pair[1].0),
            ("start", "end"),
            "overlap: {lines:?}"
        );
        assert_eq!(pair[0].1, pair[1].1, "{lines:?}");
        if i > 0 {
            assert!(
                pair[0].1 > lines[2 * i - 1].1,
                "tokens not increasing: {lines:?}"
            );
        }
    }
}

/// The endpoints of every node, for `ctl --endpoints`.
fn endpoints_of(cluster: &Cluster) -> String {
    cluster
        .ids()
        .iter()
        .map(|&id| cluster.api(id).trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95_ctl_elect_hands_over_when_the_leader_dies_and_observe_follows() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let endpoints = endpoints_of(&cluster);
    let endpoints = endpoints.as_str();
    let spawn = |args: &[&str]| {
        let mut all = vec!["ctl", "--endpoints", endpoints, "elect", "db"];
        all.extend_from_slice(args);
        std::process::Command::new(env!("CARGO_BIN_EXE_mirrorkv"))
            .args(all)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ctl elect")
    };
    let first_line = |child: &mut std::process::Child| {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let mut a = spawn(&["A", "--ttl-s", "2"]);
    assert_eq!(first_line(&mut a), "elected: A\n");
    let mut observer = spawn(&["--observe"]);
    let mut observed =
        std::io::BufRead::lines(std::io::BufReader::new(observer.stdout.take().unwrap()));
    assert_eq!(observed.next().unwrap().unwrap(), "A");
    let mut b = spawn(&["B", "--ttl-s", "2"]);
    wait_for("B to queue", DEADLINE, || async {
        let scan = ctl(
            endpoints,
            &["scan", "--prefix", "_elect/db/", "--keys-only"],
        );
        (scan.lines().count() == 2).then_some(())
    })
    .await;
    // A dies without resigning: its lease runs out, then B leads and the observer says so.
    a.kill().unwrap();
    a.wait().unwrap();
    let handed_over = tokio::task::spawn_blocking(move || {
        let line = first_line(&mut b);
        let seen = observed.next().unwrap().unwrap();
        for mut child in [b, observer] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        (line, seen)
    });
    let (line, seen) = tokio::time::timeout(Duration::from_secs(20), handed_over)
        .await
        .expect("B elected within 20 s")
        .unwrap();
    assert_eq!((line.as_str(), seen.as_str()), ("elected: B\n", "B"));
}
