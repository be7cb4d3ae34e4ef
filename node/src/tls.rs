//! The node's TLS material: the PEM files its flags name, loaded into rustls configurations
//! (ring is the one crypto provider), checked at start, and re-read on SIGHUP.
//!
//! A reload that fails (a missing file, a key that does not match, a peer certificate that
//! does not name this node) keeps the configuration in use and logs why; a reload that works
//! applies to new connections, and open ones keep their certificates until they end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use mirrorkv_api::ApiTls;
use mirrorkv_raft_net::tls::{certificate_names_node, node_name};
use mirrorkv_raft_net::{PeerTls, PeerTlsConfigs};
use mirrorkv_storage::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// HTTPS on the client API: `--tls-cert`, `--tls-key`, `--tls-client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Also require client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Mutual TLS between nodes: `--peer-cert`, `--peer-key`, `--peer-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: every node's certificate is signed by it.
    pub ca: PathBuf,
}

/// All of a node's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub api: Option<ApiTlsFiles>,
    pub peer: Option<PeerTlsFiles>,
    /// A handshake (either port) not finished within this closes the connection.
    pub handshake_timeout_ms: u64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of the PEM file at `path` (a chain: the node's first).
pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a private key from {}", path.display()))
}

fn read_roots(path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots
            .add(certificate)
            .with_context(|| format!("a CA certificate in {} is not usable", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The API's server configuration from its files.
pub fn api_server_config(files: &ApiTlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, provider())
                .build()
                .context("the client CA")?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certificates(&files.cert)?, read_key(&files.key)?)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Peer TLS for node `id` from its files. Its certificate must name it (`mirrorkv-node-<id>`):
/// peers would refuse it otherwise, so a wrong file is an error here, at start or reload.
pub fn peer_configs(id: NodeId, files: &PeerTlsFiles) -> anyhow::Result<PeerTlsConfigs> {
    let certificates = read_certificates(&files.cert)?;
    if !certificate_names_node(&certificates[0], id) {
        bail!(
            "{} does not name this node: its certificate needs the DNS name {} (mirrorkv certs init writes such certificates)",
            files.cert.display(),
            node_name(id)
        );
    }
    let roots = read_roots(&files.ca)?;
    let key = read_key(&files.key)?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .context("the cluster CA")?,
        )
        .with_single_cert(certificates.clone(), key.clone_key())
        .with_context(|| format!("{} and its key", files.cert.display()))?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(certificates, key)
        .with_context(|| format!("{} and its key", files.cert.display()))?;
    Ok(PeerTlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The node's live TLS, for reloading.
pub struct LiveTls {
    pub id: NodeId,
    pub settings: TlsSettings,
    pub api: Option<Arc<ApiTls>>,
    pub peer: Option<Arc<PeerTls>>,
}

impl LiveTls {
    /// Load every configured file (an error names the file and what is wrong).
    pub fn load(id: NodeId, settings: &TlsSettings) -> anyhow::Result<Self> {
        let api = match &settings.api {
            Some(files) => Some(Arc::new(ApiTls::new(
                api_server_config(files)?,
                settings.handshake_timeout_ms,
            ))),
            None => None,
        };
        let peer = match &settings.peer {
            Some(files) => Some(Arc::new(PeerTls::new(id, peer_configs(id, files)?))),
            None => None,
        };
        Ok(Self {
            id,
            settings: settings.clone(),
            api,
            peer,
        })
    }

    /// Read the files again and use them for new connections; on any error keep what is in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let api = match (&self.settings.api, &self.api) {
            (Some(files), Some(_)) => Some(api_server_config(files)?),
            _ => None,
        };
        let peer = match (&self.settings.peer, &self.peer) {
            (Some(files), Some(_)) => Some(peer_configs(self.id, files)?),
            _ => None,
        };
        // Both read: replace both, so a half-done rotation never mixes.
        if let (Some(config), Some(live)) = (api, &self.api) {
            live.replace(config);
        }
        if let (Some(configs), Some(live)) = (peer, &self.peer) {
            live.replace(configs);
        }
        Ok(())
    }

    /// Reload on every SIGHUP until `stop` resolves. Listened for with TLS off too, so that a
    /// reload (`systemctl reload`) never stops a node: SIGHUP's default action would.
    pub fn reload_on_sighup(
        self: Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = hangups.recv() => match self.reload() {
                        Ok(()) if self.api.is_none() && self.peer.is_none() => {
                            tracing::info!(node = self.id, "SIGHUP: no TLS files to reload");
                        }
                        Ok(()) => tracing::info!(node = self.id, "SIGHUP: reloaded the TLS certificates and keys"),
                        Err(e) => tracing::error!(node = self.id, error = %format!("{e:#}"), "SIGHUP: could not reload TLS; the certificates in use stay"),
                    },
                    () = &mut stop => break,
                }
            }
        });
        Ok(())
    }
}

/// The HTTP client a joining node asks the cluster with, and its scheme. With HTTPS on the API
/// (`--tls-cert`) the cluster's APIs are taken to serve HTTPS too, verified against the
/// cluster CA (`--peer-ca`), and the node presents its peer certificate in case the cluster
/// asks for client certificates.
pub fn join_client(
    settings: &TlsSettings,
) -> anyhow::Result<(reqwest::ClientBuilder, &'static str)> {
    let builder = reqwest::Client::builder();
    if settings.api.is_none() {
        return Ok((builder, "http"));
    }
    let Some(peer) = &settings.peer else {
        bail!("joining over HTTPS needs --peer-ca (and --peer-cert, --peer-key) to verify the cluster's API certificates");
    };
    let tls = mirrorkv_client::ClientTls::from_files(&peer.ca, Some((&peer.cert, &peer.key)))?;
    Ok((tls.configure(builder)?, "https"))
}
