//! `jepsen-lite`: `check FILE` decides whether a recorded history is linearizable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jepsen_lite::attack::{self, AttackOptions};
use jepsen_lite::cluster::{default_mirrorkv_bin, runtime};
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
    Check(CheckArgs),
    /// Run a workload against a fresh real cluster under faults and check what clients saw.
    /// Exit code: 0 valid, 1 not valid, 2 unknown, 3 the harness itself failed.
    Test(TestArgs),
    /// Run the attacks that once stopped mirrorkv (a poison-pill transaction, then 1,100 idle
    /// API connections) against a fresh cluster with default settings; after each, every node
    /// must still take writes. Exit code: 0 all held, 1 something did not, 3 the harness failed.
    Attack(AttackArgs),
}

#[derive(Args)]
struct CheckArgs {
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
}

#[derive(Args)]
struct TestArgs {
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
    /// Where history, logs and results go. Each run starts a fresh cluster in its `nodes`
    /// folder: a previous run's nodes there are removed first.
    #[arg(long, default_value = "jepsen-out")]
    out: PathBuf,
    /// Per-request client timeout.
    #[arg(long, default_value_t = 2000)]
    request_timeout_ms: u64,
    /// The nodes' snapshot threshold: small by default, so that snapshots are built and
    /// installed under the faults too.
    #[arg(long, default_value_t = 200)]
    snapshot_threshold_entries: u64,
    /// Watchers of the watch workload, spread over the nodes.
    #[arg(long, default_value_t = 4)]
    watchers: usize,
    /// A planted bug, to see the lock checker catch it: the nodes end leases this many ms
    /// before their TTL.
    #[arg(long, default_value_t = 0, hide = true)]
    plant_lease_early_ms: u64,
    /// TLS on both ports of every node (certificates from `mirrorkv certs init`), client
    /// certificates required; the run's clients use them.
    #[arg(long)]
    secure: bool,
}

#[derive(Args)]
struct AttackArgs {
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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Attack(args) => run_attack(args),
        Command::Test(args) => run_test(args),
        Command::Check(args) => run_check(args),
    }
}

/// `jepsen-lite attack`: the findings, and 0 if the cluster held.
fn run_attack(args: AttackArgs) -> ExitCode {
    let AttackArgs {
        bin,
        nodes,
        idle_connections,
        json,
    } = args;
    let options = AttackOptions {
        nodes,
        idle_connections,
        ..AttackOptions::new(bin.unwrap_or_else(default_mirrorkv_bin))
    };
    let Some(runtime) = runtime("jepsen-lite") else {
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

/// `jepsen-lite test`: the run's summary and verdict, and the command that reproduces it.
fn run_test(args: TestArgs) -> ExitCode {
    let TestArgs {
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
        watchers,
        plant_lease_early_ms,
        secure,
    } = args;
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
        watchers,
        plant_watch_drop: false,
        plant_lease_early_ms,
        secure,
    };
    let reproduce = format!(
        "jepsen-lite test --nodes {nodes} --time-limit {time_limit} --rate {rate} --concurrency {concurrency} --keys {keys} --ops-per-key {ops_per_key} --check-time-limit-s {check_time_limit_s} --workload {} --nemesis {} --consistency {consistency} --seed {seed} --snapshot-threshold-entries {snapshot_threshold_entries} --watchers {watchers}{} --out {}",
        workload.to_possible_value().map_or("?".into(), |v| v.get_name().to_string()),
        nemesis.to_possible_value().map_or("?".into(), |v| v.get_name().to_string()),
        if secure { " --secure" } else { "" },
        out.display()
    );
    let Some(runtime) = runtime("jepsen-lite") else {
        return ExitCode::from(3);
    };
    match runtime.block_on(harness::run(options)) {
        Ok(outcome) => {
            print_outcome(&outcome);
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

/// `jepsen-lite check FILE`: the verdict, and for each key that is not linearizable, why.
fn run_check(args: CheckArgs) -> ExitCode {
    let CheckArgs {
        file,
        model,
        time_limit_s,
        max_states_per_key,
        json,
        failed_cas,
    } = args;
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
        print_violations(&result, &operations);
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

/// What a `jepsen-lite test` run saw, and its verdict.
fn print_outcome(outcome: &harness::TestOutcome) {
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
}

/// For each key that is not linearizable: the longest prefix that is, and the operation that
/// cannot be placed after it.
fn print_violations(result: &jepsen_lite::CheckResult, operations: &[jepsen_lite::Operation]) {
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
}

fn describe(op: &jepsen_lite::Operation) -> String {
    format!("process {} {:?} -> {:?}", op.process, op.input, op.output)
}
