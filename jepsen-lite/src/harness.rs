//! `jepsen-lite test`: start a real cluster with a proxy on every link, run a workload while the
//! nemesis injects faults, heal everything, read everything back, and check the history.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorkv_client::{Client, ClientError, Compare, Consistency, Txn, TxnOp};
use serde::Serialize;
use serde_json::json;

use crate::checker::{check, CheckOptions, CheckResult, Verdict};
use crate::cluster::{Cluster, ClusterError, ClusterOptions, Delay};
use crate::history::{Event, EventType, History, Input, Output};
use crate::model::KeyValue;
use crate::nemesis::{self, Fault, NemesisKind, PartitionShape, Window};
use crate::workloads::{self, BankTally, ClientContext, InvariantReport, SetTally};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Read, write and compare-and-set on a rotating set of keys; checked for linearizability.
    Register,
    /// Unique adds; every acknowledged add must be present at the end.
    Set,
    /// Transfers between accounts in transactions; every read must see the same total.
    Bank,
    /// Unique puts under one prefix while watchers on several nodes stream it, dropping and
    /// resuming their connections; every watcher must see exactly the log's changes.
    Watch,
    /// Clients on every node take one lock (a leased key, as `mirrorkv ctl lock` does), write a
    /// register guarded by their fencing token, and release, crash or pause; no two holders
    /// may both write, tokens must grow, and no lease may end early.
    Lock,
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct TestOptions {
    pub bin: PathBuf,
    pub workload: Workload,
    pub nodes: u64,
    pub time_limit_s: u64,
    /// Operations per second, all clients together.
    pub rate: u64,
    pub concurrency: u64,
    pub keys: u64,
    /// About how many operations a register key sees before the key set rotates.
    pub ops_per_key: u64,
    /// The checker's budget at the end of a register run.
    pub check_time_limit_s: u64,
    pub nemesis: NemesisKind,
    /// The read level clients use.
    pub consistency: String,
    pub seed: u64,
    pub out: PathBuf,
    /// Per-request client timeout.
    pub request_timeout_ms: u64,
    /// The nodes' `--snapshot-threshold-entries`: small, so that a run builds many snapshots
    /// and a node that was killed or cut off catches up through a snapshot install.
    pub snapshot_threshold_entries: u64,
    /// Watchers of a watch run.
    pub watchers: usize,
    /// A planted bug, for the checker's own test: watchers drop the first event after each
    /// resume.
    #[serde(skip)]
    pub plant_watch_drop: bool,
    /// TLS on both ports of every node and client certificates required; the run's clients
    /// use them (the cluster fixture's `secure`).
    pub secure: bool,
    /// A planted bug, for the lock checker's own test: the nodes end leases this many ms
    /// before their TTL (`--fault-lease-early-ms`). 0: none.
    #[serde(skip)]
    pub plant_lease_early_ms: u64,
}

impl TestOptions {
    /// How long one set of register keys is used: enough for each key to see about
    /// `ops_per_key` operations at `rate`, between 1 s and 5 s.
    pub fn key_window_ms(&self) -> u64 {
        (self
            .ops_per_key
            .saturating_mul(self.keys)
            .saturating_mul(1000)
            / self.rate.max(1))
        .clamp(1000, 5000)
    }
}

/// What a run found.
#[derive(Debug, Serialize)]
pub struct TestOutcome {
    pub verdict: Verdict,
    pub operations: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub faults: Vec<Window>,
    /// The linearizability check (register workload).
    pub check: Option<CheckResult>,
    /// The invariant check (set and bank workloads).
    pub invariant: Option<InvariantReport>,
}

/// Shared history recorder.
#[derive(Clone)]
struct Recorder {
    started: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    fn record(&self, mut event: Event) {
        event.time_ns = Some(self.started.elapsed().as_nanos() as u64);
        self.events.lock().expect("history lock").push(event);
    }
}

