//! Writes grouped into log entries on the leader: `BatchForm` decides which queued writes share
//! an entry (pure, tested alone), `WriteBatcher` queues them, `run` forms and appends the
//! batches through an `Appender` (the Raft handle behind the write gate).

use std::collections::HashSet;
use std::sync::Arc;

use mirrorkv_raft_net::ForwardError;
use mirrorkv_storage::{Command, CommandResult, Raft, Response, MAX_ANSWER_BYTES_PER_BATCH};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::gate::WriteGate;

/// Most client commands in one log entry, and in one forwarded frame.
pub(crate) const MAX_COMMANDS_PER_ENTRY: usize = 128;
/// Most bytes of commands (`Command::approx_bytes`) in one log entry, and in one forwarded
/// frame; a single bigger command goes alone. With `max_body_bytes` (2 MiB) this keeps an entry
/// under about 3 MiB, so that an AppendEntries of `max_payload_entries` of them stays under
/// raft-net's frame limit.
pub const MAX_BYTES_PER_ENTRY: usize = 1024 * 1024;
/// What a batch (a log entry, or a forwarded frame) has used of its bounds: command bytes
/// (`MAX_BYTES_PER_ENTRY`) and the bytes its answers may take (`MAX_ANSWER_BYTES_PER_BATCH`).
/// The first command always fits, whatever its size.
pub(crate) struct BatchBudget {
    command_bytes: usize,
    answer_bytes: usize,
    max_value_bytes: usize,
}

impl BatchBudget {
    pub(crate) fn new(first: &Command, max_value_bytes: usize) -> Self {
        Self {
            command_bytes: first.approx_bytes(),
            answer_bytes: first.max_answer_bytes(max_value_bytes),
            max_value_bytes,
        }
    }

    pub(crate) fn fits(&self, next: &Command) -> bool {
        self.command_bytes + next.approx_bytes() <= MAX_BYTES_PER_ENTRY
            && self.answer_bytes + next.max_answer_bytes(self.max_value_bytes)
                <= MAX_ANSWER_BYTES_PER_BATCH
    }

    pub(crate) fn add(&mut self, next: &Command) {
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
    /// The first command goes alone (`Command::goes_alone`): nothing joins it.
    alone: bool,
}

impl BatchForm {
    fn new(first: &Command, max_value_bytes: usize) -> Self {
        Self {
            keys: key_hashes(first).into_iter().collect(),
            budget: BatchBudget::new(first, max_value_bytes),
            commands: 1,
            alone: first.goes_alone(),
        }
    }

    fn is_full(&self) -> bool {
        self.alone || self.commands >= MAX_COMMANDS_PER_ENTRY
    }

    /// Add `next` if it may join the batch; false (and unchanged) if not.
    fn admit(&mut self, next: &Command) -> bool {
        if self.is_full() || next.goes_alone() {
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
    pub(crate) fn alone(&self) -> Option<OwnedSemaphorePermit> {
        if self.queue.capacity() < self.queue.max_capacity() {
            return None;
        }
        self.in_flight.clone().try_acquire_owned().ok()
    }

    pub(crate) async fn submit(&self, command: Command) -> Result<Response, ForwardError> {
        match self.enqueue(command).await {
            Ok(answered) => Self::answer(answered).await,
            Err(refused) => refused,
        }
    }

    /// Queue every command (in order, so they may share entries), then wait for all answers.
    pub(crate) async fn submit_many(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<Response, ForwardError>> {
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

    /// The queue's receiving end, for `run`; `None` once taken.
    pub(crate) fn take_queue(&self) -> Option<BatchQueue> {
        let receiver = self.receiver.lock().expect("batcher lock").take()?;
        Some(BatchQueue {
            receiver,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// The receiving end of a `WriteBatcher`'s queue, and its entries-in-flight bound.
pub(crate) struct BatchQueue {
    receiver: mpsc::Receiver<Submitted>,
    in_flight: Arc<Semaphore>,
}

/// What the batcher appends through: the Raft handle behind the write gate, and the leader's
/// idempotency window. Nothing else of the node.
#[derive(Clone)]
pub(crate) struct Appender {
    pub(crate) raft: Raft,
    pub(crate) gate: Arc<WriteGate>,
    pub(crate) idempotency_window_ms: u64,
}

/// Form batches from `queue` and append them through `appender` until `stop` resolves. Run
/// once per node.
pub(crate) async fn run(
    queue: BatchQueue,
    appender: Appender,
    max_value_bytes: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    let BatchQueue {
        mut receiver,
        in_flight,
    } = queue;
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
        let appender = appender.clone();
        tokio::spawn(async move {
            appender.append_batch(batch).await;
            drop(permit);
        });
    }
}

/// The item a batch or frame starts with: the one the last batch left over, else the next to
/// arrive; `None` once the queue is closed or `stop` resolved.
pub(crate) async fn next_queued<T>(
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

/// The leader's wall clock in milliseconds since the Unix epoch (0 if it is set before 1970).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Appender {
    /// Append one (possibly batched) command through the write gate and wait for its answer.
    pub(crate) async fn append(&self, mut command: Command) -> Result<Response, ForwardError> {
        stamp_idempotency(&mut command, now_ms(), self.idempotency_window_ms);
        // Not appended if the gate is closed (this leader is leaving) or the raft core is gone:
        // both are answered `NotLeader`, which the sender may retry elsewhere.
        let Some((_admitted, enqueued)) = self.gate.admit(self.raft.client_write_ff(command)).await
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

    /// Append `batch` as one entry and hand every command its own answer.
    async fn append_batch(&self, mut batch: Vec<Submitted>) {
        if batch.len() == 1 {
            let Submitted { command, answer } = batch.pop().expect("one");
            let _ = answer.send(self.append(command).await);
            return;
        }
        let now_ms = now_ms();
        for submitted in &mut batch {
            stamp_idempotency(&mut submitted.command, now_ms, self.idempotency_window_ms);
        }
        let (commands, answers): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|s| (s.command, s.answer)).unzip();
        let count = commands.len();
        match self.append(Command::Batch(commands)).await {
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

    /// A revoke or an expiry deletes keys no conflict key names: it shares its entry with
    /// nothing, before or after it. Grants share (apply numbers them in entry order).
    #[test]
    fn a_lease_revoke_or_expiry_goes_alone() {
        let revoke = Command::LeaseRevoke { id: 256 };
        let mut form = BatchForm::new(&put(1), MAX_VALUE_BYTES);
        assert!(!form.admit(&revoke), "joins no batch");
        let mut alone = BatchForm::new(&revoke, MAX_VALUE_BYTES);
        assert!(alone.is_full());
        assert!(!alone.admit(&put(2)), "nothing joins it");
        let expire = Command::LeaseExpire { ids: vec![256] };
        assert!(!form.admit(&expire));
        let idempotent_revoke = Command::Idempotent {
            key: "r".into(),
            issued_at_ms: 0,
            window_ms: 0,
            command: Box::new(revoke),
        };
        assert!(!form.admit(&idempotent_revoke));
        let grant = Command::LeaseGrant {
            ttl_ms: 2000,
            max_leases: 10,
        };
        assert!(
            form.admit(&grant) && form.admit(&grant.clone()),
            "grants share"
        );
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
}
