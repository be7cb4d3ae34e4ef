//! Per-request read levels, reads from every mirror, ranges, transactions and idempotency keys,
//! against real clusters.

mod common;

use std::time::{Duration, Instant};

use common::{encode_key, wait_for, Cluster, WriteOutcome, DEADLINE};
use serde_json::{json, Value};

/// A GET with its status, headers and body.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }
    fn header(&self, name: &str) -> Option<String> {
        Some(self.headers.get(name)?.to_str().ok()?.to_string())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn get(cluster: &Cluster, id: u64, path_and_query: &str) -> Got {
    let response = cluster
        .http
        .get(format!("{}{path_and_query}", cluster.api(id)))
        .send()
        .await
        .unwrap();
    Got {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn post_txn(cluster: &Cluster, id: u64, body: &Value) -> (u16, Value) {
    let response = cluster
        .http
        .post(format!("{}/v1/txn", cluster.api(id)))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn followers(cluster: &Cluster, leader: u64) -> Vec<u64> {
    cluster
        .running()
        .into_iter()
        .filter(|&id| id != leader)
        .collect()
}

fn put_index(outcome: WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Ok { index } => index,
        other => panic!("write failed: {other:?}"),
    }
}

/// t41, continued on the same cluster: a missing key, `min_index` past everything, conditional
/// writes through follower `b` (`index2` is the key's current version), `?redirect=true`.
async fn t41_missing_keys_conditional_writes_and_redirect(
    cluster: &Cluster,
    leader: u64,
    b: u64,
    index2: u64,
) {
    // A missing key is 404 with the index of the read.
    let got = get(cluster, b, "/v1/kv/absent").await;
    assert_eq!(got.status, 404);
    assert!(got.header_u64("x-mirrorkv-index").unwrap() >= index2);
    assert_eq!(got.json()["error"]["code"], "not_found");
    // min_index beyond anything written times out with 504 within the request timeout.
    let started = Instant::now();
    let got = get(
        cluster,
        b,
        "/v1/kv/promise?consistency=stale&min_index=1000000000",
    )
    .await;
    assert_eq!(got.status, 504);
    assert!(started.elapsed() < Duration::from_secs(9));
    // If-Match: * is "the key exists, whatever its version".
    let absent_url = format!("{}/v1/kv/never-written", cluster.api(b));
    let response = cluster
        .http
        .put(&absent_url)
        .header("if-match", "*")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412, "If-Match: * on a missing key");
    // Conditional writes: If-Match / If-None-Match, 412 with the current mod_index.
    let url = format!("{}/v1/kv/promise", cluster.api(b));
    let response = cluster
        .http
        .put(&url)
        .header("if-match", "\"1\"")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    assert_eq!(
        response.json::<Value>().await.unwrap()["mod_index"],
        json!(index2)
    );
    let response = cluster
        .http
        .put(&url)
        .header("if-none-match", "*")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    let response = cluster
        .http
        .put(&url)
        .header("if-match", format!("\"{index2}\""))
        .body("v3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["prev_mod_index"],
        json!(index2)
    );
    let response = cluster
        .http
        .delete(&url)
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    let response = cluster
        .http
        .put(&url)
        .header("if-match", "*")
        .body("v4")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "If-Match: * on a key that exists");
    let response = cluster.http.delete(&url).send().await.unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap()["deleted"],
        json!(true)
    );
    // ?redirect=true on a follower answers 307 to the leader's API address.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .put(format!("{url}?redirect=true"))
        .body("r")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 307);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        location,
        format!("{}/v1/kv/promise?redirect=true", cluster.api(leader))
    );
    only_a_valid_write_is_redirected(&no_redirects, &url).await;
}

