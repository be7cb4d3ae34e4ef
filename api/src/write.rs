//! The write path: apply a command through the leader, from whichever node received it.
//!
//! A command is retried on another leader only when it certainly did not take effect (it was
//! never delivered, or the receiver answered "not the leader" before appending it). Anything
//! else after it may have been appended ends in `OutcomeUnknown` (504), never in a second apply.

use std::time::Duration;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use mirrorkv_raft_net::{ForwardError, NetError, Refusal};
use mirrorkv_storage::{
    Command, CommandResult, NodeId, NodeInfo, Response, MAX_ANSWER_BYTES_PER_BATCH,
};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::NodeState;

/// Between retries, wait at most this long for the membership or leader to change.
const RETRY_WAIT_MS: u64 = 50;

/// Apply `command` on this node, which should be the leader. `NotLeader` means it was not
/// appended (openraft answers ForwardToLeader only then, or for an entry it truncated away).
/// Concurrent commands are grouped into one log entry by the node's `WriteBatcher`.
pub async fn apply_as_leader(
    state: &NodeState,
    command: Command,
) -> Result<Response, ForwardError> {
    if let Some(_entry) = state.write_batcher.alone() {
        // Nothing to batch with: append it now, from this task (a lone writer skips the
        // hand-off to the batcher). Dropping this future (the writer gave up) drops only the
        // wait for the answer; what was appended stays appended.
        return append_through_gate(state, command).await;
    }
    state.write_batcher.submit(command).await
}