fn event(
    process: u64,
    event_type: EventType,
    key: &str,
    input: &Input,
    output: Option<Output>,
) -> Event {
    Event {
        process,
        event_type,
        key: key.to_string(),
        input: input.clone(),
        output,
        time_ns: None,
    }
}

/// How an operation ended, as the client saw it.
enum Ended {
    Ok(Output),
    /// Certainly no effect.
    Fail,
    /// Unknown.
    Info,
}

/// A simple deterministic generator (splitmix64) so that one seed decides the workload too.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

async fn run_op(client: &Client, key: &str, input: &Input) -> Ended {
    let written = |result: Result<Output, ClientError>| match result {
        Ok(output) => Ended::Ok(output),
        Err(e) if !e.write_may_have_applied() => Ended::Fail,
        Err(_) => Ended::Info,
    };
    match input {
        // A read that failed had no effect either way.
        Input::Read => match client.get(key).await {
            Ok(read) => Ended::Ok(Output::Read {
                mod_index: read.value.as_ref().map(|kv| kv.mod_index),
                value: read
                    .value
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            }),
            Err(_) => Ended::Fail,
        },
        Input::Write { value } => written(
            client
                .put(key, value.clone().unwrap_or_default())
                .await
                .map(|put| Output::Written {
                    index: Some(put.index),
                }),
        ),
        Input::Cas { from, to } => {
            let txn = Txn {
                compare: vec![match from {
                    Some(value) => Compare::Value {
                        key: key.to_string(),
                        value: value.clone().into_bytes(),
                    },
                    None => Compare::Exists {
                        key: key.to_string(),
                        exists: false,
                    },
                }],
                success: vec![TxnOp::Put {
                    key: key.to_string(),
                    value: to.clone().unwrap_or_default().into_bytes(),
                }],
                failure: Vec::new(),
            };
            written(client.txn(&txn).await.map(|result| Output::Cas {
                applied: result.succeeded,
                index: Some(result.index).filter(|_| result.succeeded),
            }))
        }
        Input::PutIf { .. } => Ended::Fail,
    }
}

/// One `register` client: a loop of operations, paced to its share of the rate, until `stop`.
async fn client(slot: u64, options: Arc<TestOptions>, ctx: ClientContext, recorder: Recorder) {
    let mut rng = Rng(options.seed ^ (slot + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut process = slot;
    let mut next_at = tokio::time::Instant::now();
    let mut counter = 0u64;
    let mut last_value: Option<String> = None;
    for _ in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        // A rotating window of keys: each key sees a burst of operations, then rests.
        let epoch = recorder.started.elapsed().as_millis() as u64 / options.key_window_ms();
        let key = format!("r{}", epoch * options.keys + rng.below(options.keys));
        counter += 1;
        let input = match rng.below(4) {
            0 | 1 => Input::Read,
            2 => Input::Write {
                value: Some(format!("{slot}-{counter}")),
            },
            _ => Input::Cas {
                from: last_value.clone(),
                to: Some(format!("{slot}-{counter}")),
            },
        };
        let node = &ctx.clients[rng.below(ctx.clients.len() as u64) as usize];
        recorder.record(event(process, EventType::Invoke, &key, &input, None));
        let ended = tokio::time::timeout(
            Duration::from_millis(options.request_timeout_ms),
            run_op(node, &key, &input),
        )
        .await
        .unwrap_or(if matches!(input, Input::Read) {
            Ended::Fail
        } else {
            Ended::Info
        });
        match ended {
            Ended::Ok(output) => {
                if let Output::Read { value, .. } = &output {
                    last_value = value.clone();
                }
                recorder.record(event(process, EventType::Ok, &key, &input, Some(output)));
            }
            Ended::Fail => recorder.record(event(process, EventType::Fail, &key, &input, None)),
            Ended::Info => {
                recorder.record(event(process, EventType::Info, &key, &input, None));
                // A crashed process never acts again: continue as a new one.
                process += options.concurrency;
            }
        }
    }
}

/// Restart every follower of the current leader with its clocks at `rate` (1.0: normal),
/// one at a time so that the leader keeps its quorum; returns the leader.
async fn restart_followers_at(cluster: &mut Cluster, rate: f64) -> Result<u64, ClusterError> {
    let leader = cluster.wait_for_leader().await?;
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        if cluster.is_paused(id) {
            cluster.resume(id)?;
        }
        if cluster.running().contains(&id) {
            cluster.kill(id)?;
        }
        cluster.set_clock_rate(id, (rate != 1.0).then_some(rate))?;
        cluster.restart(id).await?;
    }
    Ok(leader)
}

