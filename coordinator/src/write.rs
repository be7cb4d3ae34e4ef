//! The write path: apply a command through the leader, from whichever node received it.
//!
//! A command is retried on another leader only when it certainly did not take effect (it was
//! never delivered, or the receiver answered "not the leader" before appending it). Anything
//! else after it may have been appended ends in `OutcomeUnknown` (504), never in a second apply.

use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, NetError, Refusal};
use mirrorkv_storage::{Command, Response};
use tokio::time::Instant;

use crate::error::CoordError;
use crate::Coordinator;

/// Between retries, wait at most this long for the membership or leader to change.
const RETRY_WAIT_MS: u64 = 50;

/// Apply `command` on this node, which should be the leader. `NotLeader` means it was not
/// appended (openraft answers ForwardToLeader only then, or for an entry it truncated away).
/// Concurrent commands are grouped into one log entry by the node's `WriteBatcher`.
pub async fn apply_as_leader(
    node: &Coordinator,
    command: Command,
) -> Result<Response, ForwardError> {
    if let Some(_entry) = node.write_batcher.alone() {
        // Nothing to batch with: append it now, from this task (a lone writer skips the
        // hand-off to the batcher). Dropping this future (the writer gave up) drops only the
        // wait for the answer; what was appended stays appended.
        return node.appender.append(command).await;
    }
    node.write_batcher.submit(command).await
}

/// Apply `commands` (forwarded together by another node) on this node, which should be the
/// leader, each on its own as if it had come alone: one answer each, in order.
pub async fn apply_many_as_leader(
    node: &Coordinator,
    commands: Vec<Command>,
) -> Vec<Result<Response, ForwardError>> {
    // A forwarding node checked these already; this node checks again with its own limits,
    // so that nothing reaches the log unchecked whoever speaks raft-net to it.
    let limits = &node.config.limits;
    let mut answers: Vec<Option<Result<Response, ForwardError>>> =
        Vec::with_capacity(commands.len());
    let mut valid = Vec::with_capacity(commands.len());
    for command in commands {
        match command.validate(limits) {
            Ok(()) => {
                answers.push(None);
                valid.push(command);
            }
            Err(invalid) => answers.push(Some(Err(ForwardError::Refused {
                refusal: Refusal::InvalidArgument,
                message: invalid.to_string(),
            }))),
        }
    }
    let mut applied = node.write_batcher.submit_many(valid).await.into_iter();
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                applied.next().unwrap_or(Err(ForwardError::Unavailable(
                    "the batcher answered fewer writes than it was given".into(),
                )))
            })
        })
        .collect()
}

impl Coordinator {
    /// Apply `command` through the current leader before `deadline`, from any node. An error
    /// other than `OutcomeUnknown` means nothing was applied.
    pub async fn write(
        &self,
        command: mirrorkv_storage::Command,
        deadline: tokio::time::Instant,
    ) -> Result<mirrorkv_storage::Response, CoordError> {
        through_leader(self, command, deadline).await
    }
}

/// Apply `command` through the current leader before `deadline`.
async fn through_leader(
    node: &Coordinator,
    command: Command,
    deadline: Instant,
) -> Result<Response, CoordError> {
    command.validate(&node.config.limits)?;
    loop {
        // Checked before every attempt: nothing is delivered from a removed node.
        node.refuse_if_removed()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            // Only reached when no attempt was ever delivered.
            return Err(CoordError::Unavailable(
                "no leader accepted the write in time".into(),
            ));
        }
        let tried = node.leader();
        let attempt = match tried {
            Some(leader) if leader == node.id && node.appender.gate.is_closed() => {
                return Err(CoordError::Unavailable(format!(
                    "node {} is leaving (shutting down or removed); nothing was written, retry on another node",
                    node.id
                )));
            }
            Some(leader) if leader == node.id => {
                match tokio::time::timeout(remaining, apply_as_leader(node, command.clone())).await
                {
                    Ok(answer) => Some(Ok(answer)),
                    Err(_) => Some(Err(NetError::Timeout {
                        timeout_ms: remaining.as_millis() as u64,
                    })),
                }
            }
            Some(leader) => match node.member(leader) {
                Some(info) => Some(
                    node.forwarder
                        .forward(leader, info, command.clone(), deadline)
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
            // Checked and refused before it was proposed (the leader's limits are lower than
            // this node's): nothing was applied.
            Some(Ok(Err(ForwardError::Refused { message, .. }))) => {
                return Err(CoordError::InvalidArgument(format!(
                    "the leader refused the write, nothing was applied: {message}"
                )))
            }
            Some(Ok(Err(ForwardError::Unavailable(message)))) => {
                return Err(CoordError::OutcomeUnknown(format!(
                    "the leader could not finish the write: {message}"
                )))
            }
            Some(Err(NetError::Timeout { .. })) => {
                return Err(CoordError::OutcomeUnknown(format!(
                    "the write did not complete within {} ms; it may or may not have been applied",
                    remaining.as_millis()
                )))
            }
            Some(Err(e)) => {
                return Err(CoordError::OutcomeUnknown(format!(
                    "lost the leader's answer: {e}"
                )))
            }
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(RETRY_WAIT_MS));
        node.wait_for_leader_change(tried, wait).await;
    }
}
