//! Structured log lines for every leadership and membership change, each naming the node, the
//! term and the log index, so an operator can follow a cluster's history in its logs.

use std::collections::BTreeSet;
use std::future::Future;

use mirrorkv_storage::{NodeId, Raft};

/// Log changes of this node's Raft state until `stop` resolves.
pub(crate) async fn log_raft_events(node_id: NodeId, raft: Raft, stop: impl Future<Output = ()>) {
    let mut metrics = raft.metrics();
    let mut last_role = None;
    let mut last_membership = None;
    let watch = async {
        loop {
            let (role, membership) = {
                let m = metrics.borrow_and_update();
                let role = (m.state, m.current_leader, m.current_term);
                let membership_index = m.membership_config.log_id().map(|id| id.index);
                let config = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = config.voter_ids().collect();
                let mirrors: BTreeSet<NodeId> = config.learner_ids().collect();
                let index = m.last_log_index.unwrap_or(0);
                if last_role != Some(role) {
                    tracing::info!(
                        node_id,
                        term = m.current_term,
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
                        term = m.current_term,
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
