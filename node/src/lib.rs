//! The mirrorkv node: wires storage, raft-net, the coordinator and the API together and runs
//! them until shutdown.
//!
//! Modules:
//! - [`config`]: flags, `MIRRORKV_*` environment and TOML into one `NodeConfig`.
//! - `join`: a fresh node's request to be added to an existing cluster (`--join`).
//! - `events`: structured log lines for every leadership and membership change.
//! - [`restore`]: `mirrorkv restore`, a new data dir from a backup.
//! - [`tls`]: the TLS files loaded into rustls configurations, reloaded on SIGHUP.
//! - [`certs`]: `mirrorkv certs`, a CA and certificates for a dev or test cluster.
//! - [`ctl`]: `mirrorkv ctl`, the command-line client.
//! - [`open_files`]: the open-files limit, raised at start for `max_connections`.
//! - this file: [`run`], the whole node as one function of (config, listeners, shutdown), so a
//!   test can run a node on its own port-0 listeners.
//!
//! Why: `node/DESIGN.md`.

pub mod certs;
pub mod config;
pub mod ctl;
mod events;
mod join;
pub mod open_files;
pub mod restore;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use mirrorkv_api::ApiState;
use mirrorkv_coordinator::leases::LeaseTimers;
use mirrorkv_coordinator::peer::PeerService;
use mirrorkv_coordinator::watch::WatchHub;
use mirrorkv_coordinator::{Coordinator, Parts};
use mirrorkv_raft_net::{LeaderContact, NetworkFactory, PeerPool, Serving};
use mirrorkv_storage::{NodeInfo, Raft};
use openraft::error::{InitializeError, RaftError};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Flags, LogFormat, NodeConfig};

/// The two sockets a node serves.
pub struct Listeners {
    pub api: TcpListener,
    pub raft: TcpListener,
}

impl Listeners {
    /// Bind both addresses of `config`.
    pub async fn bind(config: &NodeConfig) -> anyhow::Result<Self> {
        let api = TcpListener::bind(&config.api_addr)
            .await
            .with_context(|| format!("binding the API address {}", config.api_addr))?;
        let raft = TcpListener::bind(&config.raft_addr)
            .await
            .with_context(|| format!("binding the raft address {}", config.raft_addr))?;
        Ok(Self { api, raft })
    }
}

fn raft_config(config: &NodeConfig, cluster_id: &str) -> anyhow::Result<openraft::Config> {
    let raft_config = openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold_entries),
        snapshot_max_chunk_size: config.snapshot_chunk_bytes,
        // Keep a little log behind each snapshot so a briefly lagging follower catches up by
        // log instead of by a whole snapshot.
        max_in_snapshot_log_to_keep: (config.snapshot_threshold_entries / 10).min(1000),
        // Bounded so that an AppendEntries stays under max_frame_bytes: the write batcher keeps
        // an entry under about 3 MiB (coordinator/src/batch.rs, MAX_BYTES_PER_ENTRY), and the
        // configuration checks the frame holds this many of the largest (config.rs).
        max_payload_entries: config::MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    };
    Ok(raft_config.validate()?)
}

