//! One benchmark cell: throughput and latency of mirrorkv and of etcd, started on the same
//! machine in the same run and driven by the same closed-loop clients.
//!
//! Each client owns one connection to one node (client `i` talks to member `i mod n` counted
//! from the current leader, for both stores, so one client always talks to the leader), sends
//! one request at a time, and records each answer's latency in an HDR histogram.
//! Errors are counted apart and never enter the histograms. etcd is driven through its native
//! gRPC API (the `etcd-client` crate); its read levels are linearizable and serializable
//! ranges. Nothing here asserts a figure: it prints them and writes JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use hyper::Method;
use jepsen_lite::cluster::{wait_for, Cluster, ClusterOptions};

use crate::conn::{connect, load_batch, Conn, Http1};
use crate::etcd::EtcdCluster;

/// Which store a cell measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    Mirrorkv,
    Etcd,
}

/// What each client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BenchWorkload {
    /// Puts of random keys.
    Put,
    /// Gets of random (preloaded) keys at the read level.
    Get,
    /// 90% gets at the read level, 10% puts.
    Mixed,
    /// A transaction per request: compare that the key exists, then put it.
    Txn,
}

/// One cell of a benchmark: a store, a workload, a read level and a client count.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub store: Store,
    pub workload: BenchWorkload,
    /// mirrorkv's level name (`linearizable`, `lease`, `stale`, ...); etcd maps `stale` to a
    /// serializable range and every other level to a linearizable one.
    pub level: String,
    pub clients: usize,
}

/// Key space and value size of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DataShape {
    pub keys: u64,
    pub value_bytes: usize,
}

/// Latency summary of one operation kind, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Resource use of one server process during a cell.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUse {
    pub node: String,
    /// CPU seconds (user + system) spent during the cell.
    pub cpu_s: f64,
    /// Resident memory at the end of the cell, and the process's peak so far.
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// What one cell measured.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub cell: Cell,
    pub shape: DataShape,
    pub duration_s: f64,
    pub ops: u64,
    pub errors: u64,
    /// The first few error messages, for the reader.
    pub error_samples: Vec<String>,
    pub ops_per_s: f64,
    pub all: Latency,
    /// Per operation kind (`get`, `put`, `txn`).
    pub by_op: BTreeMap<String, Latency>,
    pub processes: Vec<ProcessUse>,
    /// Log entries the leader appended during the cell (mirrorkv only): with the writes
    /// served, how many writes shared an entry on average.
    pub log_entries: Option<u64>,
}

/// Bounds of one cell: it stops at whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct CellLimits {
    pub duration: Duration,
    pub max_ops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum OpKind {
    Get,
    Put,
    Txn,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Txn => "txn",
        }
    }
}

/// A 16-byte key of the key space.
pub fn bench_key(i: u64) -> String {
    format!("bk-{i:013}")
}

pub(crate) fn bench_value(value_bytes: usize, salt: u64) -> Vec<u8> {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..value_bytes)
        .map(|j| alphabet[((j as u64 + salt) % alphabet.len() as u64) as usize])
        .collect()
}

/// Longest wait for one request's whole answer (in both stores' clients), and for a connection to
/// a mirrorkv node.
pub(crate) const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Both clusters of a run.
pub struct Stores {
    pub mirrorkv: Option<Cluster>,
    pub etcd: Option<EtcdCluster>,
}

