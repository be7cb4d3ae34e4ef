//! `--join`: a fresh node asks a member of an existing cluster (over its HTTP API, which
//! forwards to the leader) to add it as a mirror. The leader then sends it a snapshot and the
//! log like to any other member.

use std::time::Duration;

use anyhow::{bail, Context};
use mirrorkv_raft_net::Backoff;
use mirrorkv_storage::NodeInfo;
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::NodeConfig;

/// Wait between rounds over the join addresses: from 100 ms, doubling up to 2 s, jittered.
const JOIN_BACKOFF: Backoff = Backoff {
    min_ms: 100,
    max_ms: 2_000,
};

#[derive(Deserialize)]
struct Joined {
    index: u64,
    cluster_id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
    retryable: bool,
}

/// Ask the cluster at `config.join` to add this node as a mirror; returns its cluster id.
/// Retries unreachable members and retryable errors until `join_timeout_ms`; an error that
/// retrying cannot fix (e.g. the id is taken by another address) ends start-up.
pub(crate) async fn ask_to_join(config: &NodeConfig, me: &NodeInfo) -> anyhow::Result<String> {
    let (client, scheme) = crate::tls::join_client(&config.tls)?;
    let client = client
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(
            config.api.request_timeout_ms * 4 + 1000,
        ))
        .build()
        .context("building the HTTP client")?;
    let body =
        serde_json::json!({"id": config.id, "api_addr": me.api_addr, "raft_addr": me.raft_addr});
    let deadline = Instant::now() + Duration::from_millis(config.join_timeout_ms);
    let mut attempt = 0;
    let mut last_error = String::from("no attempt made");
    loop {
        for addr in &config.join {
            let url = format!("{scheme}://{addr}/v1/cluster/members");
            let mut request = client.post(&url).json(&body);
            if let Some(token) = &config.bootstrap_token {
                request = request.bearer_auth(&token.0);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let joined: Joined = response
                        .json()
                        .await
                        .with_context(|| format!("reading the answer of {url}"))?;
                    tracing::info!(node_id = config.id, via = %addr, index = joined.index, cluster_id = %joined.cluster_id, "joined the cluster as a mirror");
                    return Ok(joined.cluster_id);
                }
                Ok(response) => {
                    let status = response.status();
                    let error = response.json::<ErrorBody>().await.ok();
                    let message = error
                        .as_ref()
                        .map_or(String::new(), |e| e.error.message.clone());
                    if !error.as_ref().is_some_and(|e| e.error.retryable)
                        && status.is_client_error()
                    {
                        bail!(
                            "{addr} refused to add node {}: {status} {message}",
                            config.id
                        );
                    }
                    last_error = format!("{addr}: {status} {message}");
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        let backoff = JOIN_BACKOFF.delay(attempt);
        attempt += 1;
        if Instant::now() + backoff > deadline {
            bail!(
                "could not join through {:?} within {} ms; last error: {last_error}",
                config.join,
                config.join_timeout_ms
            );
        }
        tracing::info!(node_id = config.id, error = %last_error, retry_in_ms = backoff.as_millis() as u64, "join not accepted yet");
        tokio::time::sleep(backoff).await;
    }
}
