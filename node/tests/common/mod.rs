//! `Cluster`: N real `mirrorkv` processes on free loopback ports, for integration tests.
//!
//! Every wait is on a condition with a deadline; nothing sleeps for a fixed time to synchronize.
//! Ports come from the OS (bind port 0, read the port, release it). Logs of every node go to a
//! file in the cluster's temp dir and are printed if the test panics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: tests run in parallel on 2 cores with fsync on every commit.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct NodeProc {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    restarts: u32,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    initial_cluster: String,
    extra_args: Vec<String>,
    pub http: reqwest::Client,
    /// With `start_with_proxies`: the proxy of every directed link (from, to).
    pub links: BTreeMap<(u64, u64), Proxy>,
}

/// A TCP proxy for one directed raft-net link. `cut` closes its connections and refuses new
/// ones until `restore`.
pub struct Proxy {
    pub addr: String,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
                        _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut: std::sync::Arc::new(cut_tx),
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free port on 127.0.0.1, as the OS hands it out.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `check` until it returns `Some`, or panic with `what` once `deadline` has passed.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The outcome of a write as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Ok {
        index: u64,
    },
    /// An HTTP answer other than 200.
    Status(u16, String),
    /// No HTTP answer at all (connection refused or reset, client timeout).
    NoAnswer(String),
}

impl Cluster {
    /// Start `n` nodes with ids 1..=n and `extra_args` on each; returns once they run (not
    /// necessarily with a leader: see `wait_for_leader`).
    pub async fn start(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, false).await
    }

    /// Like `start`, but every directed node-to-node link goes through its own `Proxy`, so a
    /// test can cut links (`isolate`, `heal`).
    pub async fn start_with_proxies(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, true).await
    }

    async fn start_inner(n: u64, extra_args: &[&str], proxies: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = BTreeMap::new();
        let mut spec = Vec::new();
        for id in 1..=n {
            let api_addr = format!("127.0.0.1:{}", free_port());
            let raft_addr = format!("127.0.0.1:{}", free_port());
            spec.push(format!("{id}={raft_addr}/{api_addr}"));
            nodes.insert(
                id,
                NodeProc {
                    id,
                    api_addr,
                    raft_addr,
                    data_dir: dir.path().join(format!("node{id}")),
                    log_path: dir.path().join(format!("node{id}.log")),
                    child: None,
                    restarts: 0,
                },
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let mut links = BTreeMap::new();
        if proxies {
            for from in 1..=n {
                for to in (1..=n).filter(|&to| to != from) {
                    links.insert((from, to), Proxy::start(nodes[&to].raft_addr.clone()).await);
                }
            }
        }
        let mut cluster = Cluster {
            dir,
            nodes,
            initial_cluster: spec.join(","),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            http,
            links,
        };
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.spawn(id);
        }
        for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
            cluster.wait_healthy(id).await;
        }
        cluster
    }

    fn spawn(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mirrorkv"))
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--api-addr")
            .arg(&node.api_addr)
            .arg("--raft-addr")
            .arg(&node.raft_addr)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .args(&self.extra_args)
            .args(
                self.links
                    .iter()
                    .filter(|((from, _), _)| *from == id)
                    .flat_map(|((_, to), proxy)| {
                        ["--peer".to_string(), format!("{to}={}", proxy.addr)]
                    }),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn mirrorkv");
        node.child = Some(child);
        node.restarts += 1;
    }

    /// Cut every link from and to node `id`.
    pub fn isolate(&self, id: u64) {
        assert!(!self.links.is_empty(), "isolate needs start_with_proxies");
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                proxy.cut();
            }
        }
    }

    /// Restore every link.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.restore();
        }
    }

    pub fn api(&self, id: u64) -> String {
        format!("http://{}", self.nodes[&id].api_addr)
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// `kill -9` node `id`.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM node `id` and wait (with a deadline) for it to exit; returns its exit status.
    pub async fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is running");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM");
        wait_for(
            &format!("node {id} to exit after SIGTERM"),
            DEADLINE,
            || {
                let status = child.try_wait().unwrap();
                async move { status }
            },
        )
        .await
    }

    /// Start node `id` again on its data dir and ports, and wait until it answers `/health`.
    pub async fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_healthy(id).await;
    }

    async fn wait_healthy(&self, id: u64) {
        let url = format!("{}/health", self.api(id));
        let http = self.http.clone();
        wait_for(&format!("node {id} to answer /health"), DEADLINE, || {
            let http = http.clone();
            let url = url.clone();
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            }
        })
        .await;
    }

    /// `GET /v1/cluster` of node `id`.
    pub async fn cluster_info(&self, id: u64) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/v1/cluster", self.api(id)))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Wait until every running node names the same running leader; returns it.
    pub async fn wait_for_leader(&self) -> u64 {
        wait_for(
            "a leader that every running node agrees on",
            DEADLINE,
            || async {
                let mut leader = None;
                for id in self.running() {
                    let info = self.cluster_info(id).await?;
                    let this = info["leader"].as_u64()?;
                    if leader.is_some_and(|l| l != this) || !self.running().contains(&this) {
                        return None;
                    }
                    leader = Some(this);
                }
                leader
            },
        )
        .await
    }

    /// Wait until node `id` answers `/ready` with 200.
    pub async fn wait_ready(&self, id: u64) {
        let url = format!("{}/ready", self.api(id));
        wait_for(&format!("node {id} to be ready"), DEADLINE, || async {
            let response = self.http.get(&url).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await
    }

    pub async fn put(&self, id: u64, key: &str, value: &[u8]) -> WriteOutcome {
        put(&self.http, &self.api(id), key, value).await
    }

    /// Read `key` through node `id` at `consistency`: `Ok(Some(value))`, `Ok(None)` for 404,
    /// `Err` for anything else.
    pub async fn get(
        &self,
        id: u64,
        key: &str,
        consistency: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let url = format!(
            "{}/v1/kv/{}?consistency={consistency}",
            self.api(id),
            encode_key(key)
        );
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => Ok(Some(
                response.bytes().await.map_err(|e| e.to_string())?.to_vec(),
            )),
            404 => Ok(None),
            status => Err(format!(
                "{status}: {}",
                response.text().await.unwrap_or_default()
            )),
        }
    }

    /// Node `id`'s own Raft view (`node` of `GET /v1/cluster`).
    pub async fn node_view(&self, id: u64) -> Option<Value> {
        Some(self.cluster_info(id).await?["node"].clone())
    }
}

/// `PUT` `value` at `key` through the API at `api` (`http://HOST:PORT`).
pub async fn put(http: &reqwest::Client, api: &str, key: &str, value: &[u8]) -> WriteOutcome {
    let url = format!("{api}/v1/kv/{}", encode_key(key));
    match http.put(url).body(value.to_vec()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status == 200 {
                let json: Value = serde_json::from_str(&body).expect("write answer is JSON");
                WriteOutcome::Ok {
                    index: json["index"].as_u64().expect("index"),
                }
            } else {
                WriteOutcome::Status(status, body)
            }
        }
        Err(e) => WriteOutcome::NoAnswer(e.to_string()),
    }
}

/// Percent-encode a key for a path segment.
pub fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in self.nodes.values() {
                let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- last lines of node {} ----", node.id);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