/// Run a node until `shutdown` resolves, then stop serving and shut Raft down.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let tls = Arc::new(tls::LiveTls::load(config.id, &config.tls)?);
    warn_at_start(&config, &listeners, &tls);
    let (log_store, mut state_machine) =
        mirrorkv_storage::open_with(&config.data_dir.join("db"), &store_options(&config)?)
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let watch = WatchHub::new(config.watch.clone());
    state_machine.set_change_listener(watch.clone());
    let leases = LeaseTimers::new(config.leases.clone());
    state_machine
        .set_lease_listener(leases.clone())
        .context("reading the live leases")?;
    let reader = state_machine.reader();
    let committed_index = log_store.committed_index();
    let raft_addr = listeners.raft.local_addr()?;
    let api_addr = listeners.api.local_addr()?;
    let advertised = NodeInfo {
        raft_addr: advertised_addr(&config.raft_addr, raft_addr),
        api_addr: advertised_addr(&config.api_addr, api_addr),
    };
    let fresh = reader.applied_index()? == 0 && log_store_is_empty(&log_store).await?;
    let cluster_id = cluster_id_of(&config, fresh, &advertised).await?;

    let pool = Arc::new(PeerPool::with_tls(
        config.net.clone(),
        config.peer_overrides.clone(),
        tls.peer.clone(),
    ));
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config, &cluster_id)?),
        NetworkFactory::new(pool.clone()),
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let contact = Arc::new(LeaderContact::default());
    let restarted = raft.is_initialized().await?;
    if !restarted {
        initialize_if_fresh(&raft, &config).await?;
    }
    let node = Coordinator::new(
        Parts {
            id: config.id,
            cluster_id,
            raft: raft.clone(),
            reader,
            pool,
            contact: contact.clone(),
            committed_index,
            watch,
            leases,
        },
        config.coordinator.clone(),
    );
    spawn_background_tasks(&node, &stop_rx);
    let votes_from = hold_votes_after_restart(&node, restarted, &config, &stop_rx);
    let net_server = tokio::spawn(mirrorkv_raft_net::server::serve(
        listeners.raft,
        Serving {
            raft: raft.clone(),
            app: Arc::new(PeerService { node: node.clone() }),
            contact,
            config: config.net.clone(),
            votes_from,
            tls: tls.peer.clone(),
        },
        stopped(stop_rx.clone()),
    ));
    tracing::info!(
        node = config.id,
        %api_addr,
        %raft_addr,
        api_tls = tls.api.is_some(),
        peer_tls = tls.peer.is_some(),
        "mirrorkv node serving"
    );
    let api_server = tokio::spawn(mirrorkv_api::serve(
        listeners.api,
        ApiState::new(node.clone(), config.api.clone()),
        tls.api.clone(),
        stopped(stop_rx.clone()),
    ));
    tls.clone().reload_on_sighup(stopped(stop_rx))?;

    shutdown.await;
    stop_node(&node, stop_tx, api_server, net_server).await
}

/// What an operator must know at start: fault injection is on (tests only), or a port listens
/// beyond loopback without TLS (anyone who can reach it can then read and write everything,
/// on the API, or speak Raft, on the raft port).
fn warn_at_start(config: &NodeConfig, listeners: &Listeners, tls: &tls::LiveTls) {
    if config.fault_log_sync_delay_ms > 0 {
        tracing::warn!(
            delay_ms = config.fault_log_sync_delay_ms,
            "fault injection: while leading, every fsync of the log is delayed (tests only)"
        );
    }
    if config.leases.fault_early_ms > 0 {
        tracing::warn!(
            early_ms = config.leases.fault_early_ms,
            "fault injection: the leader ends leases early (tests only)"
        );
    }

    let exposed = |listener: &TcpListener| {
        listener
            .local_addr()
            .is_ok_and(|addr| !addr.ip().is_loopback())
    };
    let exposure = Exposure {
        api_beyond_loopback: exposed(&listeners.api),
        raft_beyond_loopback: exposed(&listeners.raft),
        api_tls: tls.api.is_some(),
        peer_tls: tls.peer.is_some(),
        auth: config.api.auth.enabled,
    };
    for warning in exposure.warnings() {
        tracing::warn!(node = config.id, api_addr = %config.api_addr, raft_addr = %config.raft_addr, "{warning}; see README \"Running securely\"");
    }
}

/// How a node's ports are exposed and protected, for the warnings at start.
#[derive(Debug, Clone, Copy)]
struct Exposure {
    api_beyond_loopback: bool,
    raft_beyond_loopback: bool,
    api_tls: bool,
    peer_tls: bool,
    auth: bool,
}

