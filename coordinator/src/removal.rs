//! Noticing that this node was removed from the cluster, by its own log or by asking the others.

use std::sync::Arc;
use std::time::Duration;

use mirrorkv_storage::{NodeId, NodeInfo};
use tokio::time::Instant;

use crate::{Coordinator, Removed};

/// How long a removal probe waits for each member's status.
const REMOVAL_PROBE_TIMEOUT_MS: u64 = 500;

/// Watch for this node's removal from the cluster, until `stop`.
///
/// A removed node must not keep serving its old view (`GET /v1/cluster` listing the old
/// members, reads waiting out their deadline for entries it will never receive). It learns of
/// its removal in one of two ways:
/// - its own log holds a committed membership that does not list it (a leader that removed
///   itself; a follower that received the final membership);
/// - it has not heard from a leader for a leader lease, and a member it knows reports a
///   committed membership, newer than its own, that does not list it. The leader stops
///   replicating to a removed node once the membership without it is in the leader's log, so
///   a removed follower usually never receives that membership itself.
///
/// Only committed memberships count (index at most the reporting node's commit index): an
/// uncommitted one may still be truncated away. And only once this node has been a member: a
/// node that joins installs a snapshot whose membership predates it, and must not take that
/// for its removal (t61 caught exactly that). Once removed, the node stands for no election
/// and answers `410 removed` to every KV and cluster request (`Coordinator::refuse_if_removed`),
/// and `/ready` answers 503; it stays so until it stops. To come back, it joins as a new node.
pub async fn watch_removal(node: Arc<Coordinator>, stop: impl std::future::Future<Output = ()>) {
    let lease = Duration::from_millis(node.lease.leader_lease_ms());
    let mut metrics = node.raft.metrics();
    let mut last_probe: Option<Instant> = None;
    let mut was_member = false;
    tokio::pin!(stop);
    loop {
        was_member = was_member || is_member(&node);
        let evidence = match own_removal(&node) {
            _ if !was_member => None,
            Some(removed) => Some(removed),
            None if should_probe(&node, last_probe, lease) => {
                last_probe = Some(Instant::now());
                probe_removal(&node).await
            }
            None => None,
        };
        if let Some(removed) = evidence {
            let members: Vec<NodeId> = removed.members.iter().map(|(id, _)| *id).collect();
            tracing::error!(
                node_id = node.id,
                membership_index = removed.membership_index,
                ?members,
                "this node was removed from the cluster: it answers 410 to every KV and cluster request and stands for no election; to rejoin, start a new node (empty data dir, --join)"
            );
            node.raft.runtime_config().elect(false);
            node.removed.send_replace(Some(removed));
            return;
        }
        // Woken by a new membership, not by every metrics change (those come with every
        // apply); the lease-long sleep paces the probe.
        let seen = *metrics.borrow().membership_config.log_id();
        tokio::select! {
            _ = &mut stop => return,
            _ = metrics.wait_for(|m| *m.membership_config.log_id() != seen) => {}
            _ = tokio::time::sleep(lease) => {}
        }
    }
}

/// This node's membership (committed or not) lists it.
fn is_member(node: &Coordinator) -> bool {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    metrics
        .membership_config
        .membership()
        .get_node(&node.id)
        .is_some()
}

/// This node's own log says it was removed: its membership is committed and does not list it.
fn own_removal(node: &Coordinator) -> Option<Removed> {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    let index = metrics.membership_config.log_id().as_ref()?.index;
    let membership = metrics.membership_config.membership();
    if membership.get_node(&node.id).is_some() || index > node.committed_index() {
        return None;
    }
    Some(Removed {
        membership_index: index,
        members: membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
    })
}

/// Probe the other members when this node has not heard from a leader within a lease, at
/// most once a lease.
fn should_probe(node: &Coordinator, last_probe: Option<Instant>, lease: Duration) -> bool {
    if node.is_leader() || last_probe.is_some_and(|at| at.elapsed() < lease) {
        return false;
    }
    node.contact
        .last()
        .is_none_or(|contact| contact.at.elapsed() >= lease)
}

/// Ask every member this node knows for its membership; evidence of removal if one reports a
/// committed membership newer than ours that does not list this node.
async fn probe_removal(node: &Coordinator) -> Option<Removed> {
    let (own_index, members): (u64, Vec<(NodeId, NodeInfo)>) = {
        let metrics = node.raft.metrics();
        let metrics = metrics.borrow();
        let own_index = metrics.membership_config.log_id().as_ref()?.index;
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != node.id)
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        (own_index, members)
    };
    let timeout = Duration::from_millis(REMOVAL_PROBE_TIMEOUT_MS);
    let asks = members
        .iter()
        .map(|(id, info)| async move { node.pool.client(*id, info).status(timeout).await });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .find(|status| {
            status.membership_index > own_index
                && status.membership_index <= status.commit_index
                && !status.members.iter().any(|(id, _)| *id == node.id)
        })
        .map(|status| Removed {
            membership_index: status.membership_index,
            members: status.members,
        })
}
