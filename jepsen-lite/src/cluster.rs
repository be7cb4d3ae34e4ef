//! `Cluster`: N real `mirrorkv` processes on free loopback ports, optionally with every directed
//! node-to-node link routed through its own `Proxy`, so faults can cut any link. Used by the
//! harness and by the real-cluster tests of `node/`.
//!
//! Every wait is on a condition with a deadline. Ports come from the OS (bind port 0 and hold
//! it until every port of the cluster is chosen, then release it for the node). Each node logs to `nodeN.log` in the cluster's folder.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrorkv_client::{Client, ClientError, ClientOptions, ReadOptions};

#[path = "cluster_secure.rs"]
mod secure;
pub use secure::{make_certs, ClientAccess, BOOTSTRAP_TOKEN_FILE};
use serde_json::Value;

pub use crate::proxy::{Delay, Proxy};

/// Default deadline of the cluster's waits.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A harness failure: never the store's fault.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("timed out after {deadline:?} waiting for {what}")]
    Timeout { what: String, deadline: Duration },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Misuse(String),
}

impl NodeProc {
    /// The process id while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct NodeProc {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// How the node finds its cluster: `--initial-cluster SPEC`, `--join ADDR`, or nothing
    /// (a data dir that already has one, e.g. restored from a backup).
    pub membership_args: Vec<String>,
    /// Flags for this node only, after the cluster's `extra_args`.
    pub own_args: Vec<String>,
    /// The rate of this node's clocks (monotonic and wall) under libfaketime, if skewed:
    /// 0.5 runs at half speed. Applies every time the node is started.
    pub clock_rate: Option<f64>,
    child: Option<Child>,
    paused: bool,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `mirrorkv` binary.
    pub bin: PathBuf,
    pub nodes: u64,
    /// Extra flags for every node.
    pub extra_args: Vec<String>,
    /// Flags for one node, by id, after `extra_args` (e.g. a fault for that node alone).
    pub node_args: BTreeMap<u64, Vec<String>>,
    /// Route every directed link through a `Proxy`.
    pub proxies: bool,
    /// Where data and logs go; a temporary folder (removed on drop) if `None`.
    pub dir: Option<PathBuf>,
    /// Nodes whose clocks run at another rate (under libfaketime, [`libfaketime`]), by id.
    pub clock_rates: BTreeMap<u64, f64>,
    /// Environment variables of every node (settings as `MIRRORKV_*`: a binary that does not
    /// know one ignores it, so a test can run against an older build).
    pub env: Vec<(String, String)>,
    /// TLS on both ports of every node (`mirrorkv certs init` in `dir/certs`): HTTPS with
    /// client certificates required, mutual TLS between nodes; the fixture's clients use them.
    pub secure: bool,
}

/// `mirrorkv` next to the running binary (as the build puts it), else on the PATH.
pub fn default_mirrorkv_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mirrorkv")))
        .unwrap_or_else(|| PathBuf::from("mirrorkv"))
}

/// A multi-threaded tokio runtime for a command-line program, or `None` after printing why
/// there is none (prefixed by `program`).
pub fn runtime(program: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("{program}: {e}");
            None
        }
    }
}

/// Where Debian's `libfaketime` package puts the library (`MIRRORKV_LIBFAKETIME` overrides).
/// Deadline of each request the fixture itself makes (health, readiness, status, `put`, `get`).
const FIXTURE_TIMEOUT_MS: u64 = 10_000;

const LIBFAKETIME_PATHS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
];

/// The libfaketime library to preload into a node whose clock is skewed.
pub fn libfaketime() -> Result<PathBuf, ClusterError> {
    if let Some(path) = std::env::var_os("MIRRORKV_LIBFAKETIME") {
        return Ok(PathBuf::from(path));
    }
    LIBFAKETIME_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            ClusterError::Misuse(
                "libfaketime not found (Debian package libfaketime; scripts/deps.sh installs it), or set MIRRORKV_LIBFAKETIME"
                    .into(),
            )
        })
}

pub struct Cluster {
    _temp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub nodes: BTreeMap<u64, NodeProc>,
    bin: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    pub http: reqwest::Client,
    /// With `secure`: the folder of the certificates (`ca.pem`, `node<i>.pem`, `client.pem`).
    pub certs: Option<PathBuf>,
    /// What a client needs (`client_access`).
    access: ClientAccess,
    /// With proxies: the proxy of every directed link (from, to).
    pub links: BTreeMap<(u64, u64), Proxy>,
    /// One client per node for `put` and `get`, made on first use and kept, so their
    /// connections are reused (a node keeps its address across restarts).
    clients: std::sync::Mutex<BTreeMap<u64, Client>>,
}

