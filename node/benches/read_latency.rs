//! Read latency by level and by serving node, on a local 3-node cluster of real processes.
//!
//! `cargo bench --workspace --bench read_latency` (optionally `READS=N`, default 2000 per row).
//! Sequential reads from one client over one keep-alive connection; prints p50/p99 per row.
//! A benchmark, not a test: it asserts only that reads succeed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, WriteOutcome};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let reads: usize = std::env::var("READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap();
    assert!(matches!(
        cluster.put(leader, "bench", &[b'x'; 100]).await,
        WriteOutcome::Ok { .. }
    ));
    println!("{reads} sequential GETs of one 100-byte value per row; leader {leader}, follower {follower}");
    println!(
        "{:<14} {:<9} {:>10} {:>10} {:>10}",
        "level", "served by", "p50 (µs)", "p99 (µs)", "reads/s"
    );
    for level in ["linearizable", "lease", "strong", "leader", "stale"] {
        for (role, id) in [("leader", leader), ("follower", follower)] {
            let url = format!("{}/v1/kv/bench?consistency={level}", cluster.api(id));
            for _ in 0..50 {
                cluster.http.get(&url).send().await.unwrap();
            }
            let mut latencies = Vec::with_capacity(reads);
            let started = Instant::now();
            for _ in 0..reads {
                let t = Instant::now();
                let response = cluster.http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                latencies.push(t.elapsed());
            }
            let total = started.elapsed();
            latencies.sort();
            println!(
                "{:<14} {:<9} {:>10} {:>10} {:>10.0}",
                level,
                role,
                percentile(&latencies, 0.50).as_micros(),
                percentile(&latencies, 0.99).as_micros(),
                reads as f64 / total.as_secs_f64()
            );
        }
    }
}
