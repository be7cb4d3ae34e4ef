//! `NodeState`: what every handler needs — the Raft handle, the local reader, the peer pool —
//! and small views of the node's Raft state.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorkv_raft_net::{LeaderContact, NodeStatus, PeerPool};
use mirrorkv_storage::{KvReader, NodeId, NodeInfo, Raft};

use crate::read_index::{Lease, ReadIndexBatcher};

/// Limits and timeouts of the HTTP API, each with its unit.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest request body accepted on any route.
    pub max_body_bytes: usize,
    /// HTTP connections served at once; past it the node stops accepting.
    pub max_connections: usize,
    /// Requests in flight at once; past it a request is answered 429 at once.
    pub max_in_flight_requests: usize,
    /// A connection with no request in progress and no byte moving is closed after this.
    pub idle_timeout_ms: u64,
    /// A request's head (request line and headers) must arrive within this.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this, or the answer is 408.
    pub body_read_timeout_ms: u64,
    /// A response that makes no progress (the client reads nothing) for this long closes the
    /// connection.
    pub write_timeout_ms: u64,
    /// Deadline of a request that needs the cluster (a write, a linearizable read).
    pub request_timeout_ms: u64,
    /// How long a write's `Idempotency-Key` is remembered.
    pub idempotency_window_s: u64,
    /// Longest `Idempotency-Key`.
    pub max_idempotency_key_bytes: usize,
    /// Most operations (compares included) in one transaction.
    pub max_txn_ops: usize,
    /// Default and largest `limit` of a range read.
    pub default_range_limit: usize,
    pub max_range_limit: usize,
    /// Most bytes of keys and values in one range page (it ends early, with `next`, past them;
    /// a page always holds at least one key).
    pub max_range_page_bytes: usize,
    /// A mirror more than this many log entries behind the leader is not promoted to voter.
    pub promote_max_lag_entries: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            max_connections: 1024,
            max_in_flight_requests: 4096,
            idle_timeout_ms: 60_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            request_timeout_ms: 5000,
            idempotency_window_s: 600,
            max_idempotency_key_bytes: 128,
            max_txn_ops: 128,
            default_range_limit: 1000,
            max_range_limit: 10_000,
            max_range_page_bytes: 4 * 1024 * 1024,
            promote_max_lag_entries: 1000,
        }
    }
}

impl ApiConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// What every client command must keep, on every path into this node.
    pub fn command_limits(&self) -> mirrorkv_storage::CommandLimits {
        mirrorkv_storage::CommandLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_txn_ops: self.max_txn_ops,
            max_idempotency_key_bytes: self.max_idempotency_key_bytes,
        }
    }
}

/// Shared state of the HTTP API of one node.
pub struct NodeState {
    pub id: NodeId,
    pub cluster_id: String,
    pub raft: Raft,
    pub reader: KvReader,
    pub pool: Arc<PeerPool>,
    pub contact: Arc<LeaderContact>,
    /// Committed index as this node knows it (kept by the log store).
    pub committed_index: Arc<AtomicU64>,
    pub config: ApiConfig,
    /// Batches the leadership confirmations of linearizable reads.
    pub read_index: ReadIndexBatcher,
    /// The read lease, while this node leads.
    pub lease: Lease,
    /// Request counters and latency histograms (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Admission of client writes to this node's Raft log while it leads (shared with a
    /// self-removal, which must finish even if its requester gives up).
    pub write_gate: Arc<WriteGate>,
    /// Groups concurrent writes into one log entry while this node leads.
    pub write_batcher: crate::write::WriteBatcher,
    /// Sends the writes this node receives while it does not lead to the leader, many to a
    /// frame.
    pub forwarder: crate::write::Forwarder,
    /// Set once this node learns that it was removed from the cluster
    /// (`membership::watch_removal`); never cleared.
    pub removed: tokio::sync::watch::Sender<Option<Removed>>,
}

/// What a removed node knows of the cluster it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The log index of the membership that no longer lists this node.
    pub membership_index: u64,
    /// The members of that membership.
    pub members: Vec<(NodeId, NodeInfo)>,
}

/// Admission of client writes on a leader that may be leaving (shutting down, or removing
/// itself from the cluster).
///
/// Why: openraft answers a client write once its entry is applied. A leader that removes
/// itself steps down right after the new membership is applied, and a leader that shuts down
/// stops; an entry appended after that point would never be answered, and its writer would get
/// `outcome: unknown`. So a leaving leader first closes this gate — writes arriving later are
/// refused *before* they are appended, which is safe to retry anywhere — then waits for the
/// writes already admitted to be answered, then leaves.
///
/// Invariant: once `close()` returns, no further entry from `admit` reaches openraft, because
/// admission (check + enqueue into openraft's ordered channel) happens under the read side of
/// `order`, and `close` takes the write side.
#[derive(Debug, Default)]
pub struct WriteGate {
    /// Closes not yet undone by `reopen`: a failed self-removal reopens only its own close,
    /// never a shutdown's.
    closes: AtomicUsize,
    in_flight: AtomicUsize,
    order: tokio::sync::RwLock<()>,
}

