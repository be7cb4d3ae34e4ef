//! Model-based property test: the RocksDB state machine and a `BTreeMap` model receive the same
//! random puts, deletes, conditional writes, lease grants, leased puts, revokes and expiries,
//! role and token changes, snapshots, restores into a fresh store and re-opens, and must always
//! hold the same keys with the same values and indexes, the same leases with the same keys, and
//! the same roles and tokens, whatever the bound of the store's key index.
//!
//! The seed is printed; set `PROPTEST_RNG_SEED=<seed>` to replay a run exactly.

#[path = "t20_model/auth.rs"]
mod auth;
mod common;
#[path = "t20_model/leases.rs"]
mod leases;

use std::collections::BTreeMap;

use std::collections::HashMap;

use mirrorkv_storage::changes::{Change, ChangeKind, KeyFilter, PageLimit};

use auth::AuthModel;
use leases::LeaseModel;
use mirrorkv_storage::{
    Command, CommandResult, Compare, CompareTarget, Entry, KeyRecord, KvReader, LogId, LogStore,
    Precondition, RangeRequest, Response, StateMachine, StoreOptions, Txn, TxnOp,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        value: Vec<u8>,
    },
    PutIfAbsent {
        key: u8,
        value: Vec<u8>,
    },
    /// `If-Match: *`: only if the key exists.
    PutIfExists {
        key: u8,
        value: Vec<u8>,
    },
    PutIfModIndex {
        key: u8,
        guess_current: bool,
        value: Vec<u8>,
    },
    Delete {
        key: u8,
    },
    DeleteIfModIndex {
        key: u8,
        guess_current: bool,
    },
    /// Compare `key`'s mod_index (right or wrong guess); success puts `put_key`, failure gets it.
    Txn {
        key: u8,
        guess_current: bool,
        put_key: u8,
        value: Vec<u8>,
    },
    /// A put under idempotency key `idem` (of a few), `advance_ms` after the previous one.
    IdempotentPut {
        idem: u8,
        advance_ms: u64,
        key: u8,
        value: Vec<u8>,
    },
    /// Puts (odd keys) and deletes (even keys) of distinct keys in one `Command::Batch`, as the
    /// write batcher (coordinator/src/batch.rs) proposes them.
    Batch {
        keys: Vec<u8>,
        value: Vec<u8>,
    },
    /// Grant a lease (at most `MAX_LEASES` live).
    Grant {
        ttl_s: u8,
    },
    /// Put `key` attached to the lease of `slot` (a live one, or an ended or unknown one).
    PutLeased {
        key: u8,
        slot: u8,
        value: Vec<u8>,
    },
    /// A transaction whose success branch puts `key` attached to the lease of `slot`.
    TxnLeased {
        key: u8,
        slot: u8,
    },
    Revoke {
        slot: u8,
    },
    Expire {
        slots: Vec<u8>,
    },
    /// Two grants and leased puts of distinct keys in one batch.
    GrantsInBatch {
        keys: Vec<u8>,
        slot: u8,
    },
    /// A role or token change (`auth::auth_command`).
    Auth {
        kind: u8,
        role: u8,
        token: u8,
        ttl_ms: Option<u8>,
    },
    Snapshot,
    RestoreSnapshotIntoFreshStore,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..12;
    let value = proptest::collection::vec(any::<u8>(), 0..16);
    prop_oneof![
        6 => (key.clone(), value.clone()).prop_map(|(key, value)| Op::Put { key, value }),
        2 => (key.clone(), value.clone()).prop_map(|(key, value)| Op::PutIfAbsent { key, value }),
        1 => (key.clone(), value.clone()).prop_map(|(key, value)| Op::PutIfExists { key, value }),
        2 => (key.clone(), any::<bool>(), value).prop_map(|(key, guess_current, value)| Op::PutIfModIndex { key, guess_current, value }),
        3 => key.clone().prop_map(|key| Op::Delete { key }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, guess_current)| Op::DeleteIfModIndex { key, guess_current }),
        2 => (key.clone(), any::<bool>(), key.clone(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(key, guess_current, put_key, value)| Op::Txn { key, guess_current, put_key, value }),
        // Values from a small set, so that a key's next use is often the same request (a retry)
        // and often another one (refused within the window).
        2 => (0u8..3, 0u64..60, key.clone(), prop_oneof![Just(vec![1u8]), Just(vec![2u8])])
            .prop_map(|(idem, advance_ms, key, value)| Op::IdempotentPut { idem, advance_ms, key, value }),
        2 => (proptest::collection::btree_set(0u8..12, 1..6), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(keys, value)| Op::Batch { keys: keys.into_iter().collect(), value }),
        2 => (1u8..5).prop_map(|ttl_s| Op::Grant { ttl_s }),
        4 => (key.clone(), 0u8..6, proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(key, slot, value)| Op::PutLeased { key, slot, value }),
        1 => (key.clone(), 0u8..6).prop_map(|(key, slot)| Op::TxnLeased { key, slot }),
        1 => (0u8..6).prop_map(|slot| Op::Revoke { slot }),
        1 => proptest::collection::vec(0u8..6, 1..4).prop_map(|slots| Op::Expire { slots }),
        1 => (proptest::collection::btree_set(0u8..12, 1..4), 0u8..6)
            .prop_map(|(keys, slot)| Op::GrantsInBatch { keys: keys.into_iter().collect(), slot }),
        2 => (any::<u8>(), 0u8..3, 0u8..4, proptest::option::of(0u8..3))
            .prop_map(|(kind, role, token, ttl_ms)| Op::Auth { kind, role, token, ttl_ms }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::RestoreSnapshotIntoFreshStore),
        1 => Just(Op::Reopen),
    ]
}

