//! HTTPS on the client API (`--tls-cert`, `--tls-key`; `--tls-client-ca` also requires client
//! certificates signed by that CA). The TLS handshake runs on the connection's own task, within
//! `handshake_timeout_ms`, after the connection took its slot (`limits`): a client that starts
//! a handshake and never finishes it holds a slot no longer than that, and the accept loop is
//! never held up by one.
//!
//! The configuration is replaced whole on reload ([`ApiTls::replace`], SIGHUP in the node): new
//! connections use the new certificate, open ones keep theirs.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

/// The API's TLS: the current server configuration and the handshake deadline.
pub struct ApiTls {
    current: RwLock<Arc<ServerConfig>>,
    /// A handshake not finished within this closes the connection.
    pub handshake_timeout_ms: u64,
}

impl ApiTls {
    pub fn new(config: Arc<ServerConfig>, handshake_timeout_ms: u64) -> Self {
        Self {
            current: RwLock::new(config),
            handshake_timeout_ms,
        }
    }

    /// Use `config` for every connection from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().expect("never poisoned") = config;
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("never poisoned").clone())
    }
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("handshake_timeout_ms", &self.handshake_timeout_ms)
            .finish_non_exhaustive()
    }
}
