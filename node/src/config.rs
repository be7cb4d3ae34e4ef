//! Node configuration: command-line flags, `MIRRORKV_*` environment variables and an optional
//! TOML file (`--config`), in that order of precedence, then the defaults.
//!
//! Every default is in one place, [`Flags::defaults`]; `--help` shows each one next to its flag
//! ([`with_defaults_in_help`]), and `resolve` fills what nothing else set from it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use mirrorkv_storage::{NodeId, NodeInfo};
use serde::{Deserialize, Serialize};

mod security;
pub use security::{Secret, DEFAULT_API_ADDR, DEFAULT_RAFT_ADDR};

/// Flags of `mirrorkv`. Every field is optional here so the TOML file can fill it in.
#[derive(Debug, Default, Parser, Deserialize, Serialize)]
#[command(
    name = "mirrorkv",
    version,
    about = "A replicated key-value store: every node a full mirror."
)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// TOML file with any of these settings (keys as the long flags, with underscores).
    #[arg(long, env = "MIRRORKV_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "MIRRORKV_ID")]
    pub id: Option<NodeId>,
    /// Directory of this node's data; created if missing.
    #[arg(long, env = "MIRRORKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP API listens on and advertises (HOST:PORT).
    #[arg(long, env = "MIRRORKV_API_ADDR")]
    pub api_addr: Option<String>,
    /// Address the node-to-node transport listens on and advertises (HOST:PORT).
    #[arg(long, env = "MIRRORKV_RAFT_ADDR")]
    pub raft_addr: Option<String>,
    /// Initial members: `1=RAFT_ADDR/API_ADDR,2=...`. A fresh cluster forms once a quorum is up.
    #[arg(long, env = "MIRRORKV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Join an existing cluster through any of these members' API addresses (comma-separated):
    /// a fresh node asks to be added as a mirror, then catches up. Ignored once the node has
    /// data.
    #[arg(long, env = "MIRRORKV_JOIN")]
    pub join: Option<String>,
    /// How long a joining node keeps asking the cluster to add it before giving up.
    #[arg(long, env = "MIRRORKV_JOIN_TIMEOUT_MS")]
    pub join_timeout_ms: Option<u64>,
    /// A mirror more than this many log entries behind the leader is not promoted.
    #[arg(long, env = "MIRRORKV_PROMOTE_MAX_LAG_ENTRIES")]
    pub promote_max_lag_entries: Option<u64>,
    /// Dial peer ID at HOST:PORT instead of its advertised raft address (repeatable), e.g. to
    /// route a link through a proxy: `--peer 2=127.0.0.1:7002`.
    #[arg(long = "peer", env = "MIRRORKV_PEERS", value_delimiter = ',')]
    #[serde(default)]
    pub peers: Vec<String>,
    /// `text` or `json`. Filter with RUST_LOG (default `info,openraft=warn`).
    #[arg(long, env = "MIRRORKV_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Longest key, in bytes.
    #[arg(long, env = "MIRRORKV_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value, in bytes (at most max_body_bytes).
    #[arg(long, env = "MIRRORKV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest request body, in bytes; larger ones are answered 413.
    #[arg(long, env = "MIRRORKV_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most bytes of keys and values in one range page; the page ends early, with `next`,
    /// before the key that would pass it.
    #[arg(long, env = "MIRRORKV_MAX_RANGE_PAGE_BYTES")]
    pub max_range_page_bytes: Option<usize>,
    /// HTTP connections served at once; past it a new connection takes the slot of the
    /// longest-unused one (closed once no request of it is in progress).
    #[arg(long, env = "MIRRORKV_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// HTTP requests in flight at once; more are answered 429.
    #[arg(long, env = "MIRRORKV_MAX_IN_FLIGHT_REQUESTS")]
    pub max_in_flight_requests: Option<usize>,
    /// Deadline of a write or a linearizable read (at most 3600000).
    #[arg(long, env = "MIRRORKV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// An API connection with no request in progress and no byte moving for this long is
    /// closed.
    #[arg(long, env = "MIRRORKV_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A request's line and headers must arrive within this, from the connection's start or
    /// the request's first byte.
    #[arg(long, env = "MIRRORKV_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// A request's body must arrive within this, or the answer is 408.
    #[arg(long, env = "MIRRORKV_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// A response the client reads none of for this long closes its connection.
    #[arg(long, env = "MIRRORKV_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// How often the leader sends heartbeats (below election_timeout_min_ms).
    #[arg(long, env = "MIRRORKV_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// A follower that hears no leader for a random time between this and
    /// election_timeout_max_ms stands for election.
    #[arg(long, env = "MIRRORKV_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// The upper end of the election timeout; also the leader's read lease.
    #[arg(long, env = "MIRRORKV_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Subtracted from the leader's read lease (the maximum election timeout) for clock drift
    /// between nodes; `lease` reads are linearizable while drift stays below it (default: a
    /// quarter of election_timeout_max_ms).
    #[arg(long, env = "MIRRORKV_LEASE_MARGIN_MS")]
    pub lease_margin_ms: Option<u64>,
    /// How long a write's Idempotency-Key is remembered.
    #[arg(long, env = "MIRRORKV_IDEMPOTENCY_WINDOW_S")]
    pub idempotency_window_s: Option<u64>,
    /// Build a snapshot (and purge the log behind it) every this many applied entries. The log
    /// on disk holds up to this many entries.
    #[arg(long, env = "MIRRORKV_SNAPSHOT_THRESHOLD_ENTRIES")]
    pub snapshot_threshold_entries: Option<u64>,
    /// Size of one snapshot chunk on the wire.
    #[arg(long, env = "MIRRORKV_SNAPSHOT_CHUNK_BYTES")]
    pub snapshot_chunk_bytes: Option<u64>,
    /// Largest node-to-node frame.
    #[arg(long, env = "MIRRORKV_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// A node-to-node frame whose first byte arrived must be whole within this.
    #[arg(long, env = "MIRRORKV_RAFT_FRAME_TIMEOUT_MS")]
    pub raft_frame_timeout_ms: Option<u64>,
    /// An inbound node-to-node connection that sends no frame for this long is closed.
    #[arg(long, env = "MIRRORKV_RAFT_IDLE_TIMEOUT_MS")]
    pub raft_idle_timeout_ms: Option<u64>,
    /// Memory RocksDB may use for its block cache and memtables together.
    #[arg(long, env = "MIRRORKV_STORAGE_MEMORY_MIB")]
    pub storage_memory_mib: Option<u64>,
    /// Most memory (estimated) for the indexes of live keys kept so that applying a write
    /// reads nothing from RocksDB; outside storage_memory_mib (0 turns it off).
    #[arg(long, env = "MIRRORKV_KEY_INDEX_MIB")]
    pub key_index_mib: Option<u64>,
    /// The change history keeps what at least this many of the newest log entries changed, key
    /// by key (1 to 100000000); older changes are pruned.
    #[arg(long, env = "MIRRORKV_WATCH_HISTORY_ENTRIES")]
    pub watch_history_entries: Option<u64>,
    /// A change stream with nothing to send writes a progress line this often (10 to 60000).
    #[arg(long, env = "MIRRORKV_WATCH_PROGRESS_MS")]
    pub watch_progress_ms: Option<u64>,
    /// A change stream whose client falls this many events behind is ended as lagging, with
    /// the index to resume from (1 to 1000000).
    #[arg(long, env = "MIRRORKV_WATCH_BUFFER_EVENTS")]
    pub watch_buffer_events: Option<usize>,
    /// Change streams and blocking reads open at once on this node; past it 429 (1 to 1000000).
    #[arg(long, env = "MIRRORKV_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// The longest wait of a blocking read (wait=), in seconds (1 to 3600).
    #[arg(long, env = "MIRRORKV_MAX_WAIT_S")]
    pub max_wait_s: Option<u64>,
    /// Shortest TTL a lease may be granted, in seconds (1 to 86400; the longest is 86400).
    #[arg(long, env = "MIRRORKV_MIN_LEASE_TTL_S")]
    pub min_lease_ttl_s: Option<u64>,
    /// Live leases at once in the cluster; a grant past it is answered 429 (1 to 10000000).
    #[arg(long, env = "MIRRORKV_MAX_LEASES")]
    pub max_leases: Option<u64>,
    /// Keys attached to one lease; a put past it is answered 413 (1 to 100000).
    #[arg(long, env = "MIRRORKV_MAX_KEYS_PER_LEASE")]
    pub max_keys_per_lease: Option<u64>,
    /// Serve the API over HTTPS with this certificate (PEM; the chain, the node's first).
    #[arg(long, env = "MIRRORKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "MIRRORKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Also require API clients to present a certificate signed by this CA (PEM).
    #[arg(long, env = "MIRRORKV_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Mutual TLS between nodes: this node's certificate (PEM), which must name
    /// `mirrorkv-node-<id>`. Needs `--peer-key` and `--peer-ca`.
    #[arg(long, env = "MIRRORKV_PEER_CERT")]
    pub peer_cert: Option<PathBuf>,
    /// The private key of `--peer-cert` (PEM).
    #[arg(long, env = "MIRRORKV_PEER_KEY")]
    pub peer_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers' certificates must be signed by it.
    #[arg(long, env = "MIRRORKV_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// A TLS handshake (either port) not finished within this closes the connection.
    #[arg(long, env = "MIRRORKV_TLS_HANDSHAKE_TIMEOUT_MS")]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Require `Authorization: Bearer <token>` on every route but /health, /ready, /v1/openapi.json.
    #[arg(long, env = "MIRRORKV_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub auth: Option<bool>,
    /// A file holding the bootstrap token (at least 32 characters): an admin of this node.
    #[arg(long, env = "MIRRORKV_AUTH_BOOTSTRAP_TOKEN_FILE")]
    pub auth_bootstrap_token_file: Option<PathBuf>,
    /// With --auth, serve /metrics without a token.
    #[arg(long, env = "MIRRORKV_METRICS_PUBLIC", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_public: Option<bool>,
    /// Fault injection for tests, never for production: while leading, wait this long before
    /// every fsync of the node's own log appends, as a slow disk would (at most 60000).
    #[arg(long, env = "MIRRORKV_FAULT_LOG_SYNC_DELAY_MS", hide = true)]
    pub fault_log_sync_delay_ms: Option<u64>,
    /// Fault injection for tests, never for production: the leader ends leases this much
    /// before their TTL (jepsen-lite's planted bug; at most 60000).
    #[arg(long, env = "MIRRORKV_FAULT_LEASE_EARLY_MS", hide = true)]
    pub fault_lease_early_ms: Option<u64>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub api_addr: String,
    pub raft_addr: String,
    /// Members of the initial cluster, by id.
    pub initial_cluster: BTreeMap<NodeId, NodeInfo>,
    /// API addresses of members to ask for admission (`--join`), empty if not joining.
    pub join: Vec<String>,
    pub join_timeout_ms: u64,
    pub peer_overrides: HashMap<NodeId, String>,
    pub log_format: LogFormat,
    pub api: mirrorkv_api::ApiConfig,
    /// The node's coordination: command limits (the API's), deadlines, the idempotency window,
    /// promotion lag, queues and the read lease (from the election timeout).
    pub coordinator: mirrorkv_coordinator::CoordinatorConfig,
    pub net: mirrorkv_raft_net::NetConfig,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub lease_margin_ms: u64,
    pub snapshot_threshold_entries: u64,
    pub snapshot_chunk_bytes: u64,
    pub storage_memory_mib: u64,
    pub key_index_mib: u64,
    pub watch_history_entries: u64,
    /// Change streams and blocking reads: progress, buffers, limits.
    pub watch: mirrorkv_coordinator::watch::WatchConfig,
    /// Leases: TTL bounds and limits.
    pub leases: mirrorkv_coordinator::leases::LeasesConfig,
    /// Fault injection for tests (`StoreOptions::fault_log_sync_delay_ms`); 0 in production.
    pub fault_log_sync_delay_ms: u64,
    /// TLS on either port (`security.rs`).
    pub tls: crate::tls::TlsSettings,
    /// The bootstrap token's text (`--auth-bootstrap-token-file`): `--join` sends it.
    pub bootstrap_token: Option<security::Secret>,
}