async fn apply_fault(cluster: &mut Cluster, fault: &Fault) -> Result<(), ClusterError> {
    match fault {
        Fault::ClockSkew {
            followers_rate_permille,
        } => {
            let rate = *followers_rate_permille as f64 / 1000.0;
            let leader = restart_followers_at(cluster, rate).await?;
            let others: Vec<u64> = cluster
                .ids()
                .into_iter()
                .filter(|&id| id != leader)
                .collect();
            eprintln!("nemesis: followers {others:?} of leader {leader} now run at {rate}x; cutting the leader off");
            cluster.partition(&[vec![leader], others])
        }
        Fault::Kill(id) => cluster.kill(*id),
        Fault::Pause(id) => cluster.pause(*id),
        Fault::Delay {
            latency_ms,
            jitter_ms,
        } => {
            cluster.delay_links(Delay {
                latency_ms: *latency_ms,
                jitter_ms: *jitter_ms,
            });
            Ok(())
        }
        Fault::Partition(shape) => {
            let ids = cluster.ids();
            let others = |cut: &[u64]| {
                ids.iter()
                    .copied()
                    .filter(|i| !cut.contains(i))
                    .collect::<Vec<_>>()
            };
            match shape {
                PartitionShape::NodeAlone(id) => cluster.partition(&[vec![*id], others(&[*id])]),
                PartitionShape::LeaderAlone => {
                    let leader = cluster.wait_for_leader().await?;
                    cluster.partition(&[vec![leader], others(&[leader])])
                }
                PartitionShape::Halves(a, b) => cluster.partition(&[a.clone(), b.clone()]),
                // The bridge keeps both sides' links; only left↔right is cut.
                PartitionShape::Bridge { left, right, .. } => {
                    let mut links = Vec::new();
                    for l in left {
                        for r in right {
                            links.push((*l, *r));
                            links.push((*r, *l));
                        }
                    }
                    cluster.cut_links(&links);
                    Ok(())
                }
                PartitionShape::OneWay { from } => {
                    let links: Vec<(u64, u64)> =
                        others(&[*from]).into_iter().map(|to| (*from, to)).collect();
                    cluster.cut_links(&links);
                    Ok(())
                }
            }
        }
    }
}

async fn heal_fault(cluster: &mut Cluster, fault: &Fault) -> Result<(), ClusterError> {
    match fault {
        Fault::Kill(id) => cluster.restart(*id).await,
        Fault::Pause(id) => cluster.resume(*id),
        Fault::Partition(_) | Fault::Delay { .. } => {
            cluster.heal();
            Ok(())
        }
        Fault::ClockSkew { .. } => {
            cluster.heal();
            for id in cluster.ids() {
                if cluster.clock_rate(id).is_some() {
                    cluster.kill(id)?;
                    cluster.set_clock_rate(id, None)?;
                    cluster.restart(id).await?;
                }
            }
            Ok(())
        }
    }
}

