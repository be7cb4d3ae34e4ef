//! openraft's `RaftNetworkFactory` / `RaftNetwork` over raft-net: Raft RPCs become `RpcRequest`s
//! on the pooled peer connections, with openraft's per-RPC deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mirrorkv_storage::{NodeId, NodeInfo, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::client::{PeerClient, PeerPool};
use crate::error::NetError;
use crate::message::{RpcRequest, RpcResponse};

/// Creates one [`PeerNetwork`] per target for openraft; all share the pool's connections.
#[derive(Clone)]
pub struct NetworkFactory {
    pool: Arc<PeerPool>,
}

impl NetworkFactory {
    pub fn new(pool: Arc<PeerPool>) -> Self {
        Self { pool }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            target,
            client: self.pool.client(target, node),
            pool: self.pool.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerNetwork {
    target: NodeId,
    client: Arc<PeerClient>,
    /// Where what is sent is counted.
    pool: Arc<PeerPool>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, E>>;

/// Map a transport failure. A peer we cannot reach is `Unreachable` (openraft backs off); a
/// deadline or a broken connection is a `Network` error (openraft retries).
fn transport_error<E: std::error::Error>(error: NetError) -> RPCError<NodeId, NodeInfo, E> {
    match error {
        NetError::BackingOff { .. } | NetError::NotTaken { .. } | NetError::Io(_) => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

fn unexpected<E: std::error::Error>(response: RpcResponse) -> RPCError<NodeId, NodeInfo, E> {
    let error = match response {
        RpcResponse::Failed(message) => NetError::Remote(message),
        other => NetError::Malformed(format!("answer of the wrong kind: {other:?}")),
    };
    RPCError::Network(NetworkError::new(&error))
}

impl PeerNetwork {
    async fn call<E: std::error::Error>(
        &self,
        request: &RpcRequest,
        option: &RPCOption,
    ) -> RpcResult<RpcResponse, E> {
        self.client
            .call(request, option.hard_ttl())
            .await
            .map_err(transport_error)
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let entries = rpc.entries.len() as u64;
        let sent = &self.pool.sent;
        let counter = if entries == 0 {
            &sent.append_entries_empty
        } else {
            &sent.append_entries_with_entries
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let request = RpcRequest::AppendEntries(rpc);
        match self.client.call(&request, option.hard_ttl()).await {
            Ok(RpcResponse::AppendEntries(Ok(response))) => Ok(response),
            Ok(RpcResponse::AppendEntries(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(unexpected(other)),
            // Too many entries for one frame: ask openraft to send fewer.
            Err(error @ NetError::FrameTooLarge { .. }) if entries > 1 => {
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries / 2).with_source_error(&error),
                ))
            }
            Err(error) => Err(transport_error(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self
            .call(&RpcRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RpcResponse::InstallSnapshot(Ok(response)) => Ok(response),
            RpcResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.call(&RpcRequest::Vote(rpc), &option).await? {
            RpcResponse::Vote(Ok(response)) => Ok(response),
            RpcResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(other)),
        }
    }

    fn backoff(&self) -> Backoff {
        // Retry an unreachable peer soon at first (a restart takes well under a second here),
        // then settle at one attempt per second.
        const RETRY: crate::Backoff = crate::Backoff {
            min_ms: 50,
            max_ms: 1000,
        };
        Backoff::new((0..).map(|attempt: u32| RETRY.delay(attempt)))
    }
}
