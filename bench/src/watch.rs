//! The watch cell: one writer at a fixed rate under one prefix, and N watchers of that prefix
//! spread over the 3 nodes, one connection each, against mirrorkv and etcd in the same run.
//!
//! Figures: events delivered per second (all watchers together); the delay from a write's
//! acknowledgement at the writer to the event's arrival at each watcher (p50, p99; an event
//! that arrives before the writer has its answer counts as 0); the nodes' resident memory
//! before the watchers open, once they are open and idle, and per idle stream.
//!
//! Each write's value is its sequence number, so a watcher learns which write an event is
//! without decoding more than that field.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::cells::{status_kib, Store, Stores};

/// What one watch cell runs.
#[derive(Debug, Clone, Copy)]
pub struct WatchCell {
    pub watchers: usize,
    pub writes_per_s: u64,
    pub duration: Duration,
}

/// What one watch cell measured.
#[derive(Debug, Clone, Serialize)]
pub struct WatchResult {
    pub store: Store,
    pub watchers: usize,
    pub writes: u64,
    pub events_expected: u64,
    pub events_received: u64,
    pub events_per_s: f64,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_max_ms: f64,
    /// Resident memory of all 3 nodes together.
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_end_kib: u64,
    pub kib_per_idle_stream: f64,
}

/// Arrival times of each write's event at one watcher, by sequence number.
type Arrivals = Arc<Mutex<Vec<Option<Instant>>>>;

/// Run one watch cell against `store`.
pub async fn run_watch_cell(
    stores: &Stores,
    store: Store,
    cell: WatchCell,
    round: u64,
) -> anyhow::Result<WatchResult> {
    let endpoints = stores.endpoints(store).await?;
    let pids = stores.pids(store);
    let rss = || {
        pids.iter()
            .map(|(_, pid)| status_kib(*pid, "VmRSS:"))
            .sum::<u64>()
    };
    let prefix = format!("watchbench/{round}/");
    let writes = cell.writes_per_s * cell.duration.as_secs();
    let rss_before_kib = rss();
    let mut arrivals: Vec<Arrivals> = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..cell.watchers {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let times: Arrivals = Arc::new(Mutex::new(vec![None; writes as usize]));
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let task = match store {
            Store::Mirrorkv => tokio::spawn(watch_mirrorkv(
                endpoint,
                prefix.clone(),
                times.clone(),
                opened_tx,
            )),
            Store::Etcd => tokio::spawn(watch_etcd(
                endpoint,
                prefix.clone(),
                times.clone(),
                opened_tx,
            )),
        };
        opened_rx
            .await
            .map_err(|_| anyhow::anyhow!("watcher {i} of {store:?} failed to open"))?;
        arrivals.push(times);
        tasks.push(task);
    }
    let rss_idle_kib = rss();
    let acks = write_at_rate(stores, store, &prefix, cell).await?;
    // Every event arrives within 10 s of the last write, or counts as missing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !all_arrived(&arrivals) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_end_kib = rss();
    for task in tasks {
        task.abort();
    }
    let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut received, mut last_arrival) = (0u64, acks.first().copied().flatten());
    for times in &arrivals {
        for (ack, arrival) in acks.iter().zip(times.lock().expect("arrivals").iter()) {
            if let (Some(ack), Some(arrival)) = (ack, arrival) {
                received += 1;
                let delay_us = arrival.saturating_duration_since(*ack).as_micros() as u64;
                delays.saturating_record(delay_us.max(1));
                last_arrival = last_arrival.max(Some(*arrival));
            }
        }
    }
    let span = match (acks.first().copied().flatten(), last_arrival) {
        (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    Ok(WatchResult {
        store,
        watchers: cell.watchers,
        writes,
        events_expected: writes * cell.watchers as u64,
        events_received: received,
        events_per_s: if span > 0.0 {
            received as f64 / span
        } else {
            0.0
        },
        delay_p50_ms: delays.value_at_quantile(0.5) as f64 / 1000.0,
        delay_p99_ms: delays.value_at_quantile(0.99) as f64 / 1000.0,
        delay_max_ms: delays.max() as f64 / 1000.0,
        rss_before_kib,
        rss_idle_kib,
        rss_end_kib,
        kib_per_idle_stream: rss_idle_kib.saturating_sub(rss_before_kib) as f64
            / cell.watchers.max(1) as f64,
    })
}

fn all_arrived(arrivals: &[Arrivals]) -> bool {
    arrivals
        .iter()
        .all(|times| times.lock().expect("arrivals").iter().all(Option::is_some))
}

/// Put `0..writes` under `prefix` at `writes_per_s` through the leader; when each was
/// acknowledged (`None`: it failed).
async fn write_at_rate(
    stores: &Stores,
    store: Store,
    prefix: &str,
    cell: WatchCell,
) -> anyhow::Result<Vec<Option<Instant>>> {
    let endpoint = stores.endpoints(store).await?[0].clone();
    let mut conn = crate::conn::connect(store, endpoint, "linearizable").await?;
    let writes = cell.writes_per_s * cell.duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / cell.writes_per_s.max(1) as f64);
    let mut acks = Vec::with_capacity(writes as usize);
    let mut next_at = tokio::time::Instant::now();
    for seq in 0..writes {
        tokio::time::sleep_until(next_at).await;
        next_at += interval;
        let key = format!("{prefix}{}", seq % 16);
        let done = conn
            .run(crate::cells::OpKind::Put, &key, seq.to_string().as_bytes())
            .await;
        acks.push(done.is_ok().then(Instant::now));
    }
    Ok(acks)
}

