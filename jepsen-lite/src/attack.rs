//! `jepsen-lite attack`: the attacks that once stopped mirrorkv, run against a fresh live
//! cluster with its default settings, each followed by the question that matters: does the
//! cluster still take writes on every node?
//!
//! 1. **Poison pill**: a 1 MiB value, then an idempotent transaction of 70 gets of it (an
//!    answer of ~73 MB, which no snapshot frame could hold), then a snapshot on every node.
//!    Once, every snapshot build failed, openraft stopped its core, and every write answered
//!    503 on every node, for good.
//! 2. **Idle connections**: 1,100 TCP connections to one node's API that never send a byte.
//!    Once, they held every connection slot for as long as they stayed open, and `/health`
//!    timed out.
//!
//! Each step is a [`Finding`]; the run passes when every finding does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::cluster::{put, Cluster, ClusterError, ClusterOptions, WriteOutcome, DEADLINE};

/// A new connection must be served within this while the idle ones are open: half the
/// default header-read deadline (10 s), so waiting for that deadline to free a slot fails it.
const HEALTH_WITHIN: Duration = Duration::from_secs(5);

/// How to attack.
#[derive(Debug, Clone)]
pub struct AttackOptions {
    /// The `mirrorkv` binary.
    pub bin: PathBuf,
    pub nodes: u64,
    /// Idle connections opened to one node's API (more than its default `--max-connections`,
    /// 1024).
    pub idle_connections: usize,
    /// Flags for every node (none: the defaults, as attacked).
    pub extra_args: Vec<String>,
}

impl AttackOptions {
    pub fn new(bin: PathBuf) -> Self {
        Self {
            bin,
            nodes: 3,
            idle_connections: 1100,
            extra_args: Vec::new(),
        }
    }
}

/// One thing that must hold after an attack.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub attack: &'static str,
    pub check: String,
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    pub findings: Vec<Finding>,
}

impl AttackReport {
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.passed)
    }

    fn record(
        &mut self,
        attack: &'static str,
        check: impl Into<String>,
        passed: bool,
        detail: impl Into<String>,
    ) {
        let finding = Finding {
            attack,
            check: check.into(),
            passed,
            detail: detail.into(),
        };
        eprintln!(
            "[{}] {}: {} ({})",
            if finding.passed { "pass" } else { "FAIL" },
            finding.attack,
            finding.check,
            finding.detail
        );
        self.findings.push(finding);
    }
}

/// Start a cluster, run both attacks, and report. `Err` is a harness failure only.
pub async fn run(options: AttackOptions) -> Result<AttackReport, ClusterError> {
    let cluster = Cluster::start(ClusterOptions {
        bin: options.bin.clone(),
        nodes: options.nodes,
        extra_args: options.extra_args.clone(),
        node_args: Default::default(),
        proxies: false,
        dir: None,
        clock_rates: Default::default(),
        secure: false,
        env: Vec::new(),
    })
    .await?;
    let mut report = AttackReport {
        findings: Vec::new(),
    };
    let leader = cluster.wait_for_leader().await?;
    poison_pill(&cluster, leader, &mut report).await?;
    idle_connections(&cluster, options.idle_connections, &mut report).await?;
    Ok(report)
}

/// A short text of an HTTP answer (a 73 MB body must not reach a log).
async fn answer(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    (status, body.chars().take(200).collect())
}

/// Whether `sent` was answered with `expected`, and what was seen.
async fn answered_with(
    sent: Result<reqwest::Response, reqwest::Error>,
    expected: u16,
) -> (bool, String) {
    match sent {
        Ok(response) => {
            let (status, body) = answer(response).await;
            (status == expected, format!("{status} {body}"))
        }
        Err(e) => (false, format!("no answer: {e}")),
    }
}

/// An HTTP client that opens a new connection for every request: a connection kept from
/// before an attack would not show whether the node still lets anyone in.
fn fresh_client() -> Result<reqwest::Client, ClusterError> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .timeout(DEADLINE)
        .build()
        .map_err(|e| ClusterError::Misuse(format!("building an HTTP client: {e}")))
}

