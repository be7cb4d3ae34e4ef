//! TLS on both ports (API.md, "Security"): real `mirrorkv` processes with certificates from
//! `mirrorkv certs init`, and every door tried by someone who cannot prove who they are.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mirrorkv_node::tls::{peer_configs, PeerTlsFiles};
use mirrorkv_raft_net::{
    MembershipChange, NetConfig, NetError, PeerPool, PeerTls, RpcRequest, RpcResponse,
};
use mirrorkv_storage::NodeInfo;
use tokio::io::AsyncReadExt;

/// The handshake deadline these clusters run with: short, so the stalled-handshake doors
/// close fast.
const HANDSHAKE_TIMEOUT_MS: u64 = 500;

fn certs(cluster: &Cluster) -> PathBuf {
    cluster.certs.clone().expect("a secure cluster")
}

fn node_files(dir: &Path, id: u64, ca: &Path) -> PeerTlsFiles {
    PeerTlsFiles {
        cert: dir.join(format!("node{id}.pem")),
        key: dir.join(format!("node{id}-key.pem")),
        ca: ca.to_path_buf(),
    }
}

/// Call node `target`'s raft port with `request`, as a node that says it is `claimed` and
/// shows the certificate of `files` (`None`: plain TCP, no TLS at all).
async fn call_as(
    cluster: &Cluster,
    target: u64,
    tls: Option<(u64, &PeerTlsFiles, u64)>,
    request: &RpcRequest,
) -> Result<RpcResponse, NetError> {
    let tls = tls.map(|(cert_id, files, claimed)| {
        let configs = peer_configs(cert_id, files).expect("loadable certificate files");
        Arc::new(PeerTls::new(claimed, configs))
    });
    let pool = PeerPool::with_tls(NetConfig::default(), HashMap::new(), tls);
    let node = NodeInfo {
        raft_addr: cluster.nodes[&target].raft_addr.clone(),
        api_addr: String::new(),
    };
    pool.client(target, &node)
        .call(request, Duration::from_secs(5))
        .await
}

/// Wait until node `id`'s log holds `text`.
async fn wait_logged(cluster: &Cluster, id: u64, text: &str) {
    let path = cluster.nodes[&id].log_path.clone();
    wait_for(
        &format!("node {id}'s log to say {text:?}"),
        DEADLINE,
        || async {
            std::fs::read_to_string(&path)
                .ok()?
                .contains(text)
                .then_some(())
        },
    )
    .await
}

/// `mirrorkv certs` with `args`, which must succeed.
fn certs_cmd(args: &[&str]) {
    let mut all = vec!["certs"];
    all.extend_from_slice(args);
    let (ok, _, stderr) = mirrorkv(&all, None);
    assert!(ok, "mirrorkv {all:?} failed: {stderr}");
}

/// A copy of the cluster CA (certificate and key) in a new folder, to issue more certificates
/// from it without touching the cluster's own files.
fn ca_copy(cluster: &Cluster, name: &str) -> PathBuf {
    let dir = cluster.dir.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(certs(cluster).join(file), dir.join(file)).expect("copy the CA");
    }
    dir
}

/// Every one of `requests`, sent as `call_as` does with `tls`, goes unanswered.
async fn refused_all(
    cluster: &Cluster,
    target: u64,
    tls: Option<(u64, &PeerTlsFiles, u64)>,
    requests: &[RpcRequest],
    what: &str,
) {
    for request in requests {
        let answer = call_as(cluster, target, tls, request).await;
        assert!(answer.is_err(), "{what}: answered {answer:?}");
    }
}

/// The term node `id` reports.
async fn term_of(cluster: &Cluster, id: u64) -> u64 {
    cluster.cluster_info(id).await.expect("cluster view")["term"]
        .as_u64()
        .expect("term")
}

