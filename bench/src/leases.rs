//! The lease cells (`--leases 10000,100000`), against mirrorkv and etcd in the same run:
//!
//! - **keepalives**: N leases (TTL 60 s) granted, then `--clients` clients keep them alive for
//!   `--duration-s`, each cycling through its share, one keepalive at a time: keepalives/s and
//!   the latency of one (p50, p99). mirrorkv: `POST /v1/lease/{id}/keepalive` on HTTP/1.1
//!   keep-alive connections spread over the nodes. etcd: etcd-client's `LeaseKeeper`, one
//!   keepalive stream per lease (the crate sends one lease's keepalives on a stream), all
//!   opened before the clock starts.
//! - **mass expiry**: `EXPIRY_LEASES` leases of TTL `EXPIRY_TTL_S` with `EXPIRY_KEYS_PER_LEASE`
//!   keys each, left to run out together while 16 clients put other keys: the time from the
//!   TTL's end until the last key is gone, and the puts' p99 and max over that window.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;

use crate::cells::{Store, Stores};
use crate::conn::Http1;

/// Leases, keys per lease and TTL of the mass-expiry cell.
const EXPIRY_LEASES: usize = 10_000;
const EXPIRY_KEYS_PER_LEASE: usize = 10;
const EXPIRY_TTL_S: i64 = 30;
/// Clients putting other keys during the mass expiry.
const EXPIRY_WRITERS: usize = 16;
/// Clients granting leases and attaching keys.
const LOADERS: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct KeepaliveResult {
    pub store: Store,
    pub leases: usize,
    pub clients: usize,
    pub keepalives: u64,
    pub errors: u64,
    pub keepalives_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpiryResult {
    pub store: Store,
    pub leases: usize,
    pub keys: usize,
    /// From the end of the TTL (counted from the last grant's answer) until no key is left.
    pub all_gone_after_ttl_ms: u64,
    pub puts: u64,
    pub put_p99_ms: f64,
    pub put_max_ms: f64,
}

/// One store's lease API as the cells use it.
enum LeaseConn {
    Mirror(Http1),
    Etcd(Box<etcd_client::Client>),
}

impl LeaseConn {
    async fn open(store: Store, endpoint: &str) -> anyhow::Result<LeaseConn> {
        Ok(match store {
            Store::Mirrorkv => LeaseConn::Mirror(Http1::new(endpoint)),
            Store::Etcd => LeaseConn::Etcd(Box::new(crate::conn::etcd_connect(endpoint).await?)),
        })
    }

    async fn grant(&mut self, ttl_s: i64) -> anyhow::Result<i64> {
        match self {
            LeaseConn::Mirror(http) => {
                let body = serde_json::to_vec(&serde_json::json!({ "ttl_s": ttl_s }))?;
                let (status, body) = http
                    .request(Method::POST, "/v1/lease", "application/json", body)
                    .await
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(status.is_success(), "grant: {status}");
                let answer: serde_json::Value = serde_json::from_slice(&body)?;
                answer["id"]
                    .as_i64()
                    .ok_or_else(|| anyhow::anyhow!("grant answered {answer}"))
            }
            LeaseConn::Etcd(client) => Ok(client.lease_grant(ttl_s, None).await?.id()),
        }
    }

    /// Put `keys`, attached to `lease`, in one transaction.
    async fn put_leased(&mut self, keys: &[String], lease: i64) -> anyhow::Result<()> {
        match self {
            LeaseConn::Mirror(http) => {
                let puts: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|key| serde_json::json!({"put": {"key": key, "value": "x", "lease": lease}}))
                    .collect();
                let body = serde_json::to_vec(&serde_json::json!({ "success": puts }))?;
                let (status, body) = http
                    .request(Method::POST, "/v1/txn", "application/json", body)
                    .await
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(
                    status.is_success(),
                    "txn: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            LeaseConn::Etcd(client) => {
                let puts: Vec<etcd_client::TxnOp> = keys
                    .iter()
                    .map(|key| {
                        let options = etcd_client::PutOptions::new().with_lease(lease);
                        etcd_client::TxnOp::put(key.as_str(), "x", Some(options))
                    })
                    .collect();
                client.txn(etcd_client::Txn::new().and_then(puts)).await?;
            }
        }
        Ok(())
    }

    async fn put(&mut self, key: &str) -> anyhow::Result<()> {
        match self {
            LeaseConn::Mirror(http) => {
                let path = format!("/v1/kv/{key}");
                let (status, _) = http
                    .request(
                        Method::PUT,
                        &path,
                        "application/octet-stream",
                        b"v".to_vec(),
                    )
                    .await
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(status.is_success(), "put: {status}");
            }
            LeaseConn::Etcd(client) => {
                client.put(key, "v", None).await?;
            }
        }
        Ok(())
    }

    /// Keys under `prefix` now (linearizable).
    async fn count(&mut self, prefix: &str) -> anyhow::Result<u64> {
        match self {
            LeaseConn::Mirror(http) => {
                let path = format!("/v1/kv?prefix={prefix}&keys_only=true&limit=10000");
                let (status, body) = http
                    .request(Method::GET, &path, "application/json", Vec::new())
                    .await
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(status.is_success(), "range: {status}");
                let answer: serde_json::Value = serde_json::from_slice(&body)?;
                Ok(answer["items"].as_array().map_or(0, Vec::len) as u64)
            }
            LeaseConn::Etcd(client) => {
                let options = etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only();
                Ok(client.get(prefix, Some(options)).await?.count() as u64)
            }
        }
    }
}

/// Grant `count` leases of `ttl_s` through `LOADERS` clients spread over `endpoints`.
async fn grant_all(
    store: Store,
    endpoints: &[String],
    count: usize,
    ttl_s: i64,
) -> anyhow::Result<Vec<i64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let mut tasks = Vec::new();
    for i in 0..LOADERS {
        let (next, ids, endpoint) = (
            next.clone(),
            ids.clone(),
            endpoints[i % endpoints.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = LeaseConn::open(store, &endpoint).await?;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let id = conn.grant(ttl_s).await?;
                ids.lock().expect("ids").push(id);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let ids = std::mem::take(&mut *ids.lock().expect("ids"));
    Ok(ids)
}

/// The keepalive cell: `leases` leases kept alive by `clients` clients for `duration`.
pub async fn keepalive_cell(
    stores: &Stores,
    store: Store,
    leases: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<KeepaliveResult> {
    let endpoints = stores.endpoints(store).await?;
    let ids = grant_all(store, &endpoints, leases, 60).await?;
    let shares: Vec<Vec<i64>> = (0..clients)
        .map(|c| ids.iter().skip(c).step_by(clients).copied().collect())
        .collect();
    let start = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (c, share) in shares.into_iter().enumerate() {
        let endpoint = endpoints[c % endpoints.len()].clone();
        let (start, stop) = (start.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            keep_share(store, endpoint, share, start, stop).await
        }));
    }
    start.wait().await;
    let began = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = began.elapsed();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for task in tasks {
        let (histogram, failed) = task.await??;
        latencies.add(histogram)?;
        errors += failed;
    }
    Ok(KeepaliveResult {
        store,
        leases,
        clients,
        keepalives: latencies.len(),
        errors,
        keepalives_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// One keepalive client: its share of leases, one keepalive at a time, round and round.
async fn keep_share(
    store: Store,
    endpoint: String,
    share: Vec<i64>,
    start: Arc<tokio::sync::Barrier>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    match LeaseConn::open(store, &endpoint).await? {
        LeaseConn::Mirror(mut http) => {
            start.wait().await;
            for &id in share.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let path = format!("/v1/lease/{id}/keepalive");
                let sent = Instant::now();
                match http
                    .request(Method::POST, &path, "application/json", Vec::new())
                    .await
                {
                    Ok((status, _)) if status.is_success() => {
                        latencies.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
        }
        LeaseConn::Etcd(mut client) => {
            let mut keepers = Vec::with_capacity(share.len());
            for &id in &share {
                keepers.push(client.lease_keep_alive(id).await?);
            }
            start.wait().await;
            for turn in 0.. {
                if stop.load(Ordering::Relaxed) || keepers.is_empty() {
                    break;
                }
                let (keeper, stream) = &mut keepers[turn % share.len()];
                let sent = Instant::now();
                let answered = match keeper.keep_alive().await {
                    Ok(()) => matches!(stream.message().await, Ok(Some(_))),
                    Err(_) => false,
                };
                match answered {
                    true => latencies.saturating_record(sent.elapsed().as_micros() as u64),
                    false => errors += 1,
                }
            }
        }
    }
    Ok((latencies, errors))
}

/// The mass-expiry cell.
pub async fn expiry_cell(
    stores: &Stores,
    store: Store,
    round: u64,
) -> anyhow::Result<ExpiryResult> {
    let endpoints = stores.endpoints(store).await?;
    let prefix = format!("expire{round}/");
    let ids = grant_all(store, &endpoints, EXPIRY_LEASES, EXPIRY_TTL_S).await?;
    let granted = Instant::now();
    // Attach the keys: LOADERS clients, each its share of the leases.
    let mut tasks = Vec::new();
    for c in 0..LOADERS {
        let endpoint = endpoints[c % endpoints.len()].clone();
        let share: Vec<i64> = ids.iter().skip(c).step_by(LOADERS).copied().collect();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = LeaseConn::open(store, &endpoint).await?;
            for id in share {
                let keys: Vec<String> = (0..EXPIRY_KEYS_PER_LEASE)
                    .map(|k| format!("{prefix}{id}/{k}"))
                    .collect();
                conn.put_leased(&keys, id).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let attached_s = granted.elapsed().as_secs_f64();
    anyhow::ensure!(
        attached_s < EXPIRY_TTL_S as f64 - 0.5,
        "attaching the keys took {attached_s:.1} s, longer than the TTL: fewer keys or a longer TTL"
    );
    // Writers on other keys from now until every leased key is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let window: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..EXPIRY_WRITERS {
        let endpoint = endpoints[w % endpoints.len()].clone();
        let (stop, window) = (stop.clone(), window.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = LeaseConn::open(store, &endpoint).await?;
            let mut in_window = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                conn.put(&format!("other{round}/{w}/{}", n % 100)).await?;
                n += 1;
                let done = Instant::now();
                if let Some((from, _)) = *window.lock().expect("window") {
                    if done >= from {
                        in_window.saturating_record(done.duration_since(sent).as_micros() as u64);
                    }
                }
            }
            anyhow::Ok(in_window)
        }));
    }
    let ttl_end = granted + Duration::from_secs(EXPIRY_TTL_S as u64);
    *window.lock().expect("window") = Some((ttl_end, ttl_end));
    let mut counter = LeaseConn::open(store, &endpoints[0]).await?;
    let deadline = ttl_end + Duration::from_secs(120);
    let gone_at = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        if now >= ttl_end && counter.count(&prefix).await? == 0 {
            break Instant::now();
        }
        anyhow::ensure!(
            now < deadline,
            "{store:?}: leased keys still there 120 s after their TTL"
        );
    };
    stop.store(true, Ordering::Relaxed);
    let mut puts = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for writer in writers {
        puts.add(writer.await??)?;
    }
    Ok(ExpiryResult {
        store,
        leases: EXPIRY_LEASES,
        keys: EXPIRY_LEASES * EXPIRY_KEYS_PER_LEASE,
        all_gone_after_ttl_ms: gone_at.saturating_duration_since(ttl_end).as_millis() as u64,
        puts: puts.len(),
        put_p99_ms: puts.value_at_quantile(0.99) as f64 / 1000.0,
        put_max_ms: puts.max() as f64 / 1000.0,
    })
}

pub fn print_lease_tables(keepalives: &[KeepaliveResult], expiries: &[ExpiryResult]) {
    println!("| store | leases | clients | keepalives/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in keepalives {
        println!(
            "| {:?} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            r.store, r.leases, r.clients, r.keepalives_per_s, r.p50_ms, r.p99_ms, r.errors
        );
    }
    println!();
    println!("| store | leases | keys | all gone after TTL, ms | puts meanwhile | put p99 ms | put max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in expiries {
        println!(
            "| {:?} | {} | {} | {} | {} | {:.2} | {:.2} |",
            r.store, r.leases, r.keys, r.all_gone_after_ttl_ms, r.puts, r.put_p99_ms, r.put_max_ms
        );
    }
}