/// The settings that say how a node finds its cluster.
struct Membership {
    initial_cluster: BTreeMap<NodeId, NodeInfo>,
    join: Vec<String>,
    peer_overrides: HashMap<NodeId, String>,
}

impl Flags {
    /// Every default, the one place they are written. Settings without one are required
    /// (`id`, `data_dir`), optional (`initial_cluster`, `join`, `peers`, the TLS files) or
    /// derived from another (`lease_margin_ms`).
    pub fn defaults() -> Flags {
        let api = mirrorkv_api::ApiConfig::default();
        let coordinator = mirrorkv_coordinator::CoordinatorConfig::default();
        let net = mirrorkv_raft_net::NetConfig::default();
        let store = mirrorkv_storage::StoreOptions::default();
        let watch = mirrorkv_coordinator::watch::WatchConfig::default();
        let leases = mirrorkv_coordinator::leases::LeasesConfig::default();
        Flags {
            join_timeout_ms: Some(60_000),
            promote_max_lag_entries: Some(coordinator.promote_max_lag_entries),
            log_format: Some("text".into()),
            max_key_bytes: Some(api.max_key_bytes),
            max_value_bytes: Some(api.max_value_bytes),
            max_body_bytes: Some(api.max_body_bytes),
            max_range_page_bytes: Some(api.max_range_page_bytes),
            max_connections: Some(api.max_connections),
            max_in_flight_requests: Some(api.max_in_flight_requests),
            request_timeout_ms: Some(api.request_timeout_ms),
            idle_timeout_ms: Some(api.idle_timeout_ms),
            header_read_timeout_ms: Some(api.header_read_timeout_ms),
            body_read_timeout_ms: Some(api.body_read_timeout_ms),
            write_timeout_ms: Some(api.write_timeout_ms),
            heartbeat_interval_ms: Some(100),
            election_timeout_min_ms: Some(500),
            election_timeout_max_ms: Some(1000),
            idempotency_window_s: Some(coordinator.idempotency_window_s),
            // As etcd's --snapshot-count. A snapshot costs in proportion to the state (at 1M
            // keys, one every 10 000 entries took about 15% of put throughput, BENCHMARKS.md).
            snapshot_threshold_entries: Some(100_000),
            snapshot_chunk_bytes: Some(1024 * 1024),
            max_frame_bytes: Some(net.max_frame_bytes),
            raft_frame_timeout_ms: Some(net.frame_read_timeout_ms),
            raft_idle_timeout_ms: Some(net.idle_timeout_ms),
            storage_memory_mib: Some((store.memory_budget_bytes >> 20) as u64),
            key_index_mib: Some((store.key_index_max_bytes >> 20) as u64),
            watch_history_entries: Some(store.history_entries),
            watch_progress_ms: Some(watch.progress_ms),
            watch_buffer_events: Some(watch.buffer_events),
            max_watchers: Some(watch.max_watchers),
            max_wait_s: Some(watch.max_wait_s),
            min_lease_ttl_s: Some(leases.min_ttl_s),
            max_leases: Some(leases.max_leases),
            max_keys_per_lease: Some(leases.max_keys_per_lease),
            fault_log_sync_delay_ms: Some(0),
            fault_lease_early_ms: Some(0),
            api_addr: Some(DEFAULT_API_ADDR.into()),
            raft_addr: Some(DEFAULT_RAFT_ADDR.into()),
            tls_handshake_timeout_ms: Some(net.handshake_timeout_ms),
            auth: Some(false),
            metrics_public: Some(false),
            ..Flags::default()
        }
    }

