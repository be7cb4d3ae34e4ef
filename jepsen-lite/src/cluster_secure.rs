//! A secure cluster's certificates (`mirrorkv certs`) and the fixture's HTTPS client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ClusterError;

/// Certificates for a secure cluster of `nodes` in `dir/certs` (`mirrorkv certs init`).
pub(super) fn make_certs(bin: &Path, dir: &Path, nodes: u64) -> Result<PathBuf, ClusterError> {
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
    Ok(certs)
}

/// The fixture's HTTP client: HTTPS with the client certificate when `certs` is set.
pub(super) fn http_client(
    certs: Option<&Path>,
    timeout_ms: u64,
) -> Result<reqwest::Client, ClusterError> {
    let misuse = |e: &dyn std::fmt::Display| ClusterError::Misuse(e.to_string());
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .tcp_nodelay(true);
    if let Some(certs) = certs {
        let tls = mirrorkv_client::ClientTls::from_files(
            &certs.join("ca.pem"),
            Some((&certs.join("client.pem"), &certs.join("client-key.pem"))),
        )
        .map_err(|e| misuse(&e))?;
        builder = tls.configure(builder).map_err(|e| misuse(&e))?;
    }
    builder.build().map_err(|e| misuse(&e))
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
