//! The security settings of a node: TLS files (checked as pairs), tokens (`--auth`) and
//! default bind addresses.

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

/// Shortest bootstrap token accepted, in characters: 32 hex digits are 128 bits.
const MIN_BOOTSTRAP_TOKEN_CHARS: usize = 32;

/// A secret kept in memory: never printed (`Debug` shows only that it is there).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The access control settings: `--auth`, the bootstrap token's hash (the file is read once,
/// here; its text is trimmed of surrounding whitespace), `--metrics-public`; and the token's
/// text, for `--join`.
pub(super) fn auth_settings(
    flags: &Flags,
) -> anyhow::Result<(mirrorkv_api::auth::AuthSettings, Option<Secret>)> {
    let mut text_of_token = None;
    let enabled = flags.auth.unwrap_or(false);
    let bootstrap_token_sha256 = match &flags.auth_bootstrap_token_file {
        None => None,
        Some(_) if !enabled => bail!("--auth-bootstrap-token-file needs --auth"),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("reading the bootstrap token {}: {e}", path.display())
            })?;
            let token = text.trim();
            if token.chars().count() < MIN_BOOTSTRAP_TOKEN_CHARS
                || token.len() > mirrorkv_api::auth::MAX_TOKEN_BYTES
                || !token.chars().all(|c| c.is_ascii_graphic())
            {
                bail!(
                    "the bootstrap token in {} must be {MIN_BOOTSTRAP_TOKEN_CHARS} to {} printable characters without spaces (e.g. `openssl rand -hex 32`)",
                    path.display(),
                    mirrorkv_api::auth::MAX_TOKEN_BYTES
                );
            }
            text_of_token = Some(Secret(token.to_string()));
            Some(mirrorkv_api::auth::token_sha256(token))
        }
    };
    let metrics_public = flags.metrics_public.unwrap_or(false);
    if metrics_public && !enabled {
        bail!("--metrics-public needs --auth (without it everything is public)");
    }
    let settings = mirrorkv_api::auth::AuthSettings {
        enabled,
        bootstrap_token_sha256,
        metrics_public,
    };
    Ok((settings, text_of_token))
}