    /// Fill every unset field from `file` (lower precedence).
    fn or(self, file: Flags) -> Flags {
        Flags {
            config: self.config,
            id: self.id.or(file.id),
            data_dir: self.data_dir.or(file.data_dir),
            api_addr: self.api_addr.or(file.api_addr),
            raft_addr: self.raft_addr.or(file.raft_addr),
            initial_cluster: self.initial_cluster.or(file.initial_cluster),
            join: self.join.or(file.join),
            join_timeout_ms: self.join_timeout_ms.or(file.join_timeout_ms),
            promote_max_lag_entries: self
                .promote_max_lag_entries
                .or(file.promote_max_lag_entries),
            peers: if self.peers.is_empty() {
                file.peers
            } else {
                self.peers
            },
            log_format: self.log_format.or(file.log_format),
            max_key_bytes: self.max_key_bytes.or(file.max_key_bytes),
            max_value_bytes: self.max_value_bytes.or(file.max_value_bytes),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_range_page_bytes: self.max_range_page_bytes.or(file.max_range_page_bytes),
            max_connections: self.max_connections.or(file.max_connections),
            max_in_flight_requests: self.max_in_flight_requests.or(file.max_in_flight_requests),
            request_timeout_ms: self.request_timeout_ms.or(file.request_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(file.idle_timeout_ms),
            header_read_timeout_ms: self.header_read_timeout_ms.or(file.header_read_timeout_ms),
            body_read_timeout_ms: self.body_read_timeout_ms.or(file.body_read_timeout_ms),
            write_timeout_ms: self.write_timeout_ms.or(file.write_timeout_ms),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(file.heartbeat_interval_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(file.election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(file.election_timeout_max_ms),
            lease_margin_ms: self.lease_margin_ms.or(file.lease_margin_ms),
            idempotency_window_s: self.idempotency_window_s.or(file.idempotency_window_s),
            snapshot_threshold_entries: self
                .snapshot_threshold_entries
                .or(file.snapshot_threshold_entries),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.or(file.snapshot_chunk_bytes),
            max_frame_bytes: self.max_frame_bytes.or(file.max_frame_bytes),
            raft_frame_timeout_ms: self.raft_frame_timeout_ms.or(file.raft_frame_timeout_ms),
            raft_idle_timeout_ms: self.raft_idle_timeout_ms.or(file.raft_idle_timeout_ms),
            storage_memory_mib: self.storage_memory_mib.or(file.storage_memory_mib),
            key_index_mib: self.key_index_mib.or(file.key_index_mib),
            watch_history_entries: self.watch_history_entries.or(file.watch_history_entries),
            watch_progress_ms: self.watch_progress_ms.or(file.watch_progress_ms),
            watch_buffer_events: self.watch_buffer_events.or(file.watch_buffer_events),
            max_watchers: self.max_watchers.or(file.max_watchers),
            max_wait_s: self.max_wait_s.or(file.max_wait_s),
            min_lease_ttl_s: self.min_lease_ttl_s.or(file.min_lease_ttl_s),
            max_leases: self.max_leases.or(file.max_leases),
            max_keys_per_lease: self.max_keys_per_lease.or(file.max_keys_per_lease),
            fault_log_sync_delay_ms: self
                .fault_log_sync_delay_ms
                .or(file.fault_log_sync_delay_ms),
            fault_lease_early_ms: self.fault_lease_early_ms.or(file.fault_lease_early_ms),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_client_ca: self.tls_client_ca.or(file.tls_client_ca),
            peer_cert: self.peer_cert.or(file.peer_cert),
            peer_key: self.peer_key.or(file.peer_key),
            peer_ca: self.peer_ca.or(file.peer_ca),
            tls_handshake_timeout_ms: self
                .tls_handshake_timeout_ms
                .or(file.tls_handshake_timeout_ms),
            auth: self.auth.or(file.auth),
            auth_bootstrap_token_file: self
                .auth_bootstrap_token_file
                .or(file.auth_bootstrap_token_file),
            metrics_public: self.metrics_public.or(file.metrics_public),
        }
    }

    /// How this node finds its cluster and its peers.
    fn membership(&self, id: NodeId) -> anyhow::Result<Membership> {
        let initial_cluster = match &self.initial_cluster {
            Some(spec) => parse_initial_cluster(spec)?,
            None => BTreeMap::new(),
        };
        if !initial_cluster.is_empty() && !initial_cluster.contains_key(&id) {
            bail!("--initial-cluster does not list this node's id {id}");
        }
        let join: Vec<String> = self
            .join
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_string)
            .collect();
        if !join.is_empty() && !initial_cluster.is_empty() {
            bail!("give --initial-cluster (a new cluster) or --join (an existing one), not both");
        }
        let mut peer_overrides = HashMap::new();
        for peer in &self.peers {
            let (peer_id, addr) = peer
                .split_once('=')
                .with_context(|| format!("--peer {peer:?}: expected ID=HOST:PORT"))?;
            let peer_id: NodeId = peer_id
                .trim()
                .parse()
                .with_context(|| format!("--peer {peer:?}: bad id"))?;
            peer_overrides.insert(peer_id, addr.trim().to_string());
        }
        Ok(Membership {
            initial_cluster,
            join,
            peer_overrides,
        })
    }

    /// The API's limits and timeouts, checked against each other.
    fn api_config(&self) -> anyhow::Result<mirrorkv_api::ApiConfig> {
        let api = mirrorkv_api::ApiConfig {
            max_key_bytes: defaulted(self.max_key_bytes)?,
            max_value_bytes: defaulted(self.max_value_bytes)?,
            max_body_bytes: defaulted(self.max_body_bytes)?,
            max_range_page_bytes: defaulted(self.max_range_page_bytes)?,
            max_connections: defaulted(self.max_connections)?,
            max_in_flight_requests: defaulted(self.max_in_flight_requests)?,
            request_timeout_ms: defaulted(self.request_timeout_ms)?,
            idle_timeout_ms: defaulted(self.idle_timeout_ms)?,
            header_read_timeout_ms: defaulted(self.header_read_timeout_ms)?,
            body_read_timeout_ms: defaulted(self.body_read_timeout_ms)?,
            write_timeout_ms: defaulted(self.write_timeout_ms)?,
            ..mirrorkv_api::ApiConfig::default()
        };
        if api.max_connections == 0 || api.max_in_flight_requests == 0 {
            bail!("max_connections and max_in_flight_requests must be positive");
        }
        if api.max_range_page_bytes == 0 {
            bail!("max_range_page_bytes must be positive");
        }
        check_timeouts_ms(&[
            ("request_timeout_ms", api.request_timeout_ms),
            ("idle_timeout_ms", api.idle_timeout_ms),
            ("header_read_timeout_ms", api.header_read_timeout_ms),
            ("body_read_timeout_ms", api.body_read_timeout_ms),
            ("write_timeout_ms", api.write_timeout_ms),
        ])?;
        if api.max_value_bytes > api.max_body_bytes {
            bail!(
                "max_value_bytes ({}) must be at most max_body_bytes ({})",
                api.max_value_bytes,
                api.max_body_bytes
            );
        }
        // A txn may get any key, and its answer is capped by MAX_TXN_RESPONSE_BYTES in apply.
        if (api.max_value_bytes + api.max_key_bytes) as u64
            > mirrorkv_storage::MAX_TXN_RESPONSE_BYTES
        {
            bail!(
            "max_value_bytes + max_key_bytes ({}) must be at most {} (the most a transaction's answer may carry), so that any key can be read in a transaction",
            api.max_value_bytes + api.max_key_bytes,
            mirrorkv_storage::MAX_TXN_RESPONSE_BYTES
        );
        }
        Ok(api)
    }

    /// The node-to-node transport's settings: a frame must hold the largest entries and answers
    /// the API's limits allow.
    fn net_config(
        &self,
        api: &mirrorkv_api::ApiConfig,
    ) -> anyhow::Result<mirrorkv_raft_net::NetConfig> {
        let net = mirrorkv_raft_net::NetConfig {
            max_frame_bytes: defaulted(self.max_frame_bytes)?,
            frame_read_timeout_ms: defaulted(self.raft_frame_timeout_ms)?,
            idle_timeout_ms: defaulted(self.raft_idle_timeout_ms)?,
            handshake_timeout_ms: defaulted(self.tls_handshake_timeout_ms)?,
            ..mirrorkv_raft_net::NetConfig::default()
        };
        check_timeouts_ms(&[
            ("raft_frame_timeout_ms", net.frame_read_timeout_ms),
            ("raft_idle_timeout_ms", net.idle_timeout_ms),
        ])?;
        // The largest log entry: a batch of writes up to MAX_BYTES_PER_ENTRY, or one command as
        // large as a request body goes alone. An AppendEntries carries up to
        // MAX_PAYLOAD_ENTRIES of them and a forwarded frame one batch: both must fit a frame.
        let largest_entry_bytes = (mirrorkv_coordinator::batch::MAX_BYTES_PER_ENTRY as u64)
            .max((api.max_body_bytes + api.max_key_bytes) as u64 + ENTRY_OVERHEAD_BYTES);
        if MAX_PAYLOAD_ENTRIES * largest_entry_bytes + ENTRY_OVERHEAD_BYTES
            > u64::from(net.max_frame_bytes)
        {
            bail!(
            "max_frame_bytes ({}) must hold {MAX_PAYLOAD_ENTRIES} log entries of up to {largest_entry_bytes} bytes (from max_body_bytes {}): raise max_frame_bytes or lower max_body_bytes",
            net.max_frame_bytes,
            api.max_body_bytes
        );
        }
        // The answers of one entry or one forwarded frame come back in one frame.
        if (mirrorkv_storage::MAX_ANSWER_BYTES_PER_BATCH as u64) + ENTRY_OVERHEAD_BYTES
            > u64::from(net.max_frame_bytes)
        {
            bail!(
                "max_frame_bytes ({}) must hold the answers of one batch of writes ({} bytes)",
                net.max_frame_bytes,
                mirrorkv_storage::MAX_ANSWER_BYTES_PER_BATCH
            );
        }
        Ok(net)
    }

    /// Read the TOML file if one is named, merge, validate, and apply defaults.
    pub fn resolve(self) -> anyhow::Result<NodeConfig> {
        let flags = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                let file: Flags = toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?;
                self.or(file)
            }
            None => self,
        }
        .or(Flags::defaults());
        let id = flags.id.context("--id is required")?;
        if id == 0 {
            bail!("--id must be a positive integer");
        }
        let Membership {
            initial_cluster,
            join,
            peer_overrides,
        } = flags.membership(id)?;
        let data_dir = flags.data_dir.clone().context("--data-dir is required")?;
        let api_addr = defaulted(flags.api_addr.clone())?;
        let raft_addr = defaulted(flags.raft_addr.clone())?;
        let log_format = match flags.log_format.as_deref() {
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            other => bail!("--log-format must be text or json, got {other:?}"),
        };
        let mut api = flags.api_config()?;
        api.https = flags.tls_cert.is_some();
        let bootstrap_token;
        (api.auth, bootstrap_token) = security::auth_settings(&flags)?;
        let net = flags.net_config(&api)?;
        let heartbeat_interval_ms = defaulted(flags.heartbeat_interval_ms)?;
        let election_timeout_min_ms = defaulted(flags.election_timeout_min_ms)?;
        let election_timeout_max_ms = defaulted(flags.election_timeout_max_ms)?;
        if !(heartbeat_interval_ms < election_timeout_min_ms
            && election_timeout_min_ms < election_timeout_max_ms)
        {
            bail!("need heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms");
        }
        let lease_margin_ms = flags.lease_margin_ms.unwrap_or(election_timeout_max_ms / 4);
        if lease_margin_ms >= election_timeout_max_ms {
            bail!("lease_margin_ms must be below election_timeout_max_ms");
        }
        let coordinator = mirrorkv_coordinator::CoordinatorConfig {
            limits: api.command_limits(),
            request_timeout_ms: api.request_timeout_ms,
            idempotency_window_s: defaulted(flags.idempotency_window_s)?,
            promote_max_lag_entries: defaulted(flags.promote_max_lag_entries)?,
            max_queued_writes: api.max_in_flight_requests,
            lease: mirrorkv_coordinator::LeaseConfig {
                leader_lease_ms: election_timeout_max_ms,
                lease_margin_ms,
            },
        };
        let snapshot_chunk_bytes = defaulted(flags.snapshot_chunk_bytes)?;
        if snapshot_chunk_bytes + 64 * 1024 > u64::from(net.max_frame_bytes) {
            bail!("snapshot_chunk_bytes must be at least 64 KiB below max_frame_bytes");
        }
        let (storage_memory_mib, key_index_mib, watch_history_entries) = store_settings(&flags)?;
        let watch = watch_config(&flags)?;
        let leases = leases_config(&flags)?;
        let tls = security::tls_settings(&flags)?;
        let fault_log_sync_delay_ms = defaulted(flags.fault_log_sync_delay_ms)?;
        if fault_log_sync_delay_ms > 60_000 {
            bail!("fault_log_sync_delay_ms must be at most 60000 (ms)");
        }
        Ok(NodeConfig {
            id,
            data_dir,
            api_addr,
            raft_addr,
            initial_cluster,
            join,
            join_timeout_ms: defaulted(flags.join_timeout_ms)?,
            peer_overrides,
            log_format,
            api,
            coordinator,
            net,
            heartbeat_interval_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            lease_margin_ms,
            snapshot_threshold_entries: defaulted(flags.snapshot_threshold_entries)?,
            snapshot_chunk_bytes,
            storage_memory_mib,
            key_index_mib,
            watch_history_entries,
            watch,
            leases,
            fault_log_sync_delay_ms,
            tls,
            bootstrap_token,
        })
    }
}