/// Poll `check` until it returns `Some`, or fail once `deadline` has passed.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            return Err(ClusterError::Timeout {
                what: what.to_string(),
                deadline,
            });
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
    /// Start the nodes of `options`; returns once every node answers `/health` (not
    /// necessarily with a leader: see `wait_for_leader`).
    pub async fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let (temp, dir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::tempdir()?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut nodes = BTreeMap::new();
        let mut spec = Vec::new();
        // Hold every reserved port until the proxies are bound too, so that the OS hands no
        // port out twice; release them just before the nodes bind them.
        let mut reserved = Vec::new();
        let mut reserve = || -> Result<String, ClusterError> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?.to_string();
            reserved.push(listener);
            Ok(addr)
        };
        for id in 1..=options.nodes {
            let api_addr = reserve()?;
            let raft_addr = reserve()?;
            spec.push(format!("{id}={raft_addr}/{api_addr}"));
            nodes.insert(
                id,
                NodeProc {
                    id,
                    api_addr,
                    raft_addr,
                    data_dir: dir.join(format!("node{id}")),
                    log_path: dir.join(format!("node{id}.log")),
                    membership_args: Vec::new(),
                    own_args: options.node_args.get(&id).cloned().unwrap_or_default(),
                    clock_rate: options.clock_rates.get(&id).copied().filter(|r| *r != 1.0),
                    child: None,
                    paused: false,
                },
            );
        }
        let certs = if options.secure {
            Some(secure::make_certs(&options.bin, &dir, options.nodes)?)
        } else {
            None
        };
        let access = secure::ClientAccess::of(certs.as_deref())?;
        let http = secure::http_client(&access, FIXTURE_TIMEOUT_MS)?;
        let mut links = BTreeMap::new();
        if options.proxies {
            for from in 1..=options.nodes {
                for to in (1..=options.nodes).filter(|&to| to != from) {
                    links.insert(
                        (from, to),
                        Proxy::start(nodes[&to].raft_addr.clone()).await?,
                    );
                }
            }
        }
        drop(reserved);
        let initial_cluster = spec.join(",");
        for node in nodes.values_mut() {
            node.membership_args = vec!["--initial-cluster".into(), initial_cluster.clone()];
        }
        let mut cluster = Cluster {
            _temp: temp,
            dir,
            nodes,
            bin: options.bin.clone(),
            extra_args: options.extra_args.clone(),
            env: options.env.clone(),
            http,
            certs,
            access,
            links,
            clients: std::sync::Mutex::default(),
        };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        for id in cluster.ids() {
            cluster.wait_healthy(id).await?;
        }
        Ok(cluster)
    }

    /// Add node `id` with OS-chosen ports, not started yet (`restart` starts it).
    /// `membership_args` say how it finds its cluster, e.g. `["--join", api_addr]`.
    pub fn add_node(
        &mut self,
        id: u64,
        membership_args: Vec<String>,
    ) -> Result<&NodeProc, ClusterError> {
        if self.nodes.contains_key(&id) {
            return Err(ClusterError::Misuse(format!("node {id} exists")));
        }
        if let Some(certs) = &self.certs {
            secure::issue_node_cert(&self.bin, certs, id)?;
        }
        let api = TcpListener::bind("127.0.0.1:0")?;
        let raft = TcpListener::bind("127.0.0.1:0")?;
        let node = NodeProc {
            id,
            api_addr: api.local_addr()?.to_string(),
            raft_addr: raft.local_addr()?.to_string(),
            data_dir: self.dir.join(format!("node{id}")),
            log_path: self.dir.join(format!("node{id}.log")),
            membership_args,
            own_args: Vec::new(),
            clock_rate: None,
            child: None,
            paused: false,
        };
        Ok(self.nodes.entry(id).or_insert(node))
    }

    /// The `mirrorkv` binary this cluster runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn spawn(&mut self, id: u64) -> Result<(), ClusterError> {
        let tls_args = self.tls_args(id);
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| ClusterError::Misuse(format!("no node {id}")))?;
        if node.child.is_some() {
            return Err(ClusterError::Misuse(format!(
                "node {id} is already running"
            )));
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let peers = self
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .flat_map(|((_, to), proxy)| ["--peer".to_string(), format!("{to}={}", proxy.addr)]);
        let mut command = Command::new(&self.bin);
        if let Some(rate) = node.clock_rate {
            // Every clock of the process, CLOCK_MONOTONIC included (what leases and timers
            // use), runs at `rate` from the moment it starts.
            command
                .env("LD_PRELOAD", libfaketime()?)
                .env("FAKETIME", format!("+0 x{rate}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "0");
        }
        let child = command
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--api-addr")
            .arg(&node.api_addr)
            .arg("--raft-addr")
            .arg(&node.raft_addr)
            .args(&node.membership_args)
            .args(tls_args)
            .args(&self.extra_args)
            .args(&node.own_args)
            .args(peers)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn api(&self, id: u64) -> String {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.nodes[&id].api_addr)
    }

    /// With `secure`: what a client needs (the CA, the client certificate and key).
    pub fn client_tls(&self) -> Option<mirrorkv_client::ClientTls> {
        self.access.tls.clone()
    }

    /// What a client needs: with `secure`, TLS and the bootstrap token (`--auth`).
    pub fn client_access(&self) -> ClientAccess {
        self.access.clone()
    }

    /// With `secure`: node `id`'s TLS flags (its certificate serves both ports).
    fn tls_args(&self, id: u64) -> Vec<String> {
        let Some(certs) = &self.certs else {
            return Vec::new();
        };
        let file = |name: String| certs.join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            file(format!("node{id}.pem")),
            "--tls-key".into(),
            file(format!("node{id}-key.pem")),
            "--tls-client-ca".into(),
            file("ca.pem".into()),
            "--peer-cert".into(),
            file(format!("node{id}.pem")),
            "--peer-key".into(),
            file(format!("node{id}-key.pem")),
            "--peer-ca".into(),
            file("ca.pem".into()),
            "--auth".into(),
            "--auth-bootstrap-token-file".into(),
            file(secure::BOOTSTRAP_TOKEN_FILE.into()),
        ]
    }

    /// Nodes whose process runs (paused ones included).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn signal(&self, id: u64, signal: &str) -> Result<(), ClusterError> {
        let child = self.nodes[&id]
            .child
            .as_ref()
            .ok_or_else(|| ClusterError::Misuse(format!("node {id} is not running")))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            return Err(ClusterError::Misuse(format!(
                "kill {signal} node {id} failed"
            )));
        }
        Ok(())
    }

    /// `kill -9` node `id`.
    pub fn kill(&mut self, id: u64) -> Result<(), ClusterError> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| ClusterError::Misuse(format!("no node {id}")))?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| ClusterError::Misuse(format!("node {id} is not running")))?;
        child.kill()?;
        child.wait()?;
        node.paused = false;
        Ok(())
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, "-STOP")?;
        self.nodes.get_mut(&id).expect("checked").paused = true;
        Ok(())
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, "-CONT")?;
        self.nodes.get_mut(&id).expect("checked").paused = false;
        Ok(())
    }

    /// Run node `id` with its clocks at `rate` (under libfaketime) from its next start on;
    /// `None`: the real clocks.
    pub fn set_clock_rate(&mut self, id: u64, rate: Option<f64>) -> Result<(), ClusterError> {
        if rate.is_some() {
            libfaketime()?;
        }
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| ClusterError::Misuse(format!("no node {id}")))?
            .clock_rate = rate;
        Ok(())
    }

    /// The clock rate node `id` runs at, if skewed.
    pub fn clock_rate(&self, id: u64) -> Option<f64> {
        self.nodes.get(&id).and_then(|node| node.clock_rate)
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.nodes[&id].paused
    }

    /// SIGTERM node `id` and wait for it to exit; returns its exit status.
    pub async fn terminate(&mut self, id: u64) -> Result<std::process::ExitStatus, ClusterError> {
        self.signal(id, "-TERM")?;
        let node = self.nodes.get_mut(&id).expect("checked");
        let mut child = node.child.take().expect("checked");
        wait_for(
            &format!("node {id} to exit after SIGTERM"),
            DEADLINE,
            || {
                let status = child.try_wait().ok().flatten();
                async move { status }
            },
        )
        .await
    }

    /// Start node `id` again on its data dir and ports, and wait until it answers `/health`.
    pub async fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        self.spawn(id)?;
        self.wait_healthy(id).await
    }

    async fn wait_healthy(&self, id: u64) -> Result<(), ClusterError> {
        let url = format!("{}/health", self.api(id));
        wait_for(
            &format!("node {id} to answer /health"),
            DEADLINE,
            || async {
                self.http
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            },
        )
        .await
    }

    /// Cut every link from and to node `id`.
    pub fn isolate(&self, id: u64) -> Result<(), ClusterError> {
        self.partition(&[
            vec![id],
            self.ids().into_iter().filter(|&n| n != id).collect(),
        ])
    }

    /// Cut every link between nodes of different `groups` (nodes in no group are cut off).
    pub fn partition(&self, groups: &[Vec<u64>]) -> Result<(), ClusterError> {
        if self.links.is_empty() {
            return Err(ClusterError::Misuse(
                "partitions need a cluster started with proxies".into(),
            ));
        }
        let group_of = |id: u64| groups.iter().position(|g| g.contains(&id));
        for ((from, to), proxy) in &self.links {
            match (group_of(*from), group_of(*to)) {
                (Some(a), Some(b)) if a == b => proxy.restore(),
                _ => proxy.cut(),
            }
        }
        Ok(())
    }

    /// Cut the directed links `from → to` (one-way faults).
    pub fn cut_links(&self, links: &[(u64, u64)]) {
        for link in links {
            if let Some(proxy) = self.links.get(link) {
                proxy.cut();
            }
        }
    }

    /// Add `delay` to every link.
    pub fn delay_links(&self, delay: Delay) {
        for proxy in self.links.values() {
            proxy.set_delay(delay);
        }
    }

    /// Restore every link and remove any delay.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.restore();
            proxy.set_delay(Delay::default());
        }
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

    /// Wait until every running, unpaused node names the same running leader; returns it.
    pub async fn wait_for_leader(&self) -> Result<u64, ClusterError> {
        wait_for(
            "a leader that every running node agrees on",
            DEADLINE,
            || async {
                let mut leader = None;
                let live: Vec<u64> = self
                    .running()
                    .into_iter()
                    .filter(|&id| !self.is_paused(id))
                    .collect();
                for &id in &live {
                    let info = self.cluster_info(id).await?;
                    let this = info["leader"].as_u64()?;
                    if leader.is_some_and(|l| l != this) || !live.contains(&this) {
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
    pub async fn wait_ready(&self, id: u64) -> Result<(), ClusterError> {
        let url = format!("{}/ready", self.api(id));
        wait_for(&format!("node {id} to be ready"), DEADLINE, || async {
            let response = self.http.get(&url).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await
    }

    /// The client of node `id` alone (`mirrorkv-client`): no resend to another node, no
    /// idempotency key, no `min_index` floor, each request bounded as the fixture's own.
    pub fn node_client(&self, id: u64) -> Result<Client, String> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(client) = clients.get(&id) {
            return Ok(client.clone());
        }
        let client = Client::with_options(
            [self.api(id)],
            ClientOptions {
                timeout_ms: FIXTURE_TIMEOUT_MS,
                read_your_writes: false,
                idempotent_writes: false,
                tls: self.access.tls.clone(),
                token: self.access.token.clone(),
                ..ClientOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        clients.insert(id, client.clone());
        Ok(client)
    }

    /// `PUT` `value` at `key` through node `id`.
    pub async fn put(&self, id: u64, key: &str, value: &[u8]) -> WriteOutcome {
        let client = match self.node_client(id) {
            Ok(client) => client,
            Err(e) => return WriteOutcome::NoAnswer(e),
        };
        match client.put(key, value.to_vec()).await {
            Ok(put) => WriteOutcome::Ok { index: put.index },
            Err(ClientError::Api {
                status,
                code,
                message,
                ..
            }) => WriteOutcome::Status(status.as_u16(), format!("{code}: {message}")),
            Err(e) => WriteOutcome::NoAnswer(e.to_string()),
        }
    }

    /// Read `key` through node `id` at `consistency`: `Ok(Some(value))`, `Ok(None)` for 404,
    /// `Err` for anything else.
    pub async fn get(
        &self,
        id: u64,
        key: &str,
        consistency: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let options = ReadOptions {
            consistency: Some(
                consistency
                    .parse()
                    .map_err(|e: ClientError| e.to_string())?,
            ),
            ..ReadOptions::default()
        };
        let read = self
            .node_client(id)?
            .get_with(key, &options)
            .await
            .map_err(|e| e.to_string())?;
        Ok(read.value.map(|kv| kv.value))
    }

    /// Node `id`'s own Raft view (`node` of `GET /v1/cluster`).
    pub async fn node_view(&self, id: u64) -> Option<Value> {
        Some(self.cluster_info(id).await?["node"].clone())
    }

    /// The last `lines` lines of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            out.push_str(&format!("---- last lines of node {} ----\n", node.id));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The folder of the cluster's data and logs.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// `PUT` `value` at `key` through the API at `api` (`http://HOST:PORT`) over `http`, with no
/// client logic in between (`attack` sends it on a fresh connection of its own).
pub async fn put(http: &reqwest::Client, api: &str, key: &str, value: &[u8]) -> WriteOutcome {
    let url = format!("{api}/v1/kv/{}", encode_key(key));
    match http.put(url).body(value.to_vec()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            match (
                status,
                serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|j| j["index"].as_u64()),
            ) {
                (200, Some(index)) => WriteOutcome::Ok { index },
                _ => WriteOutcome::Status(status, body),
            }
        }
        Err(e) => WriteOutcome::NoAnswer(e.to_string()),
    }
}

/// Percent-encode a key for a path segment: the client crate's one key encoding.
pub use mirrorkv_client::keys::key_path as encode_key;

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
