//! The real-cluster fixture of these tests: `jepsen_lite::cluster::Cluster` with this build's
//! `mirrorkv` binary, waits that panic with the reason, and the nodes' logs printed when a test
//! fails.

#![allow(dead_code, unused_imports)]

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

pub use jepsen_lite::cluster::{encode_key, put, WriteOutcome, DEADLINE};
use jepsen_lite::cluster::{ClusterError, ClusterOptions};

pub struct Cluster(jepsen_lite::cluster::Cluster);

impl Deref for Cluster {
    type Target = jepsen_lite::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn ok<T>(result: Result<T, ClusterError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Poll `check` until it returns `Some`; panics with `what` past `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    ok(jepsen_lite::cluster::wait_for(what, deadline, check).await)
}

/// Wait until node `id` has applied at least `index` (as its `/v1/cluster` reports).
pub async fn wait_applied(cluster: &Cluster, id: u64, index: u64) {
    wait_for(
        &format!("node {id} to apply index {index}"),
        DEADLINE,
        || async {
            let view = cluster.node_view(id).await?;
            (view["applied_index"].as_u64()? >= index).then_some(())
        },
    )
    .await
}

/// The options of a cluster of this build's binary. `MIRRORKV_TEST_BIN` runs another
/// `mirrorkv` binary than this build's, e.g. an older one to see a test fail on it.
fn options(
    n: u64,
    extra_args: &[&str],
    node_args: &[(u64, &[&str])],
    proxies: bool,
    env: &[(&str, &str)],
) -> ClusterOptions {
    let bin = std::env::var_os("MIRRORKV_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mirrorkv")));
    ClusterOptions {
        bin,
        nodes: n,
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        node_args: node_args
            .iter()
            .map(|(id, args)| (*id, args.iter().map(|s| s.to_string()).collect()))
            .collect(),
        proxies,
        dir: None,
        clock_rates: Default::default(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        secure: false,
    }
}

impl Cluster {
    async fn start_inner(
        n: u64,
        extra_args: &[&str],
        node_args: &[(u64, &[&str])],
        proxies: bool,
    ) -> Cluster {
        Self::start_with_env(n, extra_args, node_args, proxies, &[]).await
    }

    /// Start `n` nodes with `env` set in each (`MIRRORKV_*` settings, which a build that does
    /// not know them ignores). `MIRRORKV_TEST_BIN` runs another `mirrorkv` binary than this
    /// build's, e.g. an older one to see a test fail on it.
    pub async fn start_with_env(
        n: u64,
        extra_args: &[&str],
        node_args: &[(u64, &[&str])],
        proxies: bool,
        env: &[(&str, &str)],
    ) -> Cluster {
        let options = options(n, extra_args, node_args, proxies, env);
        Cluster(ok(jepsen_lite::cluster::Cluster::start(options).await))
    }

    /// Start `n` nodes with TLS on both ports (the fixture's `secure`: certificates from
    /// `mirrorkv certs init` in the cluster's folder, client certificates required).
    pub async fn start_secure(n: u64, extra_args: &[&str], proxies: bool) -> Cluster {
        let options = ClusterOptions {
            secure: true,
            ..options(n, extra_args, &[], proxies, &[])
        };
        Cluster(ok(jepsen_lite::cluster::Cluster::start(options).await))
    }

    /// Like `start`, and node `id` of each `(id, args)` also gets `args`.
    pub async fn start_with_node_args(
        n: u64,
        extra_args: &[&str],
        node_args: &[(u64, &[&str])],
    ) -> Cluster {
        Self::start_inner(n, extra_args, node_args, false).await
    }

    /// Start `n` nodes with ids 1..=n and `extra_args` on each.
    pub async fn start(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, &[], false).await
    }

    /// Like `start`, but every directed link goes through its own proxy (`isolate`, `heal`).
    pub async fn start_with_proxies(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, &[], true).await
    }

    /// Node `id`'s `GET /metrics` page (Prometheus text).
    pub async fn metrics(&self, id: u64) -> String {
        self.http
            .get(format!("{}/metrics", self.api(id)))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("/metrics text")
    }

    pub async fn wait_for_leader(&self) -> u64 {
        ok(self.0.wait_for_leader().await)
    }

    pub async fn wait_ready(&self, id: u64) {
        ok(self.0.wait_ready(id).await)
    }

    pub fn kill(&mut self, id: u64) {
        ok(self.0.kill(id))
    }

    pub async fn restart(&mut self, id: u64) {
        ok(self.0.restart(id).await)
    }

    pub async fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        ok(self.0.terminate(id).await)
    }

    pub fn isolate(&self, id: u64) {
        ok(self.0.isolate(id))
    }

    /// Add node `id` (not started) with OS-chosen ports.
    pub fn add_node(&mut self, id: u64, membership_args: &[&str]) {
        ok(self
            .0
            .add_node(id, membership_args.iter().map(|s| s.to_string()).collect())
            .map(|_| ()));
    }
}

/// An HTTP client for the tests: one minute per request at most, `TCP_NODELAY`.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .expect("http client")
}

/// Run `mirrorkv ctl` against node `id` of a secure cluster, with its CA, the client
/// certificate and `token`, then `args`; returns (success, stdout, stderr).
pub fn secure_ctl(
    cluster: &Cluster,
    id: u64,
    token: &str,
    args: &[&str],
) -> (bool, Vec<u8>, String) {
    let certs = cluster.certs.clone().expect("a secure cluster");
    let file = |name: &str| certs.join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client-key.pem"));
    let endpoint = cluster.nodes[&id].api_addr.clone();
    let mut all = vec![
        "ctl",
        "--endpoints",
        &endpoint,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--token",
        token,
    ];
    all.extend_from_slice(args);
    mirrorkv(&all, None)
}

/// Run `mirrorkv` with `args` (e.g. `ctl ...`, `restore ...`); returns (success, stdout,
/// stderr).
pub fn mirrorkv(args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorkv"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mirrorkv");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    let output = child.wait_with_output().expect("mirrorkv output");
    (
        output.status.success(),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One acknowledged write of a `Writer`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub value: String,
    pub index: u64,
}

/// What a `Writer` saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    pub acked: Vec<Acked>,
    /// Errors the API marked retryable (or transport errors), each retried.
    pub retried: usize,
    /// Anything else: an error the API said must not be retried, or a write that never
    /// completed. A correct cluster produces none.
    pub fatal: Vec<String>,
}

/// A client that keeps writing fresh keys `{prefix}{n}` one at a time, spreading them over
/// the API endpoints in `endpoints` (which the test may change while it runs). Each write
/// carries an `Idempotency-Key`, so it is retried — on the next endpoint — after any error
/// that is retryable or leaves the outcome open at the transport level; an error the API marks
/// not retryable is recorded as fatal. Bounded: stops at `stop`, after `max_writes`, or at
/// `max_duration`.
pub struct Writer {
    pub endpoints: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<WriterReport>,
}

/// Longest time one write may take, retries included, before it counts as fatal.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

impl Writer {
    pub fn start(
        prefix: &str,
        endpoints: Vec<String>,
        max_writes: usize,
        max_duration: Duration,
    ) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let endpoints = Arc::new(Mutex::new(endpoints));
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = prefix.to_string();
        let task = tokio::spawn({
            let endpoints = endpoints.clone();
            let stop = stop.clone();
            async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .tcp_nodelay(true)
                    .build()
                    .expect("http client");
                let started = tokio::time::Instant::now();
                let mut report = WriterReport::default();
                let mut turn = 0usize;
                for n in 0..max_writes {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > max_duration {
                        break;
                    }
                    let key = format!("{prefix}{n:06}");
                    let value = format!("value-{n}");
                    let write_started = tokio::time::Instant::now();
                    loop {
                        if write_started.elapsed() > WRITE_DEADLINE {
                            report
                                .fatal
                                .push(format!("{key}: not acknowledged within {WRITE_DEADLINE:?}"));
                            break;
                        }
                        let api = {
                            let endpoints = endpoints.lock().unwrap();
                            endpoints[turn % endpoints.len()].clone()
                        };
                        turn += 1;
                        let sent = http
                            .put(format!("{api}/v1/kv/{}", encode_key(&key)))
                            .header("idempotency-key", format!("{prefix}{n}"))
                            .body(value.clone())
                            .send()
                            .await;
                        let response = match sent {
                            Ok(response) => response,
                            Err(_) => {
                                report.retried += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        };
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        if status == 200 {
                            let index = body["index"].as_u64().expect("a write's index");
                            report.acked.push(Acked {
                                key: key.clone(),
                                value: value.clone(),
                                index,
                            });
                            break;
                        }
                        if body["error"]["retryable"] == true {
                            report.retried += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        report
                            .fatal
                            .push(format!("{key} via {api}: {status} {body}"));
                        break;
                    }
                }
                report
            }
        });
        Writer {
            endpoints,
            stop,
            task,
        }
    }

    /// Send the next writes to these endpoints.
    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        *self.endpoints.lock().unwrap() = endpoints;
    }

    /// Stop writing and return what was seen; panics if the writer made no real progress
    /// (a test whose writes all failed would prove nothing).
    pub async fn finish(self) -> WriterReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let report = self.task.await.expect("writer task");
        eprintln!(
            "writer: {} acknowledged, {} retried, {} not retryable",
            report.acked.len(),
            report.retried,
            report.fatal.len()
        );
        assert!(
            report.acked.len() > 10,
            "the writer made progress: {report:?}"
        );
        report
    }
}

/// Every key under `prefix` as node `api` serves it at `consistency`: key → (value, mod_index).
pub async fn scan_all(
    http: &reqwest::Client,
    api: &str,
    prefix: &str,
    consistency: &str,
) -> std::collections::BTreeMap<String, (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let mut start: Option<String> = None;
    loop {
        let mut url = format!(
            "{api}/v1/kv?prefix={}&limit=10000&consistency={consistency}",
            encode_key(prefix)
        );
        if let Some(start) = &start {
            url.push_str(&format!("&start={}", encode_key(start)));
        }
        let response = http.get(&url).send().await.expect("range read");
        assert_eq!(response.status(), 200, "range read of {url}");
        let page: serde_json::Value = response.json().await.expect("range JSON");
        for item in page["items"].as_array().expect("items") {
            out.insert(
                item["key"].as_str().expect("key").to_string(),
                (
                    item["value"].as_str().expect("UTF-8 value").to_string(),
                    item["mod_index"].as_u64().expect("mod_index"),
                ),
            );
        }
        match page["next"].as_str() {
            Some(next) => start = Some(next.to_string()),
            None => return out,
        }
    }
}

/// Check that every acknowledged write of `report` is in `state` with its value.
pub fn assert_no_acked_write_lost(
    report: &WriterReport,
    state: &std::collections::BTreeMap<String, (String, u64)>,
) {
    assert!(
        report.fatal.is_empty(),
        "errors that were not retryable: {:#?}",
        report.fatal
    );
    for acked in &report.acked {
        match state.get(&acked.key) {
            Some((value, _)) if *value == acked.value => {}
            other => panic!("acknowledged write {acked:?} lost: found {other:?}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.log_tails(40));
        }
    }
}

/// The value of a sample (`name` with exactly these labels, in exposition order) in a
/// Prometheus text page.
pub fn metric_sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