/// The store's memory budgets and history window, each checked against its bounds.
fn store_settings(flags: &Flags) -> anyhow::Result<(u64, u64, u64)> {
    let storage_memory_mib = defaulted(flags.storage_memory_mib)?;
    if !(16..=1024 * 1024).contains(&storage_memory_mib) {
        bail!("storage_memory_mib must be between 16 and 1048576 (MiB)");
    }
    let key_index_mib = defaulted(flags.key_index_mib)?;
    if key_index_mib > 1024 * 1024 {
        bail!("key_index_mib must be at most 1048576 (MiB)");
    }
    let watch_history_entries = defaulted(flags.watch_history_entries)?;
    if !(1..=MAX_WATCH_HISTORY_ENTRIES).contains(&watch_history_entries) {
        bail!("watch_history_entries must be between 1 and {MAX_WATCH_HISTORY_ENTRIES} (entries)");
    }
    Ok((storage_memory_mib, key_index_mib, watch_history_entries))
}

/// The watch settings, each checked against its bounds.
fn watch_config(flags: &Flags) -> anyhow::Result<mirrorkv_coordinator::watch::WatchConfig> {
    let progress_ms = defaulted(flags.watch_progress_ms)?;
    if !(10..=60_000).contains(&progress_ms) {
        bail!("watch_progress_ms must be between 10 and 60000 (ms)");
    }
    let buffer_events = defaulted(flags.watch_buffer_events)?;
    if !(1..=1_000_000).contains(&buffer_events) {
        bail!("watch_buffer_events must be between 1 and 1000000 (events)");
    }
    let max_watchers = defaulted(flags.max_watchers)?;
    if !(1..=1_000_000).contains(&max_watchers) {
        bail!("max_watchers must be between 1 and 1000000 (streams and blocking reads)");
    }
    let max_wait_s = defaulted(flags.max_wait_s)?;
    if !(1..=3600).contains(&max_wait_s) {
        bail!("max_wait_s must be between 1 and 3600 (s)");
    }
    Ok(mirrorkv_coordinator::watch::WatchConfig {
        progress_ms,
        buffer_events,
        max_watchers,
        max_wait_s,
        ..Default::default()
    })
}

