//! `NetError`: everything that can go wrong on the node-to-node transport.

/// An error of the transport. All of them are retryable from the caller's point of view except
/// `Codec` on a request we built ourselves (a bug).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A request of ours could not be encoded (so it was never sent). An answer that cannot
    /// be decoded is `Malformed`: that request was delivered.
    #[error(transparent)]
    Codec(#[from] mirrorkv_storage::codec::CodecError),
    #[error("frame of {frame_bytes} bytes exceeds the limit of {max_frame_bytes} bytes")]
    FrameTooLarge {
        frame_bytes: u64,
        max_frame_bytes: u64,
    },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("no answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("connection to {addr} closed")]
    ConnectionClosed { addr: String },
    /// The request was never read by the peer: the connection was already closed when it was
    /// queued, or the peer said goodbye (shutting down) without reading it.
    #[error("{addr} did not take the request: {reason}")]
    NotTaken { addr: String, reason: &'static str },
    #[error("{addr} unreachable, next attempt in {retry_in_ms} ms")]
    BackingOff { addr: String, retry_in_ms: u64 },
    #[error("too many requests in flight to {addr} (limit {max_in_flight})")]
    Overloaded { addr: String, max_in_flight: usize },
    #[error("peer could not serve the request: {0}")]
    Remote(String),
    /// Peer TLS refused the connection (either end): a failed handshake, a certificate that
    /// does not name the node, a message sent in another node's name. Says why.
    #[error("refused: {0}")]
    Refused(String),
}

impl NetError {
    /// The same error for another caller: the answer of a frame that carried several callers'
    /// requests (forwarded writes) is each one's answer, error included. An io error keeps
    /// its kind and message.
    pub fn duplicate(&self) -> NetError {
        match self {
            NetError::Io(e) => NetError::Io(std::io::Error::new(e.kind(), e.to_string())),
            NetError::Codec(e) => NetError::Codec(e.clone()),
            NetError::FrameTooLarge {
                frame_bytes,
                max_frame_bytes,
            } => NetError::FrameTooLarge {
                frame_bytes: *frame_bytes,
                max_frame_bytes: *max_frame_bytes,
            },
            NetError::Malformed(message) => NetError::Malformed(message.clone()),
            NetError::Timeout { timeout_ms } => NetError::Timeout {
                timeout_ms: *timeout_ms,
            },
            NetError::ConnectionClosed { addr } => {
                NetError::ConnectionClosed { addr: addr.clone() }
            }
            NetError::NotTaken { addr, reason } => NetError::NotTaken {
                addr: addr.clone(),
                reason,
            },
            NetError::BackingOff { addr, retry_in_ms } => NetError::BackingOff {
                addr: addr.clone(),
                retry_in_ms: *retry_in_ms,
            },
            NetError::Overloaded {
                addr,
                max_in_flight,
            } => NetError::Overloaded {
                addr: addr.clone(),
                max_in_flight: *max_in_flight,
            },
            NetError::Remote(message) => NetError::Remote(message.clone()),
            NetError::Refused(message) => NetError::Refused(message.clone()),
        }
    }

    /// True when the request certainly never reached the peer, so retrying it cannot apply it
    /// twice.
    pub fn not_delivered(&self) -> bool {
        matches!(
            self,
            NetError::BackingOff { .. }
                | NetError::NotTaken { .. }
                | NetError::Io(_)
                | NetError::Overloaded { .. }
                | NetError::FrameTooLarge { .. }
                | NetError::Codec(_)
                | NetError::Refused(_)
        )
    }
}