impl Exposure {
    /// What an operator must be told: a port beyond loopback without what protects it.
    fn warnings(self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.api_beyond_loopback {
            match (self.api_tls, self.auth) {
                (false, false) => warnings.push("the API listens beyond loopback without TLS or --auth: anyone who reaches it reads and writes, in clear (--tls-cert, --tls-key, --auth)"),
                (false, true) => warnings.push("the API listens beyond loopback without TLS: tokens and data cross the network in clear (--tls-cert, --tls-key)"),
                (true, false) => warnings.push("the API listens beyond loopback without --auth: anyone who reaches it reads, writes and changes members (--auth)"),
                (true, true) => {}
            }
        }
        if self.raft_beyond_loopback && !self.peer_tls {
            warnings.push("raft-net listens beyond loopback without TLS: anyone who reaches it can speak Raft to this node (--peer-cert, --peer-key, --peer-ca)");
        }
        warnings
    }
}

/// Stop serving, in the order that leaves no client with an unknown outcome it could have been
/// spared, then shut Raft down.
async fn stop_node(
    node: &Coordinator,
    stop_tx: watch::Sender<bool>,
    api_server: tokio::task::JoinHandle<std::io::Result<()>>,
    net_server: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    let id = node.id;
    tracing::info!(node = id, "shutting down");
    // A leader first stops admitting writes and lets the admitted ones be answered, so no
    // client is left with an unknown outcome; other nodes' forwarded writes are refused before
    // they are appended and retried on the next leader.
    let unanswered = node.close_writes(node.config.request_timeout()).await;
    if unanswered > 0 {
        tracing::warn!(node = id, unanswered, "stopping with writes unanswered");
    }
    let _ = stop_tx.send(true);
    let api_result = api_server.await;
    let _ = net_server.await;
    node.raft
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    api_result.context("API task")?.context("API server")?;
    tracing::info!(node = id, "stopped");
    Ok(())
}

/// Resolves once the node is told to stop.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The store's memory budgets and fault settings from the configuration.
fn store_options(config: &NodeConfig) -> anyhow::Result<mirrorkv_storage::StoreOptions> {
    Ok(mirrorkv_storage::StoreOptions {
        memory_budget_bytes: usize::try_from(config.storage_memory_mib << 20)
            .context("storage_memory_mib is too large for this machine")?,
        fault_log_sync_delay_ms: config.fault_log_sync_delay_ms,
        key_index_max_bytes: usize::try_from(config.key_index_mib << 20)
            .context("key_index_mib is too large for this machine")?,
        history_entries: config.watch_history_entries,
    })
}

/// The cluster id: the one the data dir holds, else the hash of `--initial-cluster`, else the
/// one a `--join` learns from the cluster (a fresh node only).
async fn cluster_id_of(
    config: &NodeConfig,
    fresh: bool,
    advertised: &NodeInfo,
) -> anyhow::Result<String> {
    Ok(match read_cluster_id(&config.data_dir)? {
        Some(id) => id,
        None if !config.initial_cluster.is_empty() => {
            let id = config::cluster_id(&config.initial_cluster);
            write_cluster_id(&config.data_dir, &id)?;
            id
        }
        None if !config.join.is_empty() && fresh => {
            let id = join::ask_to_join(config, advertised).await?;
            write_cluster_id(&config.data_dir, &id)?;
            id
        }
        None if fresh => anyhow::bail!(
            "a fresh node needs --initial-cluster (to form a new cluster) or --join (to join one)"
        ),
        // A data dir from before cluster ids were stored.
        None => "unknown".to_string(),
    })
}

/// The node's tasks that run until it stops: its coordination's (write batcher, forwarder,
/// removal watch) and the event log.
fn spawn_background_tasks(node: &Arc<Coordinator>, stop: &watch::Receiver<bool>) {
    node.spawn_tasks(|| stopped(stop.clone()));
    tokio::spawn(events::log_raft_events(
        node.id,
        node.raft.clone(),
        stopped(stop.clone()),
    ));
}

