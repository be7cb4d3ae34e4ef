//! Bad input over the wire (API.md, "Security", issue 23 point 5): heads and request targets
//! over their limits, JSON nested past any sane depth, and a raft-net peer that sends one byte
//! at a time. Each is answered with the contract's error or cut off by a deadline, and the node
//! goes on serving.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status and JSON body of a request (`Null` when the body is not JSON).
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Request targets and headers over their limits get 414 and 431 with the contract's
/// `too_large` error; a head past hyper's buffer gets a bare 431; JSON nested 100 000 deep is a
/// 400 on every route that reads JSON. None of it changes anything, and the node answers after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t120_oversized_heads_and_deep_json_get_the_contracts_error() {
    let cluster = Cluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let api = cluster.api(1);
    let http = http();
    let long = "a".repeat(20_000);
    for (what, request) in [
        ("a long key", http.get(format!("{api}/v1/kv/{long}"))),
        (
            "a long query",
            http.get(format!("{api}/v1/kv?prefix={long}")),
        ),
    ] {
        let (status, body) = answer(request).await;
        assert_eq!(status, 414, "{what}: {body}");
        assert_eq!(body["error"]["code"], "too_large", "{what}: {body}");
        assert_eq!(body["error"]["retryable"], false, "{what}: {body}");
    }
    let many = (0..40).fold(http.put(format!("{api}/v1/kv/k")).body("v"), |r, i| {
        r.header(format!("x-filler-{i}"), "b".repeat(500))
    });
    for (what, request) in [
        (
            "one long header",
            http.put(format!("{api}/v1/kv/k"))
                .header("x-filler", "b".repeat(20_000))
                .body("v"),
        ),
        ("many headers", many),
    ] {
        let (status, body) = answer(request).await;
        assert_eq!(status, 431, "{what}: {body}");
        assert_eq!(body["error"]["code"], "too_large", "{what}: {body}");
    }
    // Past the connection's buffer: hyper's own 431.
    let huge = http
        .get(format!("{api}/v1/kv/k"))
        .header("x-filler", "c".repeat(100_000))
        .send()
        .await;
    match huge {
        Ok(response) => assert_eq!(response.status(), 431),
        // hyper may close before the client has sent it all.
        Err(e) => println!("a 100 KB header: the connection was closed ({e})"),
    }
    let deep = "[".repeat(100_000);
    for path in [
        "/v1/txn",
        "/v1/lease",
        "/v1/auth/tokens",
        "/v1/cluster/members",
    ] {
        let (status, body) = answer(
            http.post(format!("{api}{path}"))
                .header("content-type", "application/json")
                .body(deep.clone()),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{path}: {body}");
    }
    let (status, body) = answer(
        http.put(format!("{api}/v1/auth/roles/r"))
            .header("content-type", "application/json")
            .body(deep),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &Value::from("invalid_argument"))
    );
    // Nothing was written; the node still serves.
    assert_eq!(cluster.get(1, "k", "linearizable").await, Ok(None));
    assert!(matches!(
        cluster.put(1, "k", b"v").await,
        WriteOutcome::Ok { .. }
    ));
}

/// A connection to the raft port that starts a frame and then sends one byte every 200 ms is
/// closed once `raft_frame_timeout_ms` has passed since the frame's first byte, however many
/// bytes it keeps sending; the node goes on committing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t121_a_raft_peer_sending_a_byte_at_a_time_is_cut_off() {
    let cluster = Cluster::start(1, &["--raft-frame-timeout-ms", "1000"]).await;
    cluster.wait_for_leader().await;
    let mut slow = TcpStream::connect(&cluster.nodes[&1].raft_addr)
        .await
        .expect("connect");
    slow.set_nodelay(true).unwrap();
    // A frame claiming 1000 bytes, sent a byte at a time.
    let frame: Vec<u8> = 1000u32.to_be_bytes().into_iter().chain([1; 1000]).collect();
    let started = Instant::now();
    let mut sent = 0;
    let closed_after = loop {
        assert!(
            started.elapsed() < DEADLINE,
            "still open after {sent} bytes"
        );
        if slow.write_all(&frame[sent..=sent]).await.is_err() {
            break started.elapsed();
        }
        sent += 1;
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buffer));
        if let Ok(Ok(0) | Err(_)) = read.await {
            break started.elapsed();
        }
    };
    println!("a byte-at-a-time frame was cut off after {closed_after:?} and {sent} bytes");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed before its deadline: {closed_after:?}"
    );
    assert!(sent < 100, "{sent} bytes were taken");
    assert!(matches!(
        cluster.put(1, "after", b"v").await,
        WriteOutcome::Ok { .. }
    ));
}