/// Apply `commands` (forwarded together by another node) on this node, which should be the
/// leader, each on its own as if it had come alone: one answer each, in order.
pub async fn apply_many_as_leader(
    state: &NodeState,
    commands: Vec<Command>,
) -> Vec<Result<Response, ForwardError>> {
    // A forwarding node checked these already; this node checks again with its own limits,
    // so that nothing reaches the log unchecked whoever speaks raft-net to it.
    let limits = state.config.command_limits();
    let mut answers: Vec<Option<Result<Response, ForwardError>>> =
        Vec::with_capacity(commands.len());
    let mut valid = Vec::with_capacity(commands.len());
    for command in commands {
        match command.validate(&limits) {
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
    let mut applied = state.write_batcher.submit_many(valid).await.into_iter();
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

/// Append one (possibly batched) command through the write gate and wait for its answer.
async fn append_through_gate(
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

/// Most client commands in one log entry, and in one forwarded frame.
const MAX_COMMANDS_PER_ENTRY: usize = 128;
/// Most bytes of commands (`Command::approx_bytes`) in one log entry, and in one forwarded
/// frame; a single bigger command goes alone. With `max_body_bytes` (2 MiB) this keeps an entry
/// under about 3 MiB, so that an AppendEntries of `max_payload_entries` of them stays under
/// raft-net's frame limit.
pub const MAX_BYTES_PER_ENTRY: usize = 1024 * 1024;
/// What a batch (a log entry, or a forwarded frame) has used of its bounds: command bytes
/// (`MAX_BYTES_PER_ENTRY`) and the bytes its answers may take (`MAX_ANSWER_BYTES_PER_BATCH`).
/// The first command always fits, whatever its size.
struct BatchBudget {
    command_bytes: usize,
    answer_bytes: usize,
    max_value_bytes: usize,
}

impl BatchBudget {
    fn new(first: &Command, max_value_bytes: usize) -> Self {
        Self {
            command_bytes: first.approx_bytes(),
            answer_bytes: first.max_answer_bytes(max_value_bytes),
            max_value_bytes,
        }
    }

    fn fits(&self, next: &Command) -> bool {
        self.command_bytes + next.approx_bytes() <= MAX_BYTES_PER_ENTRY
            && self.answer_bytes + next.max_answer_bytes(self.max_value_bytes)
                <= MAX_ANSWER_BYTES_PER_BATCH
    }

    fn add(&mut self, next: &Command) {
        self.command_bytes += next.approx_bytes();
        self.answer_bytes += next.max_answer_bytes(self.max_value_bytes);
    }

    /// Add `next` if it fits; false (and unchanged) if not.
    fn admit(&mut self, next: &Command) -> bool {
        let fits = self.fits(next);
        if fits {
            self.add(next);
        }
        fits
    }
}

/// Which queued writes share one log entry, decided one write at a time: no two touch the same
/// key (so they commute: any order of apply gives the same state and answers), the entry's
/// bytes and answers stay within `BatchBudget`, and it holds at most `MAX_COMMANDS_PER_ENTRY`.
/// Pure, so the rule is tested alone (`tests`).
struct BatchForm {
    keys: HashSet<u64>,
    budget: BatchBudget,
    commands: usize,
}

impl BatchForm {
    fn new(first: &Command, max_value_bytes: usize) -> Self {
        Self {
            keys: key_hashes(first).into_iter().collect(),
            budget: BatchBudget::new(first, max_value_bytes),
            commands: 1,
        }
    }

    fn is_full(&self) -> bool {
        self.commands >= MAX_COMMANDS_PER_ENTRY
    }

    /// Add `next` if it may join the batch; false (and unchanged) if not.
    fn admit(&mut self, next: &Command) -> bool {
        if self.is_full() {
            return false;
        }
        let next_keys = key_hashes(next);
        if next_keys.iter().any(|key| self.keys.contains(key)) || !self.budget.admit(next) {
            return false;
        }
        self.keys.extend(next_keys);
        self.commands += 1;
        true
    }
}

/// Entries of batched writes in flight at once; while one is, new writes queue up and form the
/// next, bigger batch (the batch size adapts to the load; one client waits for nothing). One:
/// every entry costs the cluster about as much CPU as 30 writes in it do (appending,
/// replicating, syncing and applying it on every node), and measured at 64 clients one entry
/// in flight carried about 24 writes an entry and 0–32% more writes a second than 2 or 4 did
/// (BENCHMARKS.md). A full entry (MAX_COMMANDS_PER_ENTRY or MAX_BYTES_PER_ENTRY) is the most
/// one round can carry.
const MAX_ENTRIES_IN_FLIGHT: usize = 1;

struct Submitted {
    command: Command,
    answer: oneshot::Sender<Result<Response, ForwardError>>,
}

/// Groups concurrent client writes into one log entry (`Command::Batch`), so that many writes
/// share one entry's trip through Raft. Only commands with disjoint conflict keys share an
/// entry (see `Command::Batch`).
pub struct WriteBatcher {
    queue: mpsc::Sender<Submitted>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Submitted>>>,
    /// Entries in flight, at most MAX_ENTRIES_IN_FLIGHT: taken by the batcher for each batch,
    /// or by a lone write (`alone`).
    in_flight: Arc<Semaphore>,
}

impl WriteBatcher {
    /// A batcher whose queue holds at most `capacity` writes (senders wait beyond it).
    pub fn new(capacity: usize) -> Self {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        Self {
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
            in_flight: Arc::new(Semaphore::new(MAX_ENTRIES_IN_FLIGHT)),
        }
    }

    /// An entry of its own for a write that arrives when no write is queued and an entry may
    /// start now; `None` when it should join the queue. The batcher, once it waits for an entry,
    /// is served first (tokio's semaphore is fair), so lone writes never starve it.
    fn alone(&self) -> Option<OwnedSemaphorePermit> {
        if self.queue.capacity() < self.queue.max_capacity() {
            return None;
        }
        self.in_flight.clone().try_acquire_owned().ok()
    }

    async fn submit(&self, command: Command) -> Result<Response, ForwardError> {
        match self.enqueue(command).await {
            Ok(answered) => Self::answer(answered).await,
            Err(refused) => refused,
        }
    }

    /// Queue every command (in order, so they may share entries), then wait for all answers.
    async fn submit_many(&self, commands: Vec<Command>) -> Vec<Result<Response, ForwardError>> {
        let mut waiting = Vec::with_capacity(commands.len());
        for command in commands {
            waiting.push(self.enqueue(command).await);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for queued in waiting {
            answers.push(match queued {
                Ok(answered) => Self::answer(answered).await,
                Err(refused) => refused,
            });
        }
        answers
    }

    async fn enqueue(
        &self,
        command: Command,
    ) -> Result<oneshot::Receiver<Result<Response, ForwardError>>, Result<Response, ForwardError>>
    {
        let (answer, answered) = oneshot::channel();
        match self.queue.send(Submitted { command, answer }).await {
            Ok(()) => Ok(answered),
            Err(_) => Err(Err(ForwardError::NotLeader { leader: None })),
        }
    }

    async fn answer(
        answered: oneshot::Receiver<Result<Response, ForwardError>>,
    ) -> Result<Response, ForwardError> {
        // A command the batcher dropped unanswered was never dispatched (dispatched ones are
        // answered by their own task), so nothing was appended: safe to retry elsewhere.
        answered
            .await
            .unwrap_or(Err(ForwardError::NotLeader { leader: None }))
    }

    /// Form and append batches until `stop` resolves. Run once per node.
    pub async fn run(state: Arc<NodeState>, stop: impl std::future::Future<Output = ()>) {
        let Some(mut receiver) = state
            .write_batcher
            .receiver
            .lock()
            .expect("batcher lock")
            .take()
        else {
            return;
        };
        let max_value_bytes = state.config.max_value_bytes;
        let in_flight = state.write_batcher.in_flight.clone();
        let mut carried: Option<Submitted> = None;
        tokio::pin!(stop);
        loop {
            let Some(first) = next_queued(&mut carried, &mut receiver, stop.as_mut()).await else {
                return;
            };
            // Writes that arrive while this waits for an entry join the batch below.
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = &mut stop => return,
            };
            let mut form = BatchForm::new(&first.command, max_value_bytes);
            let mut batch = vec![first];
            while !form.is_full() {
                let Ok(next) = receiver.try_recv() else { break };
                if !form.admit(&next.command) {
                    // Conflicts with this batch, or would make it too big: it opens the next.
                    carried = Some(next);
                    break;
                }
                batch.push(next);
            }
            let state = state.clone();
            tokio::spawn(async move {
                append_batch(&state, batch).await;
                drop(permit);
            });
        }
    }
}

/// The item a batch or frame starts with: the one the last batch left over, else the next to
/// arrive; `None` once the queue is closed or `stop` resolved.
async fn next_queued<T>(
    carried: &mut Option<T>,
    receiver: &mut mpsc::Receiver<T>,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<T> {
    if let Some(first) = carried.take() {
        return Some(first);
    }
    tokio::select! {
        next = receiver.recv() => next,
        _ = stop => None,
    }
}

/// Hashes of a command's conflict keys, so that forming a batch copies no key. Two different
/// keys with one hash only look like a conflict, which merely starts the next batch.
fn key_hashes(command: &Command) -> Vec<u64> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    command
        .conflict_keys()
        .into_iter()
        .map(|key| hasher.hash_one(key))
        .collect()
}

/// The leader's stamp on an idempotent command: its own wall clock and its own
/// `idempotency_window_s`, whichever node received the request. A retry is thus judged on one
/// clock, the leader's, instead of the clocks of the nodes that took the first attempt and the
/// retry (which may differ by any skew). Apply compares only these logged numbers, so every
/// node decides the same.
fn stamp_idempotency(command: &mut Command, now_ms: u64, leader_window_ms: u64) {
    if let Command::Idempotent {
        issued_at_ms,
        window_ms,
        ..
    } = command
    {
        *issued_at_ms = now_ms;
        *window_ms = leader_window_ms;
    }
}

/// Append `batch` as one entry and hand every command its own answer.
async fn append_batch(state: &NodeState, mut batch: Vec<Submitted>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let window_ms = state.config.idempotency_window_s.saturating_mul(1000);
    for submitted in &mut batch {
        stamp_idempotency(&mut submitted.command, now_ms, window_ms);
    }
    if batch.len() == 1 {
        let Submitted { command, answer } = batch.pop().expect("one");
        let _ = answer.send(append_through_gate(state, command).await);
        return;
    }
    let (commands, answers): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|s| (s.command, s.answer)).unzip();
    let count = commands.len();
    match append_through_gate(state, Command::Batch(commands)).await {
        Ok(Response {
            result: CommandResult::Batch(responses),
            ..
        }) if responses.len() == count => {
            for (answer, response) in answers.into_iter().zip(responses) {
                let _ = answer.send(Ok(response));
            }
        }
        Ok(other) => {
            let message = format!("a batch of {count} was answered with {other:?}");
            for answer in answers {
                let _ = answer.send(Err(ForwardError::Unavailable(message.clone())));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

/// Apply `command` through the current leader before `deadline`.
pub async fn write(
    state: &NodeState,
    command: Command,
    deadline: Instant,
) -> Result<Response, ApiError> {
    command.validate(&state.config.command_limits())?;
    loop {
        // Checked before every attempt: nothing is delivered from a removed node.
        state.refuse_if_removed()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            // Only reached when no attempt was ever delivered.
            return Err(ApiError::Unavailable(
                "no leader accepted the write in time".into(),
            ));
        }
        let tried = state.leader();
        let attempt = match tried {
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
                        .forwarder
                        .forward(leader, node, command.clone(), deadline)
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
                return Err(ApiError::InvalidArgument(format!(
                    "the leader refused the write, nothing was applied: {message}"
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
        state.wait_for_leader_change(tried, wait).await;
    }
}

/// Forwarded frames in flight at once; while they are, new writes queue up and form the next,
/// bigger frame (as with entries, the frame size adapts to the load).
const MAX_FRAMES_IN_FLIGHT: usize = 4;

/// Who owns a queued forward: the forwarder once it puts it in a frame, or its caller once it
/// gives up waiting. Exactly one of them wins, which is how the caller knows whether its
/// write may have been sent.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

type ForwardAnswer = Result<Result<Response, ForwardError>, NetError>;

struct Forwarded {
    leader: NodeId,
    node: NodeInfo,
    command: Command,
    deadline: Instant,
    claim: Arc<AtomicU8>,
    answer: oneshot::Sender<ForwardAnswer>,
}

impl Forwarded {
    /// Take this write into a frame; false if its caller already gave up on it.
    fn take(&self) -> bool {
        self.claim
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Sends the writes a non-leader receives to the leader, many in one raft-net frame: the writes
/// that arrive while earlier frames are in flight share the next one. Each write keeps its own
/// answer, and its own deadline for giving up.
pub struct Forwarder {
    queue: mpsc::Sender<Forwarded>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Forwarded>>>,
}

impl Forwarder {
    /// A forwarder whose queue holds at most `capacity` writes (senders wait beyond it).
    pub fn new(capacity: usize) -> Self {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        Self {
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
        }
    }

    /// Forward `command` to `leader` (advertised as `node`) and wait for its answer until
    /// `deadline`. The errors mean what `PeerClient::client_writes`' do: `not_delivered()`
    /// ones certainly did not reach the leader.
    pub async fn forward(
        &self,
        leader: NodeId,
        node: NodeInfo,
        command: Command,
        deadline: Instant,
    ) -> ForwardAnswer {
        let claim = Arc::new(AtomicU8::new(QUEUED));
        let addr = node.raft_addr.clone();
        let (answer, answered) = oneshot::channel();
        let forwarded = Forwarded {
            leader,
            node,
            command,
            deadline,
            claim: claim.clone(),
            answer,
        };
        let not_sent = |reason| NetError::NotTaken {
            addr: addr.clone(),
            reason,
        };
        let wait = async {
            if self.queue.send(forwarded).await.is_err() {
                return Err(not_sent("this node is shutting down"));
            }
            match answered.await {
                Ok(answer) => answer,
                // Dropped unanswered: sent only if the forwarder had taken it.
                Err(_) if claim.load(Ordering::Acquire) == TAKEN => {
                    Err(NetError::ConnectionClosed { addr: addr.clone() })
                }
                Err(_) => Err(not_sent("this node is shutting down")),
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, wait).await {
            Ok(answer) => answer,
            Err(_) => {
                match claim.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Err(not_sent("it was still queued at its deadline")),
                    Err(_) => Err(NetError::Timeout {
                        timeout_ms: remaining.as_millis() as u64,
                    }),
                }
            }
        }
    }

    /// Form and send frames until `stop` resolves. Run once per node.
    pub async fn run(state: Arc<NodeState>, stop: impl std::future::Future<Output = ()>) {
        let Some(mut receiver) = state
            .forwarder
            .receiver
            .lock()
            .expect("forwarder lock")
            .take()
        else {
            return;
        };
        let max_value_bytes = state.config.max_value_bytes;
        let in_flight = Arc::new(Semaphore::new(MAX_FRAMES_IN_FLIGHT));
        let mut carried: Option<Forwarded> = None;
        tokio::pin!(stop);
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = next_queued(&mut carried, &mut receiver, stop.as_mut()).await else {
                return;
            };
            if !first.take() {
                continue;
            }
            // The answers come back in one frame: bounded like an entry's.
            let mut budget = BatchBudget::new(&first.command, max_value_bytes);
            let mut frame = vec![first];
            while frame.len() < MAX_COMMANDS_PER_ENTRY {
                let Ok(next) = receiver.try_recv() else { break };
                if next.leader != frame[0].leader || !budget.fits(&next.command) {
                    carried = Some(next);
                    break;
                }
                if next.take() {
                    budget.add(&next.command);
                    frame.push(next);
                }
            }
            let state = state.clone();
            tokio::spawn(async move {
                send_frame(&state, frame).await;
                drop(permit);
            });
        }
    }
}

/// Send one frame of forwarded writes and hand each its answer.
async fn send_frame(state: &NodeState, frame: Vec<Forwarded>) {
    let (leader, node) = (frame[0].leader, frame[0].node.clone());
    // Long enough for the most patient write in the frame; the others stop waiting on their
    // own at their deadlines.
    let timeout = frame
        .iter()
        .map(|f| f.deadline)
        .max()
        .map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(Instant::now())
        });
    let (commands, answers): (Vec<Command>, Vec<_>) =
        frame.into_iter().map(|f| (f.command, f.answer)).unzip();
    match state
        .pool
        .client(leader, &node)
        .client_writes(commands, timeout)
        .await
    {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(Ok(result));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mirrorkv_storage::{Precondition, Txn, TxnOp};

    use super::*;

    const MAX_VALUE_BYTES: usize = 1024 * 1024;

    fn txn_of(ops: Vec<TxnOp>) -> Command {
        Command::Txn(Txn {
            compare: Vec::new(),
            success: ops,
            failure: Vec::new(),
        })
    }

    fn gets(count: usize) -> Command {
        txn_of(
            (0..count)
                .map(|i| TxnOp::Get {
                    key: format!("k{i}"),
                })
                .collect(),
        )
    }

    fn put(i: usize) -> Command {
        Command::Put {
            key: format!("k{i}"),
            value: vec![0; 16],
            precondition: Precondition::None,
        }
    }

    #[test]
    fn transactions_that_could_answer_megabytes_do_not_share_a_batch() {
        // Eight gets of 1 MiB values: up to 8 MiB of answer each.
        let big = gets(8);
        let mut budget = BatchBudget::new(&big, MAX_VALUE_BYTES);
        assert!(budget.admit(&gets(4)), "8 + 4 MiB fit in 16 MiB");
        assert!(!budget.admit(&big), "8 + 4 + 8 MiB do not");
        assert!(budget.admit(&put(1)), "a put's answer is small");
        // A transaction's answer is capped at 8 MiB, and two capped ones pass 16 MiB.
        let mut capped = BatchBudget::new(&gets(128), MAX_VALUE_BYTES);
        assert!(capped.admit(&gets(7)));
        assert!(!capped.admit(&gets(128)));
    }

    #[test]
    fn writes_to_the_same_key_never_share_an_entry() {
        let mut form = BatchForm::new(&put(1), MAX_VALUE_BYTES);
        assert!(form.admit(&put(2)), "disjoint keys share");
        assert!(!form.admit(&put(1)), "the same key twice does not");
        let reads_k2 = txn_of(vec![TxnOp::Get { key: "k2".into() }]);
        assert!(
            !form.admit(&reads_k2),
            "a txn reading a key the batch writes does not"
        );
        let idempotent = Command::Idempotent {
            key: "op-1".into(),
            issued_at_ms: 0,
            window_ms: 0,
            command: Box::new(put(3)),
        };
        assert!(form.admit(&idempotent));
        let same_idempotency_key = Command::Idempotent {
            key: "op-1".into(),
            issued_at_ms: 0,
            window_ms: 0,
            command: Box::new(put(4)),
        };
        assert!(
            !form.admit(&same_idempotency_key),
            "one idempotency key once"
        );
        assert!(form.admit(&put(4)));
    }

    #[test]
    fn an_entry_holds_at_most_max_commands() {
        let mut form = BatchForm::new(&put(0), MAX_VALUE_BYTES);
        let admitted = (1..1000).take_while(|&i| form.admit(&put(i))).count();
        assert_eq!(admitted + 1, MAX_COMMANDS_PER_ENTRY);
        assert!(form.is_full());
    }

    #[test]
    fn what_a_budget_admits_stays_within_both_bounds() {
        let commands: Vec<Command> = (0..4000)
            .map(|i| match i % 7 {
                0 => gets(1 + i % 5),
                // Big values, so that entries are cut by their bytes too.
                1 => Command::Put {
                    key: format!("big{i}"),
                    value: vec![0; 300 * 1024],
                    precondition: Precondition::None,
                },
                _ => put(i),
            })
            .collect();
        let mut rest = commands.as_slice();
        while let Some((first, tail)) = rest.split_first() {
            let mut budget = BatchBudget::new(first, MAX_VALUE_BYTES);
            let taken = 1 + tail.iter().take_while(|next| budget.admit(next)).count();
            let batch = &rest[..taken];
            let answer_bytes: usize = batch
                .iter()
                .map(|c| c.max_answer_bytes(MAX_VALUE_BYTES))
                .sum();
            let command_bytes: usize = batch.iter().map(Command::approx_bytes).sum();
            assert!(
                taken == 1
                    || (answer_bytes <= MAX_ANSWER_BYTES_PER_BATCH
                        && command_bytes <= MAX_BYTES_PER_ENTRY),
                "a batch of {taken} may answer {answer_bytes} bytes from {command_bytes}"
            );
            assert!(
                taken == rest.len() || !budget.fits(&rest[taken]),
                "a batch ended while the next command fitted"
            );
            rest = &rest[taken..];
        }
    }

    /// The forwarder's side of the claim race, without a cluster: the queue is read by hand.
    mod claim {
        use super::*;

        fn leader() -> NodeInfo {
            NodeInfo {
                raft_addr: "127.0.0.1:1".into(),
                api_addr: "127.0.0.1:2".into(),
            }
        }

        fn put() -> Command {
            Command::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                precondition: Precondition::None,
            }
        }

        fn receiver(forwarder: &Forwarder) -> mpsc::Receiver<Forwarded> {
            forwarder.receiver.lock().unwrap().take().unwrap()
        }

        #[tokio::test]
        async fn a_write_still_queued_at_its_deadline_is_never_sent() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            let deadline = Instant::now() + Duration::from_millis(50);
            match forwarder.forward(1, leader(), put(), deadline).await {
                Err(e @ NetError::NotTaken { .. }) => {
                    assert!(e.to_string().contains("still queued"), "{e}")
                }
                other => panic!("{other:?}"),
            }
            // The forwarder comes to it late: the caller was told "not sent", so it must not be.
            let late = queue.recv().await.unwrap();
            assert!(!late.take(), "an abandoned write was taken into a frame");
        }

        #[tokio::test]
        async fn a_write_taken_into_a_frame_times_out_with_its_outcome_open() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            // Long enough that the taker below always takes it first, even on a loaded machine.
            let deadline = Instant::now() + Duration::from_secs(2);
            let forward = forwarder.forward(1, leader(), put(), deadline);
            let taker = async {
                let queued = queue.recv().await.unwrap();
                assert!(queued.take());
                // Held, unanswered, past the deadline: as a frame stuck in flight.
                queued
            };
            let (answer, _held) = tokio::join!(forward, taker);
            match answer {
                Err(NetError::Timeout { .. }) => {}
                other => panic!("a taken write may have been sent: {other:?}"),
            }
        }

        #[tokio::test]
        async fn a_taken_write_dropped_unanswered_may_have_been_sent() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            let deadline = Instant::now() + Duration::from_secs(10);
            let forward = forwarder.forward(1, leader(), put(), deadline);
            let taker = async {
                let queued = queue.recv().await.unwrap();
                assert!(queued.take());
                drop(queued);
            };
            let (answer, ()) = tokio::join!(forward, taker);
            assert!(
                matches!(answer, Err(NetError::ConnectionClosed { .. })),
                "{answer:?}"
            );
        }

        #[tokio::test]
        async fn a_write_queued_but_dropped_untaken_was_not_sent() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            let deadline = Instant::now() + Duration::from_secs(10);
            let forward = forwarder.forward(1, leader(), put(), deadline);
            let dropper = async {
                // Shutting down: the queue is dropped with the write in it, never taken.
                let queued = queue.recv().await.unwrap();
                drop(queued);
            };
            let (answer, ()) = tokio::join!(forward, dropper);
            match answer {
                Err(e @ NetError::NotTaken { .. }) => {
                    assert!(e.to_string().contains("shutting down"), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
