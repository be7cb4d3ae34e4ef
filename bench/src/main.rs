//! `mirrorkv-bench`: mirrorkv and etcd (3 nodes each, started here) under the same closed-loop
//! clients, cell by cell, alternating. A crate of its own so that building and testing the node
//! needs neither etcd's gRPC client nor protoc.
//!
//! - `cells`: one cell (a workload, a read level, a number of clients) against one store,
//!   the clients, the preload, and the table.
//! - `conn`: one client's connection (hyper HTTP/1.1 to mirrorkv, gRPC to etcd), the bulk load.
//! - `etcd`: the 3-member etcd cluster, started from the `etcd` binary.
//! - `watch`: the watch cell (one writer, N watchers of its prefix; delay and memory).
//! - `leases`: the lease cells (keepalives of N leases; a mass expiry under other writes).
//! - `tls`: `--tls`, TLS on both ports of both stores, looked up by endpoint.
//! - this file: the flags, and the run over every key space, store and round.
//!
//! Why: `bench/DESIGN.md`.

mod cells;
mod conn;
mod etcd;
mod leases;
mod tls;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cells::{BenchWorkload, Cell, CellLimits, DataShape, Store, Stores};
use clap::Parser;
use jepsen_lite::cluster::{default_mirrorkv_bin, runtime};

/// Measure mirrorkv and etcd (3 nodes each, started here) under the same closed-loop
/// clients; prints ops/s and p50/p99/p99.9 per cell and writes JSON.
#[derive(Parser)]
#[command(name = "mirrorkv-bench", version)]
struct Args {
    /// The `mirrorkv` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The `etcd` binary (default: `etcd` on the PATH).
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Measure only this store (default: both, alternating cell by cell).
    #[arg(long, value_enum)]
    store: Option<Store>,
    #[arg(long, value_enum, default_value = "put")]
    workload: BenchWorkload,
    /// Read level of gets (etcd: `stale` is a serializable range, others linearizable).
    #[arg(long, default_value = "linearizable")]
    consistency: String,
    /// Concurrent clients, each with its own connection, one request at a time.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Length of each cell.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Most operations of each cell, all clients together.
    #[arg(long, default_value_t = 10_000_000)]
    max_ops: u64,
    /// Size of the key space (16-byte keys); every key is written before measuring. Several
    /// (`--keys 10000,1000000`) start a pair of clusters for each and alternate every cell
    /// between them too, so that the scale figure (largest against smallest key space)
    /// compares runs taken at the same time on the same machine.
    #[arg(long, value_delimiter = ',', default_value = "10000", num_args = 1..)]
    keys: Vec<u64>,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Run the standard matrix instead of one cell: 1, 16 and 64 clients × put,
    /// linearizable get, lease get, stale get.
    #[arg(long)]
    matrix: bool,
    /// Run the cells this many times over, printing each process's memory after every
    /// round: memory that grows with the requests served shows up here.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// After the cells, `kill -9` one follower of each store, start it again and time how
    /// long until it answers a linearizable read itself.
    #[arg(long)]
    restart: bool,
    /// Write every cell's result here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run the watch cells instead, one per count of watchers (`--watch 100,1000`): one
    /// writer at --watch-rate puts/s for --duration-s, every watcher on its prefix.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    watch: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    watch_rate: u64,
    /// Run the lease cells instead: for each count (`--leases 10000,100000`), that many leases
    /// kept alive by --clients clients for --duration-s; then one mass expiry (10000 leases of
    /// 10 keys each running out together while 16 clients put other keys).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    leases: Vec<usize>,
    /// TLS on both ports of both stores (mirrorkv also with --auth; `tls.rs`). Not with
    /// --watch.
    #[arg(long)]
    tls: bool,
}

