//! What a node reports of itself and of its cluster: every member's own progress
//! (`cluster_status`), readiness (`readiness`), and a snapshot on demand (`snapshot_now`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mirrorkv_raft_net::NodeStatus;
use mirrorkv_storage::{NodeId, NodeInfo};
use openraft::ServerState;
use tokio::time::Instant;

use crate::{CoordError, Coordinator};

/// How long `cluster_status` waits for each member's own status.
const MEMBER_STATUS_TIMEOUT_MS: u64 = 500;
/// Longest wait for a snapshot to be built (a snapshot is proportional to the data).
const SNAPSHOT_TIMEOUT_MS: u64 = 120_000;
/// Longest wait for the log purge after the snapshot (the leader defers it while a replication
/// stream still reads those entries; the answer then reports what was purged so far).
const PURGE_WAIT_MS: u64 = 2_000;

/// The cluster as this node sees it, with each member's own progress.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The leader's commit index when it answered, else this node's (never less than this
    /// node's); lags are measured against it.
    pub commit_index: u64,
    pub members: Vec<MemberStatus>,
    pub node: OwnStatus,
}

/// One member: where it is, its role, and its own progress if it answered in time.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: NodeId,
    pub info: NodeInfo,
    pub voter: bool,
    /// `None` if it did not answer within `MEMBER_STATUS_TIMEOUT_MS`.
    pub applied_index: Option<u64>,
    pub lag: Option<u64>,
}

/// This node's own Raft progress.
#[derive(Debug, Clone)]
pub struct OwnStatus {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: &'static str,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub last_contact_ms: Option<u64>,
}

/// A ready node: the leader it heard from, and what it has applied.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub leader: NodeId,
    pub applied_index: u64,
}

/// A snapshot built on demand, and the log purged behind it.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotTaken {
    pub index: u64,
    pub purged_index: Option<u64>,
    pub kept_entries: u64,
    pub snapshot_bytes: u64,
    pub took_ms: u64,
}

impl Coordinator {
    /// Every member's own status, asked over raft-net in parallel; `None` for a member that
    /// did not answer in time.
    async fn member_statuses(
        &self,
        members: &[(NodeId, NodeInfo)],
    ) -> BTreeMap<NodeId, Option<NodeStatus>> {
        let timeout = Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS);
        let asks = members.iter().map(|(id, info)| async move {
            if *id == self.id {
                return (*id, Some(self.status()));
            }
            let client = self.pool.client(*id, info);
            (*id, client.status(timeout).await.ok())
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The cluster as this node sees it, with every member's own progress.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes: Vec<(NodeId, NodeInfo)> = membership
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect();
        let statuses = self.member_statuses(&nodes).await;
        // Lag is measured against the leader's commit index when the leader answered, else
        // against this node's.
        let commit_index = metrics
            .current_leader
            .and_then(|leader| statuses.get(&leader).cloned().flatten())
            .map_or(self.committed_index(), |leader| leader.commit_index)
            .max(self.committed_index());
        let members = nodes
            .into_iter()
            .map(|(id, info)| {
                let applied_index = statuses
                    .get(&id)
                    .and_then(|status| status.as_ref().map(|s| s.applied_index));
                MemberStatus {
                    id,
                    info,
                    voter: voters.contains(&id),
                    applied_index,
                    lag: applied_index.map(|a| commit_index.saturating_sub(a)),
                }
            })
            .collect();
        let state = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            leader: metrics.current_leader,
            term: metrics.current_term,
            commit_index,
            members,
            node: OwnStatus {
                id: self.id,
                state,
                last_log_index: metrics.last_log_index,
                applied_index: metrics.last_applied.map_or(0, |id| id.index),
                snapshot_index: metrics.snapshot.map(|id| id.index),
                purged_index: metrics.purged.map(|id| id.index),
                last_contact_ms: self.last_contact_ms(),
            },
        }
    }

    /// Ready once the node knows a leader it has actually heard from (a leader: a quorum
    /// acknowledged it within one leader lease, asked again if need be; a follower: an
    /// accepted AppendEntries within one leader lease — a restarted node remembers its last
    /// leader but has not heard from it) and has applied everything that leader had committed
    /// when it last heard. Every refusal is `Unavailable`, a removed node's too.
    pub async fn readiness(self: &Arc<Self>) -> Result<Ready, CoordError> {
        if let Err(removed) = self.refuse_if_removed() {
            return Err(CoordError::Unavailable(removed.to_string()));
        }
        let applied = self.reader.applied_index()?;
        let lease_ms = self.lease.leader_lease_ms();
        let (leader, committed) = if self.is_leader() {
            if !self.leader_quorum_acked_within(lease_ms).await {
                return Err(CoordError::Unavailable(format!(
                    "this node leads, but no quorum acknowledged it in the last {lease_ms} ms"
                )));
            }
            (self.id, self.committed_index())
        } else {
            match self.contact.last() {
                Some(contact) if contact.at.elapsed().as_millis() as u64 <= lease_ms => {
                    (contact.leader_id, contact.leader_commit_index)
                }
                _ => {
                    return Err(CoordError::Unavailable(format!(
                        "no contact with a leader in the last {lease_ms} ms"
                    )))
                }
            }
        };
        if applied < committed {
            return Err(CoordError::Unavailable(format!(
                "applied index {applied} is behind commit index {committed}"
            )));
        }
        Ok(Ready {
            leader,
            applied_index: applied,
        })
    }

    /// Build a snapshot of this node's applied state now and purge the log behind it, keeping
    /// the newest `max_in_snapshot_log_to_keep` entries as the automatic policy does (a
    /// follower a little behind then catches up from the log instead of a whole snapshot).
    /// Acts on this node only.
    pub async fn snapshot_now(&self) -> Result<SnapshotTaken, CoordError> {
        let applied = self.reader.applied_index()?;
        let started = Instant::now();
        let not_running = |e: openraft::error::Fatal<NodeId>| {
            CoordError::Unavailable(format!("raft is not running: {e}"))
        };
        self.raft.trigger().snapshot().await.map_err(not_running)?;
        let metrics = self
            .raft
            .wait(Some(Duration::from_millis(SNAPSHOT_TIMEOUT_MS)))
            .metrics(
                |m| m.snapshot.map_or(0, |id| id.index) >= applied,
                "snapshot built",
            )
            .await
            .map_err(|_| {
                CoordError::Timeout(format!(
                    "no snapshot at index {applied} within {SNAPSHOT_TIMEOUT_MS} ms"
                ))
            })?;
        let index = metrics.snapshot.map_or(0, |id| id.index);
        let kept_entries = self.raft.config().max_in_snapshot_log_to_keep;
        let purge_to = index.saturating_sub(kept_entries);
        if purge_to > 0 {
            self.raft
                .trigger()
                .purge_log(purge_to)
                .await
                .map_err(not_running)?;
        }
        let purged = match self
            .raft
            .wait(Some(Duration::from_millis(PURGE_WAIT_MS)))
            .metrics(
                |m| m.purged.map_or(0, |id| id.index) >= purge_to,
                "log purged",
            )
            .await
        {
            Ok(metrics) => metrics.purged,
            Err(_) => self.raft.metrics().borrow().purged,
        };
        let snapshot_bytes = self.reader.snapshot_size_bytes()?;
        tracing::info!(node_id = self.id, snapshot_index = index, purged = ?purged, snapshot_bytes, "snapshot on demand");
        Ok(SnapshotTaken {
            index,
            purged_index: purged.map(|id| id.index),
            kept_entries,
            snapshot_bytes,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }
}