impl Stores {
    /// Start the stores asked for, 3 nodes each.
    /// With `tls` (`--tls`, the `mirrorkv` binary that makes certificates): TLS on both ports
    /// of both (`tls.rs`).
    pub async fn start(
        mirrorkv_bin: Option<&Path>,
        etcd_bin: Option<&Path>,
        extra_args: &[String],
        tls: Option<&Path>,
    ) -> anyhow::Result<Stores> {
        let mirrorkv = match mirrorkv_bin {
            Some(bin) => {
                let cluster = Cluster::start(ClusterOptions {
                    bin: bin.to_path_buf(),
                    nodes: 3,
                    extra_args: extra_args.to_vec(),
                    node_args: BTreeMap::new(),
                    proxies: false,
                    dir: None,
                    clock_rates: BTreeMap::new(),
                    secure: tls.is_some(),
                    env: Vec::new(),
                })
                .await?;
                if let Some(certs) = &cluster.certs {
                    let access = crate::tls::mirror_tls(certs, cluster.client_access().token)?;
                    for id in cluster.ids() {
                        crate::tls::register_mirror(&cluster.api(id), access.clone());
                    }
                }
                cluster.wait_for_leader().await?;
                for id in cluster.ids() {
                    cluster.wait_ready(id).await?;
                }
                Some(cluster)
            }
            None => None,
        };
        let etcd = match etcd_bin {
            Some(bin) => {
                // The certificates of the mirrorkv cluster (they name 127.0.0.1 and localhost
                // too), or a set of its own.
                let certs = match (tls, mirrorkv.as_ref().and_then(|c| c.certs.clone())) {
                    (None, _) => None,
                    (Some(_), Some(certs)) => Some(certs),
                    (Some(bin), None) => {
                        let dir = tempfile::tempdir()?.keep();
                        Some(jepsen_lite::cluster::make_certs(bin, &dir, 3)?)
                    }
                };
                Some(EtcdCluster::start(bin, 3, certs.as_deref()).await?)
            }
            None => None,
        };
        Ok(Stores { mirrorkv, etcd })
    }

