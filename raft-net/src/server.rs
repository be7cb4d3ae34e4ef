//! The listening side: accepts peer connections, decodes requests, hands them to the local Raft
//! node, and writes the answers back on the same connection (answers may come out of order; the
//! request id pairs them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkv_storage::NodeId;
use mirrorkv_storage::{codec, Command, Raft, Response};
use openraft::raft::AppendEntriesResponse;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::error::NetError;
use crate::frame;
use crate::message::{
    ForwardError, LeaseTimes, MembershipChange, NodeStatus, ReadIndexKind, RpcRequest, RpcResponse,
};
use crate::tls::{certificate_names_node, node_name, PeerTls};
use crate::warn_budget::WarnBudget;
use crate::{LeaderContact, NetConfig};

/// Warnings about refused peers and failed connections, at most 20 a minute each: a peer
/// connecting in a loop cannot flood the log (`WarnBudget`).
static REFUSED_WARNINGS: WarnBudget = WarnBudget::new(20);
static CLOSED_WARNINGS: WarnBudget = WarnBudget::new(20);

/// The two halves of a connection, plain or TLS.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The application side of raft-net: serves the requests that are not Raft's own.
pub trait AppHandler: Send + Sync + 'static {
    /// Apply writes forwarded by another node (this node should be the leader), each on its
    /// own; one answer per command, in order.
    fn client_writes(
        &self,
        commands: Vec<Command>,
    ) -> impl std::future::Future<Output = Vec<Result<Response, ForwardError>>> + Send;
    /// Answer a read index of `kind` (this node should be the leader).
    fn read_index(
        &self,
        kind: ReadIndexKind,
    ) -> impl std::future::Future<Output = Result<u64, ForwardError>> + Send;
    /// Carry out a membership change forwarded by another node (this node should be leader).
    fn membership(
        &self,
        change: MembershipChange,
    ) -> impl std::future::Future<Output = Result<u64, ForwardError>> + Send;
    /// This node's own progress.
    fn status(&self) -> NodeStatus;
    /// Renew leases or tell their timers (this node should be the leader).
    fn leases(
        &self,
        ids: Vec<u64>,
        renew: bool,
    ) -> impl std::future::Future<Output = Result<LeaseTimes, ForwardError>> + Send;
}

/// What the server serves with besides its listener.
pub struct Serving<H> {
    pub raft: Raft,
    pub app: Arc<H>,
    pub contact: Arc<LeaderContact>,
    pub config: NetConfig,
    /// Vote requests that arrive before this are refused unread (a restarted node's first
    /// leader lease, node/DESIGN.md); everything else is served at once.
    pub votes_from: Instant,
    /// Peer TLS: `None` serves plain TCP.
    pub tls: Option<Arc<PeerTls>>,
}

impl<H> Clone for Serving<H> {
    fn clone(&self) -> Self {
        Self {
            raft: self.raft.clone(),
            app: self.app.clone(),
            contact: self.contact.clone(),
            config: self.config.clone(),
            votes_from: self.votes_from,
            tls: self.tls.clone(),
        }
    }
}

/// Serve raft-net on `listener` until `shutdown` resolves.
pub async fn serve<H: AppHandler>(
    listener: TcpListener,
    serving: Serving<H>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let config = serving.config.clone();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "raft-net accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections = config.max_connections, "refusing raft-net connection: limit reached");
            continue;
        };
        let serving = serving.clone();
        let stop_rx = stop_rx.clone();
        // Finished connections leave the set as new ones come, so it stays bounded.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let result = match open(stream, serving.tls.as_deref(), &serving.config).await {
                Ok((halves, peer_id)) => serve_connection(halves, peer_id, serving, stop_rx).await,
                Err(e) => Err(e),
            };
            match result {
                Err(NetError::Refused(why)) => {
                    if let Some(held_back) = REFUSED_WARNINGS.admit() {
                        tracing::warn!(%peer, reason = %why, held_back, "refused a raft-net peer");
                    }
                }
                Err(e) => {
                    if let Some(held_back) = CLOSED_WARNINGS.admit() {
                        tracing::warn!(%peer, error = %e, held_back, "closed raft-net connection");
                    }
                }
                Ok(()) => {}
            }
            drop(permit);
        });
    }
    // No more connections: those the OS completed but we never accepted are reset, and their
    // clients, still waiting for our greeting, have sent nothing on them.
    drop(listener);
    // Graceful: every connection answers what it has read, says goodbye, and closes.
    let _ = stop_tx.send(true);
    let drain = Duration::from_millis(config.serve_timeout_ms);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "raft-net connections still busy at shutdown; closing them"
        );
        tasks.abort_all();
    }
}

/// Request id of the frames a server sends unasked (its greeting and its goodbye); clients
/// number their requests from 1.
pub const GOING_AWAY_REQUEST_ID: u64 = 0;

/// What a request's task needs of its connection.
struct Served<H> {
    raft: Raft,
    app: Arc<H>,
    contact: Arc<LeaderContact>,
    /// The connection's writer queue.
    answers: mpsc::Sender<Vec<u8>>,
    votes_from: Instant,
    serve_timeout_ms: u64,
    max_frame_bytes: u32,
}

