//! The security settings of a node: TLS files (checked as pairs) and default bind addresses.

use anyhow::bail;

use super::{defaulted, Flags};
use crate::tls::{ApiTlsFiles, PeerTlsFiles, TlsSettings};

/// Where the API listens unless told: loopback only, so a node started without thought is not
/// reachable from the network.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7379";
/// Where raft-net listens unless told: loopback only.
pub const DEFAULT_RAFT_ADDR: &str = "127.0.0.1:7380";

/// The TLS settings: a certificate needs its key (and the reverse); peer TLS needs all three
/// of its files.
pub(super) fn tls_settings(flags: &Flags) -> anyhow::Result<TlsSettings> {
    let api = match (&flags.tls_cert, &flags.tls_key) {
        (Some(cert), Some(key)) => Some(ApiTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: flags.tls_client_ca.clone(),
        }),
        (None, None) if flags.tls_client_ca.is_some() => {
            bail!("--tls-client-ca needs --tls-cert and --tls-key (client certificates need HTTPS)")
        }
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let peer = match (&flags.peer_cert, &flags.peer_key, &flags.peer_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(PeerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        (None, None, None) => None,
        _ => bail!("peer TLS needs all of --peer-cert, --peer-key and --peer-ca"),
    };
    let handshake_timeout_ms = defaulted(flags.tls_handshake_timeout_ms)?;
    if !(100..=60_000).contains(&handshake_timeout_ms) {
        bail!("tls_handshake_timeout_ms must be between 100 and 60000 (ms)");
    }
    Ok(TlsSettings {
        api,
        peer,
        handshake_timeout_ms,
    })
}
