//! Structured log lines for every leadership and membership change, each naming the node, the
//! term and the log index, so an operator can follow a cluster's history in its logs.

use std::collections::BTreeSet;
use std::future::Future;

use mirrorkv_storage::{NodeId, Raft};

/// Log changes of this node's Raft state until `stop` resolves. It watches openraft's server
/// metrics, which change only with the vote, the role, the leader or the membership; the full
/// metrics change several times for every log entry, and waking this task for each of them cost
/// about 1% of a node's CPU under puts.
pub(crate) async fn log_raft_events(node_id: NodeId, raft: Raft, stop: impl Future<Output = ()>) {
    let mut metrics = raft.server_metrics();
    let mut last_role = None;
    let mut last_membership = None;
    let watch = async {
        loop {
            let (role, membership) = {
                let m = metrics.borrow_and_update();
                let term = m.vote.leader_id().term;
                let role = (m.state, m.current_leader, term);
                let membership_index = m.membership_config.log_id().map(|id| id.index);
                let config = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = config.voter_ids().collect();
                let mirrors: BTreeSet<NodeId> = config.learner_ids().collect();
                // For the log line only: where this node's log was when the change was seen.
                let index = raft.metrics().borrow().last_log_index.unwrap_or(0);
                if last_role != Some(role) {
                    tracing::info!(
                        node_id,
                        term,
                        index,
                        state = ?m.state,
                        leader = ?m.current_leader,
                        "leadership changed"
                    );
                }
                if last_membership.as_ref()
                    != Some(&(membership_index, voters.clone(), mirrors.clone()))
                {
                    tracing::info!(
                        node_id,
                        term,
                        index = membership_index,
                        ?voters,
                        ?mirrors,
                        joint = config.get_joint_config().len() > 1,
                        "membership changed"
                    );
                }
                (role, (membership_index, voters, mirrors))
            };
            last_role = Some(role);
            last_membership = Some(membership);
            if metrics.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = watch => {}
        _ = stop => {}
    }
}
