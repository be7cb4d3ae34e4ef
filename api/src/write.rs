//! The write path: apply a command through the leader, from whichever node received it.
//!
//! A command is retried on another leader only when it certainly did not take effect (it was
//! never delivered, or the receiver answered "not the leader" before appending it). Anything
//! else after it may have been appended ends in `OutcomeUnknown` (504), never in a second apply.

use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, NetError};
use mirrorkv_storage::{Command, Response};
use openraft::error::ClientWriteError;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::NodeState;

/// Between retries, wait at most this long for the membership or leader to change.
const RETRY_WAIT_MS: u64 = 50;

/// Apply `command` on this node, which should be the leader. `NotLeader` means it was not
/// appended (openraft answers ForwardToLeader only then, or for an entry it truncated away).
pub async fn apply_as_leader(
    state: &NodeState,
    command: Command,
) -> Result<Response, ForwardError> {
    // Not appended if the gate is closed (this leader is leaving) or the raft core is gone:
    // both are answered `NotLeader`, which the sender may retry elsewhere.
    let Some((_admitted, enqueued)) = state
        .write_gate
        .admit(state.raft.client_write_ff(command))
        .await
    else {
        return Err(ForwardError::NotLeader { leader: None });
    };
    let Ok(answer) = enqueued else {
        return Err(ForwardError::NotLeader { leader: None });
    };
    match answer.await {
        Ok(Ok(written)) => Ok(written.data),
        Ok(Err(ClientWriteError::ForwardToLeader(forward))) => Err(ForwardError::NotLeader {
            leader: forward.leader_id,
        }),
        Ok(Err(e)) => Err(ForwardError::Unavailable(e.to_string())),
        Err(_) => Err(ForwardError::Unavailable(
            "the leader stopped before answering".into(),
        )),
    }
}

/// Apply `command` through the current leader before `deadline`.
pub async fn write(
    state: &NodeState,
    command: Command,
    deadline: Instant,
) -> Result<Response, ApiError> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            // Only reached when no attempt was ever delivered.
            return Err(ApiError::Unavailable(
                "no leader accepted the write in time".into(),
            ));
        }
        let attempt = match state.leader() {
            Some(leader) if leader == state.id && state.write_gate.is_closed() => {
                return Err(ApiError::Unavailable(format!(
                    "node {} is leaving (shutting down or removed); nothing was written, retry on another node",
                    state.id
                )));
            }
            Some(leader) if leader == state.id => {
                match tokio::time::timeout(remaining, apply_as_leader(state, command.clone())).await
                {
                    Ok(answer) => Some(Ok(answer)),
                    Err(_) => Some(Err(NetError::Timeout {
                        timeout_ms: remaining.as_millis() as u64,
                    })),
                }
            }
            Some(leader) => match state.member(leader) {
                Some(node) => Some(
                    state
                        .pool
                        .client(leader, &node)
                        .client_write(command.clone(), remaining)
                        .await,
                ),
                None => None,
            },
            None => None,
        };
        match attempt {
            Some(Ok(Ok(response))) => return Ok(response),
            // Not appended anywhere: safe to try the next leader.
            Some(Ok(Err(ForwardError::NotLeader { .. }))) | None => {}
            Some(Err(e)) if e.not_delivered() => {
                tracing::debug!(error = %e, "forwarding a write failed before delivery");
            }
            Some(Ok(Err(ForwardError::Refused { message, .. }))) => {
                return Err(ApiError::Internal(format!(
                    "the leader refused a write: {message}"
                )))
            }
            Some(Ok(Err(ForwardError::Unavailable(message)))) => {
                return Err(ApiError::OutcomeUnknown(format!(
                    "the leader could not finish the write: {message}"
                )))
            }
            Some(Err(NetError::Timeout { .. })) => {
                return Err(ApiError::OutcomeUnknown(format!(
                    "the write did not complete within {} ms; it may or may not have been applied",
                    remaining.as_millis()
                )))
            }
            Some(Err(e)) => {
                return Err(ApiError::OutcomeUnknown(format!(
                    "lost the leader's answer: {e}"
                )))
            }
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(RETRY_WAIT_MS));
        state.wait_for_change(wait).await;
    }
}