/// The lease settings, each checked against its bounds.
fn leases_config(flags: &Flags) -> anyhow::Result<mirrorkv_coordinator::leases::LeasesConfig> {
    let defaults = mirrorkv_coordinator::leases::LeasesConfig::default();
    let min_ttl_s = defaulted(flags.min_lease_ttl_s)?;
    if !(1..=defaults.max_ttl_s).contains(&min_ttl_s) {
        bail!(
            "min_lease_ttl_s must be between 1 and {} (s)",
            defaults.max_ttl_s
        );
    }
    let max_leases = defaulted(flags.max_leases)?;
    if !(1..=10_000_000).contains(&max_leases) {
        bail!("max_leases must be between 1 and 10000000 (leases)");
    }
    let max_keys_per_lease = defaulted(flags.max_keys_per_lease)?;
    if !(1..=100_000).contains(&max_keys_per_lease) {
        bail!("max_keys_per_lease must be between 1 and 100000 (keys)");
    }
    let fault_early_ms = defaulted(flags.fault_lease_early_ms)?;
    if fault_early_ms > 60_000 {
        bail!("fault_lease_early_ms must be at most 60000 (ms)");
    }
    Ok(mirrorkv_coordinator::leases::LeasesConfig {
        min_ttl_s,
        max_leases,
        max_keys_per_lease,
        fault_early_ms,
        ..defaults
    })
}