/// The members node `id` reports: (id, role).
async fn members_of(cluster: &Cluster, id: u64) -> Vec<(u64, String)> {
    let info = cluster.cluster_info(id).await.expect("cluster view");
    info["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["role"].to_string()))
        .collect()
}

/// A client that sends the first bytes of a TLS record to `port` and nothing more is
/// closed at the handshake deadline, not before.
async fn assert_stalled_handshake_is_closed(port: &str) {
    let mut stalled = tokio::net::TcpStream::connect(&port).await.unwrap();
    stalled.set_nodelay(true).unwrap();
    // The first bytes of a TLS record, then nothing.
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, stalled.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{port}: the stalled handshake was not closed: {read:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS / 2),
        "{port}: closed before the deadline"
    );
}

/// A secure cluster serves reads and writes over HTTPS on every node, replicates over mutual
/// TLS, and refuses clients that do not speak TLS or show no client certificate; `ctl` speaks
/// it with `--ca`, `--cert` and `--key`. A handshake that never finishes is closed at its
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t101_a_secure_cluster_serves_https_and_refuses_clients_without_a_certificate() {
    let timeout = HANDSHAKE_TIMEOUT_MS.to_string();
    let cluster =
        Cluster::start_secure(3, &["--tls-handshake-timeout-ms", timeout.as_str()], false).await;
    let leader = cluster.wait_for_leader().await;
    for id in cluster.ids() {
        let outcome = cluster.put(id, &format!("k{id}"), b"v").await;
        assert!(
            matches!(outcome, WriteOutcome::Ok { .. }),
            "put via {id}: {outcome:?}"
        );
    }
    let other = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let read = cluster
        .http
        .get(format!(
            "{}/v1/kv/k{leader}?consistency=linearizable",
            cluster.api(other)
        ))
        .send()
        .await
        .expect("https read");
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"v");

    let addr = cluster.nodes[&other].api_addr.clone();
    // Plain HTTP on the HTTPS port: no answer.
    let plain = http().get(format!("http://{addr}/health")).send().await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // HTTPS that trusts the CA but shows no client certificate: refused.
    let ca = std::fs::read(certs(&cluster).join("ca.pem")).unwrap();
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let refused = anonymous
        .get(format!("https://{addr}/v1/kv/k1"))
        .send()
        .await;
    assert!(refused.is_err(), "no client certificate, yet: {refused:?}");

    // ctl with the client's files reads; with the CA alone it is refused.
    let ca = certs(&cluster).join("ca.pem").display().to_string();
    let token = cluster.client_access().token.expect("the bootstrap token");
    let (ok, stdout, stderr) = secure_ctl(&cluster, other, &token, &["get", "k1"]);
    assert!(ok, "ctl over TLS failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "v");
    let (ok, _, _) = mirrorkv(
        &[
            "ctl",
            "--endpoints",
            &addr,
            "--ca",
            &ca,
            "--token",
            &token,
            "get",
            "k1",
        ],
        None,
    );
    assert!(!ok, "ctl without a client certificate read a key");

    // A client that opens a connection and never finishes its handshake is closed at the
    // deadline, on both ports.
    for port in [
        cluster.nodes[&other].api_addr.clone(),
        cluster.nodes[&other].raft_addr.clone(),
    ] {
        assert_stalled_handshake_is_closed(&port).await;
    }
    wait_logged(
        &cluster,
        other,
        "TLS handshake not finished within handshake_timeout_ms=500",
    )
    .await;
    let metrics = cluster.metrics(other).await;
    for reason in ["tls", "handshake"] {
        let closed = metric_sample(
            &metrics,
            &format!("mirrorkv_api_connections_closed_total{{reason=\"{reason}\"}}"),
        );
        assert!(
            closed.is_some_and(|n| n >= 1.0),
            "no API connection closed for {reason}"
        );
    }
}