/// Serve one request within `serve_timeout_ms` and queue its answer; `permit` (one of the
/// connection's in-flight slots) is held until the answer is queued.
async fn serve_request<H: AppHandler>(
    served: Served<H>,
    request_id: u64,
    request: RpcRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let serve_timeout = Duration::from_millis(served.serve_timeout_ms);
    let handled = handle(
        &served.raft,
        served.app.as_ref(),
        &served.contact,
        served.votes_from,
        request,
    );
    let response = match tokio::time::timeout(serve_timeout, handled).await {
        Ok(response) => response,
        Err(_) => RpcResponse::Failed(format!(
            "not served within {} ms",
            serve_timeout.as_millis()
        )),
    };
    let bytes = codec::encode(&response)
        .map_err(NetError::from)
        .and_then(|payload| frame::encode(request_id, &payload, served.max_frame_bytes));
    match bytes {
        Ok(bytes) => {
            let _ = served.answers.send(bytes).await;
        }
        Err(e) => tracing::error!(error = %e, "could not encode a raft-net answer"),
    }
    drop(permit);
}

/// Wait until every request read so far has been answered (each handler holds a permit until
/// its answer is queued), then queue the goodbye after those answers. The peer then knows
/// that every request still unanswered was never read, so it can retry it elsewhere without
/// risk of applying it twice.
async fn say_goodbye(in_flight: &Semaphore, answers: &mpsc::Sender<Vec<u8>>, config: &NetConfig) {
    let all = u32::try_from(config.max_in_flight).unwrap_or(u32::MAX);
    let drain = Duration::from_millis(config.serve_timeout_ms);
    if let Ok(Ok(_all_permits)) = tokio::time::timeout(drain, in_flight.acquire_many(all)).await {
        let goodbye = codec::encode(&RpcResponse::GoingAway)
            .map_err(NetError::from)
            .and_then(|payload| {
                frame::encode(GOING_AWAY_REQUEST_ID, &payload, config.max_frame_bytes)
            });
        if let Ok(goodbye) = goodbye {
            let _ = answers.send(goodbye).await;
        }
    }
}

/// The connection's halves, and with TLS the node the peer proved to be: its certificate (from
/// the cluster CA, rustls checked) names the node its first frame says it is. Both steps within
/// `handshake_timeout_ms`.
async fn open(
    stream: TcpStream,
    tls: Option<&PeerTls>,
    config: &NetConfig,
) -> Result<((ReadHalf, WriteHalf), Option<NodeId>), NetError> {
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        let (read_half, write_half) = stream.into_split();
        return Ok(((Box::new(read_half), Box::new(write_half)), None));
    };
    let timeout_ms = config.handshake_timeout_ms;
    let handshake = async {
        let mut stream = tls
            .acceptor()
            .accept(stream)
            .await
            .map_err(|e| NetError::Refused(format!("TLS handshake failed: {e}")))?;
        let first = frame::read(&mut stream, config.max_frame_bytes, timeout_ms)
            .await
            .map_err(|e| NetError::Refused(format!("no identification frame: {e}")))?;
        let claimed = match first.map(|f| codec::decode::<RpcRequest>(&f.payload)) {
            Some(Ok(RpcRequest::Identify { node_id })) => node_id,
            _ => {
                return Err(NetError::Refused(
                    "the first frame after the TLS handshake is not an identification".into(),
                ))
            }
        };
        let names_it = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .is_some_and(|certificate| certificate_names_node(certificate, claimed));
        if !names_it {
            return Err(NetError::Refused(format!(
                "the peer says it is node {claimed} but its certificate does not name {}",
                node_name(claimed)
            )));
        }
        Ok((stream, claimed))
    };
    let (stream, peer_id) = tokio::time::timeout(Duration::from_millis(timeout_ms), handshake)
        .await
        .map_err(|_| {
            NetError::Refused(format!(
                "TLS handshake not finished within handshake_timeout_ms={timeout_ms}"
            ))
        })??;
    let (read_half, write_half) = tokio::io::split(stream);
    Ok(((Box::new(read_half), Box::new(write_half)), Some(peer_id)))
}

