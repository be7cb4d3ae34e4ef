//! raft-net: the node-to-node transport of mirrorkv. Every byte between two nodes — Raft RPCs,
//! snapshot chunks, forwarded client writes, read-index requests — goes through it, so cutting
//! one link (e.g. with a proxy given to `--peer`) cuts all traffic on that link.
//!
//! Modules, one job each:
//! - [`backoff`]: retry delays (exponential, capped, jittered) for every retry loop, pure.
//! - [`frame`]: the wire frame (length, version, request id, postcard payload), pure.
//! - [`message`]: `RpcRequest` / `RpcResponse`, the messages carried.
//! - [`client`]: `PeerPool` / `PeerClient`: reused multiplexed connections, backoff, deadlines.
//! - [`server`]: accepts peer connections and serves requests against the local Raft node.
//! - [`tls`]: mutual TLS between nodes: the certificate names the node (`mirrorkv-node-<id>`).
//! - [`network`]: openraft's `RaftNetworkFactory` on top of the pool.
//! - `warn_budget`: at most so many warnings of one kind a minute (refused peers).
//! - [`error`]: `NetError`, the error of this layer.
//!
//! Why it is shaped this way: `raft-net/DESIGN.md`.

pub mod backoff;
pub mod client;
pub mod error;
pub mod frame;
pub mod message;
pub mod network;
pub mod server;
pub mod tls;
mod warn_budget;

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use backoff::Backoff;
pub use client::{PeerClient, PeerPool, SentCounters};
pub use error::NetError;
pub use message::{
    ForwardError, LeaseTime, LeaseTimes, MembershipChange, NodeStatus, ReadIndexKind, Refusal,
    RpcRequest, RpcResponse,
};
pub use network::NetworkFactory;
pub use server::{AppHandler, Serving};
pub use tls::{PeerTls, PeerTlsConfigs};

use mirrorkv_storage::{Command, NodeId, Response};

/// Limits and timings of the transport. Every one has a unit in its name.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Largest frame accepted or sent, header included.
    pub max_frame_bytes: u32,
    /// Requests in flight on one connection, in each direction.
    pub max_in_flight: usize,
    /// Inbound peer connections served at once.
    pub max_connections: usize,
    /// Deadline for establishing a TCP connection.
    pub connect_timeout_ms: u64,
    /// Backoff after a failed dial: doubles from min to max, jittered (`backoff::Backoff`).
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Longest time the server spends on one request before answering `Failed`.
    pub serve_timeout_ms: u64,
    /// A frame whose first byte arrived must be whole within this (both ends).
    pub frame_read_timeout_ms: u64,
    /// An inbound connection that sends no frame for this long is said goodbye to and closed
    /// (its client dials again when it next needs to); a leader's heartbeats keep its own busy.
    pub idle_timeout_ms: u64,
    /// With peer TLS: the handshake and the dialer's identification must be done within this
    /// (both ends), so a peer that never finishes one cannot hold a connection.
    pub handshake_timeout_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024 * 1024,
            max_in_flight: 1024,
            max_connections: 256,
            connect_timeout_ms: 1000,
            min_backoff_ms: 20,
            max_backoff_ms: 1000,
            serve_timeout_ms: 10_000,
            frame_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            handshake_timeout_ms: 5_000,
        }
    }
}

/// When this node last heard from a leader it accepted, and what that leader had committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    pub at: Instant,
    pub leader_id: NodeId,
    pub leader_commit_index: u64,
}

/// Shared record of the last leader contact, written by the server on every accepted
/// AppendEntries (heartbeats included) and read by the API for staleness bounds.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Contact>>,
}

impl LeaderContact {
    pub fn record(&self, leader_id: NodeId, leader_commit_index: u64) {
        *self.last.lock().expect("contact lock") = Some(Contact {
            at: Instant::now(),
            leader_id,
            leader_commit_index,
        });
    }

    pub fn last(&self) -> Option<Contact> {
        *self.last.lock().expect("contact lock")
    }
}

/// Unwrap the expected variant of an answer, or say what came instead.
macro_rules! expect_answer {
    ($answer:expr, $variant:ident) => {
        match $answer {
            RpcResponse::$variant(result) => Ok(result),
            RpcResponse::Failed(message) => Err(NetError::Remote(message)),
            other => Err(NetError::Malformed(format!(
                "answer of the wrong kind: {other:?}"
            ))),
        }
    };
}

impl PeerClient {
    /// Forward client writes to this peer (which should be the leader) in one frame: one
    /// answer per command, in order.
    pub async fn client_writes(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
    ) -> Result<Vec<Result<Response, ForwardError>>, NetError> {
        let sent = commands.len();
        let answer = self
            .call(&RpcRequest::ClientWrites(commands), timeout)
            .await?;
        let answers = expect_answer!(answer, ClientWrites)?;
        if answers.len() != sent {
            return Err(NetError::Malformed(format!(
                "{} answers to {sent} forwarded writes",
                answers.len()
            )));
        }
        Ok(answers)
    }

    /// Ask this peer (which should be the leader) for a read index of `kind`.
    pub async fn read_index(
        &self,
        kind: ReadIndexKind,
        timeout: Duration,
    ) -> Result<Result<u64, ForwardError>, NetError> {
        let answer = self.call(&RpcRequest::ReadIndex { kind }, timeout).await?;
        expect_answer!(answer, ReadIndex)
    }

    /// Forward a membership change to this peer (which should be the leader).
    pub async fn membership(
        &self,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<Result<u64, ForwardError>, NetError> {
        let answer = self.call(&RpcRequest::Membership(change), timeout).await?;
        expect_answer!(answer, Membership)
    }

    /// Ask this peer (which should be the leader) to renew leases or tell their timers.
    pub async fn leases(
        &self,
        ids: Vec<u64>,
        renew: bool,
        timeout: Duration,
    ) -> Result<Result<LeaseTimes, ForwardError>, NetError> {
        let asked = ids.len();
        let answer = self
            .call(&RpcRequest::Leases { ids, renew }, timeout)
            .await?;
        let answer = expect_answer!(answer, Leases)?;
        if let Ok(times) = &answer {
            if times.leases.len() != asked {
                return Err(NetError::Malformed(format!(
                    "{} lease answers to {asked} leases asked",
                    times.leases.len()
                )));
            }
        }
        Ok(answer)
    }

    /// Ask this peer for its own progress.
    pub async fn status(&self, timeout: Duration) -> Result<NodeStatus, NetError> {
        let answer = self.call(&RpcRequest::Status, timeout).await?;
        expect_answer!(answer, Status)
    }
}