impl TestOutcome {
    /// The verdict and counts of a run: the checker's verdict for a register run, the
    /// invariant's for the others; ok/fail/info from the history, or from the invariant's tally.
    fn judged(
        history: &History,
        faults: Vec<Window>,
        check: Option<CheckResult>,
        invariant: Option<InvariantReport>,
    ) -> TestOutcome {
        let count = |t: EventType| history.events.iter().filter(|e| e.event_type == t).count();
        let verdict = match (&check, &invariant) {
            (Some(check), _) => check.verdict,
            (None, Some(report)) if report.valid() => Verdict::Linearizable,
            (None, Some(_)) => Verdict::NotLinearizable,
            (None, None) => Verdict::Unknown,
        };
        let (ok, fail, info) = match &invariant {
            Some(report) => (
                report.acknowledged,
                report
                    .attempted
                    .saturating_sub(report.acknowledged + report.unknown),
                report.unknown,
            ),
            None => (
                count(EventType::Ok),
                count(EventType::Fail),
                count(EventType::Info),
            ),
        };
        TestOutcome {
            verdict,
            operations: ok + fail + info,
            ok,
            fail,
            info,
            faults,
            check,
            invariant,
        }
    }
}

/// The nodes' folder of a run under `out`, emptied: a previous run's cluster left there would
/// otherwise start again with its data, and every checker assumes the run began on an empty
/// store (the watch checker, for one, reported the old keys' `prev_mod_index` as bad reads).
fn fresh_nodes_dir(out: &Path) -> std::io::Result<PathBuf> {
    let dir = out.join("nodes");
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(dir)
}

/// A fresh cluster for the run: every link through a proxy, the nodes' deadline a little below
/// the clients' (so a node answers before its client gives up), and small snapshots.
async fn start_cluster(options: &TestOptions) -> Result<Cluster, ClusterError> {
    let mut extra_args: Vec<String> = vec![
        "--request-timeout-ms".into(),
        options
            .request_timeout_ms
            .saturating_sub(200)
            .max(100)
            .to_string(),
        "--snapshot-threshold-entries".into(),
        options.snapshot_threshold_entries.to_string(),
    ];
    // Only when planted, so that a build from before the flag still runs every other test.
    if options.plant_lease_early_ms > 0 {
        extra_args.push("--fault-lease-early-ms".into());
        extra_args.push(options.plant_lease_early_ms.to_string());
    }
    Cluster::start(ClusterOptions {
        bin: options.bin.clone(),
        nodes: options.nodes,
        extra_args,
        node_args: Default::default(),
        proxies: true,
        dir: Some(fresh_nodes_dir(&options.out)?),
        clock_rates: Default::default(),
        secure: options.secure,
        env: Vec::new(),
    })
    .await
}

/// Apply each fault of the schedule at its time and heal it at its end.
async fn run_faults(
    cluster: &mut Cluster,
    faults: &[Window],
    recorder: &Recorder,
) -> Result<(), ClusterError> {
    let started = recorder.started;
    for window in faults {
        tokio::time::sleep_until((started + Duration::from_millis(window.start_ms)).into()).await;
        eprintln!(
            "[{:>6.1}s] nemesis: {:?} for {} ms",
            started.elapsed().as_secs_f64(),
            window.fault,
            window.duration_ms
        );
        apply_fault(cluster, &window.fault).await?;
        tokio::time::sleep_until(
            (started + Duration::from_millis(window.start_ms + window.duration_ms)).into(),
        )
        .await;
        heal_fault(cluster, &window.fault).await?;
        eprintln!(
            "[{:>6.1}s] nemesis: healed; {} events so far",
            started.elapsed().as_secs_f64(),
            recorder.events.lock().expect("lock").len()
        );
    }
    Ok(())
}

/// Deadline of each read of the final phase, in milliseconds.
const FINAL_READ_TIMEOUT_MS: u64 = 10_000;

/// The end of a watch run: the watchers cover the final index, then are judged; what each
/// received goes to `watchers.json`.
async fn finish_watch(
    options: &TestOptions,
    apis: &[String],
    tls: &crate::cluster::ClientAccess,
    run: crate::watch::WatchRun,
) -> Result<InvariantReport, ClusterError> {
    let reader = workloads::node_client(
        &apis[0],
        Duration::from_millis(FINAL_READ_TIMEOUT_MS),
        "linearizable",
        tls,
    )
    .map_err(ClusterError::Misuse)?;
    let (report, logs) = run.finish(&reader).await.map_err(ClusterError::Misuse)?;
    let logs = serde_json::to_string(&logs).expect("watcher logs serialize");
    std::fs::write(options.out.join("watchers.json"), logs)?;
    Ok(report)
}