/// A malformed If-Match with `?redirect=true` on a follower is refused there, not sent on.
async fn only_a_valid_write_is_redirected(no_redirects: &reqwest::Client, url: &str) {
    for request in [
        no_redirects.put(format!("{url}?redirect=true")).body("r"),
        no_redirects.delete(format!("{url}?redirect=true")),
    ] {
        let response = request
            .header("if-match", "not-a-version")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{:?}", response.headers());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t41_every_read_level_keeps_its_promise() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let followers = followers(&cluster, leader);
    let (a, b) = (followers[0], followers[1]);

    // Written through follower A; read through follower B at every level that promises to see it.
    let index = put_index(cluster.put(a, "promise", b"v1").await);
    for level in ["linearizable", "strong", "lease"] {
        let got = get(&cluster, b, &format!("/v1/kv/promise?consistency={level}")).await;
        assert_eq!(
            (got.status, got.body.as_slice()),
            (200, &b"v1"[..]),
            "{level} read through follower {b}"
        );
        assert_eq!(got.header("x-mirrorkv-consistency").as_deref(), Some(level));
        assert_eq!(got.header_u64("x-mirrorkv-node"), Some(b));
        assert_eq!(got.header_u64("x-mirrorkv-leader"), Some(leader));
        assert!(got.header_u64("x-mirrorkv-index").unwrap() >= index);
        assert!(got.header_u64("x-mirrorkv-last-contact-ms").is_some());
        assert_eq!(got.header("etag"), Some(format!("\"{index}\"")));
        assert_eq!(got.header_u64("x-mirrorkv-create-index"), Some(index));
    }
    // Read-your-writes on any node with min_index, even at the stale level.
    let index2 = put_index(cluster.put(a, "promise", b"v2").await);
    for id in cluster.running() {
        let got = get(
            &cluster,
            id,
            &format!("/v1/kv/promise?consistency=stale&min_index={index2}"),
        )
        .await;
        assert_eq!(
            (got.status, got.body.as_slice()),
            (200, &b"v2"[..]),
            "min_index read through {id}"
        );
        assert!(got.header_u64("x-mirrorkv-index").unwrap() >= index2);
    }
    // `leader` on the leader: its own state, no check.
    let got = get(&cluster, leader, "/v1/kv/promise?consistency=leader").await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"v2"[..]));
    assert_eq!(got.header_u64("x-mirrorkv-last-contact-ms"), Some(0));
    assert_eq!(got.header_u64("x-mirrorkv-node"), Some(leader));
    // On a follower: one hop asks the leader what it has applied; the follower serves the
    // read itself once it has applied as much, and says so.
    for id in [a, b] {
        let got = get(&cluster, id, "/v1/kv/promise?consistency=leader").await;
        assert_eq!(
            (got.status, got.body.as_slice()),
            (200, &b"v2"[..]),
            "leader read through follower {id}"
        );
        assert_eq!(
            got.header("x-mirrorkv-consistency").as_deref(),
            Some("leader")
        );
        assert_eq!(got.header_u64("x-mirrorkv-node"), Some(id));
        assert_eq!(got.header_u64("x-mirrorkv-leader"), Some(leader));
        assert!(got.header_u64("x-mirrorkv-index").unwrap() >= index2);
    }
    t41_missing_keys_conditional_writes_and_redirect(&cluster, leader, b, index2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t42_partitioned_follower_serves_old_stale_reads_and_never_old_linearizable_ones() {
    let cluster = Cluster::start_with_proxies(3, &["--request-timeout-ms", "1500"]).await;
    let leader = cluster.wait_for_leader().await;
    let cut_off = followers(&cluster, leader)[0];
    let old_index = put_index(cluster.put(leader, "k", b"old").await);
    wait_for("the follower to apply the old value", DEADLINE, || async {
        let got = get(
            &cluster,
            cut_off,
            &format!("/v1/kv/k?consistency=stale&min_index={old_index}"),
        )
        .await;
        (got.status == 200).then_some(())
    })
    .await;

    cluster.isolate(cut_off);
    // The majority keeps a leader (it may be re-elected if the cut-off node led) and takes writes.
    let majority: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|&id| id != cut_off)
        .collect();
    let mut new_index = 0;
    for i in 0..5 {
        new_index = wait_for("a write through the majority", DEADLINE, || async {
            match cluster
                .put(majority[i % 2], "k", format!("new{i}").as_bytes())
                .await
            {
                WriteOutcome::Ok { index } => Some(index),
                _ => None,
            }
        })
        .await;
    }
    assert!(new_index > old_index);

    // Stale reads on the cut-off node: the old value, with a growing last-contact age.
    let first = get(&cluster, cut_off, "/v1/kv/k?consistency=stale").await;
    assert_eq!((first.status, first.body.as_slice()), (200, &b"old"[..]));
    let first_contact_ms = first
        .header_u64("x-mirrorkv-last-contact-ms")
        .expect("last contact header");
    let later = wait_for(
        "the last-contact age to grow past 600 ms",
        DEADLINE,
        || async {
            let got = get(&cluster, cut_off, "/v1/kv/k?consistency=stale").await;
            (got.header_u64("x-mirrorkv-last-contact-ms")? > first_contact_ms.max(600))
                .then_some(got)
        },
    )
    .await;
    assert_eq!(later.body, b"old");
    // A staleness bound it cannot meet: 503 stale_read.
    let got = get(
        &cluster,
        cut_off,
        "/v1/kv/k?consistency=stale&max_staleness_ms=500",
    )
    .await;
    assert_eq!(got.status, 503);
    assert_eq!(got.json()["error"]["code"], "stale_read");
    assert!(got.headers.contains_key("retry-after"));
    // Linearizable, lease and strong reads, and `leader` reads (which need the leader's
    // answer on a follower): an error within the request timeout, never old data.
    for level in ["linearizable", "lease", "strong", "leader"] {
        let started = Instant::now();
        let got = get(&cluster, cut_off, &format!("/v1/kv/k?consistency={level}")).await;
        assert!(
            matches!(got.status, 503 | 504),
            "{level} on a cut-off node answered {}",
            got.status
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500 + 2000),
            "{level} answered within the timeout"
        );
        assert_ne!(got.body, b"old");
        // A read that timed out changed nothing: the client may retry it.
        assert_eq!(
            got.json()["error"]["retryable"],
            json!(true),
            "{level}: {}",
            got.json()
        );
    }
    // Healed, it catches up and serves the new value.
    cluster.heal();
    wait_for(
        "the healed follower to serve the newest value",
        DEADLINE,
        || async {
            let got = get(&cluster, cut_off, "/v1/kv/k?consistency=linearizable").await;
            (got.status == 200 && got.body == b"new4").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t43_transactions_are_atomic_and_exactly_one_cas_wins() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = followers(&cluster, leader)[0];
    let a_index = put_index(cluster.put(leader, "a", b"1").await);
    put_index(cluster.put(leader, "b", b"x").await);

    // A compare that fails runs `failure` and changes nothing.
    let (status, body) = post_txn(
        &cluster,
        follower,
        &json!({
            "compare": [{"key": "a", "mod_index": a_index + 100}],
            "success": [{"put": {"key": "a", "value": "changed"}}, {"delete": {"key": "b"}}],
            "failure": [{"get": {"key": "a"}}, {"get": {"key": "nope"}}]
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["succeeded"], json!(false));
    assert_eq!(body["results"][0]["get"]["value"], json!("1"));
    assert_eq!(body["results"][0]["get"]["mod_index"], json!(a_index));
    assert_eq!(body["results"][1], json!({"get": null}));
    assert_eq!(
        cluster.get(follower, "a", "linearizable").await,
        Ok(Some(b"1".to_vec()))
    );
    assert_eq!(
        cluster.get(follower, "b", "linearizable").await,
        Ok(Some(b"x".to_vec()))
    );

    // All compares hold: every success op applies at one index.
    let (status, body) = post_txn(&cluster, follower, &json!({
        "compare": [{"key": "a", "value": "1"}, {"key": "b", "exists": true}, {"key": "c", "exists": false}],
        "success": [{"put": {"key": "a", "value": "2"}}, {"delete": {"key": "b"}},
                    {"put": {"key": "c", "value_base64": "/wA="}}, {"get": {"key": "c"}}]
    })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["succeeded"], json!(true));
    let index = body["index"].as_u64().unwrap();
    assert_eq!(body["results"][0]["put"]["prev_mod_index"], json!(a_index));
    assert_eq!(body["results"][1]["delete"]["deleted"], json!(true));
    assert_eq!(body["results"][3]["get"]["value_base64"], json!("/wA="));
    assert_eq!(body["results"][3]["get"]["mod_index"], json!(index));
    let got = get(&cluster, leader, "/v1/kv/a").await;
    assert_eq!(got.header("etag"), Some(format!("\"{index}\"")));
    assert_eq!(
        cluster.get(leader, "c", "linearizable").await,
        Ok(Some(vec![0xff, 0x00]))
    );

    // Two clients race a compare-and-set on the same key, round after round: exactly one wins.
    for round in 0..10 {
        let current = get(&cluster, leader, "/v1/kv/cas").await;
        let mod_index = current
            .header("etag")
            .map_or(0, |tag| tag.trim_matches('"').parse().unwrap());
        let attempt = |id: u64, who: &'static str| {
            let cluster = &cluster;
            async move {
                post_txn(
                    cluster,
                    id,
                    &json!({
                        "compare": [{"key": "cas", "mod_index": mod_index}],
                        "success": [{"put": {"key": "cas", "value": format!("{who}-{round}")}}]
                    }),
                )
                .await
            }
        };
        let ((s1, b1), (s2, b2)) =
            tokio::join!(attempt(leader, "leader"), attempt(follower, "follower"));
        assert_eq!((s1, s2), (200, 200));
        let wins = [&b1, &b2]
            .iter()
            .filter(|b| b["succeeded"] == json!(true))
            .count();
        assert_eq!(wins, 1, "round {round}: exactly one CAS wins: {b1} {b2}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t44_write_retried_with_its_idempotency_key_after_leader_kill_applies_once() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = followers(&cluster, leader)[0];
    // If-None-Match makes a second apply visible: it would answer 412.
    let put = |id: u64| {
        cluster
            .http
            .put(format!("{}/v1/kv/once", cluster.api(id)))
            .header("idempotency-key", "retry-me-1")
            .header("if-none-match", "*")
            .body("first")
    };
    let first = put(leader).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();

    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let put = |id: u64| {
        cluster
            .http
            .put(format!("{}/v1/kv/once", cluster.api(id)))
            .header("idempotency-key", "retry-me-1")
            .header("if-none-match", "*")
            .body("first")
    };
    let retry = put(follower).send().await.unwrap();
    assert_eq!(retry.status(), 200, "the retry answers the first result");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first, "same index, same result");
    let got = get(&cluster, new_leader, "/v1/kv/once").await;
    assert_eq!(
        got.header("etag"),
        Some(format!("\"{}\"", first["index"])),
        "applied once"
    );
    // Without the key, the same request is applied (and fails its precondition).
    let response = cluster
        .http
        .put(format!("{}/v1/kv/once", cluster.api(follower)))
        .header("if-none-match", "*")
        .body("first")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t45_bad_reads_and_transactions_get_the_contract_error() {
    let cluster = Cluster::start(3, &["--max-value-bytes", "64"]).await;
    let leader = cluster.wait_for_leader().await;
    let node = followers(&cluster, leader)[0];
    let expect = |status: u16, body: &Value, want_status: u16, code: &str| {
        assert_eq!(status, want_status, "{body}");
        assert_eq!(body["error"]["code"], json!(code), "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(body["error"]["retryable"].is_boolean());
    };
    let got = get(&cluster, node, "/v1/kv/x?consistency=sometimes").await;
    expect(got.status, &got.json(), 400, "invalid_argument");
    let got = get(&cluster, node, "/v1/kv?prefix=a&consistency=sometimes").await;
    expect(got.status, &got.json(), 400, "invalid_argument");
    let got = get(&cluster, node, "/v1/kv?limit=0").await;
    expect(got.status, &got.json(), 400, "invalid_argument");
    let got = get(&cluster, node, "/v1/kv?limit=10001").await;
    expect(got.status, &got.json(), 400, "invalid_argument");

    let response = cluster
        .http
        .post(format!("{}/v1/txn", cluster.api(node)))
        .header("content-type", "application/json")
        .body("{\"compare\": [")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    expect(
        status,
        &response.json().await.unwrap(),
        400,
        "invalid_argument",
    );
    let (status, body) =
        post_txn(&cluster, node, &json!({"success": [{"put": {"key": "a"}}]})).await;
    expect(status, &body, 400, "invalid_argument");
    let (status, body) = post_txn(
        &cluster,
        node,
        &json!({"success": [{"explode": {"key": "a"}}]}),
    )
    .await;
    expect(status, &body, 400, "invalid_argument");
    let ops: Vec<Value> = (0..129)
        .map(|i| json!({"get": {"key": format!("k{i}")}}))
        .collect();
    let (status, body) = post_txn(&cluster, node, &json!({"success": ops})).await;
    expect(status, &body, 400, "invalid_argument");
    let ops: Vec<Value> = (0..128)
        .map(|i| json!({"get": {"key": format!("k{i}")}}))
        .collect();
    let (status, body) = post_txn(&cluster, node, &json!({"success": ops})).await;
    assert_eq!(status, 200, "128 operations are allowed: {body}");
    let long_key = "k".repeat(4097);
    let (status, body) = post_txn(
        &cluster,
        node,
        &json!({"success": [{"put": {"key": long_key, "value": "v"}}]}),
    )
    .await;
    expect(status, &body, 413, "too_large");
    let (status, body) = post_txn(
        &cluster,
        node,
        &json!({"success": [{"put": {"key": "k", "value": "v".repeat(65)}}]}),
    )
    .await;
    expect(status, &body, 413, "too_large");
    let (status, body) = post_txn(
        &cluster,
        node,
        &json!({"compare": [{"key": "k", "mod_index": 1, "exists": true}]}),
    )
    .await;
    expect(status, &body, 400, "invalid_argument");
    let response = cluster
        .http
        .put(format!("{}/v1/kv/k", cluster.api(node)))
        .header("idempotency-key", "i".repeat(129))
        .body("v")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    expect(
        status,
        &response.json().await.unwrap(),
        400,
        "invalid_argument",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t46_ranges_page_through_one_index_at_any_level() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = followers(&cluster, leader)[0];
    let mut last = 0;
    for i in 0..25 {
        last = put_index(
            cluster
                .put(leader, &format!("dir/{i:02}"), format!("v{i}").as_bytes())
                .await,
        );
    }
    put_index(cluster.put(leader, "dir0", b"outside").await);
    put_index(cluster.put(leader, "bin", &[0xff, 0xfe]).await);

    for level in ["linearizable", "strong", "lease", "stale"] {
        let mut keys = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let mut query = format!(
                "/v1/kv?prefix={}&limit=10&consistency={level}&min_index={last}",
                encode_key("dir/")
            );
            if let Some(start) = &start {
                query.push_str(&format!("&start={}", encode_key(start)));
            }
            let got = get(&cluster, follower, &query).await;
            assert_eq!(got.status, 200);
            let body = got.json();
            assert_eq!(body["index"].as_u64(), got.header_u64("x-mirrorkv-index"));
            for item in body["items"].as_array().unwrap() {
                let key = item["key"].as_str().unwrap().to_string();
                let n: usize = key["dir/".len()..].parse().unwrap();
                assert_eq!(item["value"], json!(format!("v{n}")));
                assert!(
                    item["mod_index"].as_u64().unwrap() >= item["create_index"].as_u64().unwrap()
                );
                keys.push(key);
            }
            match body["next"].as_str() {
                Some(next) => start = Some(next.to_string()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("dir/{i:02}")).collect();
        assert_eq!(keys, expected, "prefix pages at {level}");
    }
    let got = get(
        &cluster,
        follower,
        "/v1/kv?start=bin&end=dir&keys_only=true",
    )
    .await;
    let body = got.json();
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["items"][0]["key"], json!("bin"));
    assert!(
        body["items"][0].get("value").is_none() && body["items"][0].get("value_base64").is_none()
    );
    let got = get(&cluster, follower, "/v1/kv?start=bin&end=bio").await;
    assert_eq!(got.json()["items"][0]["value_base64"], json!("//4="));
}

/// A restarted node may have acknowledged the leader just before it went down, and lease reads
/// count on it not helping to elect anyone else within that lease. So for one leader lease
/// (`election_timeout_max_ms`) after its start it refuses every vote request, and says why; the
/// leader's appends it takes at once, so it catches up within that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t47_a_restarted_node_refuses_votes_for_one_lease_and_catches_up_within_it() {
    use mirrorkv_storage::NodeInfo;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::VoteRequest;
    use openraft::{CommittedLeaderId, LogId, Vote};

    // Long enough that a slow machine restarts the node and replicates to it well inside it.
    const LEASE_MS: u64 = 4000;
    let mut cluster = Cluster::start(
        3,
        &[
            "--election-timeout-min-ms",
            "2000",
            "--election-timeout-max-ms",
            &LEASE_MS.to_string(),
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let restarted = followers(&cluster, leader)[0];
    cluster.kill(restarted);
    let before_start = Instant::now();
    cluster.restart(restarted).await;

    // A vote for a candidate far ahead in term and log, which a node outside its lease grants.
    let pool = std::sync::Arc::new(mirrorkv_raft_net::PeerPool::new(
        Default::default(),
        Default::default(),
    ));
    let mut network = mirrorkv_raft_net::NetworkFactory::new(pool)
        .new_client(
            restarted,
            &NodeInfo {
                raft_addr: cluster.nodes[&restarted].raft_addr.clone(),
                api_addr: cluster.api(restarted),
            },
        )
        .await;
    let candidate = followers(&cluster, leader)
        .into_iter()
        .find(|&id| id != restarted)
        .expect("a third node");
    let request = VoteRequest::new(
        Vote::new(1_000_000, candidate),
        Some(LogId::new(
            CommittedLeaderId::new(1_000_000, candidate),
            1 << 40,
        )),
    );
    let answer = network
        .vote(request, RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(
        before_start.elapsed() < Duration::from_millis(LEASE_MS),
        "the machine took the whole lease to restart the node; nothing was tested"
    );
    let refusal = match answer {
        Err(e) => e.to_string(),
        Ok(response) => panic!("a restarted node answered a vote within its lease: {response:?}"),
    };
    assert!(
        refusal.contains("not voting") && refusal.contains("leader lease"),
        "refused by the lease rule, not by accident: {refusal}"
    );

    // The leader's appends are taken at once: a write acknowledged now is applied on the
    // restarted node before its lease is over.
    let index = put_index(cluster.put(leader, "after-restart", b"caught-up").await);
    wait_for(
        "the restarted node to apply the write",
        DEADLINE,
        || async {
            let value = cluster
                .get(restarted, "after-restart", "stale")
                .await
                .ok()?;
            (value.as_deref() == Some(b"caught-up".as_slice())).then_some(())
        },
    )
    .await;
    let caught_up = before_start.elapsed();
    assert!(
        caught_up < Duration::from_millis(LEASE_MS),
        "the restarted node applied index {index} only after {caught_up:?}, past its {LEASE_MS} ms lease"
    );
}
