//! The node's coordination with its cluster: everything a node does between an API request and
//! the Raft log, whatever carries the request (HTTP today; watch, leases and auth build on it).
//! The HTTP layer (`mirrorkv-api`) parses and answers; this crate decides and waits.
//!
//! Entry points, on [`Coordinator`]: [`Coordinator::write`] (through the leader, from any node),
//! [`Coordinator::read_barrier`] (what a read level waits for before a local read),
//! [`Coordinator::change_membership`], [`Coordinator::cluster_status`] and
//! [`Coordinator::readiness`], [`Coordinator::snapshot_now`]; [`peer::PeerService`] answers the
//! same for other nodes over raft-net.
//!
//! Modules, one job each:
//! - this file: `Coordinator` (the node's Raft handle, reader and peers, and views of its Raft
//!   state) and `CoordinatorConfig`.
//! - [`error`]: `CoordError`, what all of it can fail with.
//! - [`level`]: `ReadLevel`, the consistency a read asks for.
//! - [`read`]: the barrier each read level waits for, and the `max_staleness_ms` judgement.
//! - [`read_index`]: read-index rounds shared by concurrent reads.
//! - [`lease`]: the leader's read lease (pure, clock injected in tests).
//! - [`write`]: a write through the current leader, retried only when it certainly did not apply.
//! - [`batch`]: writes grouped into log entries on the leader (`WriteBatcher`, `BatchForm`).
//! - [`forward`]: writes sent to the leader many to a frame (`Forwarder`).
//! - [`gate`]: `WriteGate`, which a leaving leader closes.
//! - [`membership`]: adding, promoting and removing members; [`removal`]: noticing this
//!   node's own removal.
//! - [`status`]: this node's and every member's progress, readiness, snapshots on demand.
//! - [`peer`]: what this node answers other nodes over raft-net.
//! - [`watch`]: change streams and blocking reads (`WatchHub`, `WatchStream`).
//! - [`leases`]: clients' leases with a TTL: the leader's timers, expiry through the log,
//!   keepalives from any node (not [`lease`], the leader's read lease).
//!
//! Why: `coordinator/DESIGN.md`.

pub mod batch;
pub mod error;
pub mod forward;
pub mod gate;
pub mod lease;
pub mod leases;
pub mod level;
pub mod membership;
pub mod peer;
pub mod read;
pub mod read_batch;
pub mod read_index;
pub mod removal;
pub mod status;
pub mod tasks;
pub mod watch;
pub mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorkv_raft_net::{LeaderContact, NodeStatus, PeerPool};
use mirrorkv_storage::{CommandLimits, KvReader, NodeId, NodeInfo, Raft};

pub use error::CoordError;
pub use gate::WriteGate;
pub use lease::{Lease, LeaseConfig};
pub use level::ReadLevel;
pub use level::ReadRequest;
pub use mirrorkv_raft_net::MembershipChange;

use batch::{Appender, WriteBatcher};
use forward::Forwarder;
use read_batch::ReadIndexBatcher;

/// The settings of a node's coordination, each with its unit.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// What every client command must keep, on every path into this node (checked again by a
    /// leader for the writes other nodes forward).
    pub limits: CommandLimits,
    /// Deadline of the work this node does for another node (a forwarded read index) and the
    /// unit of a membership change's deadline and of a leaving leader's drain.
    pub request_timeout_ms: u64,
    /// How long a write's `Idempotency-Key` is remembered (stamped by the leader).
    pub idempotency_window_s: u64,
    /// A mirror more than this many log entries behind the leader is not promoted to voter.
    pub promote_max_lag_entries: u64,
    /// Writes queued at once in the write batcher and in the forwarder (senders wait beyond).
    pub max_queued_writes: usize,
    /// The read lease's timing.
    pub lease: LeaseConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            limits: CommandLimits {
                max_key_bytes: 4096,
                max_value_bytes: 1024 * 1024,
                max_txn_ops: 128,
                max_idempotency_key_bytes: 128,
            },
            request_timeout_ms: 5000,
            idempotency_window_s: 600,
            promote_max_lag_entries: 1000,
            max_queued_writes: 4096,
            lease: LeaseConfig {
                leader_lease_ms: 1000,
                lease_margin_ms: 250,
            },
        }
    }
}

