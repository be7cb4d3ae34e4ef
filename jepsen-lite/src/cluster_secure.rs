//! A secure cluster's certificates (`mirrorkv certs`), its bootstrap token (`--auth`), and
//! what its clients need (`ClientAccess`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ClusterError;

/// Certificates for a secure cluster of `nodes` in `dir/certs` (`mirrorkv certs init`).
pub fn make_certs(bin: &Path, dir: &Path, nodes: u64) -> Result<PathBuf, ClusterError> {
    let certs = dir.join("certs");
    let output = Command::new(bin)
        .args([
            "certs",
            "init",
            "--force",
            "--nodes",
            &nodes.to_string(),
            "--dir",
        ])
        .arg(&certs)
        .output()?;
    if !output.status.success() {
        return Err(ClusterError::Misuse(format!(
            "mirrorkv certs init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    // The bootstrap token of `--auth`: 32 random bytes as hex, readable by the owner only.
    let mut random = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = certs.join(BOOTSTRAP_TOKEN_FILE);
    std::fs::write(&path, &token)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(certs)
}

/// The bootstrap token's file in a secure cluster's certificate folder.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// What a client of the cluster needs: HTTPS with the client certificate, and the bearer
/// token, for a secure cluster; nothing otherwise.
#[derive(Debug, Clone, Default)]
pub struct ClientAccess {
    pub tls: Option<mirrorkv_client::ClientTls>,
    pub token: Option<String>,
}

impl ClientAccess {
    /// The access of the cluster whose certificates are in `certs` (`None`: not secure).
    pub fn of(certs: Option<&Path>) -> Result<Self, ClusterError> {
        let Some(certs) = certs else {
            return Ok(Self::default());
        };
        let misuse = |e: &dyn std::fmt::Display| ClusterError::Misuse(e.to_string());
        let tls = mirrorkv_client::ClientTls::from_files(
            &certs.join("ca.pem"),
            Some((&certs.join("client.pem"), &certs.join("client-key.pem"))),
        )
        .map_err(|e| misuse(&e))?;
        let token = std::fs::read_to_string(certs.join(BOOTSTRAP_TOKEN_FILE))?;
        Ok(Self {
            tls: Some(tls),
            token: Some(token.trim().to_string()),
        })
    }

    /// `builder` with this access: the TLS settings and an `Authorization` header.
    pub fn configure(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ClusterError> {
        let misuse = |e: &dyn std::fmt::Display| ClusterError::Misuse(e.to_string());
        if let Some(tls) = &self.tls {
            builder = tls.configure(builder).map_err(|e| misuse(&e))?;
        }
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| misuse(&e))?;
            value.set_sensitive(true);
            let headers =
                reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
            builder = builder.default_headers(headers);
        }
        Ok(builder)
    }
}

/// The fixture's HTTP client: with `access` (HTTPS, the client certificate, the token).
pub(super) fn http_client(
    access: &ClientAccess,
    timeout_ms: u64,
) -> Result<reqwest::Client, ClusterError> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .tcp_nodelay(true);
    access
        .configure(builder)?
        .build()
        .map_err(|e| ClusterError::Misuse(e.to_string()))
}

/// Issue node `id`'s certificate from the CA in `certs` (`mirrorkv certs node`).
pub(super) fn issue_node_cert(bin: &Path, certs: &Path, id: u64) -> Result<(), ClusterError> {
    let output = Command::new(bin)
        .args(["certs", "node", "--force", "--id", &id.to_string(), "--dir"])
        .arg(certs)
        .output()?;
    if !output.status.success() {
        return Err(ClusterError::Misuse(format!(
            "mirrorkv certs node failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}