/// The sequence number in a value.
fn seq_of(value: &[u8]) -> Option<usize> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// One mirrorkv watcher: `GET /v1/watch?prefix=` over its own HTTP/1.1 connection.
async fn watch_mirrorkv(
    endpoint: String,
    prefix: String,
    times: Arrivals,
    opened: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let addr = endpoint.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get(format!("/v1/watch?prefix={prefix}"))
        .header("host", &addr)
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status() == 200, "watch: {}", response.status());
    let _ = opened.send(());
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = Instant::now();
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if let Some(seq) = mirrorkv_seq(&line) {
                if let Some(slot) = times.lock().expect("arrivals").get_mut(seq) {
                    slot.get_or_insert(now);
                }
            }
        }
    }
    Ok(())
}

/// The sequence number of an event line (its `"value":"N"`), without a JSON parse.
fn mirrorkv_seq(line: &[u8]) -> Option<usize> {
    const FIELD: &[u8] = b"\"value\":\"";
    let at = line.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let rest = &line[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    seq_of(&rest[..end])
}

/// One etcd watcher: a watch of the prefix over its own client connection.
async fn watch_etcd(
    endpoint: String,
    prefix: String,
    times: Arrivals,
    opened: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let options = etcd_client::WatchOptions::new().with_prefix();
    let (_watcher, mut stream) = client.watch(prefix, Some(options)).await?;
    let _ = opened.send(());
    while let Some(response) = stream.message().await? {
        let now = Instant::now();
        for event in response.events() {
            if let Some(seq) = event.kv().and_then(|kv| seq_of(kv.value())) {
                if let Some(slot) = times.lock().expect("arrivals").get_mut(seq) {
                    slot.get_or_insert(now);
                }
            }
        }
    }
    Ok(())
}

/// The table of watch cells.
pub fn print_watch_table(results: &[WatchResult]) {
    println!();
    println!(
        "{:<9} {:>8} {:>9} {:>12} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "store",
        "watchers",
        "received",
        "events/s",
        "delay p50",
        "delay p99",
        "delay max",
        "idle RSS MiB",
        "KiB/idle strm"
    );
    for r in results {
        println!(
            "{:<9} {:>8} {:>8.1}% {:>12.0} {:>8.2}ms {:>8.2}ms {:>8.1}ms {:>14.1} {:>14.1}",
            format!("{:?}", r.store).to_lowercase(),
            r.watchers,
            100.0 * r.events_received as f64 / r.events_expected.max(1) as f64,
            r.events_per_s,
            r.delay_p50_ms,
            r.delay_p99_ms,
            r.delay_max_ms,
            r.rss_idle_kib as f64 / 1024.0,
            r.kib_per_idle_stream
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_number_is_read_from_an_event_line() {
        let line = br#"{"index":7,"type":"put","key":"w/1","value":"42","mod_index":7}"#;
        assert_eq!(mirrorkv_seq(line), Some(42));
        assert_eq!(mirrorkv_seq(br#"{"progress":9}"#), None);
    }
}