impl CoordinatorConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// What the node made before its coordination starts: its identity, Raft, store and peers.
pub struct Parts {
    pub id: NodeId,
    pub cluster_id: String,
    pub raft: Raft,
    pub reader: KvReader,
    pub pool: Arc<PeerPool>,
    /// When this node last heard from a leader (kept by raft-net's server).
    pub contact: Arc<LeaderContact>,
    /// Committed index as this node knows it (kept by the log store).
    pub committed_index: Arc<AtomicU64>,
    /// The feed of applied changes (set as the state machine's change listener).
    pub watch: Arc<watch::WatchHub>,
    /// The leases' timers (set as the state machine's lease listener).
    pub leases: Arc<leases::LeaseTimers>,
}

/// One node's coordination with its cluster. Shared (`Arc`) by the API, raft-net's
/// `PeerService` and the background tasks.
pub struct Coordinator {
    pub id: NodeId,
    pub cluster_id: String,
    pub raft: Raft,
    pub reader: KvReader,
    pub config: CoordinatorConfig,
    /// The node's watches: the feed of applied changes and its limits.
    pub watch: Arc<watch::WatchHub>,
    /// The leases' timers and limits.
    pub leases: Arc<leases::LeaseTimers>,
    /// This node's keepalives, queued for the leader.
    keepalives: leases::KeepaliveBatcher,
    pool: Arc<PeerPool>,
    contact: Arc<LeaderContact>,
    committed_index: Arc<AtomicU64>,
    /// Batches the leadership confirmations of linearizable reads.
    read_index: ReadIndexBatcher,
    /// The read lease, while this node leads.
    lease: Lease,
    /// Appends through the write gate: admission of client writes to this node's Raft log
    /// while it leads (the gate is shared with a self-removal, which must finish even if its
    /// requester gives up).
    appender: Appender,
    /// Groups concurrent writes into one log entry while this node leads.
    write_batcher: WriteBatcher,
    /// Sends the writes this node receives while it does not lead to the leader, many to a
    /// frame.
    forwarder: Forwarder,
    /// Set once this node learns that it was removed from the cluster (`removal`); never
    /// cleared.
    removed: tokio::sync::watch::Sender<Option<Removed>>,
}

/// What a removed node knows of the cluster it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The log index of the membership that no longer lists this node.
    pub membership_index: u64,
    /// The members of that membership.
    pub members: Vec<(NodeId, NodeInfo)>,
}

impl Coordinator {
    pub fn new(parts: Parts, config: CoordinatorConfig) -> Arc<Self> {
        Arc::new(Self {
            id: parts.id,
            raft: parts.raft.clone(),
            cluster_id: parts.cluster_id,
            reader: parts.reader,
            watch: parts.watch,
            leases: parts.leases,
            keepalives: leases::KeepaliveBatcher::new(config.max_queued_writes),
            pool: parts.pool,
            contact: parts.contact,
            committed_index: parts.committed_index,
            read_index: ReadIndexBatcher::default(),
            lease: Lease::new(config.lease),
            appender: Appender {
                raft: parts.raft.clone(),
                gate: Arc::default(),
                idempotency_window_ms: config.idempotency_window_s.saturating_mul(1000),
            },
            write_batcher: WriteBatcher::new(config.max_queued_writes),
            forwarder: Forwarder::new(config.max_queued_writes),
            removed: tokio::sync::watch::channel(None).0,
            config,
        })
    }

    /// Refuse every later write, then wait (at most `timeout`) until every admitted one was
    /// answered; the number still unanswered (a leader shutting down).
    pub async fn close_writes(&self, timeout: Duration) -> usize {
        self.appender.gate.close(timeout).await
    }