/// Every node takes a write within `DEADLINE`, each through a new connection: the question
/// after each attack.
async fn takes_writes(
    cluster: &Cluster,
    attack: &'static str,
    report: &mut AttackReport,
) -> Result<(), ClusterError> {
    let http = fresh_client()?;
    for id in cluster.ids() {
        let key = format!("attack/{attack}/after/{id}");
        let started = Instant::now();
        let (passed, detail) = loop {
            match put(&http, &cluster.api(id), &key, b"ok").await {
                WriteOutcome::Ok { index } => {
                    let elapsed_ms = started.elapsed().as_millis();
                    break (
                        true,
                        format!("applied at index {index} after {elapsed_ms} ms"),
                    );
                }
                other if started.elapsed() > DEADLINE => {
                    break (
                        false,
                        format!("none within {DEADLINE:?}; last answer {other:?}"),
                    );
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        report.record(attack, format!("node {id} takes writes"), passed, detail);
    }
    Ok(())
}

async fn poison_pill(
    cluster: &Cluster,
    leader: u64,
    report: &mut AttackReport,
) -> Result<(), ClusterError> {
    const ATTACK: &str = "poison-pill";
    let value = vec![b'x'; 1 << 20];
    let put = cluster.put(leader, "attack/big", &value).await;
    report.record(
        ATTACK,
        "a 1 MiB value is written",
        matches!(put, WriteOutcome::Ok { .. }),
        format!("{put:?}").chars().take(200).collect::<String>(),
    );
    let gets: Vec<Value> = (0..70)
        .map(|_| json!({"get": {"key": "attack/big"}}))
        .collect();
    let txn = cluster
        .http
        .post(format!("{}/v1/txn", cluster.api(leader)))
        .header("Idempotency-Key", "attack-poison-pill")
        .json(&json!({"compare": [], "success": gets, "failure": []}))
        .send()
        .await;
    let (passed, detail) = answered_with(txn, 413).await;
    report.record(
        ATTACK,
        "the 73 MB transaction is refused with 413",
        passed,
        detail,
    );
    for id in cluster.ids() {
        let snapshot = cluster
            .http
            .post(format!("{}/v1/snapshot", cluster.api(id)))
            .send()
            .await;
        let (passed, detail) = answered_with(snapshot, 200).await;
        report.record(
            ATTACK,
            format!("node {id} builds a snapshot"),
            passed,
            detail,
        );
    }
    takes_writes(cluster, ATTACK, report).await
}

async fn idle_connections(
    cluster: &Cluster,
    count: usize,
    report: &mut AttackReport,
) -> Result<(), ClusterError> {
    const ATTACK: &str = "idle-connections";
    let target = *cluster.ids().first().expect("a node");
    let addr = cluster.nodes[&target].api_addr.clone();
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = TcpStream::connect(&addr).await.map_err(|e| {
            ClusterError::Misuse(format!(
                "opening idle connection {} to {addr}: {e} (raise `ulimit -n`?)",
                idle.len() + 1
            ))
        })?;
        stream.set_nodelay(true)?;
        idle.push(stream);
    }
    let started = Instant::now();
    let health = fresh_client()?
        .get(format!("{}/health", cluster.api(target)))
        .send()
        .await;
    let (passed, detail) = match health {
        Ok(response) => {
            let (status, _) = answer(response).await;
            let elapsed = started.elapsed();
            (
                status == 200 && elapsed <= HEALTH_WITHIN,
                format!("{status} after {} ms", elapsed.as_millis()),
            )
        }
        Err(e) => (false, format!("no answer within {DEADLINE:?}: {e}")),
    };
    report.record(
        ATTACK,
        format!(
            "node {target} answers /health within {HEALTH_WITHIN:?} with {count} idle connections open"
        ),
        passed,
        detail,
    );
    takes_writes(cluster, ATTACK, report).await?;
    // The node ends each of them: a read sees the end of the stream.
    let started = Instant::now();
    let mut open = 0;
    for stream in &mut idle {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let mut byte = [0u8; 1];
        match tokio::time::timeout(left, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => open += 1,
        }
    }
    report.record(
        ATTACK,
        "the node closed every idle connection",
        open == 0,
        format!(
            "{open} of {count} still open after {} ms",
            started.elapsed().as_millis()
        ),
    );
    Ok(())
}
