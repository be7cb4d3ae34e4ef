//! The dialing side: one reused, multiplexed TCP connection per peer address, re-established
//! with exponential backoff, every call bounded by a deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorkv_storage::{codec, NodeId, NodeInfo};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::NetError;
use crate::frame;
use crate::message::{RpcRequest, RpcResponse};
use crate::server::{ReadHalf, WriteHalf, GOING_AWAY_REQUEST_ID};
use crate::tls::{node_name, PeerTls};
use crate::NetConfig;

/// The callers waiting for an answer on one connection. Once the connection's reader has
/// stopped, the table is closed: nobody could complete a waiter added later, so none may be.
#[derive(Default)]
struct PendingTable {
    closed: bool,
    waiters: HashMap<u64, oneshot::Sender<Vec<u8>>>,
}

type Pending = Arc<Mutex<PendingTable>>;

/// A live connection: a writer task fed by `outbox`, a reader task that completes `pending`.
struct Connection {
    outbox: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    /// Set when the server said goodbye: unanswered requests were never read.
    going_away: Arc<std::sync::atomic::AtomicBool>,
}

impl Connection {
    fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }
}

#[derive(Default)]
struct DialState {
    connection: Option<Arc<Connection>>,
    consecutive_failures: u32,
    next_attempt: Option<Instant>,
}

/// A client for one peer address.
pub struct PeerClient {
    addr: String,
    config: NetConfig,
    /// With peer TLS: the node this address must be (its certificate must name it) and this
    /// node's TLS.
    tls: Option<(NodeId, Arc<PeerTls>)>,
    next_request_id: AtomicU64,
    state: tokio::sync::Mutex<DialState>,
}

impl PeerClient {
    #[cfg(test)]
    fn new(addr: String, config: NetConfig) -> Self {
        Self::new_to(addr, config, None)
    }

    fn new_to(addr: String, config: NetConfig, tls: Option<(NodeId, Arc<PeerTls>)>) -> Self {
        Self {
            addr,
            config,
            tls,
            next_request_id: AtomicU64::new(1),
            state: tokio::sync::Mutex::new(DialState::default()),
        }
    }

    /// The address this client dials.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send `request` and wait for its answer, for at most `timeout`.
    pub async fn call(
        &self,
        request: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, NetError> {
        let timeout_ms = timeout.as_millis() as u64;
        // Whether any byte of the request may have gone out: a deadline before that point
        // means the request was certainly not delivered.
        let queued = AtomicBool::new(false);
        let work = async {
            let connection = self.connection().await?;
            let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            let payload = codec::encode(request)?;
            let bytes = frame::encode(request_id, &payload, self.config.max_frame_bytes)?;
            let (tx, rx) = oneshot::channel();
            {
                let mut pending = connection.pending.lock().expect("pending lock");
                if pending.closed {
                    return Err(NetError::NotTaken {
                        addr: self.addr.clone(),
                        reason: "the connection closed before the request was sent",
                    });
                }
                if pending.waiters.len() >= self.config.max_in_flight {
                    return Err(NetError::Overloaded {
                        addr: self.addr.clone(),
                        max_in_flight: self.config.max_in_flight,
                    });
                }
                pending.waiters.insert(request_id, tx);
            }
            let _unregister = Unregister {
                pending: &connection.pending,
                request_id,
            };
            queued.store(true, Ordering::Release);
            if connection.outbox.send(bytes).await.is_err() {
                // The writer is gone: not a byte of this request was written.
                return Err(NetError::NotTaken {
                    addr: self.addr.clone(),
                    reason: "the connection was closed before the request was sent",
                });
            }
            let reply = rx.await.map_err(|_| {
                if connection.going_away.load(Ordering::Acquire) {
                    NetError::NotTaken {
                        addr: self.addr.clone(),
                        reason: "it is shutting down",
                    }
                } else {
                    NetError::ConnectionClosed {
                        addr: self.addr.clone(),
                    }
                }
            })?;
            // Delivered and answered: an answer we cannot read is not "never sent".
            codec::decode::<RpcResponse>(&reply)
                .map_err(|e| NetError::Malformed(format!("undecodable answer: {e}")))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) if !queued.load(Ordering::Acquire) => Err(NetError::NotTaken {
                addr: self.addr.clone(),
                reason: "no connection within the deadline",
            }),
            Err(_) => Err(NetError::Timeout { timeout_ms }),
        }
    }