fn main() -> ExitCode {
    let Args {
        bin,
        etcd,
        store,
        workload,
        consistency,
        clients,
        duration_s,
        max_ops,
        keys,
        value_bytes,
        matrix,
        rounds,
        restart,
        json,
        seed,
        watch,
        watch_rate,
        leases,
        tls,
    } = Args::parse();
    if tls && !watch.is_empty() {
        eprintln!("mirrorkv-bench: --tls does not apply to the watch cells");
        return ExitCode::from(2);
    }
    let bin = bin.unwrap_or_else(default_mirrorkv_bin);
    let cells: Vec<(BenchWorkload, String, usize)> = if matrix {
        let mut cells = Vec::new();
        for clients in [1, 16, 64] {
            for (workload, level) in [
                (BenchWorkload::Put, "linearizable"),
                (BenchWorkload::Get, "linearizable"),
                (BenchWorkload::Get, "lease"),
                (BenchWorkload::Get, "stale"),
            ] {
                cells.push((workload, level.to_string(), clients));
            }
        }
        cells
    } else {
        vec![(workload, consistency, clients)]
    };
    let options = BenchRun {
        bin,
        etcd: if store == Some(Store::Mirrorkv) {
            None
        } else {
            match etcd::find_etcd(etcd) {
                Some(etcd) => Some(etcd),
                None => {
                    eprintln!("mirrorkv-bench: no etcd binary (install etcd-server, or pass --etcd, or --store mirrorkv)");
                    return ExitCode::from(3);
                }
            }
        },
        mirrorkv: store != Some(Store::Etcd),
        cells,
        shapes: {
            let mut keys = keys;
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter()
                .map(|keys| DataShape { keys, value_bytes })
                .collect()
        },
        limits: CellLimits {
            duration: Duration::from_secs(duration_s),
            max_ops,
        },
        rounds: rounds.max(1),
        restart,
        json,
        seed,
        tls,
    };
    let Some(runtime) = runtime("mirrorkv-bench") else {
        return ExitCode::from(3);
    };
    let result = if !leases.is_empty() {
        runtime.block_on(run_lease_bench(&options, &leases, clients))
    } else if watch.is_empty() {
        runtime.block_on(run_bench(options))
    } else {
        runtime.block_on(run_watch_bench(&options, &watch, watch_rate))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorkv-bench: {e:#}");
            ExitCode::from(3)
        }
    }
}

struct BenchRun {
    bin: PathBuf,
    etcd: Option<PathBuf>,
    mirrorkv: bool,
    cells: Vec<(BenchWorkload, String, usize)>,
    /// One pair of clusters per shape, smallest key space first.
    shapes: Vec<DataShape>,
    limits: CellLimits,
    rounds: u32,
    restart: bool,
    json: Option<PathBuf>,
    seed: u64,
    /// TLS on both ports of both stores (`--tls`).
    tls: bool,
}

