//! The read path: bring the local state machine to the point the read level demands, then read
//! locally. Every level ends in a local read, so any node can serve any level.

use std::sync::Arc;

use mirrorkv_raft_net::ReadIndexKind;
use mirrorkv_storage::Command;
use tokio::time::Instant;

use crate::error::CoordError;
use crate::level::{ReadLevel, ReadRequest};
use crate::read_index;
use crate::Coordinator;

/// What a read level must wait for before this node reads locally: the pure decision, taken
/// from the level and what the node knows of the leader (`prepare` carries it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barrier {
    /// Append a barrier entry through the leader and wait until it is applied here (`strong`).
    LogEntry,
    /// A read index confirmed by a quorum, shared with concurrent reads (`linearizable`).
    BatchedReadIndex,
    /// A read index answered from the leader's lease; never batched with `linearizable`
    /// reads, whose answer must not come from a lease (`lease`).
    LeaseReadIndex,
    /// What the leader has applied, asked over raft-net (`leader` on a follower).
    LeaderApplied,
    /// Nothing: read what is applied here (`leader` on the leader, `stale`).
    Nothing,
}

/// The barrier of `level` on a node that `is_leader` and `knows_leader`; `Err` when the level
/// cannot be served without a leader this node knows.
pub fn barrier_for(
    level: ReadLevel,
    is_leader: bool,
    knows_leader: bool,
) -> Result<Barrier, &'static str> {
    Ok(match level {
        ReadLevel::Strong => Barrier::LogEntry,
        ReadLevel::Linearizable => Barrier::BatchedReadIndex,
        ReadLevel::Lease => Barrier::LeaseReadIndex,
        ReadLevel::Leader if is_leader => Barrier::Nothing,
        ReadLevel::Leader if !knows_leader => return Err("a `leader` read needs one"),
        ReadLevel::Leader => Barrier::LeaderApplied,
        ReadLevel::Stale => Barrier::Nothing,
    })
}

impl Coordinator {
    /// Wait until this node may serve `request` by reading its own state, before `deadline`:
    /// what each read level waits for is `read::barrier_for`.
    pub async fn read_barrier(
        self: &Arc<Self>,
        request: ReadRequest,
        deadline: tokio::time::Instant,
    ) -> Result<(), CoordError> {
        prepare(self, request, deadline).await
    }
}

/// Wait until this node may serve `request` locally, before `deadline`.
async fn prepare(
    node: &Arc<Coordinator>,
    request: ReadRequest,
    deadline: Instant,
) -> Result<(), CoordError> {
    // Only `leader` depends on the node's view of the leader: the others do not read it.
    let (is_leader, knows_leader) = match request.level {
        ReadLevel::Leader => (node.is_leader(), node.leader().is_some()),
        _ => (false, false),
    };
    let barrier = barrier_for(request.level, is_leader, knows_leader).map_err(|needs| {
        CoordError::Unavailable(format!("node {} knows no leader; {needs}", node.id))
    })?;
    let wait_for = match barrier {
        // A barrier changes nothing, so a barrier whose outcome is unknown is just a read that
        // timed out: retrying it is safe (unlike a write's 504).
        Barrier::LogEntry => Some(
            node.write(Command::Barrier, deadline)
                .await
                .map_err(|e| match e {
                    CoordError::OutcomeUnknown(message) => CoordError::Timeout(message),
                    other => other,
                })?
                .index,
        ),
        Barrier::BatchedReadIndex => Some(node.confirmed_read_index(deadline).await?),
        Barrier::LeaseReadIndex => {
            Some(read_index::one_round(node, ReadIndexKind::Lease, deadline).await?)
        }
        // The answer is what the leader had applied, or newer: this node serves the read once
        // it has applied as much.
        Barrier::LeaderApplied => {
            Some(read_index::one_round(node, ReadIndexKind::LeaderApplied, deadline).await?)
        }
        Barrier::Nothing => None,
    };
    if let Some(max_staleness_ms) = request.max_staleness_ms {
        check_staleness(node, max_staleness_ms).await?;
    }
    if let Some(target) = wait_for.max(request.min_index) {
        wait_applied(node, target, deadline).await?;
    }
    Ok(())
}

/// What `max_staleness_ms` is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// This node leads: did a quorum acknowledge it within the bound?
    Leader { quorum_acked_within_bound: bool },
    /// This node follows: its last contact with a leader (how long ago, and that leader's
    /// commit index then), and what it has applied.
    Follower {
        last_contact: Option<(u64, u64)>,
        applied_index: u64,
    },
}