    /// The current connection, dialing a new one unless the backoff says to wait.
    async fn connection(&self) -> Result<Arc<Connection>, NetError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
            state.connection = None;
        }
        if let Some(next) = state.next_attempt {
            let now = Instant::now();
            if now < next {
                return Err(NetError::BackingOff {
                    addr: self.addr.clone(),
                    retry_in_ms: (next - now).as_millis() as u64,
                });
            }
        }
        let max_frame_bytes = self.config.max_frame_bytes;
        let frame_read_timeout_ms = self.config.frame_read_timeout_ms;
        let dial = tokio::time::timeout(
            Duration::from_millis(self.config.connect_timeout_ms),
            async {
                let (mut read_half, write_half) = self.open().await?;
                // Requests go only on a connection the server has accepted: it greets first.
                // A connection that is never accepted (the server is stopping) thus never
                // carries a request, so its loss is harmless.
                match frame::read(&mut read_half, max_frame_bytes, frame_read_timeout_ms).await? {
                    Some(hello)
                        if hello.request_id == GOING_AWAY_REQUEST_ID
                            && matches!(
                                codec::decode::<RpcResponse>(&hello.payload),
                                Ok(RpcResponse::Hello)
                            ) =>
                    {
                        Ok((read_half, write_half))
                    }
                    _ if self.tls.is_some() => Err(NetError::Refused(
                        "the peer did not greet after the TLS handshake (its log says why)".into(),
                    )),
                    _ => Err(NetError::Malformed("the peer did not greet".into())),
                }
            },
        )
        .await;
        let halves = match dial {
            Ok(Ok(halves)) => halves,
            Ok(Err(e)) => return Err(self.dial_failed(&mut state, e)),
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection and greeting within {} ms",
                        self.config.connect_timeout_ms
                    ),
                );
                return Err(self.dial_failed(&mut state, e.into()));
            }
        };
        let connection = Arc::new(spawn_connection(
            halves,
            self.addr.clone(),
            self.config.clone(),
        ));
        state.connection = Some(connection.clone());
        state.consecutive_failures = 0;
        state.next_attempt = None;
        Ok(connection)
    }

    /// A new connection's halves: plain TCP, or TLS to the node this address must be, which
    /// is then told which node this one is (`tls.rs`).
    async fn open(&self) -> Result<(ReadHalf, WriteHalf), NetError> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let Some((target, tls)) = &self.tls else {
            let (read_half, write_half) = stream.into_split();
            return Ok((Box::new(read_half), Box::new(write_half)));
        };
        let name = rustls::pki_types::ServerName::try_from(node_name(*target))
            .map_err(|e| NetError::Refused(format!("no TLS name for node {target}: {e}")))?;
        let mut stream = tls.connector().connect(name, stream).await.map_err(|e| {
            NetError::Refused(format!("TLS handshake with node {target} failed: {e}"))
        })?;
        let identify = codec::encode(&RpcRequest::Identify {
            node_id: tls.node_id,
        })?;
        let identify = frame::encode(
            GOING_AWAY_REQUEST_ID,
            &identify,
            self.config.max_frame_bytes,
        )?;
        stream.write_all(&identify).await?;
        stream.flush().await?;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok((Box::new(read_half), Box::new(write_half)))
    }

    fn dial_failed(&self, state: &mut DialState, error: NetError) -> NetError {
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let backoff = crate::Backoff {
            min_ms: self.config.min_backoff_ms,
            max_ms: self.config.max_backoff_ms,
        };
        let wait = backoff.delay(state.consecutive_failures);
        state.next_attempt = Some(Instant::now() + wait);
        tracing::debug!(addr = %self.addr, %error, backoff_ms = wait.as_millis() as u64, "dial failed");
        error
    }
}

/// Removes a request from the pending table however the call ends (answer, timeout, drop).
struct Unregister<'a> {
    pending: &'a Pending,
    request_id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .expect("pending lock")
            .waiters
            .remove(&self.request_id);
    }
}