/// raft-net accepts only a peer that proves a node id: a certificate from the cluster CA, in
/// date, naming the node it says it is, and Raft messages in that node's name only. Plain TCP,
/// a foreign CA, an expired certificate, a claim the certificate does not back, and a vote in
/// another node's name are each refused, with a log line saying why; none of them can vote,
/// append, install a snapshot or change the membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t102_raft_net_refuses_every_peer_that_does_not_prove_its_node_id() {
    let cluster = Cluster::start_secure(3, &[], false).await;
    let leader = cluster.wait_for_leader().await;
    let target = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let dir = certs(&cluster);
    let ca = dir.join("ca.pem");
    let me = cluster.ids().into_iter().find(|&id| id != target).unwrap();
    let mine = node_files(&dir, me, &ca);

    // The control: a real node's certificate, claiming its own id, is served.
    let answer = call_as(&cluster, target, Some((me, &mine, me)), &RpcRequest::Status).await;
    assert!(
        matches!(answer, Ok(RpcResponse::Status(_))),
        "a real peer was not served: {answer:?}"
    );

    let term_before = term_of(&cluster, target).await;
    let members_before = members_of(&cluster, target).await;
    let high_vote = openraft::Vote::new(term_before + 100, me);
    let requests = [
        RpcRequest::Vote(openraft::raft::VoteRequest::new(high_vote, None)),
        RpcRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term_before + 100, me),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }),
        RpcRequest::Membership(MembershipChange::Remove { id: target }),
    ];

    // Plain TCP: nothing is read.
    refused_all(&cluster, target, None, &requests, "plain TCP").await;
    wait_logged(&cluster, target, "TLS handshake failed").await;

    // A certificate from another CA.
    let foreign = cluster.dir.join("foreign");
    certs_cmd(&["init", "--nodes", "3", "--dir", foreign.to_str().unwrap()]);
    let foreign_files = node_files(&foreign, me, &ca);
    for request in &requests {
        let answer = call_as(&cluster, target, Some((me, &foreign_files, me)), request).await;
        assert!(
            answer.is_err(),
            "a foreign CA's peer was answered: {answer:?}"
        );
    }
    // The foreign CA has the cluster CA's name, so it is its signature that fails.
    wait_logged(&cluster, target, "invalid peer certificate: BadSignature").await;

    // An expired certificate from the cluster CA.
    let expired = ca_copy(&cluster, "expired");
    certs_cmd(&[
        "node",
        "--expired",
        "--id",
        &me.to_string(),
        "--dir",
        expired.to_str().unwrap(),
    ]);
    let expired_files = node_files(&expired, me, &ca);
    let tls = Some((me, &expired_files, me));
    refused_all(&cluster, target, tls, &requests, "an expired certificate").await;
    wait_logged(&cluster, target, "expired").await;

    // A real certificate of node `me`, claiming to be another node.
    let impostor = (1..=9).find(|id| *id != me && *id != target).unwrap();
    let answer = call_as(
        &cluster,
        target,
        Some((me, &mine, impostor)),
        &RpcRequest::Status,
    )
    .await;
    assert!(
        answer.is_err(),
        "a claim the certificate does not back: {answer:?}"
    );
    wait_logged(
        &cluster,
        target,
        &format!(
            "says it is node {impostor} but its certificate does not name mirrorkv-node-{impostor}"
        ),
    )
    .await;

    // Node `me`, proven, sending a vote in another node's name.
    let forged = RpcRequest::Vote(openraft::raft::VoteRequest::new(
        openraft::Vote::new(term_before + 100, impostor),
        None,
    ));
    let answer = call_as(&cluster, target, Some((me, &mine, me)), &forged).await;
    assert!(
        !matches!(answer, Ok(RpcResponse::Vote(_))),
        "a vote in another node's name was answered: {answer:?}"
    );
    wait_logged(
        &cluster,
        target,
        &format!("node {me} sent a Raft message in the name of node {impostor}"),
    )
    .await;

    // None of it moved the term or the membership.
    assert_eq!(
        term_of(&cluster, target).await,
        term_before,
        "the term moved"
    );
    assert_eq!(
        members_of(&cluster, target).await,
        members_before,
        "the membership changed"
    );
    // The cluster still works.
    let outcome = cluster.put(target, "after", b"v").await;
    assert!(matches!(outcome, WriteOutcome::Ok { .. }), "{outcome:?}");
}

