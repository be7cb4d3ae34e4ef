//! `jepsen-lite`: `check FILE` decides whether a recorded history is linearizable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use jepsen_lite::attack::{self, AttackOptions};
use jepsen_lite::bench::{self, BenchWorkload, Cell, CellLimits, DataShape, Store, Stores};
use jepsen_lite::harness::{self, TestOptions, Workload};
use jepsen_lite::model::{KeyValue, Register};
use jepsen_lite::nemesis::NemesisKind;
use jepsen_lite::{check, parse, CheckOptions, Verdict};

#[derive(Parser)]
#[command(
    name = "jepsen-lite",
    version,
    about = "Linearizability checking for mirrorkv (and Jepsen histories)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    Register,
    Kv,
}

#[derive(Subcommand)]
enum Command {
    /// Check a history (JSON lines, Jepsen/Knossos EDN, or a Jepsen console log).
    /// Exit code: 0 linearizable, 1 not, 2 unknown, 3 the history could not be read.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "register")]
        model: ModelName,
        /// Give up (verdict unknown) after this long.
        #[arg(long, default_value_t = 60)]
        time_limit_s: u64,
        /// Give up on a key (verdict unknown) once its search has memoized this many states:
        /// bounds the checker's memory (about 100 bytes a state, per thread).
        #[arg(long, default_value_t = jepsen_lite::DEFAULT_MAX_STATES_PER_KEY)]
        max_states_per_key: usize,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
        /// How a `:fail :cas` of a Jepsen history is read. Default: the format's own reading
        /// (EDN: Jepsen's "did not happen", dropped; the console log: "compare failed").
        #[arg(long, value_enum)]
        failed_cas: Option<parse::FailedCas>,
    },
    /// Run a workload against a fresh real cluster under faults and check what clients saw.
    /// Exit code: 0 valid, 1 not valid, 2 unknown, 3 the harness itself failed.
    Test {
        /// The `mirrorkv` binary (default: next to this one).
        #[arg(long)]
        bin: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        /// Operations per second, all clients together.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        concurrency: u64,
        /// Keys written at a time. The set rotates every 5 s, or sooner at high rates so that
        /// each key sees about `--ops-per-key` operations.
        #[arg(long, default_value_t = 3)]
        keys: u64,
        /// About how many operations each register key sees before the set rotates (not
        /// below 1 s a set). Open (`info`) writes make the check of a key exponential in
        /// their number; bounding a key's operations keeps a long, fast run checkable.
        #[arg(long, default_value_t = 200)]
        ops_per_key: u64,
        /// The checker's budget at the end of a register run; past it the verdict is unknown.
        #[arg(long, default_value_t = 120)]
        check_time_limit_s: u64,
        #[arg(long, value_enum, default_value = "register")]
        workload: Workload,
        #[arg(long, value_enum, default_value = "partition")]
        nemesis: NemesisKind,
        /// The read level clients use.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        #[arg(long)]
        seed: Option<u64>,
        /// Where history, logs and results go.
        #[arg(long, default_value = "jepsen-out")]
        out: PathBuf,
        /// Per-request client timeout.
        #[arg(long, default_value_t = 2000)]
        request_timeout_ms: u64,
        /// The nodes' snapshot threshold: small by default, so that snapshots are built and
        /// installed under the faults too.
        #[arg(long, default_value_t = 200)]
        snapshot_threshold_entries: u64,
    },
    /// Run the attacks that once stopped mirrorkv (a poison-pill transaction, then 1,100 idle
    /// API connections) against a fresh cluster with default settings; after each, every node
    /// must still take writes. Exit code: 0 all held, 1 something did not, 3 the harness failed.
    Attack {
        /// The `mirrorkv` binary (default: next to this one).
        #[arg(long)]
        bin: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Idle connections opened to one node's API.
        #[arg(long, default_value_t = 1100)]
        idle_connections: usize,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure mirrorkv and etcd (3 nodes each, started here) under the same closed-loop
    /// clients; prints ops/s and p50/p99/p99.9 per cell and writes JSON.
    Bench {
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
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Attack {
            bin,
            nodes,
            idle_connections,
            json,
        } => {
            let options = AttackOptions {
                nodes,
                idle_connections,
                ..AttackOptions::new(bin.unwrap_or_else(default_mirrorkv_bin))
            };
            let Some(runtime) = runtime() else {
                return ExitCode::from(3);
            };
            match runtime.block_on(attack::run(options)) {
                Ok(report) => {
                    if json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(text) => println!("{text}"),
                            Err(e) => eprintln!("jepsen-lite: {e}"),
                        }
                    }
                    let failed = report.findings.iter().filter(|f| !f.passed).count();
                    println!(
                        "attack: {} checks, {failed} failed: {}",
                        report.findings.len(),
                        if report.passed() {
                            "the cluster held"
                        } else {
                            "NOT HELD"
                        }
                    );
                    ExitCode::from(if report.passed() { 0 } else { 1 })
                }
                Err(e) => {
                    eprintln!("jepsen-lite attack: harness failure: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Command::Bench {
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
        } => {
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
                    match bench::find_etcd(etcd) {
                        Some(etcd) => Some(etcd),
                        None => {
                            eprintln!("jepsen-lite: no etcd binary (install etcd-server, or pass --etcd, or --store mirrorkv)");
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
            };
            let Some(runtime) = runtime() else {
                return ExitCode::from(3);
            };
            match runtime.block_on(run_bench(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("jepsen-lite bench: {e:#}");
                    ExitCode::from(3)
                }
            }
        }
        Command::Test {
            bin,
            nodes,
            time_limit,
            rate,
            concurrency,
            keys,
            ops_per_key,
            check_time_limit_s,
            workload,
            nemesis,
            consistency,
            seed,
            out,
            request_timeout_ms,
            snapshot_threshold_entries,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            let bin = bin.unwrap_or_else(default_mirrorkv_bin);
            let options = TestOptions {
                bin,
                workload,
                nodes,
                time_limit_s: time_limit,
                rate,
                concurrency,
                keys,
                ops_per_key,
                check_time_limit_s,
                nemesis,
                consistency: consistency.clone(),
                seed,
                out: out.clone(),
                request_timeout_ms,
                snapshot_threshold_entries,
            };
            let reproduce = format!(
                "jepsen-lite test --nodes {nodes} --time-limit {time_limit} --rate {rate} --concurrency {concurrency} --keys {keys} --ops-per-key {ops_per_key} --check-time-limit-s {check_time_limit_s} --workload {} --nemesis {} --consistency {consistency} --seed {seed} --snapshot-threshold-entries {snapshot_threshold_entries} --out {}",
                workload.to_possible_value().map_or("?".into(), |v| v.get_name().to_string()),
                nemesis.to_possible_value().map_or("?".into(), |v| v.get_name().to_string()),
                out.display()
            );
            let Some(runtime) = runtime() else {
                return ExitCode::from(3);
            };
            match runtime.block_on(harness::run(options)) {
                Ok(outcome) => {
                    println!(
                        "operations: {} (ok {}, fail {}, info {}), faults: {}",
                        outcome.operations,
                        outcome.ok,
                        outcome.fail,
                        outcome.info,
                        outcome.faults.len()
                    );
                    if let Some(report) = &outcome.invariant {
                        println!(
                            "invariant: {} reads, lost {:?}, unexpected {:?}, bad reads {:?}",
                            report.reads, report.lost, report.unexpected, report.bad_reads
                        );
                    }
                    println!(
                        "verdict: {}",
                        if outcome.verdict == Verdict::Linearizable {
                            "valid".to_string()
                        } else {
                            format!("{:?}", outcome.verdict)
                        }
                    );
                    println!("reproduce: {reproduce}");
                    match outcome.verdict {
                        Verdict::Linearizable => ExitCode::SUCCESS,
                        Verdict::NotLinearizable => ExitCode::from(1),
                        Verdict::Unknown => ExitCode::from(2),
                    }
                }
                Err(e) => {
                    eprintln!("jepsen-lite: the harness failed (not a verdict on the store): {e}");
                    println!("reproduce: {reproduce}");
                    ExitCode::from(3)
                }
            }
        }
        Command::Check {
            file,
            model,
            time_limit_s,
            max_states_per_key,
            json,
            failed_cas,
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("jepsen-lite: reading {}: {e}", file.display());
                    return ExitCode::from(3);
                }
            };
            let operations = match parse::parse_with(&text, failed_cas)
                .map_err(|e| e.to_string())
                .and_then(|h| h.operations().map_err(|e| e.to_string()))
            {
                Ok(ops) => ops,
                Err(e) => {
                    eprintln!("jepsen-lite: {}: {e}", file.display());
                    return ExitCode::from(3);
                }
            };
            let options = CheckOptions {
                time_limit: Duration::from_secs(time_limit_s),
                max_states_per_key,
                ..CheckOptions::default()
            };
            let result = match model {
                ModelName::Register => check(&Register, &operations, options),
                ModelName::Kv => check(&KeyValue, &operations, options),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).expect("result serializes")
                );
            } else {
                for key in &result.keys {
                    if let Some(violation) = &key.violation {
                        let name = if key.key.is_empty() {
                            "(the register)"
                        } else {
                            key.key.as_str()
                        };
                        println!("key {name}: not linearizable");
                        println!(
                            "  longest linearizable prefix ({} ops):",
                            violation.longest_prefix.len()
                        );
                        for (id, state) in &violation.longest_prefix {
                            println!("    {:?} -> state {state}", describe(&operations[*id]));
                        }
                        println!(
                            "  cannot place: {:?} in state {}",
                            describe(&operations[violation.failed_op]),
                            violation.state_before_failed_op
                        );
                    }
                }
                println!(
                    "{}: {:?} ({} operations, {} keys, {} ms)",
                    file.display(),
                    result.verdict,
                    result.operations,
                    result.keys.len(),
                    result.elapsed_ms
                );
            }
            match result.verdict {
                Verdict::Linearizable => ExitCode::SUCCESS,
                Verdict::NotLinearizable => ExitCode::from(1),
                Verdict::Unknown => ExitCode::from(2),
            }
        }
    }
}