fn spawn_connection(
    (read_half, write_half): (ReadHalf, WriteHalf),
    addr: String,
    config: NetConfig,
) -> Connection {
    let mut read_half = BufReader::with_capacity(frame::IO_BUFFER_BYTES, read_half);
    let mut write_half = BufWriter::with_capacity(frame::IO_BUFFER_BYTES, write_half);
    let (outbox, mut inbox) = mpsc::channel::<Vec<u8>>(config.max_in_flight);
    let pending: Pending = Arc::default();
    let going_away = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
    // Writer: ends when every sender is gone or the reader saw the connection end.
    tokio::spawn({
        let addr = addr.clone();
        async move {
            loop {
                tokio::select! {
                    bytes = inbox.recv() => {
                        let Some(bytes) = bytes else { break };
                        if let Err(e) = frame::write_queued(&mut write_half, &bytes, &mut inbox).await {
                            tracing::debug!(%addr, error = %e, "write to peer failed");
                            break;
                        }
                    }
                    _ = &mut closed_rx => break,
                }
            }
            // Dropping `inbox` marks the connection closed for the next caller.
        }
    });
    // Reader: hands each answer to its caller; on any error the connection is dropped and every
    // caller still waiting gets `ConnectionClosed`.
    tokio::spawn({
        let pending = pending.clone();
        let going_away = going_away.clone();
        async move {
            loop {
                match frame::read(
                    &mut read_half,
                    config.max_frame_bytes,
                    config.frame_read_timeout_ms,
                )
                .await
                {
                    Ok(Some(frame)) if frame.request_id == GOING_AWAY_REQUEST_ID => {
                        tracing::debug!(%addr, "peer is going away");
                        going_away.store(true, Ordering::Release);
                        break;
                    }
                    Ok(Some(frame)) => {
                        let waiter = pending
                            .lock()
                            .expect("pending lock")
                            .waiters
                            .remove(&frame.request_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(frame.payload);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "closing connection to peer");
                        break;
                    }
                }
            }
            {
                let mut pending = pending.lock().expect("pending lock");
                pending.closed = true;
                pending.waiters.clear();
            }
            let _ = closed_tx.send(());
        }
    });
    Connection {
        outbox,
        pending,
        going_away,
    }
}

/// What this node's Raft sent its peers, counted as it is sent (served as metrics).
#[derive(Debug, Default)]
pub struct SentCounters {
    /// AppendEntries requests that carried log entries.
    pub append_entries_with_entries: AtomicU64,
    /// AppendEntries requests that carried none: heartbeats, leadership checks, and the
    /// messages that only tell a follower a new committed index.
    pub append_entries_empty: AtomicU64,
}

/// All peer clients of a node, keyed by the address they dial, plus the `--peer` overrides.
pub struct PeerPool {
    config: NetConfig,
    overrides: HashMap<NodeId, String>,
    /// With peer TLS, a client is for one node at one address; without, for one address.
    clients: Mutex<HashMap<(NodeId, String), Arc<PeerClient>>>,
    tls: Option<Arc<PeerTls>>,
    /// What the node's Raft sent through this pool.
    pub sent: SentCounters,
}

impl PeerPool {
    /// `overrides` maps a node id to the address to dial instead of its advertised raft address.
    pub fn new(config: NetConfig, overrides: HashMap<NodeId, String>) -> Self {
        Self::with_tls(config, overrides, None)
    }

    /// As `new`, dialing with peer TLS when `tls` is set.
    pub fn with_tls(
        config: NetConfig,
        overrides: HashMap<NodeId, String>,
        tls: Option<Arc<PeerTls>>,
    ) -> Self {
        Self {
            config,
            overrides,
            clients: Mutex::default(),
            tls,
            sent: SentCounters::default(),
        }
    }

    /// The client for node `id` advertised as `node`.
    pub fn client(&self, id: NodeId, node: &NodeInfo) -> Arc<PeerClient> {
        let addr = self
            .overrides
            .get(&id)
            .cloned()
            .unwrap_or_else(|| node.raft_addr.clone());
        let mut clients = self.clients.lock().expect("clients lock");
        let key = (if self.tls.is_some() { id } else { 0 }, addr);
        clients
            .entry(key.clone())
            .or_insert_with(|| {
                let tls = self.tls.clone().map(|tls| (id, tls));
                Arc::new(PeerClient::new_to(key.1, self.config.clone(), tls))
            })
            .clone()
    }