/// Judge a lock run, and write every holding to `lock.json`. The early-expiry check is skipped
/// under the clock nemesis (see `lock`).
fn finish_lock(
    options: &TestOptions,
    tally: &Mutex<crate::lock::LockTally>,
) -> Result<InvariantReport, ClusterError> {
    let tally = tally.lock().expect("tally");
    let report = crate::lock::judge_lock(&tally, options.nemesis != NemesisKind::Clock);
    let held = serde_json::to_string_pretty(&tally.held).expect("held serializes");
    std::fs::write(options.out.join("lock.json"), held)?;
    Ok(report)
}

/// The run's history (JSON lines and EDN) and its HTML report, in the output folder.
fn write_artifacts(
    options: &TestOptions,
    history: &History,
    check: Option<&CheckResult>,
    faults: &[Window],
) -> Result<(), ClusterError> {
    let mut jsonl = String::new();
    for e in &history.events {
        jsonl.push_str(&serde_json::to_string(e).expect("events serialize"));
        jsonl.push('\n');
    }
    std::fs::write(options.out.join("history.jsonl"), jsonl)?;
    std::fs::write(
        options.out.join("history.edn"),
        crate::edn_out::history(&history.events),
    )?;
    let operations = history.operations().unwrap_or_default();
    let title = format!(
        "jepsen-lite: {:?} workload, {:?} nemesis, {} reads, seed {}",
        options.workload, options.nemesis, options.consistency, options.seed
    );
    let page = crate::report::render(&history.events, &operations, check, faults, &title);
    std::fs::write(options.out.join("report.html"), page)?;
    Ok(())
}

/// The tallies the set and bank workloads keep as they run.
#[derive(Clone)]
struct Tallies {
    set: Arc<Mutex<SetTally>>,
    bank: Arc<Mutex<BankTally>>,
    watch_writes: Arc<Mutex<Vec<crate::watch::WriteRecord>>>,
    lock: Arc<Mutex<crate::lock::LockTally>>,
}

/// One task per client slot, running the workload of `options`.
fn spawn_clients(
    options: &Arc<TestOptions>,
    ctx: &ClientContext,
    recorder: &Recorder,
    tallies: &Tallies,
    accounts: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..options.concurrency)
        .map(|slot| match options.workload {
            Workload::Register => {
                tokio::spawn(client(slot, options.clone(), ctx.clone(), recorder.clone()))
            }
            Workload::Set => tokio::spawn(workloads::set_client(
                slot,
                ctx.clone(),
                tallies.set.clone(),
            )),
            Workload::Bank => tokio::spawn(workloads::bank_client(
                slot,
                ctx.clone(),
                accounts,
                options.consistency.clone(),
                tallies.bank.clone(),
            )),
            Workload::Watch => tokio::spawn(crate::watch::writer(
                slot,
                ctx.clone(),
                tallies.watch_writes.clone(),
            )),
            Workload::Lock => tokio::spawn(crate::lock::lock_client(
                slot,
                ctx.clone(),
                tallies.lock.clone(),
            )),
        })
        .collect()
}

/// Print what the clients did so far every 5 s until `stop`.
async fn report_progress(recorder: Recorder, tallies: Tallies, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let events = recorder.events.lock().expect("lock").len();
        let adds = tallies.set.lock().expect("tally").attempted.len();
        let reads = tallies.bank.lock().expect("tally").reads;
        eprintln!(
            "[{:>6.1}s] progress: {events} register events, {adds} set adds, {reads} bank reads",
            recorder.started.elapsed().as_secs_f64()
        );
    }
}

