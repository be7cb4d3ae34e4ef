//! Read indexes: the leader's lease decision (`lease_read_index`), its quorum confirmation
//! rounds (`one_round`, shared between reads by `read_batch::ReadIndexBatcher`), what it
//! answers without a round, and a follower's request to the leader. Every path that answers a
//! read index — this node's reads and other nodes' over raft-net (`peer`) — goes through here.

use std::sync::Arc;
use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, ReadIndexKind};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use crate::error::CoordError;
use crate::Coordinator;

/// Between retries inside a round, wait at most this long for the leader to change.
const RETRY_WAIT_MS: u64 = 50;

impl Coordinator {
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
        let _ = self.confirmed_read_index(deadline).await;
        self.lease
            .confirmed_at(term)
            .is_some_and(|confirmed| confirmed >= asked)
    }

    /// On the leader: the answer to `kind` that needs no confirmation round — its applied
    /// index for `LeaderApplied`, its lease's read index for `Lease` while the lease holds —
    /// or `None` when only a round can answer.
    async fn leader_answer_without_round(&self, kind: ReadIndexKind) -> Option<u64> {
        match kind {
            ReadIndexKind::LeaderApplied => Some(self.applied_index()),
            ReadIndexKind::Lease => self.lease_read_index().await,
            ReadIndexKind::Confirmed => None,
        }
    }

    /// What this node, asked by another over raft-net, answers for `kind`: `NotLeader` unless
    /// it leads; else the answer without a round if there is one, else a confirmation round
    /// shared with this node's own reads.
    pub(crate) async fn read_index_for_peer(
        self: &Arc<Self>,
        kind: ReadIndexKind,
    ) -> Result<u64, ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.leader(),
            });
        }
        if let Some(index) = self.leader_answer_without_round(kind).await {
            return Ok(index);
        }
        let deadline = Instant::now() + self.config.request_timeout();
        self.confirmed_read_index(deadline)
            .await
            .map_err(|e| ForwardError::Unavailable(e.to_string()))
    }

    /// A read index confirmed by a quorum in a round that started after this call, shared
    /// with the other reads waiting on this node (`ReadIndexBatcher`).
    pub(crate) async fn confirmed_read_index(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<u64, CoordError> {
        let node = self.clone();
        let round = move || {
            let node = node.clone();
            async move {
                let deadline = Instant::now() + node.config.request_timeout();
                one_round(&node, ReadIndexKind::Confirmed, deadline)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        self.read_index.read_index(round, deadline).await
    }
}

/// One leadership confirmation: on the leader a heartbeat round to a quorum; on a follower a
/// `ReadIndex` request to the leader over raft-net. With `Lease`, a leader holding its lease
/// answers without a round, and a follower asks the leader to answer under its lease. With
/// `LeaderApplied`, the leader answers its applied index without any check. Retries across
/// leader changes until `deadline`.
pub(crate) async fn one_round(
    node: &Coordinator,
    kind: ReadIndexKind,
    deadline: Instant,
) -> Result<u64, CoordError> {
    loop {
        node.refuse_if_removed()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CoordError::Unavailable(
                "no leader confirmed a read index in time".into(),
            ));
        }
        let tried = node.leader();
        match tried {
            Some(leader) if leader == node.id => {
                if let Some(index) = node.leader_answer_without_round(kind).await {
                    return Ok(index);
                }
                let term = node.term();
                let started = std::time::Instant::now();
                match tokio::time::timeout(remaining, node.raft.get_read_log_id()).await {
                    Ok(Ok((read_log_id, _))) => {
                        let index = read_log_id.map_or(0, |id| id.index);
                        // The confirmation was of the term we read before asking, or a later
                        // one; crediting the older term is the conservative choice.
                        node.lease.extend(started, term, index);
                        return Ok(index);
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {}
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                        tracing::debug!(error = %e, "read index: no quorum");
                    }
                    Ok(Err(e)) => {
                        return Err(CoordError::Unavailable(format!("read index failed: {e}")))
                    }
                    Err(_) => {
                        return Err(CoordError::Unavailable(
                            "leadership not confirmed in time".into(),
                        ))
                    }
                }
            }
            Some(leader) => {
                if let Some(index) = ask_leader(node, leader, kind, remaining).await {
                    return Ok(index);
                }
            }
            None => {}
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(RETRY_WAIT_MS));
        node.wait_for_leader_change(tried, wait).await;
    }
}

/// One read-index request to `leader` over raft-net; `None` if it did not answer one (not the
/// leader any more, unreachable, no quorum): the caller retries until its deadline.
pub(crate) async fn ask_leader(
    node: &Coordinator,
    leader: u64,
    kind: ReadIndexKind,
    timeout: Duration,
) -> Option<u64> {
    let info = node.member(leader)?;
    match node
        .pool
        .client(leader, &info)
        .read_index(kind, timeout)
        .await
    {
        Ok(Ok(index)) => Some(index),
        Ok(Err(ForwardError::NotLeader { .. })) => None,
        Ok(Err(e @ (ForwardError::Unavailable(_) | ForwardError::Refused { .. }))) => {
            tracing::debug!(leader, ?kind, error = %e, "read index refused");
            None
        }
        Err(e) => {
            tracing::debug!(leader, ?kind, error = %e, "read index request failed");
            None
        }
    }
}