/// A setting that `Flags::defaults` fills; `Err` only if a default was left out there.
fn defaulted<T>(value: Option<T>) -> anyhow::Result<T> {
    value.context("a setting has no default (Flags::defaults is missing it)")
}

/// `command` with each flag's default from [`Flags::defaults`] shown in its help, as
/// `[default: V]`, without setting it (the TOML file still fills what flags leave unset).
pub fn with_defaults_in_help(command: clap::Command) -> clap::Command {
    let defaults = match serde_json::to_value(Flags::defaults()) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return command,
    };
    command.mut_args(|arg| {
        let shown = match defaults.get(arg.get_id().as_str()) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
            _ => return arg,
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let help = format!("{help} [default: {shown}]")
            .trim_start()
            .to_string();
        arg.help(help)
    })
}

/// Parse `1=RAFT_ADDR/API_ADDR,2=...`.
pub fn parse_initial_cluster(spec: &str) -> anyhow::Result<BTreeMap<NodeId, NodeInfo>> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').with_context(|| {
            format!("initial cluster member {part:?}: expected ID=RAFT_ADDR/API_ADDR")
        })?;
        let (raft_addr, api_addr) = addrs.split_once('/').with_context(|| {
            format!("initial cluster member {part:?}: expected ID=RAFT_ADDR/API_ADDR")
        })?;
        let id: NodeId = id
            .trim()
            .parse()
            .with_context(|| format!("initial cluster member {part:?}: bad id"))?;
        if id == 0 {
            bail!("initial cluster member {part:?}: ids are positive");
        }
        let node = NodeInfo {
            raft_addr: raft_addr.trim().to_string(),
            api_addr: api_addr.trim().to_string(),
        };
        if members.insert(id, node).is_some() {
            bail!("initial cluster lists id {id} twice");
        }
    }
    Ok(members)
}

/// A stable id of the cluster: a hash of its initial membership, the same on every member.
pub fn cluster_id(members: &BTreeMap<NodeId, NodeInfo>) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, node) in members {
        for byte in format!("{id}={}/{};", node.raft_addr, node.api_addr).bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Most log entries in one AppendEntries (openraft's `max_payload_entries`).
pub const MAX_PAYLOAD_ENTRIES: u64 = 16;

/// Room for an entry's framing and encoding besides its body, and for a frame's own.
const ENTRY_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The longest change history a node may keep, in log entries: a thousand times the default.
const MAX_WATCH_HISTORY_ENTRIES: u64 = 100_000_000;

/// The longest `request_timeout_ms` accepted: an hour. Deadlines are `now + timeout`, and a
/// timeout near `u64::MAX` ms would overflow the clock.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 3_600_000;

/// Every timeout is 1 to `MAX_REQUEST_TIMEOUT_MS` ms: deadlines are `now + timeout`.
fn check_timeouts_ms(timeouts: &[(&str, u64)]) -> anyhow::Result<()> {
    for (name, ms) in timeouts {
        if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(ms) {
            bail!("{name} must be between 1 and {MAX_REQUEST_TIMEOUT_MS} (ms), got {ms}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