fn describe(op: &jepsen_lite::Operation) -> String {
    format!("process {} {:?} -> {:?}", op.process, op.input, op.output)
}

/// `mirrorkv` next to this binary, else on the PATH.
fn default_mirrorkv_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mirrorkv")))
        .unwrap_or_else(|| PathBuf::from("mirrorkv"))
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
}

/// Start the stores (a pair of clusters for each key space), preload them, then run every cell
/// on each key space and store in turn (so that a noisy machine slows all of them alike),
/// printing a row per cell and store.
async fn run_bench(run: BenchRun) -> anyhow::Result<()> {
    if run.shapes.iter().any(|shape| shape.keys == 0) {
        anyhow::bail!("--keys: a key space needs at least 1 key");
    }
    let scaled = run.shapes.len() > 1;
    let label = |shape: &DataShape| {
        if scaled {
            format!("{} ", bench::keys_label(shape.keys))
        } else {
            String::new()
        }
    };
    let mut pairs: Vec<(DataShape, Stores)> = Vec::new();
    for &shape in &run.shapes {
        let stores = Stores::start(
            run.mirrorkv.then_some(run.bin.as_path()),
            run.etcd.as_deref(),
            &[],
        )
        .await?;
        pairs.push((shape, stores));
    }
    let mut measured: Vec<Store> = Vec::new();
    if run.mirrorkv {
        measured.push(Store::Mirrorkv);
    }
    if run.etcd.is_some() {
        measured.push(Store::Etcd);
    }
    for (shape, stores) in &pairs {
        for &store in &measured {
            let took = stores.preload(store, *shape).await?;
            eprintln!(
                "preloaded {} keys of {} bytes into {store:?} in {:.1} s",
                shape.keys,
                shape.value_bytes,
                took.as_secs_f64()
            );
        }
    }
    println!("{}", bench::table_header());
    let mut results: Vec<bench::CellResult> = Vec::new();
    let mut memory_by_round = Vec::new();
    for round in 1..=run.rounds {
        for (workload, level, clients) in &run.cells {
            for (shape, stores) in &pairs {
                let mut row: Vec<Option<bench::CellResult>> = vec![None, None];
                for &store in &measured {
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
                    bench::format_row(&label(shape), row[0].as_ref(), row[1].as_ref())
                );
                results.extend(row.into_iter().flatten());
            }
        }
        if run.rounds > 1 {
            let served: u64 = results.iter().map(|r| r.ops).sum();
            let last = results.len().saturating_sub(measured.len() * pairs.len());
            let rss: Vec<String> = results[last..]
                .iter()
                .flat_map(|r| r.processes.iter().map(move |p| (label(&r.shape), p)))
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
    // Per cell, key space and store, the round with the median ops/s (the only round when
    // there is one).
    let median = |store: Store,
                  shape: &DataShape,
                  (workload, level, clients): &(BenchWorkload, String, usize)| {
        let rounds: Vec<&bench::CellResult> = results
            .iter()
            .filter(|r| {
                r.cell.store == store
                    && r.shape.keys == shape.keys
                    && r.cell.workload == *workload
                    && r.cell.level == *level
                    && r.cell.clients == *clients
            })
            .collect();
        bench::median_round(&rounds)
    };
    if run.rounds > 1 {
        // One round is at the mercy of the machine's noise; the medians are what to quote.
        println!();
        println!(
            "median of {} rounds (each side is its round with the median ops/s):",
            run.rounds
        );
        println!("{}", bench::table_header());
        for cell in &run.cells {
            for (shape, _) in &pairs {
                let (mirror, etcd) = (
                    median(Store::Mirrorkv, shape, cell),
                    median(Store::Etcd, shape, cell),
                );
                if mirror.is_some() || etcd.is_some() {
                    println!("{}", bench::format_row(&label(shape), mirror, etcd));
                }
            }
        }
    }
    if let (true, Some(small), Some(large)) = (scaled, run.shapes.first(), run.shapes.last()) {
        println!();
        println!(
            "scale: ops/s with {} keys as a share of ops/s with {} keys (median rounds, measured in turn):",
            large.keys, small.keys
        );
        for cell in &run.cells {
            let shares: Vec<String> = measured
                .iter()
                .filter_map(|&store| {
                    let (s, l) = (median(store, small, cell)?, median(store, large, cell)?);
                    (s.ops_per_s > 0.0).then(|| {
                        format!("{store:?} {:.0}%", 100.0 * l.ops_per_s / s.ops_per_s)
                            .to_lowercase()
                    })
                })
                .collect();
            let (workload, level, clients) = cell;
            println!(
                "  {} x{clients}: {}",
                bench::workload_name(*workload, level),
                shares.join(", ").to_lowercase()
            );
        }
    }
    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>12}",
        "process", "cpu s", "rss MiB", "peak rss MiB"
    );
    for (shape, _) in &pairs {
        for &store in &measured {
            let of_store: Vec<&bench::CellResult> = results
                .iter()
                .filter(|r| r.cell.store == store && r.shape.keys == shape.keys)
                .collect();
            if let Some(last_cell) = of_store.last() {
                for (i, process) in last_cell.processes.iter().enumerate() {
                    let cpu: f64 = of_store
                        .iter()
                        .filter_map(|r| r.processes.get(i))
                        .map(|p| p.cpu_s)
                        .sum();
                    println!(
                        "{:<18} {:>10.1} {:>10.1} {:>12.1}",
                        format!("{}{}", label(shape), process.node),
                        cpu,
                        process.rss_mib,
                        process.peak_rss_mib
                    );
                }
            }
        }
    }
    let per_entry: Vec<String> = results
        .iter()
        .filter(|r| r.cell.workload == BenchWorkload::Put)
        .filter_map(|r| {
            let entries = r.log_entries.filter(|&e| e > 0)?;
            Some(format!(
                "{}{} cli {:.1}",
                label(&r.shape),
                r.cell.clients,
                r.ops as f64 / entries as f64
            ))
        })
        .collect();
    if !per_entry.is_empty() {
        println!("mirrorkv puts per log entry: {}", per_entry.join(", "));
    }
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

/// A multi-threaded tokio runtime, or `None` after saying why there is none.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("jepsen-lite: {e}");
            None
        }
    }
}