/// A restarted node may have acknowledged a leader just before it went down, and it has
/// forgotten when. For one leader lease after its start it neither grants a vote nor stands
/// for election, so it cannot help elect a new leader while that leader's read lease may still
/// hold (node/DESIGN.md). Everything else it serves at once: the leader's appends and
/// snapshots, forwarded requests. Returns when it grants votes again.
fn hold_votes_after_restart(
    node: &Arc<Coordinator>,
    restarted: bool,
    config: &NodeConfig,
    stop: &watch::Receiver<bool>,
) -> std::time::Instant {
    let hold_ms = if restarted {
        config.election_timeout_max_ms
    } else {
        0
    };
    let votes_from = std::time::Instant::now() + std::time::Duration::from_millis(hold_ms);
    if restarted {
        node.raft.runtime_config().elect(false);
        tokio::spawn({
            let node = node.clone();
            let stop = stopped(stop.clone());
            async move {
                tokio::select! {
                    // A node that learned meanwhile that it was removed stays out of elections.
                    _ = tokio::time::sleep_until(votes_from.into()) => {
                        if !node.is_removed() {
                            node.raft.runtime_config().elect(true);
                        }
                    }
                    _ = stop => {}
                }
            }
        });
    }
    votes_from
}

/// A node whose store is empty (not initialized) and that is listed in `--initial-cluster` writes the initial
/// membership. Every initial member does the same with the same membership, which openraft
/// allows; an election then needs a quorum of them, so the cluster forms once a quorum is up.
async fn initialize_if_fresh(raft: &Raft, config: &NodeConfig) -> anyhow::Result<()> {
    if config.initial_cluster.is_empty() {
        return Ok(());
    }
    match raft.initialize(config.initial_cluster.clone()).await {
        Ok(()) => {
            tracing::info!(
                node = config.id,
                members = config.initial_cluster.len(),
                "initialized a fresh cluster"
            );
            Ok(())
        }
        // Already has a log or a vote: it joined the cluster through a peer first.
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::info!(node = config.id, reason = %e, "not initializing");
            Ok(())
        }
        Err(e) => Err(e).context("initializing the cluster"),
    }
}

/// The address to advertise: the configured one, or the bound one when the configured port is
/// 0 (the OS chose it).
fn advertised_addr(configured: &str, bound: std::net::SocketAddr) -> String {
    if configured.ends_with(":0") {
        bound.to_string()
    } else {
        configured.to_string()
    }
}

async fn log_store_is_empty(log_store: &mirrorkv_storage::LogStore) -> anyhow::Result<bool> {
    use openraft::storage::RaftLogStorage;
    let mut log_store = log_store.clone();
    let state = log_store.get_log_state().await?;
    let vote = log_store.read_vote().await?;
    Ok(state.last_log_id.is_none() && vote.is_none())
}

/// The file in a data dir that holds the cluster id.
const CLUSTER_ID_FILE: &str = "cluster_id";

fn read_cluster_id(data_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join(CLUSTER_ID_FILE)) {
        Ok(id) => Ok(Some(id.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading the cluster id"),
    }
}

/// Write the cluster id durably (file and directory fsynced).
pub(crate) fn write_cluster_id(data_dir: &std::path::Path, id: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = data_dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).context("writing the cluster id")?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(CLUSTER_ID_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Exposure;

    #[test]
    fn a_port_beyond_loopback_without_its_protection_is_warned_of() {
        let exposure = |api_beyond_loopback, raft_beyond_loopback, api_tls, peer_tls, auth| {
            Exposure {
                api_beyond_loopback,
                raft_beyond_loopback,
                api_tls,
                peer_tls,
                auth,
            }
            .warnings()
        };
        // Loopback only: nothing to say, whatever is on.
        assert!(exposure(false, false, false, false, false).is_empty());
        // Beyond loopback with everything on: nothing either.
        assert!(exposure(true, true, true, true, true).is_empty());
        let api = |tls, auth| exposure(true, false, tls, false, auth);
        assert!(api(false, false)[0].contains("without TLS or --auth"));
        assert!(api(false, true)[0].contains("without TLS:"));
        assert!(api(true, false)[0].contains("without --auth"));
        let raft = exposure(false, true, false, false, false);
        assert_eq!(raft.len(), 1);
        assert!(raft[0].starts_with("raft-net listens beyond loopback without TLS"));
        assert_eq!(exposure(true, true, false, false, false).len(), 2);
    }
}
