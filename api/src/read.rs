//! The read path: bring the local state machine to the point the read level demands, then read
//! locally. Every level ends in a local read, so any node can serve any level.

use std::sync::Arc;

use mirrorkv_raft_net::ReadIndexKind;
use mirrorkv_storage::Command;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::level::ReadLevel;
use crate::read_index;
use crate::state::NodeState;
use crate::write;

/// The parameters of a read that decide when it may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub level: ReadLevel,
    pub min_index: Option<u64>,
    pub max_staleness_ms: Option<u64>,
}

/// Wait until this node may serve `request` locally, before `deadline`.
pub async fn prepare(
    state: &Arc<NodeState>,
    request: ReadRequest,
    deadline: Instant,
) -> Result<(), ApiError> {
    let wait_for = match request.level {
        // The read is ordered in the log: append a barrier through the leader and read once it
        // is applied here.
        // A barrier changes nothing, so a barrier whose outcome is unknown is just a read that
        // timed out: retrying it is safe (unlike a write's 504).
        ReadLevel::Strong => Some(
            write::write(state, Command::Barrier, deadline)
                .await
                .map_err(|e| match e {
                    ApiError::OutcomeUnknown(message) => ApiError::Timeout(message),
                    other => other,
                })?
                .index,
        ),
        ReadLevel::Linearizable => Some(state.read_index.read_index(state, deadline).await?),
        // Not batched: a lease answer must not serve a linearizable read.
        ReadLevel::Lease => {
            Some(read_index::one_round(state, ReadIndexKind::Lease, deadline).await?)
        }
        // The leader reads at once. Another node asks the leader (one hop over raft-net) what
        // it has applied and serves the read itself once it has applied as much: the answer is
        // what the leader had applied, or newer.
        ReadLevel::Leader if state.is_leader() => None,
        ReadLevel::Leader => {
            if state.leader().is_none() {
                return Err(ApiError::Unavailable(format!(
                    "node {} knows no leader; a `leader` read needs one",
                    state.id
                )));
            }
            Some(read_index::one_round(state, ReadIndexKind::LeaderApplied, deadline).await?)
        }
        ReadLevel::Stale => None,
    };
    if let Some(max_staleness_ms) = request.max_staleness_ms {
        check_staleness(state, max_staleness_ms).await?;
    }
    if let Some(target) = wait_for.max(request.min_index) {
        wait_applied(state, target, deadline).await?;
    }
    Ok(())
}

/// `max_staleness_ms`: this node heard from a leader within the bound and has applied what that
/// leader had committed then. On the leader: a quorum acknowledged it within the bound (a
/// leader cut off from its quorum is as stale as a cut-off follower).
async fn check_staleness(state: &Arc<NodeState>, max_staleness_ms: u64) -> Result<(), ApiError> {
    if state.is_leader() {
        if state.leader_quorum_acked_within(max_staleness_ms).await {
            return Ok(());
        }
        return Err(ApiError::StaleRead(format!(
            "this node leads, but no quorum acknowledged it within max_staleness_ms={max_staleness_ms}"
        )));
    }
    let Some(contact) = state.contact.last() else {
        return Err(ApiError::StaleRead(
            "this node has not heard from a leader".into(),
        ));
    };
    let since_ms = contact.at.elapsed().as_millis() as u64;
    if since_ms > max_staleness_ms {
        return Err(ApiError::StaleRead(format!(
            "last contact with the leader was {since_ms} ms ago, over max_staleness_ms={max_staleness_ms}"
        )));
    }
    let applied = state.reader.applied_index()?;
    if applied < contact.leader_commit_index {
        return Err(ApiError::StaleRead(format!(
            "applied index {applied} is behind the leader's commit index {} at last contact",
            contact.leader_commit_index
        )));
    }
    Ok(())
}

/// Wait until the local state machine has applied `index`.
async fn wait_applied(state: &NodeState, index: u64, deadline: Instant) -> Result<(), ApiError> {
    if state.reader.applied_index()? >= index {
        return Ok(());
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    // A removed node never applies what the cluster commits after its removal: it answers 410
    // at once instead of waiting out the deadline.
    let wait = state.raft.wait(Some(remaining));
    tokio::select! {
        applied = wait.applied_index_at_least(Some(index), "read") => applied.map(|_| ()).map_err(|_| {
            ApiError::Timeout(format!(
                "this node did not apply index {index} within {} ms",
                remaining.as_millis()
            ))
        }),
        removed = state.until_removed() => Err(removed),
    }
}