/// What applying one index changed, key by key in key order: a put for every key whose record
/// changed, a delete for every key that existed before and does not after.
fn model_changes(
    index: u64,
    before: &BTreeMap<String, KeyRecord>,
    after: &BTreeMap<String, KeyRecord>,
) -> Vec<Change> {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let prev_mod_index = before.get(key).map(|r| r.mod_index);
            let kind = match (before.get(key), after.get(key)) {
                (_, Some(now)) if before.get(key) != Some(now) => ChangeKind::Put {
                    value: now.value.clone(),
                    mod_index: now.mod_index,
                    create_index: now.create_index,
                },
                (Some(_), None) => ChangeKind::Delete,
                _ => return None,
            };
            Some(Change {
                index,
                key: key.clone(),
                kind,
                prev_mod_index,
            })
        })
        .collect()
}

/// A batch of puts (odd keys) and deletes (even keys).
fn batch_command(keys: Vec<u8>, value: Vec<u8>) -> Command {
    Command::Batch(
        keys.into_iter()
            .map(|key| {
                if key % 2 == 1 {
                    Command::Put {
                        key: key_name(key),
                        value: value.clone(),
                        precondition: Precondition::None,
                    }
                } else {
                    Command::Delete {
                        key: key_name(key),
                        precondition: Precondition::None,
                    }
                }
            })
            .collect(),
    )
}

fn key_name(key: u8) -> String {
    // Include a '/' and non-ASCII text so that key encoding is exercised.
    format!("k/{key:02}/é")
}

struct Harness {
    dir: tempfile::TempDir,
    _log: LogStore,
    sm: StateMachine,
    model: BTreeMap<String, KeyRecord>,
    /// Idempotency key → (issued_at_ms, the command, first response).
    idempotency: HashMap<String, (u64, Command, Response)>,
    now_ms: u64,
    next_index: u64,
    /// The store's options: the key index bound varies by case (see `KEY_INDEX_BOUNDS`).
    options: StoreOptions,
    /// The change history the store must hold: what each applied index changed, derived from
    /// the model's state before and after it.
    history: Vec<Change>,
    /// The index the history starts after (the store's compact index).
    history_after: u64,
    leases: LeaseModel,
    auth: AuthModel,
    /// Leases granted by the entry being applied (the low byte of the next grant's id).
    entry_grants: u64,
}

/// Key index bounds the cases run with: none (every key read from RocksDB), room for about
/// three keys (some indexed, some not), and the default (every key indexed).
const KEY_INDEX_BOUNDS: [usize; 3] = [0, 200, 128 << 20];