/// A write admitted through the gate; dropping it marks the write answered.
pub struct Admitted<'a>(&'a WriteGate);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriteGate {
    pub fn is_closed(&self) -> bool {
        self.closes.load(Ordering::Acquire) > 0
    }

    /// Run `enqueue` (which must hand the write to openraft and return without waiting for
    /// the answer) unless the gate is closed; `None` if it is.
    pub async fn admit<T, F: std::future::Future<Output = T>>(
        &self,
        enqueue: F,
    ) -> Option<(Admitted<'_>, T)> {
        let _order = self.order.read().await;
        if self.is_closed() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self);
        Some((admitted, enqueue.await))
    }

    /// Refuse every later write, then wait (at most `timeout`) until every admitted write was
    /// answered. Returns the number still unanswered at the deadline.
    pub async fn close(&self, timeout: Duration) -> usize {
        {
            let _order = self.order.write().await;
            self.closes.fetch_add(1, Ordering::AcqRel);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let in_flight = self.in_flight.load(Ordering::Acquire);
            if in_flight == 0 || tokio::time::Instant::now() >= deadline {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(GATE_POLL_MS)).await;
        }
    }

    /// Undo one `close` (a self-removal that did not happen). The gate admits writes again
    /// once every close has been undone.
    pub fn reopen(&self) {
        let undone = self
            .closes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        debug_assert!(undone.is_ok(), "reopen without a close");
    }
}

/// How often `WriteGate::close` looks at the writes still in flight.
const GATE_POLL_MS: u64 = 5;

impl NodeState {
    /// On a leader whose read lease holds: the index a lease read must wait for. That is the
    /// leader's *commit* index, not its applied index: a follower may apply a committed entry
    /// before the leader does, and a read there must never be followed by an older read here
    /// (jepsen-lite found exactly that; see jepsen-lite/README.md). The commit index is read
    /// from openraft's own state before the lease is checked, so no other leader can have
    /// committed anything in between.
    pub async fn lease_read_index(&self) -> Option<u64> {
        let committed = self
            .raft
            .with_raft_state(|raft_state| raft_state.committed.map_or(0, |id| id.index))
            .await
            .ok()?;
        let lease_index = self.lease.valid(self.term())?;
        Some(lease_index.max(committed))
    }

    /// On a leader: whether a quorum acknowledged this node as leader within the last
    /// `within_ms`. If its newest acknowledgement (a read-index confirmation) is older, it
    /// joins the next batched confirmation round (`ReadIndexBatcher`, shared with linearizable
    /// reads), waiting at most one leader lease, and answers whether that round confirmed this
    /// node in its term. A leader cut off from its quorum stays leader in its own eyes until it
    /// hears a higher term; this is how it knows it is cut off (`max_staleness_ms`, `/ready`).
    pub async fn leader_quorum_acked_within(self: &Arc<Self>, within_ms: u64) -> bool {
        let term = self.term();
        let fresh = |at: std::time::Instant| at.elapsed().as_millis() as u64 <= within_ms;
        if self.lease.confirmed_at(term).is_some_and(fresh) {
            return true;
        }
        let asked = std::time::Instant::now();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.lease.leader_lease_ms());
        // The round renews the lease of `term` only if this node still leads in it (a round
        // answered by another leader leaves it as it was).
        let _ = self.read_index.read_index(self, deadline).await;
        self.lease
            .confirmed_at(term)
            .is_some_and(|confirmed| confirmed >= asked)
    }

    /// Refuse with `410 removed` once this node knows it was removed from the cluster.
    pub fn refuse_if_removed(&self) -> Result<(), crate::ApiError> {
        match &*self.removed.borrow() {
            None => Ok(()),
            Some(removed) => Err(self.removed_error(removed)),
        }
    }

    /// `410 removed`, naming the members this node knows.
    pub fn removed_error(&self, removed: &Removed) -> crate::ApiError {
        let members: Vec<String> = removed
            .members
            .iter()
            .map(|(id, node)| format!("{id} (api {})", node.api_addr))
            .collect();
        crate::ApiError::Removed(format!(
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
    pub async fn until_removed(&self) -> crate::ApiError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_removal_does_not_reopen_a_shutdown_close() {
        let gate = WriteGate::default();
        assert!(gate.admit(async {}).await.is_some());
        assert_eq!(
            gate.close(Duration::ZERO).await,
            0,
            "the admitted write was answered"
        );
        assert!(gate.admit(async {}).await.is_none(), "closed for a removal");
        gate.close(Duration::ZERO).await; // shutdown
        gate.reopen(); // the removal failed
        assert!(gate.is_closed(), "still closed for the shutdown");
        assert!(gate.admit(async {}).await.is_none());
    }

    #[tokio::test]
    async fn close_waits_for_admitted_writes() {
        let gate = std::sync::Arc::new(WriteGate::default());
        let (admitted, ()) = gate.admit(async {}).await.expect("open");
        let closing = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close(Duration::from_secs(10)).await })
        };
        // Not answered yet: close keeps waiting.
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        drop(admitted);
        assert_eq!(closing.await.unwrap(), 0);
        gate.reopen();
        assert!(!gate.is_closed());
    }
}