/// Why a read with `max_staleness_ms` may not be served now, or `None` if it may: this node
/// heard from a leader within the bound and has applied what that leader had committed then;
/// a leader must have had a quorum acknowledge it within the bound (a leader cut off from its
/// quorum is as stale as a cut-off follower).
pub fn staleness_refusal(max_staleness_ms: u64, freshness: Freshness) -> Option<String> {
    match freshness {
        Freshness::Leader {
            quorum_acked_within_bound: true,
        } => None,
        Freshness::Leader { .. } => Some(format!(
            "this node leads, but no quorum acknowledged it within max_staleness_ms={max_staleness_ms}"
        )),
        Freshness::Follower {
            last_contact: None,
            ..
        } => Some("this node has not heard from a leader".into()),
        Freshness::Follower {
            last_contact: Some((since_ms, _)),
            ..
        } if since_ms > max_staleness_ms => Some(format!(
            "last contact with the leader was {since_ms} ms ago, over max_staleness_ms={max_staleness_ms}"
        )),
        Freshness::Follower {
            last_contact: Some((_, leader_commit_index)),
            applied_index,
        } if applied_index < leader_commit_index => Some(format!(
            "applied index {applied_index} is behind the leader's commit index {leader_commit_index} at last contact"
        )),
        Freshness::Follower { .. } => None,
    }
}

/// `max_staleness_ms` for this node now (`staleness_refusal`).
async fn check_staleness(node: &Arc<Coordinator>, max_staleness_ms: u64) -> Result<(), CoordError> {
    let freshness = if node.is_leader() {
        Freshness::Leader {
            quorum_acked_within_bound: node.leader_quorum_acked_within(max_staleness_ms).await,
        }
    } else {
        let last_contact = node.contact.last().map(|contact| {
            (
                contact.at.elapsed().as_millis() as u64,
                contact.leader_commit_index,
            )
        });
        Freshness::Follower {
            last_contact,
            applied_index: node.reader.applied_index()?,
        }
    };
    match staleness_refusal(max_staleness_ms, freshness) {
        None => Ok(()),
        Some(why) => Err(CoordError::StaleRead(why)),
    }
}

/// Wait until the local state machine has applied `index`.
pub async fn wait_applied(
    node: &Coordinator,
    index: u64,
    deadline: Instant,
) -> Result<(), CoordError> {
    if node.reader.applied_index()? >= index {
        return Ok(());
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    // A removed node never applies what the cluster commits after its removal: it answers 410
    // at once instead of waiting out the deadline.
    let wait = node.raft.wait(Some(remaining));
    tokio::select! {
        applied = wait.applied_index_at_least(Some(index), "read") => applied.map(|_| ()).map_err(|_| {
            CoordError::Timeout(format!(
                "this node did not apply index {index} within {} ms",
                remaining.as_millis()
            ))
        }),
        removed = node.until_removed() => Err(removed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_waits_for_its_own_barrier() {
        use Barrier::*;
        for (is_leader, knows_leader) in [(true, true), (false, true), (false, false)] {
            let on = |level| barrier_for(level, is_leader, knows_leader);
            // The three linearizable levels wait for the cluster wherever they are served.
            assert_eq!(on(ReadLevel::Strong), Ok(LogEntry));
            assert_eq!(on(ReadLevel::Linearizable), Ok(BatchedReadIndex));
            assert_eq!(on(ReadLevel::Lease), Ok(LeaseReadIndex));
            // `stale` never waits.
            assert_eq!(on(ReadLevel::Stale), Ok(Nothing));
        }
        // `leader`: the leader reads at once; a follower asks the leader; without one, refused.
        assert_eq!(barrier_for(ReadLevel::Leader, true, true), Ok(Nothing));
        assert_eq!(
            barrier_for(ReadLevel::Leader, false, true),
            Ok(LeaderApplied)
        );
        assert!(barrier_for(ReadLevel::Leader, false, false).is_err());
    }

    #[test]
    fn a_bounded_read_needs_recent_contact_and_everything_then_committed() {
        let follower = |last_contact, applied_index| Freshness::Follower {
            last_contact,
            applied_index,
        };
        // Heard 100 ms ago, leader had committed 7, 7 applied: fresh within 100 ms, not 99.
        assert_eq!(staleness_refusal(100, follower(Some((100, 7)), 7)), None);
        let late = staleness_refusal(99, follower(Some((100, 7)), 7)).unwrap();
        assert!(
            late.contains("100 ms ago, over max_staleness_ms=99"),
            "{late}"
        );
        // Recent contact but behind what that leader had committed.
        let behind = staleness_refusal(1000, follower(Some((5, 8)), 7)).unwrap();
        assert!(behind.contains("applied index 7 is behind"), "{behind}");
        assert!(staleness_refusal(1000, follower(None, 7)).is_some());
        // A leader is as fresh as its last quorum acknowledgement.
        let leader = |acked| Freshness::Leader {
            quorum_acked_within_bound: acked,
        };
        assert_eq!(staleness_refusal(50, leader(true)), None);
        assert!(staleness_refusal(50, leader(false))
            .unwrap()
            .contains("no quorum"));
    }
}
