//! Tokens and roles (API.md, "Security"): real `mirrorkv` processes started with `--auth`
//! (the secure fixture: TLS on both ports, the bootstrap token in its certificate folder), and
//! every door tried without a token, with a token whose role does not allow it, and with one
//! that does.

mod common;

use common::*;
use jepsen_lite::cluster::ClientAccess;
use serde_json::{json, Value};

/// An HTTPS client of `cluster` with `token` (`None`: none at all).
fn client(cluster: &Cluster, token: Option<&str>) -> reqwest::Client {
    let access = ClientAccess {
        tls: cluster.client_tls(),
        token: token.map(str::to_string),
    };
    access
        .configure(reqwest::Client::builder().timeout(DEADLINE))
        .unwrap()
        .build()
        .unwrap()
}

/// The status and JSON body (`Null` if none) of a request.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `POST /v1/auth/tokens` as the bootstrap admin through node `id`: `(id, secret)`.
async fn create_token(
    cluster: &Cluster,
    id: u64,
    role: &str,
    ttl_s: Option<u64>,
) -> (String, String) {
    let (status, body) = answer(
        cluster
            .http
            .post(format!("{}/v1/auth/tokens", cluster.api(id)))
            .json(&json!({"role": role, "ttl_s": ttl_s})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let text = |name: &str| body[name].as_str().expect(name).to_string();
    assert!(text("token").len() >= 64, "{body}");
    (text("id"), text("token"))
}

async fn put_role(cluster: &Cluster, name: &str, role: Value) {
    let (status, body) = answer(
        cluster
            .http
            .put(format!("{}/v1/auth/roles/{name}", cluster.api(1)))
            .json(&role),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A secure cluster with a leader and role `app`: read and write under `app/`.
async fn secure_cluster_with_app_role() -> Cluster {
    let cluster = Cluster::start_secure(3, &[], false).await;
    cluster.wait_for_leader().await;
    put_role(
        &cluster,
        "app",
        json!({"permissions": [{"prefix": "app/", "read": true, "write": true}]}),
    )
    .await;
    cluster
}

/// `mirrorkv ctl` through node 1 of a secure cluster with `token`, which must succeed: its
/// standard output.
fn ctl(cluster: &Cluster, args: &[&str], token: &str) -> String {
    let (ok, stdout, stderr) = secure_ctl(cluster, 1, token, args);
    assert!(ok, "mirrorkv ctl {args:?}: {stderr}");
    String::from_utf8(stdout).unwrap()
}

/// Wait until `token` reads `key` on node `id` with `status`.
async fn wait_status(cluster: &Cluster, id: u64, token: &str, key: &str, status: u16) {
    let client = client(cluster, Some(token));
    let url = format!("{}/v1/kv/{key}?consistency=stale", cluster.api(id));
    wait_for(
        &format!("node {id} to answer {status} to the token on {key}"),
        DEADLINE,
        || async { (client.get(&url).send().await.ok()?.status() == status).then_some(()) },
    )
    .await
}

/// Without a token nothing but /health and /ready answers, on any route (not the key routes
/// alone): reads, writes, ranges, watches, txns, backups, snapshots, membership, metrics and
/// access control all get 401 `unauthenticated` with `WWW-Authenticate: Bearer`, and nothing
/// they asked for happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t110_without_a_token_only_health_and_ready_answer() {
    let cluster = Cluster::start_secure(3, &[], false).await;
    cluster.wait_for_leader().await;
    let members_before = cluster.node_view(1).await.expect("node 1's view");
    let api = cluster.api(2);
    for token in [None, Some("mkv_not_a_token"), Some("")] {
        let anonymous = client(&cluster, token);
        let doors = [
            anonymous.get(format!("{api}/v1/kv/k")),
            anonymous.put(format!("{api}/v1/kv/k")).body("v"),
            anonymous.delete(format!("{api}/v1/kv/k")),
            anonymous.get(format!("{api}/v1/kv?prefix=")),
            anonymous.get(format!("{api}/v1/watch?prefix=")),
            anonymous
                .post(format!("{api}/v1/txn"))
                .json(&json!({"success": [{"put": {"key": "k", "value": "v"}}]})),
            anonymous.get(format!("{api}/v1/backup")),
            anonymous.post(format!("{api}/v1/snapshot")),
            anonymous
                .post(format!("{api}/v1/cluster/members"))
                .json(&json!({"id": 9, "api_addr": "127.0.0.1:1", "raft_addr": "127.0.0.1:2"})),
            anonymous.delete(format!("{api}/v1/cluster/members/1")),
            anonymous.post(format!("{api}/v1/cluster/members/2/promote")),
            anonymous.get(format!("{api}/v1/cluster")),
            anonymous.get(format!("{api}/metrics")),
            anonymous
                .post(format!("{api}/v1/lease"))
                .json(&json!({"ttl_s": 10})),
            anonymous
                .put(format!("{api}/v1/auth/roles/r"))
                .json(&json!({"admin": true})),
            anonymous
                .post(format!("{api}/v1/auth/tokens"))
                .json(&json!({"role": "r"})),
            anonymous.get(format!("{api}/v1/auth/tokens")),
        ];
        for door in doors {
            let request = door.build().unwrap();
            let what = format!("{} {} with {token:?}", request.method(), request.url());
            let response = anonymous.execute(request).await.expect("an answer");
            assert_eq!(response.status(), 401, "{what}");
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{what}"
            );
            let body: Value = response.json().await.expect("the contract's error");
            assert_eq!(body["error"]["code"], "unauthenticated", "{what}: {body}");
            assert_eq!(body["error"]["retryable"], false, "{what}: {body}");
        }
        for open in ["/health", "/ready"] {
            let status = anonymous.get(format!("{api}{open}")).send().await.unwrap();
            assert_eq!(status.status(), 200, "{open}");
        }
    }
    // Nothing happened: the key was never written, the members are the same.
    assert_eq!(cluster.get(1, "k", "linearizable").await, Ok(None));
    let members_after = cluster.node_view(1).await.expect("node 1's view");
    assert_eq!(members_before["members"], members_after["members"]);
}

/// A role's prefixes bound what its tokens read and write, everywhere a key is named: single
/// keys, ranges (filtered), watches (filtered), txns (every key), leases, and the admin routes.
/// A refusal is the same whether the key exists or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t111_roles_bound_every_key_a_token_touches() {
    let cluster = secure_cluster_with_app_role().await;
    put_role(
        &cluster,
        "viewer",
        json!({"permissions": [{"prefix": "app/", "read": true}]}),
    )
    .await;
    assert!(matches!(
        cluster.put(1, "secret/k", b"s").await,
        WriteOutcome::Ok { .. }
    ));
    let (_, app_token) = create_token(&cluster, 2, "app", None).await;
    let (_, viewer_token) = create_token(&cluster, 3, "viewer", None).await;
    let app = client(&cluster, Some(&app_token));
    let viewer = client(&cluster, Some(&viewer_token));
    let api = cluster.api(2);

    // A token answers on the node that created it at once.
    let (status, body) = answer(app.put(format!("{api}/v1/kv/app%2Fa")).body("1")).await;
    assert_eq!(status, 200, "{body}");
    let read = app
        .get(format!("{api}/v1/kv/app%2Fa"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    // Outside its prefix: 403, the same for a key that exists and one that does not.
    let mut refusals = Vec::new();
    for key in ["secret%2Fk", "secret%2Fnever"] {
        let (status, body) = answer(app.get(format!("{api}/v1/kv/{key}"))).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "permission_denied");
        refusals.push(body);
        let (status, _) = answer(app.put(format!("{api}/v1/kv/{key}")).body("x")).await;
        assert_eq!(status, 403);
        let (status, _) = answer(app.delete(format!("{api}/v1/kv/{key}"))).await;
        assert_eq!(status, 403);
    }
    assert_eq!(
        refusals[0], refusals[1],
        "a refusal tells whether the key exists"
    );
    // Read only: reads, never writes.
    let (status, _) = answer(viewer.get(format!("{api}/v1/kv/app%2Fa"))).await;
    assert_eq!(status, 200);
    let (status, _) = answer(viewer.put(format!("{api}/v1/kv/app%2Fa")).body("2")).await;
    assert_eq!(status, 403);

    // A range holds only what the role may read.
    let (status, body) =
        answer(app.get(format!("{api}/v1/kv?prefix=&consistency=linearizable"))).await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/a"], "{body}");
    // A blocking range over keys it may not all read is refused.
    let (status, _) = answer(app.get(format!("{api}/v1/kv?prefix=&wait_index=1&wait=1s"))).await;
    assert_eq!(status, 403);

    txns_and_admin_routes(&cluster, &app, &api).await;
    watches_are_filtered(&cluster, &app, &api).await;
    lease_revokes_need_every_key(&cluster, &app, &api).await;

    // The admin role may do everything; its token creates tokens too.
    put_role(&cluster, "ops", json!({"admin": true})).await;
    let (_, ops_token) = create_token(&cluster, 1, "ops", None).await;
    wait_status(&cluster, 2, &ops_token, "secret%2Fk", 200).await;
    let ops = client(&cluster, Some(&ops_token));
    let (status, body) = answer(ops.get(format!("{api}/v1/auth/tokens"))).await;
    assert_eq!(status, 200, "{body}");
    let listed = body.to_string();
    for secret in [&app_token, &viewer_token, &ops_token] {
        assert!(
            !listed.contains(secret.as_str()),
            "a listing holds a secret"
        );
    }
    assert_eq!(body["tokens"].as_array().unwrap().len(), 3, "{body}");
    let (status, _) = answer(ops.get(format!("{api}/metrics"))).await;
    assert_eq!(status, 200);
}

/// Tokens are replicated and checked on every node; revoking one or letting it expire ends it
/// on every node; a deleted role leaves its tokens able to do nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t112_tokens_reach_every_node_and_end_when_revoked_or_expired() {
    let cluster = secure_cluster_with_app_role().await;
    let (id, token) = create_token(&cluster, 1, "app", None).await;
    let (_, short) = create_token(&cluster, 1, "app", Some(1)).await;
    for node in cluster.ids() {
        wait_status(&cluster, node, &token, "app%2Fnone", 404).await;
    }
    // Expired: refused on every node once its second is up (each node's clock decides).
    for node in cluster.ids() {
        wait_status(&cluster, node, &short, "app%2Fnone", 401).await;
    }
    // Revoked: refused on every node; a second revoke finds no such token.
    let revoke = cluster
        .http
        .delete(format!("{}/v1/auth/tokens/{id}", cluster.api(2)));
    let (status, body) = answer(revoke.try_clone().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    for node in cluster.ids() {
        wait_status(&cluster, node, &token, "app%2Fnone", 401).await;
    }
    let (status, body) = answer(revoke).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    // A role deleted: its token authenticates but may do nothing.
    let (_, other) = create_token(&cluster, 1, "app", None).await;
    let (status, _) = answer(
        cluster
            .http
            .delete(format!("{}/v1/auth/roles/app", cluster.api(1))),
    )
    .await;
    assert_eq!(status, 200);
    wait_status(&cluster, 1, &other, "app%2Fnone", 403).await;
    // Bad requests get the contract's error.
    for (body, want) in [
        (json!({"role": "nope"}), 404),
        (json!({"role": "app", "ttl_s": 0}), 400),
        (json!({"role": "bad/name"}), 400),
        (json!({"rolle": "app"}), 400),
    ] {
        let (status, answer_body) = answer(
            cluster
                .http
                .post(format!("{}/v1/auth/tokens", cluster.api(1)))
                .json(&body),
        )
        .await;
        assert_eq!(status, want, "{body}: {answer_body}");
    }
}

/// Roles and tokens live in the replicated state: they survive a restart, reach a member that
/// joins (through `--join`, which sends the bootstrap token) by a snapshot, and `mirrorkv ctl
/// auth` manages them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t113_tokens_survive_restarts_and_reach_a_new_member_by_snapshot() {
    // A snapshot keeps a tenth of this many entries of log: one.
    let mut cluster =
        Cluster::start_secure(3, &["--snapshot-threshold-entries", "10"], false).await;
    cluster.wait_for_leader().await;
    let admin = cluster.client_access().token.unwrap();
    ctl(
        &cluster,
        &["auth", "role", "put", "app", "--read-write", "app/"],
        &admin,
    );
    let created: Value = serde_json::from_str(&ctl(
        &cluster,
        &["--json", "auth", "token", "create", "--role", "app"],
        &admin,
    ))
    .unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    ctl(&cluster, &["put", "app/x", "1"], &token);
    assert_eq!(ctl(&cluster, &["get", "app/x"], &token).trim(), "1");
    let roles = ctl(&cluster, &["auth", "role", "list"], &admin);
    assert!(
        roles.contains("app") && roles.contains("\"app/\":rw"),
        "{roles}"
    );
    let (ok, _, stderr) = secure_ctl(&cluster, 1, &token, &["get", "secret"]);
    assert!(!ok && stderr.contains("permission_denied"), "{stderr}");

    // Every node snapshots and drops its log: a new member can only catch up by snapshot.
    for id in cluster.ids() {
        let (status, body) = answer(
            cluster
                .http
                .post(format!("{}/v1/snapshot", cluster.api(id))),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let join_via = cluster.nodes[&2].api_addr.clone();
    cluster.add_node(4, &["--join", &join_via]);
    cluster.restart(4).await;
    cluster.wait_ready(4).await;
    wait_status(&cluster, 4, &token, "app%2Fx", 200).await;
    let installed = metric_sample(
        &cluster.metrics(4).await,
        "mirrorkv_snapshots_installed_total",
    );
    assert!(
        installed.is_some_and(|n| n >= 1.0),
        "node 4 caught up by a snapshot"
    );

    // A restart reloads the table from the store.
    cluster.kill(1);
    cluster.restart(1).await;
    cluster.wait_ready(1).await;
    wait_status(&cluster, 1, &token, "app%2Fx", 200).await;
    wait_status(&cluster, 1, &token, "secret", 403).await;
    // Revoked through ctl: refused everywhere, the new member included.
    let id = created["id"].as_str().unwrap();
    ctl(&cluster, &["auth", "token", "revoke", id], &admin);
    for node in cluster.ids() {
        wait_status(&cluster, node, &token, "app%2Fx", 401).await;
    }
}

/// A txn needs rights on every key, in either branch; admin routes need admin.
async fn txns_and_admin_routes(cluster: &Cluster, app: &reqwest::Client, api: &str) {
    // A txn needs rights on every key, in either branch.
    let forbidden = [
        json!({"compare": [{"key": "secret/k", "exists": true}], "success": [{"put": {"key": "app/b", "value": "x"}}]}),
        json!({"success": [{"get": {"key": "secret/k"}}]}),
        json!({"success": [{"put": {"key": "app/b", "value": "x"}}], "failure": [{"delete": {"key": "secret/k"}}]}),
    ];
    for txn in forbidden {
        let (status, body) = answer(app.post(format!("{api}/v1/txn")).json(&txn)).await;
        assert_eq!(status, 403, "{txn}: {body}");
    }
    let allowed = json!({"compare": [{"key": "app/a", "exists": true}], "success": [{"put": {"key": "app/b", "value": "x"}}]});
    let (status, body) = answer(app.post(format!("{api}/v1/txn")).json(&allowed)).await;
    assert_eq!((status, &body["succeeded"]), (200, &json!(true)), "{body}");
    assert_eq!(
        cluster.get(1, "secret/k", "linearizable").await,
        Ok(Some(b"s".to_vec()))
    );

    // Admin routes: refused to a role without admin.
    let admin_doors = [
        app.get(format!("{api}/v1/backup")),
        app.post(format!("{api}/v1/snapshot")),
        app.delete(format!("{api}/v1/cluster/members/3")),
        app.get(format!("{api}/metrics")),
        app.get(format!("{api}/v1/auth/tokens")),
        app.post(format!("{api}/v1/auth/tokens"))
            .json(&json!({"role": "app"})),
        app.put(format!("{api}/v1/auth/roles/app"))
            .json(&json!({"admin": true})),
    ];
    for door in admin_doors {
        let (status, body) = answer(door).await;
        assert_eq!(status, 403, "{body}");
    }
}

/// A watch of every key sends only what the role may read; one of a key it may not is refused.
async fn watches_are_filtered(cluster: &Cluster, app: &reqwest::Client, api: &str) {
    // A watch of every key sends only what the role may read: secret/w is written before
    // app/w, so had it been sent it would have come first.
    let from = cluster.node_view(2).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap()
        + 1;
    assert!(matches!(
        cluster.put(1, "secret/w", b"s").await,
        WriteOutcome::Ok { .. }
    ));
    assert!(matches!(
        cluster.put(1, "app/w", b"a").await,
        WriteOutcome::Ok { .. }
    ));
    let mut stream = app
        .get(format!("{api}/v1/watch?prefix=&from_index={from}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    tokio::time::timeout(DEADLINE, async {
        while !text.contains("app/w") {
            let chunk = stream.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the app/w event within the deadline");
    assert!(
        !text.contains("secret/"),
        "a watch sent a key the role may not read: {text}"
    );
    // A watch of one key it may not read is refused.
    let (status, _) = answer(app.get(format!("{api}/v1/watch?key=secret%2Fk"))).await;
    assert_eq!(status, 403);
}

/// Revoking a lease needs write on every key attached; a lease's key list shows only what the
/// role may read.
async fn lease_revokes_need_every_key(cluster: &Cluster, app: &reqwest::Client, api: &str) {
    let (status, body) = answer(
        app.post(format!("{api}/v1/lease"))
            .json(&json!({"ttl_s": 60})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lease = body["id"].as_u64().unwrap();
    let (status, body) = answer(
        app.put(format!("{api}/v1/kv/app%2Fl?lease={lease}"))
            .body("1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(
        cluster
            .http
            .put(format!("{api}/v1/kv/secret%2Fl?lease={lease}"))
            .body("1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(app.get(format!("{api}/v1/lease/{lease}"))).await;
    assert_eq!((status, &body["keys"]), (200, &json!(["app/l"])), "{body}");
    let (status, body) = answer(app.delete(format!("{api}/v1/lease/{lease}"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        cluster.get(1, "secret/l", "linearizable").await,
        Ok(Some(b"1".to_vec()))
    );
    let (status, body) = answer(cluster.http.delete(format!("{api}/v1/lease/{lease}"))).await;
    assert_eq!((status, &body["keys_deleted"]), (200, &json!(2)), "{body}");
}