/// Serve one connection; `peer_id` is the node a TLS peer proved to be (`open`): a Raft
/// message in another node's name ends the connection.
async fn serve_connection<H: AppHandler>(
    (read_half, write_half): (ReadHalf, WriteHalf),
    peer_id: Option<NodeId>,
    serving: Serving<H>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), NetError> {
    let Serving {
        raft,
        app,
        contact,
        config,
        votes_from,
        tls: _,
    } = serving;
    let mut read_half = BufReader::with_capacity(frame::IO_BUFFER_BYTES, read_half);
    let mut write_half = BufWriter::with_capacity(frame::IO_BUFFER_BYTES, write_half);
    let (answers_tx, mut answers_rx) = mpsc::channel::<Vec<u8>>(config.max_in_flight);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = answers_rx.recv().await {
            if frame::write_queued(&mut write_half, &bytes, &mut answers_rx)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let hello = codec::encode(&RpcResponse::Hello)
        .map_err(NetError::from)
        .and_then(|payload| {
            frame::encode(GOING_AWAY_REQUEST_ID, &payload, config.max_frame_bytes)
        })?;
    let _ = answers_tx.send(hello).await;
    // Bounds the requests of this connection being served at once; reading stops while full.
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let mut stopping = false;
    let result = loop {
        let read = tokio::select! {
            read = next_frame(&mut read_half, &config) => read,
            // A frame half read here is dropped unanswered, which the goodbye covers.
            _ = stop.wait_for(|stop| *stop) => {
                stopping = true;
                break Ok(());
            }
        };
        let frame = match read {
            Ok(Next::Frame(frame)) => frame,
            Ok(Next::End) => break Ok(()),
            Ok(Next::Idle) => {
                // Said goodbye like a shutdown: the client knows nothing unanswered was read.
                tracing::debug!(
                    idle_timeout_ms = config.idle_timeout_ms,
                    "closing an idle raft-net connection"
                );
                stopping = true;
                break Ok(());
            }
            Err(e) => break Err(e),
        };
        let request: RpcRequest = match codec::decode(&frame.payload) {
            Ok(RpcRequest::Identify { .. }) => {
                break Err(NetError::Malformed(
                    "an identification is only the first frame of a TLS connection".into(),
                ))
            }
            Ok(request) => request,
            Err(e) => break Err(NetError::Malformed(format!("undecodable request: {e}"))),
        };
        if let (Some(peer_id), Some(sender)) = (peer_id, request.sender()) {
            if sender != peer_id {
                break Err(NetError::Refused(format!(
                    "node {peer_id} sent a Raft message in the name of node {sender}"
                )));
            }
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        tokio::spawn(serve_request(
            Served {
                raft: raft.clone(),
                app: app.clone(),
                contact: contact.clone(),
                answers: answers_tx.clone(),
                votes_from,
                serve_timeout_ms: config.serve_timeout_ms,
                max_frame_bytes: config.max_frame_bytes,
            },
            frame.request_id,
            request,
            permit,
        ));
    };
    if stopping {
        say_goodbye(&in_flight, &answers_tx, &config).await;
    }
    drop(answers_tx);
    // Answers still being computed keep the writer alive until they are sent.
    let _ = writer.await;
    result
}

enum Next {
    Frame(frame::Frame),
    /// The peer closed the connection between frames.
    End,
    /// No frame started within `idle_timeout_ms`.
    Idle,
}

/// The next frame, within the connection's deadlines: one must start within
/// `idle_timeout_ms`, and once started be whole within `frame_read_timeout_ms`.
async fn next_frame<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    config: &NetConfig,
) -> Result<Next, NetError> {
    use tokio::io::AsyncBufReadExt;
    let idle = Duration::from_millis(config.idle_timeout_ms);
    match tokio::time::timeout(idle, reader.fill_buf()).await {
        Err(_) => return Ok(Next::Idle),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok([])) => return Ok(Next::End),
        Ok(Ok(_)) => {}
    }
    Ok(
        match frame::read(reader, config.max_frame_bytes, config.frame_read_timeout_ms).await? {
            Some(frame) => Next::Frame(frame),
            None => Next::End,
        },
    )
}

async fn handle<H: AppHandler>(
    raft: &Raft,
    app: &H,
    contact: &LeaderContact,
    votes_from: Instant,
    request: RpcRequest,
) -> RpcResponse {
    match request {
        RpcRequest::AppendEntries(request) => {
            let leader_id = request.vote.leader_id().voted_for();
            let leader_commit = request.leader_commit.map_or(0, |id| id.index);
            let response = raft.append_entries(request).await;
            if let (Ok(answer), Some(leader_id)) = (&response, leader_id) {
                // Any answer but HigherVote means we accept this leader's term: it is contact.
                if !matches!(answer, AppendEntriesResponse::HigherVote(_)) {
                    contact.record(leader_id, leader_commit);
                }
            }
            RpcResponse::AppendEntries(response)
        }
        RpcRequest::Vote(request) => {
            let now = Instant::now();
            if now < votes_from {
                // The candidate counts this as no vote, like an unreachable peer.
                return RpcResponse::Failed(format!(
                    "not voting for another {} ms: restarted less than one leader lease ago",
                    (votes_from - now).as_millis()
                ));
            }
            RpcResponse::Vote(raft.vote(request).await)
        }
        RpcRequest::InstallSnapshot(request) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(request).await)
        }
        RpcRequest::ClientWrites(commands) => {
            RpcResponse::ClientWrites(app.client_writes(commands).await)
        }
        RpcRequest::ReadIndex { kind } => RpcResponse::ReadIndex(app.read_index(kind).await),
        RpcRequest::Membership(change) => RpcResponse::Membership(app.membership(change).await),
        RpcRequest::Status => RpcResponse::Status(app.status()),
        RpcRequest::Leases { ids, renew } => RpcResponse::Leases(app.leases(ids, renew).await),
        // Refused before it gets here (`serve_connection`).
        RpcRequest::Identify { .. } => RpcResponse::Failed("unexpected identification".into()),
    }
}