/// The DER of the certificate node `id` serves on its API now (a new connection).
async fn served_certificate(cluster: &Cluster, id: u64) -> Vec<u8> {
    let tls = cluster.client_tls().expect("a secure cluster");
    let client = tls
        .configure(reqwest::Client::builder().tls_info(true).timeout(DEADLINE))
        .unwrap()
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/health", cluster.api(id)))
        .send()
        .await
        .expect("https /health");
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a peer certificate")
        .to_vec()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    mirrorkv_node::tls::read_certificates(pem_file).expect("certificate")[0].to_vec()
}

fn hang_up(cluster: &Cluster, id: u64) {
    let pid = cluster.nodes[&id].pid().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

/// SIGHUP re-reads the certificate files: after a rotation in place, new connections get the
/// new certificate with no restart; a rotation to files that do not load is refused and the
/// certificate in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t103_sighup_rotates_certificates_without_a_restart() {
    let cluster = Cluster::start_secure(3, &[], false).await;
    cluster.wait_for_leader().await;
    let dir = certs(&cluster);
    let id = 1;
    let old = der_of(&dir.join("node1.pem"));
    assert_eq!(served_certificate(&cluster, id).await, old);

    certs_cmd(&[
        "node",
        "--force",
        "--id",
        "1",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let new = der_of(&dir.join("node1.pem"));
    assert_ne!(new, old);
    hang_up(&cluster, id);
    wait_logged(&cluster, id, "SIGHUP: reloaded the TLS certificates").await;
    assert_eq!(served_certificate(&cluster, id).await, new);
    // Node 1's peers accept its new certificate: writes through it still commit, and a peer
    // that dials it afresh is served.
    let outcome = cluster.put(id, "rotated", b"v").await;
    assert!(matches!(outcome, WriteOutcome::Ok { .. }), "{outcome:?}");
    let peer = node_files(&dir, 2, &dir.join("ca.pem"));
    let answer = call_as(&cluster, id, Some((2, &peer, 2)), &RpcRequest::Status).await;
    assert!(matches!(answer, Ok(RpcResponse::Status(_))), "{answer:?}");

    // A key that is not a key: the reload is refused, the certificate in use stays.
    std::fs::write(dir.join("node1-key.pem"), b"not a key").unwrap();
    hang_up(&cluster, id);
    wait_logged(&cluster, id, "SIGHUP: could not reload TLS").await;
    assert_eq!(served_certificate(&cluster, id).await, new);
}

/// A node whose peer certificate does not name it does not start, and says why.
#[test]
fn t104_a_node_refuses_to_start_with_a_certificate_for_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certs_cmd(&["init", "--nodes", "2", "--dir", certs.to_str().unwrap()]);
    let file = |name: &str| certs.join(name).display().to_string();
    let data = dir.path().join("data").display().to_string();
    let (ok, _, stderr) = mirrorkv(
        &[
            "--id",
            "1",
            "--data-dir",
            &data,
            "--api-addr",
            "127.0.0.1:0",
            "--raft-addr",
            "127.0.0.1:0",
            "--initial-cluster",
            "1=127.0.0.1:1/127.0.0.1:2",
            "--peer-cert",
            &file("node2.pem"),
            "--peer-key",
            &file("node2-key.pem"),
            "--peer-ca",
            &file("ca.pem"),
        ],
        None,
    );
    assert!(!ok, "the node started");
    assert!(
        stderr.contains("does not name this node") && stderr.contains("mirrorkv-node-1"),
        "{stderr}"
    );
}

/// SIGHUP never stops a node, TLS or not (its default action would): `systemctl reload`
/// is safe on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t105_sighup_does_not_stop_a_node_without_tls() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    hang_up(&cluster, 1);
    wait_logged(&cluster, 1, "SIGHUP: no TLS files to reload").await;
    let health = cluster
        .http
        .get(format!("{}/health", cluster.api(1)))
        .send()
        .await
        .map(|r| r.status());
    assert!(
        health.as_ref().is_ok_and(|s| *s == 200),
        "node 1 stopped: {health:?}"
    );
    let outcome = cluster.put(1, "after-hangup", b"v").await;
    assert!(matches!(outcome, WriteOutcome::Ok { .. }), "{outcome:?}");
}