    /// The transport limits.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted peer on a loopback port from the OS: what each way a
    //! connection can end tells the caller about the request it sent.

    use super::*;
    use crate::message::NodeStatus;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// What the scripted peer does once it has greeted and read one request.
    #[derive(Clone, Copy)]
    enum Then {
        Answer,
        SayGoodbye,
    }

    fn frame_of(request_id: u64, response: &RpcResponse) -> Vec<u8> {
        let payload = codec::encode(response).unwrap();
        frame::encode(request_id, &payload, NetConfig::default().max_frame_bytes).unwrap()
    }

    fn status() -> RpcResponse {
        RpcResponse::Status(NodeStatus {
            id: 9,
            applied_index: 1,
            last_log_index: 1,
            commit_index: 1,
            term: 1,
            leader: None,
            membership_index: 0,
            members: Vec::new(),
        })
    }

    /// A peer that greets, reads one request, then does `then`. Returns its address.
    async fn scripted_peer(then: Then) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let hello = frame_of(GOING_AWAY_REQUEST_ID, &RpcResponse::Hello);
            stream.write_all(&hello).await.unwrap();
            let max = NetConfig::default().max_frame_bytes;
            let request = frame::read(&mut stream, max, 10_000)
                .await
                .unwrap()
                .unwrap();
            match then {
                Then::Answer => stream
                    .write_all(&frame_of(request.request_id, &status()))
                    .await
                    .unwrap(),
                Then::SayGoodbye => stream
                    .write_all(&frame_of(GOING_AWAY_REQUEST_ID, &RpcResponse::GoingAway))
                    .await
                    .unwrap(),
            }
            // Hold the connection until the client is done with it.
            let _ = frame::read(&mut stream, max, 10_000).await;
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_reaches_its_caller() {
        let client = PeerClient::new(scripted_peer(Then::Answer).await, NetConfig::default());
        match client.call(&RpcRequest::Status, DEADLINE).await {
            Ok(RpcResponse::Status(status)) => assert_eq!(status.id, 9),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_goodbye_means_the_request_was_never_taken() {
        let client = PeerClient::new(scripted_peer(Then::SayGoodbye).await, NetConfig::default());
        match client.call(&RpcRequest::Status, DEADLINE).await {
            Err(NetError::NotTaken { reason, .. }) => assert_eq!(reason, "it is shutting down"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_lost_without_goodbye_leaves_the_outcome_open() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let hello = frame_of(GOING_AWAY_REQUEST_ID, &RpcResponse::Hello);
                stream.write_all(&hello).await.unwrap();
                let max = NetConfig::default().max_frame_bytes;
                let _request = frame::read(&mut stream, max, 10_000).await.unwrap();
                // Read, then gone without a word: the request may have been served.
                drop(stream);
            });
            addr
        };
        let client = PeerClient::new(addr, NetConfig::default());
        match client.call(&RpcRequest::Status, DEADLINE).await {
            Err(NetError::ConnectionClosed { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_peer_that_does_not_greet_gets_no_request_and_is_backed_off() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (received_tx, received) = oneshot::channel();
        tokio::spawn(async move {
            // Accept and never greet, as a server that is stopping does; count what arrives
            // until the client hangs up.
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes).await;
            let _ = received_tx.send(bytes.len());
        });
        // A short wait for the greeting, and a backoff far longer than the test takes.
        let config = NetConfig {
            connect_timeout_ms: 300,
            min_backoff_ms: 60_000,
            max_backoff_ms: 120_000,
            ..NetConfig::default()
        };
        let client = PeerClient::new(addr, config);
        match client.call(&RpcRequest::Status, DEADLINE).await {
            Err(NetError::NotTaken { .. } | NetError::Io(_)) => {}
            other => panic!("{other:?}"),
        }
        let received = tokio::time::timeout(DEADLINE, received)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, 0, "a request went to a peer that never greeted");
        match client.call(&RpcRequest::Status, DEADLINE).await {
            Err(NetError::BackingOff { retry_in_ms, .. }) => {
                assert!((1..=120_000).contains(&retry_in_ms), "{retry_in_ms}")
            }
            other => panic!("the next call dials again at once: {other:?}"),
        }
    }
}