/// Start the stores (a pair of clusters for each key space), preload them, then run every cell
/// on each key space and store in turn (so that a noisy machine slows all of them alike),
/// printing a row per cell and store.
async fn run_bench(run: BenchRun) -> anyhow::Result<()> {
    if run.shapes.iter().any(|shape| shape.keys == 0) {
        anyhow::bail!("--keys: a key space needs at least 1 key");
    }
    let mut measured: Vec<Store> = Vec::new();
    if run.mirrorkv {
        measured.push(Store::Mirrorkv);
    }
    if run.etcd.is_some() {
        measured.push(Store::Etcd);
    }
    let mut pairs = start_and_preload(&run, &measured).await?;
    let (results, memory_by_round) = measure(&run, &pairs, &measured).await?;
    let summary = Summary {
        run: &run,
        measured: &measured,
        shapes: pairs.iter().map(|(shape, _)| *shape).collect(),
        results: &results,
    };
    if run.rounds > 1 {
        summary.print_medians();
    }
    summary.print_scale();
    summary.print_processes();
    summary.print_puts_per_entry();
    let mut restarts = Vec::new();
    if run.restart {
        println!();
        for (shape, stores) in &mut pairs {
            for &store in &measured {
                let took = stores.restart_follower(store).await?;
                println!(
                    "restart after kill -9, until it serves a linearizable read: {store:?} {:.2} s ({} keys)",
                    took.as_secs_f64(),
                    shape.keys
                );
                restarts.push(serde_json::json!({
                    "store": store,
                    "keys": shape.keys,
                    "seconds": took.as_secs_f64(),
                }));
            }
        }
    }
    if let Some(path) = &run.json {
        let report = serde_json::json!({
            "machine": machine(),
            "shapes": run.shapes,
            "cell_seconds": run.limits.duration.as_secs(),
            "results": results,
            "memory_by_round": memory_by_round,
            "restarts": restarts,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The watch cells: for each count of watchers, each store in turn, `rounds` times.
async fn run_watch_bench(run: &BenchRun, counts: &[usize], rate: u64) -> anyhow::Result<()> {
    let stores = Stores::start(
        run.mirrorkv.then_some(run.bin.as_path()),
        run.etcd.as_deref(),
        &[],
        run.tls.then_some(run.bin.as_path()),
    )
    .await?;
    let mut measured = Vec::new();
    if run.mirrorkv {
        measured.push(Store::Mirrorkv);
    }
    if run.etcd.is_some() {
        measured.push(Store::Etcd);
    }
    let mut results = Vec::new();
    let mut round = 0;
    for _ in 0..run.rounds {
        for &watchers in counts {
            for &store in &measured {
                round += 1;
                let cell = watch::WatchCell {
                    watchers,
                    writes_per_s: rate,
                    duration: run.limits.duration,
                };
                let result = watch::run_watch_cell(&stores, store, cell, round).await?;
                eprintln!("{result:?}");
                results.push(result);
            }
        }
    }
    watch::print_watch_table(&results);
    if let Some(path) = &run.json {
        let report = serde_json::json!({"machine": machine(), "watch": results});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// The lease cells: per round, each count of leases on each store in turn, then a mass expiry
/// on each; a fresh pair of clusters per round, so no round inherits another's leases.
async fn run_lease_bench(run: &BenchRun, counts: &[usize], clients: usize) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    if run.mirrorkv {
        measured.push(Store::Mirrorkv);
    }
    if run.etcd.is_some() {
        measured.push(Store::Etcd);
    }
    let (mut keepalives, mut expiries) = (Vec::new(), Vec::new());
    for round in 0..u64::from(run.rounds) {
        for &leases in counts {
            for &store in &measured {
                let stores = Stores::start(
                    run.mirrorkv.then_some(run.bin.as_path()),
                    run.etcd.as_deref(),
                    &["--max-leases".to_string(), "1000000".to_string()],
                    run.tls.then_some(run.bin.as_path()),
                )
                .await?;
                let result =
                    leases::keepalive_cell(&stores, store, leases, clients, run.limits.duration)
                        .await?;
                eprintln!("{result:?}");
                keepalives.push(result);
            }
        }
        for &store in &measured {
            let stores = Stores::start(
                run.mirrorkv.then_some(run.bin.as_path()),
                run.etcd.as_deref(),
                &[],
                run.tls.then_some(run.bin.as_path()),
            )
            .await?;
            let result = leases::expiry_cell(&stores, store, round).await?;
            eprintln!("{result:?}");
            expiries.push(result);
        }
    }
    leases::print_lease_tables(&keepalives, &expiries);
    if let Some(path) = &run.json {
        let report =
            serde_json::json!({"machine": machine(), "keepalives": keepalives, "expiry": expiries});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// A pair of clusters (the stores measured) for each key space, every key written.
async fn start_and_preload(
    run: &BenchRun,
    measured: &[Store],
) -> anyhow::Result<Vec<(DataShape, Stores)>> {
    let mut pairs: Vec<(DataShape, Stores)> = Vec::new();
    for &shape in &run.shapes {
        let stores = Stores::start(
            run.mirrorkv.then_some(run.bin.as_path()),
            run.etcd.as_deref(),
            &[],
            run.tls.then_some(run.bin.as_path()),
        )
        .await?;
        pairs.push((shape, stores));
    }
    for (shape, stores) in &pairs {
        for &store in measured {
            let took = stores.preload(store, *shape).await?;
            eprintln!(
                "preloaded {} keys of {} bytes into {store:?} in {:.1} s",
                shape.keys,
                shape.value_bytes,
                took.as_secs_f64()
            );
        }
    }
    Ok(pairs)
}

/// Every cell of every round on each key space and store in turn, a row printed per cell;
/// with several rounds, each process's memory after each round.
async fn measure(
    run: &BenchRun,
    pairs: &[(DataShape, Stores)],
    measured: &[Store],
) -> anyhow::Result<(Vec<cells::CellResult>, Vec<serde_json::Value>)> {
    let scaled = run.shapes.len() > 1;
    println!("{}", cells::table_header());
    let mut results: Vec<cells::CellResult> = Vec::new();
    let mut memory_by_round = Vec::new();
    for round in 1..=run.rounds {
        for (workload, level, clients) in &run.cells {
            for (shape, stores) in pairs {
                let mut row: Vec<Option<cells::CellResult>> = vec![None, None];
                for &store in measured {
                    let cell = Cell {
                        store,
                        workload: *workload,
                        level: level.clone(),
                        clients: *clients,
                    };
                    let result = stores.run_cell(&cell, *shape, run.limits, run.seed).await?;
                    if result.errors > 0 {
                        eprintln!(
                            "{store:?} {workload:?} {level} x{clients} ({} keys): {} errors, e.g. {:?}",
                            shape.keys, result.errors, result.error_samples
                        );
                    }
                    row[usize::from(store == Store::Etcd)] = Some(result);
                }
                println!(
                    "{}",
                    cells::format_row(&label(scaled, shape), row[0].as_ref(), row[1].as_ref())
                );
                results.extend(row.into_iter().flatten());
            }
        }
        if run.rounds > 1 {
            let served: u64 = results.iter().map(|r| r.ops).sum();
            let last = results.len().saturating_sub(measured.len() * pairs.len());
            let rss: Vec<String> = results[last..]
                .iter()
                .flat_map(|r| {
                    r.processes
                        .iter()
                        .map(move |p| (label(scaled, &r.shape), p))
                })
                .map(|(keys, p)| format!("{keys}{} {:.0}", p.node, p.rss_mib))
                .collect();
            println!(
                "after round {round} ({served} requests served in all): rss MiB: {}",
                rss.join(", ")
            );
            memory_by_round.push(
                serde_json::json!({ "round": round, "requests_served": served, "rss_mib": rss }),
            );
        }
    }
    Ok((results, memory_by_round))
}

/// A row's key-space label when several key spaces are measured, else nothing.
fn label(scaled: bool, shape: &DataShape) -> String {
    if scaled {
        format!("{} ", cells::keys_label(shape.keys))
    } else {
        String::new()
    }
}

/// The tables printed after the cells.
struct Summary<'a> {
    run: &'a BenchRun,
    measured: &'a [Store],
    shapes: Vec<DataShape>,
    results: &'a [cells::CellResult],
}

impl Summary<'_> {
    fn label(&self, shape: &DataShape) -> String {
        label(self.run.shapes.len() > 1, shape)
    }

    /// Per cell, key space and store, the round with the median ops/s (the only round when
    /// there is one).
    fn median(
        &self,
        store: Store,
        shape: &DataShape,
        (workload, level, clients): &(BenchWorkload, String, usize),
    ) -> Option<&cells::CellResult> {
        let rounds: Vec<&cells::CellResult> = self
            .results
            .iter()
            .filter(|r| {
                r.cell.store == store
                    && r.shape.keys == shape.keys
                    && r.cell.workload == *workload
                    && r.cell.level == *level
                    && r.cell.clients == *clients
            })
            .collect();
        cells::median_round(&rounds)
    }

    /// One round is at the mercy of the machine's noise; the medians are what to quote.
    fn print_medians(&self) {
        println!();
        println!(
            "median of {} rounds (each side is its round with the median ops/s):",
            self.run.rounds
        );
        println!("{}", cells::table_header());
        for cell in &self.run.cells {
            for shape in &self.shapes {
                let (mirror, etcd) = (
                    self.median(Store::Mirrorkv, shape, cell),
                    self.median(Store::Etcd, shape, cell),
                );
                if mirror.is_some() || etcd.is_some() {
                    println!("{}", cells::format_row(&self.label(shape), mirror, etcd));
                }
            }
        }
    }

    /// With several key spaces: each store's ops/s on the largest as a share of the smallest.
    fn print_scale(&self) {
        let (Some(small), Some(large)) = (self.run.shapes.first(), self.run.shapes.last()) else {
            return;
        };
        if self.run.shapes.len() < 2 {
            return;
        }
        println!();
        println!(
            "scale: ops/s with {} keys as a share of ops/s with {} keys (median rounds, measured in turn):",
            large.keys, small.keys
        );
        for cell in &self.run.cells {
            let shares: Vec<String> = self
                .measured
                .iter()
                .filter_map(|&store| {
                    let (s, l) = (
                        self.median(store, small, cell)?,
                        self.median(store, large, cell)?,
                    );
                    (s.ops_per_s > 0.0).then(|| {
                        format!("{store:?} {:.0}%", 100.0 * l.ops_per_s / s.ops_per_s)
                            .to_lowercase()
                    })
                })
                .collect();
            let (workload, level, clients) = cell;
            println!(
                "  {} x{clients}: {}",
                cells::workload_name(*workload, level),
                shares.join(", ").to_lowercase()
            );
        }
    }

    /// Each server process's CPU seconds over every cell, and its memory after the last.
    fn print_processes(&self) {
        println!();
        println!(
            "{:<18} {:>10} {:>10} {:>12}",
            "process", "cpu s", "rss MiB", "peak rss MiB"
        );
        for shape in &self.shapes {
            for &store in self.measured {
                let of_store: Vec<&cells::CellResult> = self
                    .results
                    .iter()
                    .filter(|r| r.cell.store == store && r.shape.keys == shape.keys)
                    .collect();
                let Some(last_cell) = of_store.last() else {
                    continue;
                };
                for (i, process) in last_cell.processes.iter().enumerate() {
                    let cpu: f64 = of_store
                        .iter()
                        .filter_map(|r| r.processes.get(i))
                        .map(|p| p.cpu_s)
                        .sum();
                    println!(
                        "{:<18} {:>10.1} {:>10.1} {:>12.1}",
                        format!("{}{}", self.label(shape), process.node),
                        cpu,
                        process.rss_mib,
                        process.peak_rss_mib
                    );
                }
            }
        }
    }

    /// How many puts shared a mirrorkv log entry, per put cell.
    fn print_puts_per_entry(&self) {
        let per_entry: Vec<String> = self
            .results
            .iter()
            .filter(|r| r.cell.workload == BenchWorkload::Put)
            .filter_map(|r| {
                let entries = r.log_entries.filter(|&e| e > 0)?;
                Some(format!(
                    "{}{} cli {:.1}",
                    self.label(&r.shape),
                    r.cell.clients,
                    r.ops as f64 / entries as f64
                ))
            })
            .collect();
        if !per_entry.is_empty() {
            println!("mirrorkv puts per log entry: {}", per_entry.join(", "));
        }
    }
}

/// What the machine is, for the record.
fn machine() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "memory_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