/// The idempotency window the test uses.
const WINDOW_MS: u64 = 100;

impl Harness {
    fn new(key_index_max_bytes: usize) -> Self {
        let options = StoreOptions {
            key_index_max_bytes,
            ..StoreOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = mirrorkv_storage::open_with(dir.path(), &options).unwrap();
        Self {
            dir,
            _log: log,
            sm,
            model: BTreeMap::new(),
            history: Vec::new(),
            history_after: 0,
            leases: LeaseModel::default(),
            auth: AuthModel::default(),
            entry_grants: 0,
            idempotency: HashMap::new(),
            now_ms: 1_000,
            next_index: 1,
            options,
        }
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// What the model says applying `command` at `index` answers, updating the model.
    fn model_apply(&mut self, index: u64, command: &Command) -> Response {
        let result = match command {
            Command::Put {
                key,
                value,
                precondition,
            } => match self.model_check(key, *precondition) {
                Some(failed) => failed,
                None => CommandResult::Put {
                    prev_mod_index: self.model_put(index, key, value),
                },
            },
            Command::Delete { key, precondition } => match self.model_check(key, *precondition) {
                Some(failed) => failed,
                None => CommandResult::Delete {
                    deleted: self.model_delete(key),
                },
            },
            Command::PutLeased {
                key,
                value,
                precondition,
                lease,
            } => match self.model_check(key, *precondition) {
                Some(failed) => failed,
                None => match self.leases.refusal(key, *lease) {
                    Some(refusal) => CommandResult::Refused(refusal),
                    None => CommandResult::Put {
                        prev_mod_index: self.model_put_leased(index, key, value, lease.id),
                    },
                },
            },
            Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. } => self.model_lease(index, command),
            Command::Txn(txn) => match self.model_txn(index, txn) {
                Ok(result) => result,
                Err(refusal) => {
                    return Response {
                        index,
                        result: CommandResult::Refused(refusal),
                    }
                }
            },
            Command::Barrier => CommandResult::Nothing,
            Command::Auth(auth) => self.auth.apply(auth),
            Command::Batch(commands) => CommandResult::Batch(
                commands
                    .iter()
                    .map(|command| self.model_apply(index, command))
                    .collect(),
            ),
            Command::Idempotent {
                key,
                issued_at_ms,
                window_ms,
                command,
            } => {
                if let Some((first_at, first_command, response)) = self.idempotency.get(key) {
                    if first_at + window_ms >= *issued_at_ms {
                        if first_command != &**command {
                            // The key names another request within its window.
                            return Response {
                                index,
                                result: CommandResult::Refused(
                                    mirrorkv_storage::ApplyRefusal::IdempotencyKeyReused,
                                ),
                            };
                        }
                        return response.clone();
                    }
                }
                let response = self.model_apply(index, command);
                self.idempotency.insert(
                    key.clone(),
                    (*issued_at_ms, (**command).clone(), response.clone()),
                );
                return response;
            }
        };
        Response { index, result }
    }

    fn model_check(&self, key: &str, precondition: Precondition) -> Option<CommandResult> {
        let current = self.model.get(key);
        let holds = match precondition {
            Precondition::None => true,
            Precondition::Absent => current.is_none(),
            Precondition::Exists => current.is_some(),
            Precondition::ModIndex(m) => current.is_some_and(|r| r.mod_index == m),
        };
        (!holds).then(|| CommandResult::PreconditionFailed {
            mod_index: current.map(|r| r.mod_index),
        })
    }

    fn model_put(&mut self, index: u64, key: &str, value: &[u8]) -> Option<u64> {
        self.model_put_leased(index, key, value, 0)
    }

    fn model_delete(&mut self, key: &str) -> bool {
        self.leases.set_lease(key, 0);
        self.model.remove(key).is_some()
    }

    /// End lease `id` and delete its keys: how many, or `None` if it does not live.
    fn model_end_lease(&mut self, id: u64) -> Option<u64> {
        let keys = self.leases.end(id)?;
        for key in &keys {
            self.model.remove(key);
        }
        Some(keys.len() as u64)
    }

    fn model_put_leased(&mut self, index: u64, key: &str, value: &[u8], lease: u64) -> Option<u64> {
        self.leases.set_lease(key, lease);
        let current = self.model.get(key).cloned();
        let create_index = current.as_ref().map_or(index, |r| r.create_index);
        self.model.insert(
            key.to_string(),
            KeyRecord {
                value: value.to_vec(),
                mod_index: index,
                create_index,
            },
        );
        current.map(|r| r.mod_index)
    }

    fn mod_index_guess(&self, key: &str, guess_current: bool) -> u64 {
        match (guess_current, self.model.get(key)) {
            (true, Some(record)) => record.mod_index,
            _ => self.next_index + 1000,
        }
    }

    async fn run(&mut self, op: Op) {
        let command = match op {
            Op::Snapshot => return self.snapshot().await,
            Op::RestoreSnapshotIntoFreshStore => return self.restore_into_fresh_store().await,
            Op::Reopen => return self.reopen(),
            op => self.command_of(op),
        };
        self.apply_and_compare(command).await;
    }

    /// The command an op applies (every op but the three store operations).
    fn command_of(&mut self, op: Op) -> Command {
        match op {
            Op::Put { key, value } => Command::Put {
                key: key_name(key),
                value,
                precondition: Precondition::None,
            },
            Op::PutIfAbsent { key, value } => Command::Put {
                key: key_name(key),
                value,
                precondition: Precondition::Absent,
            },
            Op::PutIfExists { key, value } => Command::Put {
                key: key_name(key),
                value,
                precondition: Precondition::Exists,
            },
            Op::PutIfModIndex {
                key,
                guess_current,
                value,
            } => {
                let m = self.mod_index_guess(&key_name(key), guess_current);
                Command::Put {
                    key: key_name(key),
                    value,
                    precondition: Precondition::ModIndex(m),
                }
            }
            Op::Delete { key } => Command::Delete {
                key: key_name(key),
                precondition: Precondition::None,
            },
            Op::DeleteIfModIndex { key, guess_current } => {
                let m = self.mod_index_guess(&key_name(key), guess_current);
                Command::Delete {
                    key: key_name(key),
                    precondition: Precondition::ModIndex(m),
                }
            }
            Op::Txn {
                key,
                guess_current,
                put_key,
                value,
            } => self.txn_command(key, guess_current, put_key, value),
            Op::IdempotentPut {
                idem,
                advance_ms,
                key,
                value,
            } => {
                self.now_ms += advance_ms;
                Command::Idempotent {
                    key: format!("idem-{idem}"),
                    issued_at_ms: self.now_ms,
                    window_ms: WINDOW_MS,
                    command: Box::new(Command::Put {
                        key: key_name(key),
                        value,
                        precondition: Precondition::None,
                    }),
                }
            }
            Op::Batch { keys, value } => batch_command(keys, value),
            Op::Auth {
                kind,
                role,
                token,
                ttl_ms,
            } => Command::Auth(auth::auth_command(kind, role, token, ttl_ms, self.now_ms)),
            op @ (Op::Grant { .. }
            | Op::PutLeased { .. }
            | Op::TxnLeased { .. }
            | Op::Revoke { .. }
            | Op::Expire { .. }
            | Op::GrantsInBatch { .. }) => self.lease_command(op),
            Op::Snapshot | Op::RestoreSnapshotIntoFreshStore | Op::Reopen => {
                unreachable!("store operations apply no command")
            }
        }
    }

    fn txn_command(&self, key: u8, guess_current: bool, put_key: u8, value: Vec<u8>) -> Command {
        let m = match (guess_current, self.model.get(&key_name(key))) {
            (true, Some(record)) => record.mod_index,
            (true, None) => 0,
            (false, _) => self.next_index + 1000,
        };
        Command::Txn(Txn {
            compare: vec![Compare {
                key: key_name(key),
                target: CompareTarget::ModIndex(m),
            }],
            success: vec![
                TxnOp::Put {
                    key: key_name(put_key),
                    value,
                },
                TxnOp::Get {
                    key: key_name(put_key),
                },
            ],
            failure: vec![TxnOp::Get {
                key: key_name(put_key),
            }],
        })
    }

    /// Build a snapshot; it covers exactly what was applied.
    async fn snapshot(&mut self) {
        let mut builder = self.sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), self.applied());
    }

    /// Build a snapshot and install it into a fresh store, which then replaces this one.
    async fn restore_into_fresh_store(&mut self) {
        let mut builder = self.sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (log, mut sm) = mirrorkv_storage::open_with(dir.path(), &self.options).unwrap();
        // Through the chunked path openraft uses: read the built file, write the bytes
        // into a fresh receiving file in pieces, flush it, install it.
        let mut data = Vec::new();
        let mut sent = snapshot.snapshot;
        sent.read_to_end(&mut data).await.unwrap();
        let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
        for piece in data.chunks(4096) {
            receiving.write_all(piece).await.unwrap();
        }
        receiving.shutdown().await.unwrap();
        sm.install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap();
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("installed snapshot is current");
        assert_eq!(current.meta, snapshot.meta);
        // An installed snapshot carries no history: it starts after the snapshot.
        self.history.clear();
        self.history_after = snapshot.meta.last_log_id.map_or(0, |id| id.index);
        self.dir = dir;
        self._log = log;
        self.sm = sm;
    }

    /// Close the store and open it again from its directory.
    fn reopen(&mut self) {
        let path = self.dir.path().to_path_buf();
        // Drop the open handles before re-opening the same directory.
        let placeholder = tempfile::tempdir().unwrap();
        let (log, sm) = mirrorkv_storage::open(placeholder.path()).unwrap();
        drop(std::mem::replace(&mut self._log, log));
        drop(std::mem::replace(&mut self.sm, sm));
        let (log, sm) = mirrorkv_storage::open_with(&path, &self.options).unwrap();
        self._log = log;
        self.sm = sm;
    }

    /// Apply `command` at the next index and compare the answer with the model's.
    async fn apply_and_compare(&mut self, command: Command) {
        let index = self.next_index;
        self.next_index += 1;
        self.entry_grants = 0;
        let before = self.model.clone();
        let expected = self.model_apply(index, &command);
        self.history
            .extend(model_changes(index, &before, &self.model));
        // Values here are under 16 bytes: the bound the batchers use (`max_answer_bytes`)
        // must hold for every answer apply gives.
        let answer_bound_bytes = command.max_answer_bytes(16);
        let entry = Entry {
            log_id: Self::log_id(index),
            payload: EntryPayload::Normal(command),
        };
        let responses = self.sm.apply([entry]).await.unwrap();
        assert_eq!(
            responses,
            vec![expected],
            "apply result differs from the model at index {index}"
        );
        let answer_bytes = mirrorkv_storage::codec::encode(&responses[0])
            .unwrap()
            .len();
        assert!(
            answer_bytes <= answer_bound_bytes,
            "an answer of {answer_bytes} bytes over its bound of {answer_bound_bytes} at index {index}"
        );
    }

    fn applied(&self) -> Option<u64> {
        let index = self.sm.reader().applied_index().unwrap();
        (index > 0).then_some(index)
    }

    /// The change history: every change after its start, in index then key order, and
    /// nothing at or before its start; pages bounded by bytes walk it whole, index by index.
    fn check_history(&self, reader: &KvReader) {
        let all_keys = KeyFilter::Prefix(String::new());
        let page = reader
            .changes(
                self.history_after + 1,
                &all_keys,
                PageLimit::changes(usize::MAX),
            )
            .unwrap()
            .expect("the history from its start");
        assert_eq!(
            page.changes, self.history,
            "the change history differs from the model"
        );
        assert_eq!(
            page.through_index,
            self.applied().unwrap_or(0).max(self.history_after)
        );
        if self.history_after > 0 {
            assert!(
                reader
                    .changes(
                        self.history_after,
                        &all_keys,
                        PageLimit::changes(usize::MAX)
                    )
                    .unwrap()
                    .is_err(),
                "a read from the history's start index itself is compacted"
            );
        }
        let one_key = KeyFilter::Key(key_name(3));
        let page = reader
            .changes(
                self.history_after + 1,
                &one_key,
                PageLimit::changes(usize::MAX),
            )
            .unwrap()
            .unwrap();
        let expected: Vec<&Change> = self
            .history
            .iter()
            .filter(|c| c.key == key_name(3))
            .collect();
        assert_eq!(page.changes.iter().collect::<Vec<_>>(), expected);
        let mut paged = Vec::new();
        let mut from = self.history_after + 1;
        loop {
            let limit = PageLimit {
                max_changes: usize::MAX,
                max_bytes: 40,
            };
            let page = reader.changes(from, &all_keys, limit).unwrap().unwrap();
            if let (Some(first), Some(last)) = (page.changes.first(), page.changes.last()) {
                assert!(first.index >= from && last.index <= page.through_index);
            }
            let done = page.changes.is_empty();
            paged.extend(page.changes);
            from = page.through_index + 1;
            if done {
                break;
            }
        }
        assert_eq!(
            paged, self.history,
            "byte-bounded pages walk the whole history"
        );
    }

    fn check_equal(&self) {
        let reader = self.sm.reader();
        let all = reader.range(&RangeRequest::from(b"", 10_000)).unwrap();
        assert_eq!(all.value.next, None);
        let stored: BTreeMap<String, KeyRecord> = all.value.items.into_iter().collect();
        assert_eq!(stored, self.model, "state machine differs from the model");
        self.check_history(&reader);
        self.leases.check(&reader);
        self.auth.check(&reader);
        for key in 0..12 {
            let name = key_name(key);
            assert_eq!(
                reader.get(&name).unwrap().value,
                self.model.get(&name).cloned()
            );
        }
        assert_eq!(all.index, self.next_index - 1, "applied index");
        // Pages of 3 walk the same keys in order.
        let mut paged = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = reader.range(&RangeRequest::from(&start, 3)).unwrap().value;
            paged.extend(page.items.into_iter().map(|(k, _)| k));
            match page.next {
                Some(next) => start = next.into_bytes(),
                None => break,
            }
        }
        assert_eq!(paged, self.model.keys().cloned().collect::<Vec<_>>());
        // Pages capped by bytes walk the same keys, each within its cap (or a single key).
        for max_bytes in [1, 40, 1000] {
            let mut paged = Vec::new();
            let mut start = Vec::new();
            loop {
                let request = RangeRequest {
                    max_bytes,
                    ..RangeRequest::from(&start, 10_000)
                };
                let page = reader.range(&request).unwrap().value;
                let page_bytes: usize = page
                    .items
                    .iter()
                    .map(|(k, r)| k.len() + r.value.len())
                    .sum();
                assert!(
                    page_bytes <= max_bytes || page.items.len() == 1,
                    "a page of {page_bytes} bytes over its cap of {max_bytes}"
                );
                paged.extend(page.items.into_iter().map(|(k, _)| k));
                match page.next {
                    Some(next) => start = next.into_bytes(),
                    None => break,
                }
            }
            assert_eq!(paged, self.model.keys().cloned().collect::<Vec<_>>());
        }
        // keys_only: the same keys and indexes, no values.
        let request = RangeRequest {
            keys_only: true,
            ..RangeRequest::from(b"", 10_000)
        };
        let keys_only = reader.range(&request).unwrap().value.items;
        let expected: Vec<(String, KeyRecord)> = self
            .model
            .iter()
            .map(|(k, r)| {
                let indexes = KeyRecord {
                    value: Vec::new(),
                    ..r.clone()
                };
                (k.clone(), indexes)
            })
            .collect();
        assert_eq!(keys_only, expected);
    }
}

#[test]
fn t20_state_machine_matches_btreemap_model() {
    common::run_cases(
        "t20",
        48,
        &(
            0..KEY_INDEX_BOUNDS.len(),
            proptest::collection::vec(op(), 1..80),
        ),
        |(bound, ops)| async move {
            let mut harness = Harness::new(KEY_INDEX_BOUNDS[bound]);
            for op in ops {
                harness.run(op).await;
                harness.check_equal();
            }
        },
    );
}