/// What the run's clients share: one client per node, their pace and their bound (at most
/// rate × time limit operations in all, plus slack).
fn client_context(
    options: &TestOptions,
    apis: &[String],
    tls: &crate::cluster::ClientAccess,
    stop: &Arc<AtomicBool>,
) -> Result<ClientContext, ClusterError> {
    let timeout = Duration::from_millis(options.request_timeout_ms);
    let clients = apis
        .iter()
        .map(|api| workloads::node_client(api, timeout, &options.consistency, tls))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::Misuse)?;
    Ok(ClientContext {
        clients,
        interval: Duration::from_secs_f64(options.concurrency as f64 / options.rate.max(1) as f64),
        timeout,
        stop: stop.clone(),
        max_ops: options.rate * options.time_limit_s / options.concurrency.max(1) + 10,
    })
}

/// Run one test. Errors are harness failures (exit code 3), never verdicts.
pub async fn run(options: TestOptions) -> Result<TestOutcome, ClusterError> {
    std::fs::create_dir_all(&options.out)?;
    if options.nemesis == NemesisKind::Clock {
        // Fail before the run, not in its middle, if the library is missing.
        crate::cluster::libfaketime()?;
    }
    let options = Arc::new(options);
    let mut cluster = start_cluster(&options).await?;
    cluster.wait_for_leader().await?;
    let time_limit_ms = options.time_limit_s * 1000;
    let faults = nemesis::schedule(options.nemesis, options.nodes, time_limit_ms, options.seed);
    let recorder = Recorder {
        started: Instant::now(),
        events: Arc::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let apis: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.api(id))
        .collect();
    let accounts = options.keys.max(2);
    let tls = cluster.client_access();
    let ctx = client_context(&options, &apis, &tls, &stop)?;
    let (set_tally, bank_tally) = (
        Arc::<Mutex<SetTally>>::default(),
        Arc::<Mutex<BankTally>>::default(),
    );
    if options.workload == Workload::Bank {
        workloads::open_accounts(&ctx.clients[0], accounts)
            .await
            .map_err(ClusterError::Misuse)?;
    }
    let watch_run = match options.workload {
        Workload::Watch => Some(
            crate::watch::WatchRun::start(
                &apis,
                &ctx.clients[0],
                options.watchers,
                options.seed,
                options.plant_watch_drop,
                &tls,
            )
            .await
            .map_err(ClusterError::Misuse)?,
        ),
        _ => None,
    };
    let tallies = Tallies {
        set: set_tally.clone(),
        bank: bank_tally.clone(),
        watch_writes: watch_run
            .as_ref()
            .map(|run| run.writes.clone())
            .unwrap_or_default(),
        lock: Arc::default(),
    };
    let lock_tally = tallies.lock.clone();
    let clients = spawn_clients(&options, &ctx, &recorder, &tallies, accounts);
    let progress = tokio::spawn(report_progress(recorder.clone(), tallies, stop.clone()));
    let started = recorder.started;
    run_faults(&mut cluster, &faults, &recorder).await?;
    tokio::time::sleep_until((started + Duration::from_millis(time_limit_ms)).into()).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    progress.abort();
    // Final phase: everything healed, read everything back linearizably.
    cluster.heal();
    cluster.wait_for_leader().await?;
    let final_state = FinalState {
        apis: &apis,
        recorder: &recorder,
        set_tally: &set_tally,
        bank_tally: &bank_tally,
        accounts,
        tls: &tls,
    };
    let (check, invariant) = match watch_run {
        Some(run) => (None, Some(finish_watch(&options, &apis, &tls, run).await?)),
        None if options.workload == Workload::Lock => {
            (None, Some(finish_lock(&options, &lock_tally)?))
        }
        None => final_check(&options, &final_state).await?,
    };
    let history = History {
        events: std::mem::take(&mut *recorder.events.lock().expect("lock")),
    };
    write_artifacts(&options, &history, check.as_ref(), &faults)?;
    let outcome = TestOutcome::judged(&history, faults, check, invariant);
    let results = json!({"options": &*options, "outcome": &outcome});
    std::fs::write(
        options.out.join("results.json"),
        serde_json::to_string_pretty(&results).expect("results serialize"),
    )?;
    Ok(outcome)
}

mod final_phase;
#[cfg(test)]
mod tests;

use final_phase::{final_check, FinalState};
