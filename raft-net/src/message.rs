//! The messages raft-net carries: openraft's RPCs and the application's own.

use mirrorkv_storage::{Command, NodeId, Response, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write that a non-leader forwards to the node it believes is leader.
    ClientWrite(Command),
    /// Ask the leader for a read index: the log index a linearizable read must wait for. With
    /// `lease`, a leader holding a read lease answers without a quorum round.
    ReadIndex {
        lease: bool,
    },
}

/// Why a forwarded application request was not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; `leader` is who it believes is.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The leader could not serve it now (e.g. lost quorum, shutting down). Retryable.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The answer to an [`RpcRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    ClientWrite(Result<Response, ForwardError>),
    /// The read index (a log index) or why there is none.
    ReadIndex(Result<u64, ForwardError>),
    /// The receiver could not decode or serve the request at all.
    Failed(String),
}