    /// A stream of the changes matching `filter` from `from_index` on (`watch::WatchStream`).
    pub fn watch_stream(
        &self,
        filter: mirrorkv_storage::changes::KeyFilter,
        from_index: u64,
    ) -> Result<watch::WatchStream, CoordError> {
        watch::WatchStream::open(&self.watch, self.reader.clone(), filter, from_index)
    }

    /// Whether this node learned that it was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.borrow().is_some()
    }

    /// The leader's read lease duration: how long followers refuse to vote after hearing from
    /// a leader.
    pub fn leader_lease_ms(&self) -> u64 {
        self.lease.leader_lease_ms()
    }

    /// Refuse with `410 removed` once this node knows it was removed from the cluster.
    pub fn refuse_if_removed(&self) -> Result<(), CoordError> {
        match &*self.removed.borrow() {
            None => Ok(()),
            Some(removed) => Err(self.removed_error(removed)),
        }
    }

    /// `410 removed`, naming the members this node knows.
    pub fn removed_error(&self, removed: &Removed) -> CoordError {
        let members: Vec<String> = removed
            .members
            .iter()
            .map(|(id, node)| format!("{id} (api {})", node.api_addr))
            .collect();
        CoordError::Removed(format!(
            "node {} was removed from the cluster (membership at log index {}); ask a member: {}",
            self.id,
            removed.membership_index,
            if members.is_empty() {
                "none known".to_string()
            } else {
                members.join(", ")
            }
        ))
    }

    /// Resolves once this node learns it was removed, with the error to answer.
    pub async fn until_removed(&self) -> CoordError {
        let mut receiver = self.removed.subscribe();
        // The sender lives as long as this state, so waiting fails only if it is gone.
        let removed: Option<Removed> = receiver
            .wait_for(Option::is_some)
            .await
            .map(|removed| removed.clone())
            .unwrap_or_default();
        match removed {
            Some(removed) => self.removed_error(&removed),
            None => std::future::pending().await,
        }
    }

    /// The last log index this node has applied, as openraft reports it.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |id| id.index)
    }

    /// The current Raft term as this node knows it.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The leader this node currently believes in.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Where member `id` can be reached, from the current membership.
    pub fn member(&self, id: NodeId) -> Option<NodeInfo> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Acquire)
    }

    /// What this node's Raft sent its peers (for the metrics).
    pub fn sent_to_peers(&self) -> &mirrorkv_raft_net::SentCounters {
        &self.pool.sent
    }

    /// Milliseconds since this node last heard from a leader; 0 on the leader, `None` if never.
    pub fn last_contact_ms(&self) -> Option<u64> {
        self.last_contact_ms_under(self.leader())
    }

    /// `last_contact_ms`, given the leader this node believes in (read once by the caller).
    pub fn last_contact_ms_under(&self, leader: Option<NodeId>) -> Option<u64> {
        if leader == Some(self.id) {
            return Some(0);
        }
        self.contact
            .last()
            .map(|contact| contact.at.elapsed().as_millis() as u64)
    }

    /// This node's own progress, as it answers `Status` over raft-net.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        NodeStatus {
            id: self.id,
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index: self.committed_index(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            membership_index: metrics
                .membership_config
                .log_id()
                .as_ref()
                .map_or(0, |id| id.index),
            members: metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
        }
    }

    /// Wait until this node believes in another leader than `tried` or `timeout` passes (a
    /// bounded wait between retries). Not any change of the metrics: those change on every
    /// apply and every replication error, and a leader cut off from its quorum would retry in
    /// a tight loop.
    pub async fn wait_for_leader_change(&self, tried: Option<NodeId>, timeout: Duration) {
        let mut metrics = self.raft.metrics();
        let _ =
            tokio::time::timeout(timeout, metrics.wait_for(|m| m.current_leader != tried)).await;
    }
}
