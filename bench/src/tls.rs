//! `--tls`: TLS on both ports of both stores. mirrorkv runs as its secure fixture runs it (HTTPS
//! with client certificates, mutual TLS between nodes, and `--auth`: every request carries the
//! bootstrap token); etcd runs with the same CA (its client and peer ports serve TLS and require
//! client certificates; etcd's own auth stays off, which spares it a cost mirrorkv pays).
//!
//! Each store registers its endpoints here as it starts; a connection looks its endpoint up as
//! it opens, so the cells, the preload and the lease cells need no TLS parameter of their own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How to reach one mirrorkv API over TLS.
#[derive(Clone)]
pub(crate) struct MirrorTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// The bearer token every request carries (`--auth`).
    pub(crate) token: Option<Arc<str>>,
}

impl MirrorTls {
    /// The name the nodes' certificates carry besides their node names.
    pub(crate) fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").expect("a valid DNS name")
    }
}

#[derive(Clone)]
enum EndpointTls {
    Mirror(MirrorTls),
    Etcd(etcd_client::TlsOptions),
}

/// TLS endpoints by address (`HOST:PORT`, no scheme).
static ENDPOINTS: Mutex<BTreeMap<String, EndpointTls>> = Mutex::new(BTreeMap::new());

fn address(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
}

fn register(endpoint: &str, tls: EndpointTls) {
    let mut endpoints = ENDPOINTS.lock().unwrap_or_else(|p| p.into_inner());
    endpoints.insert(address(endpoint).to_string(), tls);
}

fn lookup(endpoint: &str) -> Option<EndpointTls> {
    let endpoints = ENDPOINTS.lock().unwrap_or_else(|p| p.into_inner());
    endpoints.get(address(endpoint)).cloned()
}

/// Register a mirrorkv API endpoint served over TLS.
pub(crate) fn register_mirror(endpoint: &str, tls: MirrorTls) {
    register(endpoint, EndpointTls::Mirror(tls));
}

/// Register an etcd client URL served over TLS.
pub(crate) fn register_etcd(endpoint: &str, tls: etcd_client::TlsOptions) {
    register(endpoint, EndpointTls::Etcd(tls));
}

/// The TLS of a mirrorkv endpoint, if it was registered.
pub(crate) fn mirror(endpoint: &str) -> Option<MirrorTls> {
    match lookup(endpoint)? {
        EndpointTls::Mirror(tls) => Some(tls),
        EndpointTls::Etcd(_) => None,
    }
}

/// The TLS of an etcd endpoint, if it was registered.
pub(crate) fn etcd(endpoint: &str) -> Option<etcd_client::TlsOptions> {
    match lookup(endpoint)? {
        EndpointTls::Etcd(tls) => Some(tls),
        EndpointTls::Mirror(_) => None,
    }
}

/// A client of mirrorkv APIs whose certificates `certs/ca.pem` signed, showing
/// `certs/client.pem`, sending `token`.
pub(crate) fn mirror_tls(certs: &Path, token: Option<String>) -> anyhow::Result<MirrorTls> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let chain =
        CertificateDer::pem_file_iter(certs.join("client.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(certs.join("client-key.pem"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(MirrorTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        token: token.map(Arc::from),
    })
}

/// A client of etcd members whose certificates `certs/ca.pem` signed, showing
/// `certs/client.pem`.
pub(crate) fn etcd_tls(certs: &Path) -> anyhow::Result<etcd_client::TlsOptions> {
    let read = |name: &str| std::fs::read(certs.join(name));
    Ok(etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")?))
        .identity(etcd_client::Identity::from_pem(
            read("client.pem")?,
            read("client-key.pem")?,
        ))
        .domain_name("localhost"))
}

/// etcd member `i`'s TLS flags: node `i + 1`'s certificate serves its client and peer ports,
/// and both require a certificate from the CA.
pub(crate) fn etcd_flags(certs: &Path, i: usize) -> Vec<String> {
    let file = |name: String| certs.join(name).display().to_string();
    let (cert, key, ca) = (
        file(format!("node{}.pem", i + 1)),
        file(format!("node{}-key.pem", i + 1)),
        file("ca.pem".into()),
    );
    [
        ("--cert-file", &cert),
        ("--key-file", &key),
        ("--trusted-ca-file", &ca),
        ("--peer-cert-file", &cert),
        ("--peer-key-file", &key),
        ("--peer-trusted-ca-file", &ca),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.clone()])
    .chain([
        "--client-cert-auth".into(),
        "--peer-client-cert-auth".into(),
    ])
    .collect()
}