    /// The store's client endpoints with the current leader first, so that client 0 (the
    /// only one in a 1-client cell) talks to the leader of either store, and the others spread
    /// over the members in the same pattern for both.
    pub(crate) async fn endpoints(&self, store: Store) -> anyhow::Result<Vec<String>> {
        let (mut endpoints, leader) = match store {
            Store::Mirrorkv => {
                let cluster = self
                    .mirrorkv
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("mirrorkv is not running"))?;
                let ids = cluster.ids();
                let leader = cluster.wait_for_leader().await?;
                let at = ids.iter().position(|&id| id == leader).unwrap_or(0);
                (
                    ids.iter().map(|&id| cluster.api(id)).collect::<Vec<_>>(),
                    at,
                )
            }
            Store::Etcd => {
                let etcd = self
                    .etcd
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("etcd is not running"))?;
                (etcd.client_urls.clone(), etcd.leader().await?)
            }
        };
        endpoints.rotate_left(leader);
        Ok(endpoints)
    }

    /// `kill -9` one follower of `store` (the second of [`Self::endpoints`]), start it again
    /// on its data, and return how long it took from the start until it answered a
    /// linearizable read of a preloaded key itself.
    pub async fn restart_follower(&mut self, store: Store) -> anyhow::Result<Duration> {
        let key = bench_key(0);
        let endpoints = self.endpoints(store).await?;
        match store {
            Store::Mirrorkv => {
                let cluster = self
                    .mirrorkv
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("mirrorkv is not running"))?;
                let id = cluster
                    .ids()
                    .into_iter()
                    .find(|&id| cluster.api(id) == endpoints[1])
                    .ok_or_else(|| anyhow::anyhow!("no node serves {}", endpoints[1]))?;
                cluster.kill(id)?;
                let started = Instant::now();
                cluster.restart(id).await?;
                wait_for(
                    "the restarted node to serve",
                    Duration::from_secs(60),
                    || {
                        let (endpoint, key) = (endpoints[1].clone(), key.clone());
                        async move {
                            let mut conn = connect(Store::Mirrorkv, endpoint, "linearizable")
                                .await
                                .ok()?;
                            conn.run(OpKind::Get, &key, b"").await.ok()
                        }
                    },
                )
                .await?;
                Ok(started.elapsed())
            }
            Store::Etcd => {
                let etcd = self
                    .etcd
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("etcd is not running"))?;
                let i = etcd
                    .client_urls
                    .iter()
                    .position(|url| *url == endpoints[1])
                    .ok_or_else(|| anyhow::anyhow!("no member serves {}", endpoints[1]))?;
                let child = &mut etcd.children[i].1;
                child.kill()?;
                child.wait()?;
                let started = Instant::now();
                etcd.children[i].1 = etcd.spawn(i)?;
                etcd.wait_serving(i, &key).await?;
                Ok(started.elapsed())
            }
        }
    }

    pub(crate) fn pids(&self, store: Store) -> Vec<(String, u32)> {
        match store {
            Store::Mirrorkv => self
                .mirrorkv
                .as_ref()
                .map(|c| {
                    c.nodes
                        .values()
                        .filter_map(|n| n.pid().map(|pid| (format!("mirrorkv {}", n.id), pid)))
                        .collect()
                })
                .unwrap_or_default(),
            Store::Etcd => self
                .etcd
                .as_ref()
                .map(EtcdCluster::pids)
                .unwrap_or_default(),
        }
    }

    /// Write every key of the key space once (batches of 100 puts per transaction), so that
    /// gets find their keys.
    pub async fn preload(&self, store: Store, shape: DataShape) -> anyhow::Result<Duration> {
        const PER_TXN: u64 = 100;
        const LOADERS: u64 = 16;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let endpoints = self.endpoints(store).await?;
        for loader in 0..LOADERS {
            let endpoint = endpoints[loader as usize % endpoints.len()].clone();
            let mut conn = connect(store, endpoint, "linearizable").await?;
            let batches: Vec<u64> = (0..shape.keys.div_ceil(PER_TXN))
                .filter(|b| b % LOADERS == loader)
                .collect();
            tasks.spawn(async move {
                for batch in batches {
                    let keys: Vec<u64> =
                        (batch * PER_TXN..((batch + 1) * PER_TXN).min(shape.keys)).collect();
                    load_batch(&mut conn, &keys, shape.value_bytes).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(started.elapsed())
    }

    /// Run one cell and measure it.
    pub async fn run_cell(
        &self,
        cell: &Cell,
        shape: DataShape,
        limits: CellLimits,
        seed: u64,
    ) -> anyhow::Result<CellResult> {
        let pids = self.pids(cell.store);
        let cpu_before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
        let endpoints = self.endpoints(cell.store).await?;
        let index_before = self.leader_index(cell.store, &endpoints).await;
        let mut conns = Vec::with_capacity(cell.clients);
        for client in 0..cell.clients {
            let endpoint = endpoints[client % endpoints.len()].clone();
            conns.push(connect(cell.store, endpoint, &cell.level).await?);
        }
        let started = Instant::now();
        let deadline = started + limits.duration;
        let ops_per_client = limits.max_ops.div_ceil(cell.clients as u64);
        let mut tasks = tokio::task::JoinSet::new();
        for (client, mut conn) in conns.into_iter().enumerate() {
            let workload = cell.workload;
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9e37_79b9));
            let run = ClientRun {
                workload,
                shape,
                max_ops: ops_per_client,
                deadline,
            };
            tasks.spawn(async move { run.drive(&mut conn, &mut rng).await });
        }
        let mut by_op: BTreeMap<OpKind, Histogram<u64>> = BTreeMap::new();
        let (mut errors, mut error_samples) = (0, Vec::new());
        while let Some(done) = tasks.join_next().await {
            let ClientTally {
                histograms,
                errors: client_errors,
                samples,
            } = done?;
            for (op, histogram) in histograms {
                by_op
                    .entry(op)
                    .or_insert_with(new_histogram)
                    .add(&histogram)
                    .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
            }
            errors += client_errors;
            error_samples.extend(samples.into_iter().take(3 - error_samples.len().min(3)));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let log_entries = match (
            index_before,
            self.leader_index(cell.store, &endpoints).await,
        ) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        let mut all = new_histogram();
        for histogram in by_op.values() {
            all.add(histogram)
                .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        }
        let processes = process_use(&pids, cpu_before);
        Ok(CellResult {
            cell: cell.clone(),
            shape,
            duration_s: elapsed,
            ops: all.len(),
            errors,
            error_samples,
            ops_per_s: all.len() as f64 / elapsed,
            all: Latency::of(&all),
            by_op: by_op
                .iter()
                .map(|(op, h)| (op.name().to_string(), Latency::of(h)))
                .collect(),
            processes,
            log_entries,
        })
    }

    /// The applied index of the first endpoint (the leader, see [`Self::endpoints`]), for
    /// mirrorkv; `None` for etcd or when it cannot be read.
    async fn leader_index(&self, store: Store, endpoints: &[String]) -> Option<u64> {
        if store != Store::Mirrorkv {
            return None;
        }
        let (_, body) = Http1::new(endpoints.first()?)
            .request(Method::GET, "/ready", "application/json", Vec::new())
            .await
            .ok()?;
        let ready: serde_json::Value = serde_json::from_slice(&body).ok()?;
        ready.get("applied_index")?.as_u64()
    }
}

/// A client connection of `store` to `endpoint`, reading at `level`.
/// One client's part of a cell: at most `max_ops` operations, until `deadline`.
struct ClientRun {
    workload: BenchWorkload,
    shape: DataShape,
    max_ops: u64,
    deadline: Instant,
}

/// What one client measured: latencies by operation, errors, and the first few errors' text.
struct ClientTally {
    histograms: BTreeMap<OpKind, Histogram<u64>>,
    errors: u64,
    samples: Vec<String>,
}

impl ClientRun {
    async fn drive(self, conn: &mut Conn, rng: &mut rand::rngs::StdRng) -> ClientTally {
        let mut tally = ClientTally {
            histograms: BTreeMap::new(),
            errors: 0,
            samples: Vec::new(),
        };
        for n in 0..self.max_ops {
            if Instant::now() >= self.deadline {
                break;
            }
            let key = bench_key(rng.random_range(0..self.shape.keys));
            let op = match self.workload {
                BenchWorkload::Put => OpKind::Put,
                BenchWorkload::Get => OpKind::Get,
                BenchWorkload::Mixed if rng.random_range(0..10) == 0 => OpKind::Put,
                BenchWorkload::Mixed => OpKind::Get,
                BenchWorkload::Txn => OpKind::Txn,
            };
            let value = bench_value(self.shape.value_bytes, n);
            let sent = Instant::now();
            match conn.run(op, &key, &value).await {
                Ok(()) => {
                    let us = sent.elapsed().as_micros().max(1) as u64;
                    tally
                        .histograms
                        .entry(op)
                        .or_insert_with(new_histogram)
                        .saturating_record(us);
                }
                Err(e) => {
                    tally.errors += 1;
                    if tally.samples.len() < 3 {
                        tally.samples.push(e);
                    }
                }
            }
        }
        tally
    }
}

/// CPU seconds each process used since `cpu_before`, and its memory now.
fn process_use(pids: &[(String, u32)], cpu_before: Vec<f64>) -> Vec<ProcessUse> {
    pids.iter()
        .zip(cpu_before)
        .map(|((node, pid), before)| ProcessUse {
            node: node.clone(),
            cpu_s: cpu_seconds(*pid) - before,
            rss_mib: status_kib(*pid, "VmRSS:") as f64 / 1024.0,
            peak_rss_mib: status_kib(*pid, "VmHWM:") as f64 / 1024.0,
        })
        .collect()
}

/// Latencies from 1 µs to 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// User + system CPU seconds of a process so far (0 if it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// A `kB` line of /proc/PID/status (0 if absent).
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A key count as the table shows it: `10k`, `1M`, `1500`.
pub fn keys_label(keys: u64) -> String {
    match keys {
        k if k >= 1_000_000 && k % 1_000_000 == 0 => format!("{}M", k / 1_000_000),
        k if k >= 1_000 && k % 1_000 == 0 => format!("{}k", k / 1_000),
        k => k.to_string(),
    }
}

/// A workload as the table names it: `put`, `get lease`, `mixed stale`, `txn`.
pub fn workload_name(workload: BenchWorkload, level: &str) -> String {
    match workload {
        BenchWorkload::Get => format!("get {level}"),
        BenchWorkload::Mixed => format!("mixed {level}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A line of the comparison table: `mirrorkv` vs `etcd` for the same workload and clients;
/// `prefix` goes before the workload's name (the key space when a run has several).
pub fn format_row(prefix: &str, mirror: Option<&CellResult>, etcd: Option<&CellResult>) -> String {
    let any = mirror.or(etcd).expect("at least one side");
    let name = format!(
        "{prefix}{}",
        workload_name(any.cell.workload, &any.cell.level)
    );
    let side = |r: Option<&CellResult>| match r {
        Some(r) => format!(
            "{:>9.0} {:>6.2} {:>7.2} {:>7.2} {:>5}",
            r.ops_per_s,
            r.all.p50_us as f64 / 1000.0,
            r.all.p99_us as f64 / 1000.0,
            r.all.p999_us as f64 / 1000.0,
            r.errors
        ),
        None => format!("{:>9} {:>6} {:>7} {:>7} {:>5}", "-", "-", "-", "-", "-"),
    };
    let ratio = match (mirror, etcd) {
        (Some(m), Some(e)) if e.ops_per_s > 0.0 => format!("{:.2}x", m.ops_per_s / e.ops_per_s),
        _ => "-".into(),
    };
    format!(
        "{name:<22} {:>3} | {} | {} | {ratio:>6}",
        any.cell.clients,
        side(mirror),
        side(etcd)
    )
}

/// Of one cell's results over several rounds, the one with the median ops/s (the lower of the
/// two middle ones when the count is even), so that a table of medians shows real measurements,
/// not a blend of several. `None` when there are none.
pub fn median_round<'a>(rounds: &[&'a CellResult]) -> Option<&'a CellResult> {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// The header of [`format_row`]'s table.
pub fn table_header() -> String {
    let side = format!(
        "{:>9} {:>6} {:>7} {:>7} {:>5}",
        "ops/s", "p50ms", "p99ms", "p99.9ms", "errs"
    );
    format!(
        "{:<22} {:>3} | {:^41} | {:^41} | {:>6}\n{:<22} {:>3} | {side} | {side} | {:>6}",
        "", "", "mirrorkv", "etcd", "", "workload", "cli", "ratio"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ops_per_s: f64) -> CellResult {
        CellResult {
            cell: Cell {
                store: Store::Mirrorkv,
                workload: BenchWorkload::Put,
                level: "linearizable".into(),
                clients: 1,
            },
            shape: DataShape {
                keys: 10,
                value_bytes: 1,
            },
            duration_s: 1.0,
            ops: ops_per_s as u64,
            errors: 0,
            error_samples: Vec::new(),
            ops_per_s,
            all: Latency {
                count: 0,
                p50_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
            },
            by_op: BTreeMap::new(),
            processes: Vec::new(),
            log_entries: None,
        }
    }

    #[test]
    fn keys_label_is_short_and_exact() {
        assert_eq!(keys_label(10_000), "10k");
        assert_eq!(keys_label(1_000_000), "1M");
        assert_eq!(keys_label(1_500_000), "1500k");
        assert_eq!(keys_label(1_500), "1500");
        assert_eq!(keys_label(7), "7");
    }

    #[test]
    fn median_round_is_a_real_round_in_the_middle() {
        let (a, b, c, d) = (result(300.0), result(100.0), result(200.0), result(400.0));
        assert_eq!(median_round(&[]).map(|r| r.ops_per_s), None);
        assert_eq!(median_round(&[&a]).map(|r| r.ops_per_s), Some(300.0));
        assert_eq!(median_round(&[&a, &b]).map(|r| r.ops_per_s), Some(100.0));
        assert_eq!(
            median_round(&[&a, &b, &c]).map(|r| r.ops_per_s),
            Some(200.0)
        );
        assert_eq!(
            median_round(&[&a, &b, &c, &d]).map(|r| r.ops_per_s),
            Some(200.0)
        );
    }
}
