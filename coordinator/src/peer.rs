//! `PeerService`: what this node answers other nodes over raft-net (forwarded writes, read
//! indexes, membership changes, status, leases). Raft's own RPCs are served by raft-net directly.

use std::sync::Arc;

use mirrorkv_raft_net::{
    AppHandler, ForwardError, LeaseTimes, MembershipChange, NodeStatus, ReadIndexKind,
};
use mirrorkv_storage::{Command, Response};

use crate::membership;
use crate::write;
use crate::Coordinator;

pub struct PeerService {
    pub node: Arc<Coordinator>,
}

impl AppHandler for PeerService {
    async fn client_writes(&self, commands: Vec<Command>) -> Vec<Result<Response, ForwardError>> {
        write::apply_many_as_leader(&self.node, commands).await
    }

    async fn read_index(&self, kind: ReadIndexKind) -> Result<u64, ForwardError> {
        self.node.read_index_for_peer(kind).await
    }

    async fn membership(&self, change: MembershipChange) -> Result<u64, ForwardError> {
        membership::change_as_leader(&self.node, change).await
    }

    fn status(&self) -> NodeStatus {
        self.node.status()
    }

    async fn leases(&self, ids: Vec<u64>, renew: bool) -> Result<LeaseTimes, ForwardError> {
        let deadline = tokio::time::Instant::now() + self.node.config.request_timeout();
        self.node.leases_as_leader(ids, renew, deadline).await
    }
}
