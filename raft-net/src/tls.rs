//! Mutual TLS between nodes (`--peer-cert`, `--peer-key`, `--peer-ca`).
//!
//! Both ends present a certificate that the cluster CA signed (rustls checks the chain and the
//! validity period), and each checks that the other's certificate names the node id it stands
//! for, as the DNS name `mirrorkv-node-<id>` ([`node_name`]):
//! - the dialer verifies the server's certificate against the name of the node it means to
//!   reach (rustls' own name check), so a `--peer` override or a proxy changes where bytes go,
//!   never whom they reach;
//! - the server learns whom the dialer claims to be from its first frame
//!   ([`crate::RpcRequest::Identify`]) and answers only if the dialer's certificate names that
//!   node ([`certificate_names_node`]); afterwards every Raft message on the connection must be
//!   sent in that node's name (a vote's candidate, an append's or snapshot's leader).
//!
//! The configurations are replaced whole on reload ([`PeerTls::replace`], SIGHUP in the node):
//! new connections use the new certificates, open ones keep theirs.

use std::sync::{Arc, RwLock};

use mirrorkv_storage::NodeId;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};

/// The DNS name a node's certificate carries: `mirrorkv-node-<id>`.
pub fn node_name(id: NodeId) -> String {
    format!("mirrorkv-node-{id}")
}

/// Whether `certificate` (DER) names node `id` among its subject alternative names.
pub fn certificate_names_node(certificate: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

/// The two halves of a node's peer TLS, built from the same files.
#[derive(Clone)]
pub struct PeerTlsConfigs {
    /// Accepts only peers with a certificate the cluster CA signed.
    pub server: Arc<ServerConfig>,
    /// Presents this node's certificate and trusts only the cluster CA.
    pub client: Arc<ClientConfig>,
}

/// This node's peer TLS: its id (which its certificate must name) and the current
/// configurations, replaceable while the node runs.
pub struct PeerTls {
    /// The node this one is: sent to every peer it dials.
    pub node_id: NodeId,
    current: RwLock<PeerTlsConfigs>,
}

impl PeerTls {
    pub fn new(node_id: NodeId, configs: PeerTlsConfigs) -> Self {
        Self {
            node_id,
            current: RwLock::new(configs),
        }
    }

    /// Use `configs` for every connection from now on.
    pub fn replace(&self, configs: PeerTlsConfigs) {
        *self.current.write().expect("never poisoned") = configs;
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("never poisoned").server.clone())
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(
            self.current.read().expect("never poisoned").client.clone(),
        )
    }
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}
