//! `PeerService`: what this node answers other nodes over raft-net (forwarded writes, read
//! indexes). Raft's own RPCs are served by raft-net directly.

use std::sync::Arc;

use mirrorkv_raft_net::{AppHandler, ForwardError, MembershipChange, NodeStatus, ReadIndexKind};
use mirrorkv_storage::{Command, Response};
use tokio::time::Instant;

use crate::membership;
use crate::state::NodeState;
use crate::write;

pub struct PeerService {
    pub state: Arc<NodeState>,
}

impl AppHandler for PeerService {
    async fn client_writes(&self, commands: Vec<Command>) -> Vec<Result<Response, ForwardError>> {
        write::apply_many_as_leader(&self.state, commands).await
    }

    async fn read_index(&self, kind: ReadIndexKind) -> Result<u64, ForwardError> {
        let state = &self.state;
        if !state.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: state.leader(),
            });
        }
        if kind == ReadIndexKind::LeaderApplied {
            return Ok(state.applied_index());
        }
        if kind == ReadIndexKind::Lease {
            if let Some(index) = state.lease_read_index().await {
                return Ok(index);
            }
        }
        let deadline = Instant::now() + state.config.request_timeout();
        let index = state
            .read_index
            .read_index(state, deadline)
            .await
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        Ok(index)
    }

    async fn membership(&self, change: MembershipChange) -> Result<u64, ForwardError> {
        membership::change_as_leader(&self.state, change).await
    }

    fn status(&self) -> NodeStatus {
        self.state.status()
    }
}
