//! The messages raft-net carries: openraft's RPCs and the application's own.

use mirrorkv_storage::{Command, NodeId, NodeInfo, Response, TypeConfig};
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
    /// Client writes that a non-leader forwards to the node it believes is leader: the writes
    /// it received meanwhile, in one frame. Each is applied (or refused) on its own.
    ClientWrites(Vec<Command>),
    /// Ask the leader for the log index a read at some level must wait for ([`ReadIndexKind`]).
    ReadIndex {
        kind: ReadIndexKind,
    },
    /// A membership change, forwarded to the node believed to be leader.
    Membership(MembershipChange),
    /// Ask a node for its own progress (for `GET /v1/cluster` on any node).
    Status,
    /// Leases' timers, asked of the node believed to be leader, which alone keeps them: renew
    /// each (keepalives, `renew`) or only tell how long each has left. Many in one frame.
    Leases {
        ids: Vec<u64>,
        renew: bool,
    },
    /// With peer TLS, the dialer's first frame: the node it is. The server greets only if
    /// the dialer's certificate names that node (`tls.rs`); never sent without TLS.
    Identify {
        node_id: NodeId,
    },
}

impl RpcRequest {
    /// The node in whose name a Raft message is sent (a vote's candidate, an append's or a
    /// snapshot's leader); `None` for the others, which any member may send.
    pub fn sender(&self) -> Option<NodeId> {
        match self {
            RpcRequest::AppendEntries(request) => request.vote.leader_id().voted_for(),
            RpcRequest::Vote(request) => request.vote.leader_id().voted_for(),
            RpcRequest::InstallSnapshot(request) => request.vote.leader_id().voted_for(),
            _ => None,
        }
    }
}

/// The leader's answer to [`RpcRequest::Leases`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimes {
    /// A read index confirmed after the request arrived: every lease ended by then is gone
    /// from `leases`. A node answering its own client from this waits to apply it first.
    pub read_index: u64,
    /// One per id asked, in order: `None` for a lease that does not live (or whose expiry the
    /// leader has proposed).
    pub leases: Vec<Option<LeaseTime>>,
}

/// One lease's timer on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTime {
    pub ttl_ms: u64,
    /// Until the leader expires it, unless renewed.
    pub remaining_ms: u64,
}

/// What a read index must promise, by read level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexKind {
    /// `linearizable`: the leader's commit index after a leadership confirmation by a quorum
    /// that started after the request arrived.
    Confirmed,
    /// `lease`: as `Confirmed`, but a leader holding its read lease answers without a round.
    Lease,
    /// `leader`: whatever the node that believes it leads has applied; no check at all.
    LeaderApplied,
}

/// A change to the cluster's membership. The leader carries it out with openraft's joint
/// consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a mirror (a non-voting learner); it catches up by snapshot and log.
    AddMirror { id: NodeId, node: NodeInfo },
    /// Make a caught-up mirror a voter.
    Promote { id: NodeId },
    /// Remove a voter or a mirror.
    Remove { id: NodeId },
}

/// One node's own view of its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The log index of the membership this node follows (0: none yet).
    pub membership_index: u64,
    /// Every member (voters and mirrors) of that membership, with its addresses.
    pub members: Vec<(NodeId, NodeInfo)>,
}

/// Why a request was refused on its merits (retrying the same request does not help, except
/// for `NotCaughtUp`, which clears by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    InvalidArgument,
    NotFound,
    /// A mirror is too far behind to be promoted yet.
    NotCaughtUp,
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
    /// The request itself cannot be carried out (see [`Refusal`]).
    #[error("{message}")]
    Refused { refusal: Refusal, message: String },
}

/// The answer to an [`RpcRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// One answer per forwarded write, in the order sent.
    ClientWrites(Vec<Result<Response, ForwardError>>),
    /// The read index (a log index) or why there is none.
    ReadIndex(Result<u64, ForwardError>),
    /// The log index of the membership that now holds.
    Membership(Result<u64, ForwardError>),
    Status(NodeStatus),
    /// The receiver could not decode or serve the request at all.
    Failed(String),
    /// Sent unasked (request id 0) by a server when it accepts a connection; a client sends
    /// requests only after it.
    Hello,
    /// Sent unasked (request id 0) by a server that is shutting down, after it answered every
    /// request it had read: any request still unanswered on that connection was never read.
    GoingAway,
    /// The leases' timers asked for.
    Leases(Result<LeaseTimes, ForwardError>),
}
