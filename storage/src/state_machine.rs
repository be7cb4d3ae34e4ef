//! `StateMachine`: openraft's `RaftStateMachine` over the `sm` and `snapshot` column families,
//! and `KvReader`, the read side that the API uses.
//!
//! Applying an entry writes its data changes and the new applied log id in one `WriteBatch`, so
//! the state machine on disk is always exactly "all entries up to `applied`". Those writes are
//! not fsynced: after a crash the tail is re-applied from the (fsynced) log.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{self, CF_SM, CF_SNAPSHOT, KEY_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT};
use crate::error::{Result, StorageError};
use std::collections::BTreeMap;

use crate::types::{
    Command, CommandResult, CompareTarget, Entry, KeyRecord, LogId, Precondition, RaftStorageError,
    Response, SnapshotMeta, StoredMembership, Txn, TxnOp, TxnOpResult, TypeConfig,
};

/// A snapshot as it is kept on disk: its metadata and its encoded data.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The data of a snapshot: every replicated `sm` entry (keys and idempotency table) as raw
/// bytes, in key order. Meta keys (`m:*`) travel in the snapshot's `SnapshotMeta` instead.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotPayload {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The first answer to an idempotent command, kept to answer its retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    issued_at_ms: u64,
    response: Response,
}

/// Most expired idempotency records removed per applied idempotent command: bounds the work of
/// one apply while keeping the table's size bounded by the writes of one window.
const MAX_EXPIRED_PRUNED_PER_APPLY: usize = 64;

/// The writes of one entry being applied: reads see them before they reach RocksDB, so the ops
/// of a transaction see each other, and they are committed as one batch.
struct Overlay<'a> {
    db: &'a DB,
    changes: BTreeMap<String, Option<KeyRecord>>,
}

impl<'a> Overlay<'a> {
    fn new(db: &'a DB) -> Self {
        Self {
            db,
            changes: BTreeMap::new(),
        }
    }

    fn get(&self, key: &str) -> Result<Option<KeyRecord>> {
        match self.changes.get(key) {
            Some(change) => Ok(change.clone()),
            None => get_record(self.db, key),
        }
    }

    fn put(&mut self, index: u64, key: &str, value: Vec<u8>) -> Result<Option<u64>> {
        let current = self.get(key)?;
        let record = KeyRecord {
            value,
            mod_index: index,
            create_index: current.as_ref().map_or(index, |r| r.create_index),
        };
        self.changes.insert(key.to_string(), Some(record));
        Ok(current.map(|r| r.mod_index))
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let existed = self.get(key)?.is_some();
        self.changes.insert(key.to_string(), None);
        Ok(existed)
    }

    fn stage(self, batch: &mut WriteBatch) -> Result<()> {
        let cf = db::cf(self.db, CF_SM);
        for (key, change) in self.changes {
            match change {
                Some(record) => batch.put_cf(cf, db::data_key(&key), codec::encode(&record)?),
                None => batch.delete_cf(cf, db::data_key(&key)),
            }
        }
        Ok(())
    }
}

/// The replicated key-value state of one node.
pub struct StateMachine {
    db: Arc<DB>,
    counters: Arc<StorageCounters>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// A read of the state machine together with the applied index it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAt<T> {
    /// Applied log index at the moment of the read (0 before anything was applied).
    pub index: u64,
    pub value: T,
}

/// Read access to the state machine, shared with the API. Every read sees one point in time.
#[derive(Clone)]
pub struct KvReader {
    db: Arc<DB>,
    counters: Arc<StorageCounters>,
}

/// Counters of storage events, for `/metrics`.
#[derive(Debug, Default)]
pub struct StorageCounters {
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

/// Sizes of the store, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// The Raft log: SST files plus memtables of the `log` column family.
    pub log_bytes: u64,
    /// The replicated state: SST files plus memtables of the `sm` column family.
    pub state_bytes: u64,
    /// Every file of the RocksDB directory (WAL and manifests included): the size on disk.
    pub db_dir_bytes: u64,
}

pub(crate) fn read_applied(db: &DB, opts: Option<&rocksdb::Snapshot<'_>>) -> Result<Option<LogId>> {
    let cf = db::cf(db, CF_SM);
    let bytes = match opts {
        Some(snapshot) => snapshot.get_cf(cf, KEY_APPLIED)?,
        None => db.get_cf(cf, KEY_APPLIED)?,
    };
    Ok(match bytes {
        Some(bytes) => codec::decode(&bytes)?,
        None => None,
    })
}

pub(crate) fn read_membership(
    db: &DB,
    opts: Option<&rocksdb::Snapshot<'_>>,
) -> Result<StoredMembership> {
    let cf = db::cf(db, CF_SM);
    let bytes = match opts {
        Some(snapshot) => snapshot.get_cf(cf, KEY_MEMBERSHIP)?,
        None => db.get_cf(cf, KEY_MEMBERSHIP)?,
    };
    Ok(match bytes {
        Some(bytes) => codec::decode(&bytes)?,
        None => StoredMembership::default(),
    })
}

fn get_record(db: &DB, key: &str) -> Result<Option<KeyRecord>> {
    match db.get_pinned_cf(db::cf(db, CF_SM), db::data_key(key))? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

impl KvReader {
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// Snapshots built and installed since start.
    pub fn counters(&self) -> &StorageCounters {
        &self.counters
    }

    /// Size of the stored snapshot (meta and data), 0 if there is none.
    pub fn snapshot_size_bytes(&self) -> Result<u64> {
        Ok(self
            .db
            .get_pinned_cf(db::cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT)?
            .map_or(0, |bytes| bytes.len() as u64))
    }

    /// How much room the store takes.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let cf_bytes = |name: &str| -> Result<u64> {
            let cf = db::cf(&self.db, name);
            let sst = self
                .db
                .property_int_value_cf(cf, "rocksdb.total-sst-files-size")?
                .unwrap_or(0);
            let mem = self
                .db
                .property_int_value_cf(cf, "rocksdb.size-all-mem-tables")?
                .unwrap_or(0);
            Ok(sst + mem)
        };
        let mut db_dir_bytes = 0;
        if let Ok(entries) = std::fs::read_dir(self.db.path()) {
            for entry in entries.flatten() {
                if let Ok(meta) = entry.metadata() {
                    if meta.is_file() {
                        db_dir_bytes += meta.len();
                    }
                }
            }
        }
        Ok(DiskUsage {
            log_bytes: cf_bytes(db::CF_LOG)?,
            state_bytes: cf_bytes(CF_SM)?,
            db_dir_bytes,
        })
    }

    /// The applied index now.
    pub fn applied_index(&self) -> Result<u64> {
        Ok(read_applied(&self.db, None)?.map_or(0, |id| id.index))
    }

    /// Read one key and the applied index, both at the same point in time.
    pub fn get(&self, key: &str) -> Result<ReadAt<Option<KeyRecord>>> {
        let snapshot = self.db.snapshot();
        let index = read_applied(&self.db, Some(&snapshot))?.map_or(0, |id| id.index);
        let value = match snapshot.get_cf(db::cf(&self.db, CF_SM), db::data_key(key))? {
            Some(bytes) => Some(codec::decode(&bytes)?),
            None => None,
        };
        Ok(ReadAt { index, value })
    }

    /// Read up to `limit` keys in `[start, end)` (an absent `end` is unbounded; bounds are raw
    /// key bytes), all at one point in time. `next` is the first key after the page, if any.
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<ReadAt<RangePage>> {
        let snapshot = self.db.snapshot();
        let index = read_applied(&self.db, Some(&snapshot))?.map_or(0, |id| id.index);
        let mut read_options = ReadOptions::default();
        read_options.set_snapshot(&snapshot);
        let upper = match end {
            Some(end) => db::tagged(db::DATA_TAG, end),
            None => vec![db::DATA_TAG_END],
        };
        read_options.set_iterate_upper_bound(upper);
        let start_key = db::tagged(db::DATA_TAG, start);
        let iter = self.db.iterator_cf_opt(
            db::cf(&self.db, CF_SM),
            read_options,
            IteratorMode::From(&start_key, Direction::Forward),
        );
        let mut page = RangePage::default();
        for item in iter {
            let (key, value) = item?;
            let user_key = db::user_key(&key)
                .ok_or_else(|| StorageError::Invariant("non-UTF-8 key in state machine".into()))?;
            if page.items.len() == limit {
                page.next = Some(user_key.to_string());
                break;
            }
            page.items
                .push((user_key.to_string(), codec::decode(&value)?));
        }
        Ok(ReadAt { index, value: page })
    }
}

/// One page of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    pub items: Vec<(String, KeyRecord)>,
    /// The first key after this page: the `start` of the next one.
    pub next: Option<String>,
}

impl StateMachine {
    pub(crate) fn open(db: Arc<DB>) -> Result<Self> {
        let applied = read_applied(&db, None)?;
        let membership = read_membership(&db, None)?;
        Ok(Self {
            db,
            counters: Arc::default(),
            applied,
            membership,
        })
    }

    /// A reader over this state machine for the API.
    pub fn reader(&self) -> KvReader {
        KvReader {
            db: self.db.clone(),
            counters: self.counters.clone(),
        }
    }

    /// The last applied log id (for the start-up invariant check).
    pub(crate) fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// The log id of the stored snapshot, if one is stored.
    pub(crate) fn snapshot_log_id(&self) -> Result<Option<LogId>> {
        Ok(self.stored_snapshot()?.and_then(|s| s.meta.last_log_id))
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>> {
        match self
            .db
            .get_cf(db::cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT)?
        {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Execute one command at `index`, staging its writes into `batch`. The answer's index is
    /// where the command took effect: `index`, or the first attempt's for an idempotent retry.
    fn execute(&self, index: u64, command: Command, batch: &mut WriteBatch) -> Result<Response> {
        if let Command::Idempotent {
            key,
            issued_at_ms,
            window_ms,
            command,
        } = command
        {
            return self.execute_idempotent(index, &key, issued_at_ms, window_ms, *command, batch);
        }
        if let Command::Batch(commands) = command {
            // Each command stages its writes into `batch` in turn; they do not see each other's
            // writes, which is why a batch only groups commands with disjoint conflict keys.
            let mut responses = Vec::with_capacity(commands.len());
            for command in commands {
                if matches!(command, Command::Batch(_)) {
                    return Err(StorageError::Invariant("nested batch".into()));
                }
                responses.push(self.execute(index, command, batch)?);
            }
            return Ok(Response {
                index,
                result: CommandResult::Batch(responses),
            });
        }
        let mut overlay = Overlay::new(&self.db);
        let result = match command {
            Command::Put {
                key,
                value,
                precondition,
            } => match check(&overlay, &key, precondition)? {
                Some(failed) => failed,
                None => CommandResult::Put {
                    prev_mod_index: overlay.put(index, &key, value)?,
                },
            },
            Command::Delete { key, precondition } => match check(&overlay, &key, precondition)? {
                Some(failed) => failed,
                None => CommandResult::Delete {
                    deleted: overlay.delete(&key)?,
                },
            },
            Command::Txn(txn) => run_txn(&mut overlay, index, txn)?,
            Command::Barrier => CommandResult::Nothing,
            Command::Idempotent { .. } | Command::Batch(_) => {
                return Err(StorageError::Invariant("unreachable: handled above".into()))
            }
        };
        overlay.stage(batch)?;
        Ok(Response { index, result })
    }

    fn execute_idempotent(
        &self,
        index: u64,
        key: &str,
        issued_at_ms: u64,
        window_ms: u64,
        command: Command,
        batch: &mut WriteBatch,
    ) -> Result<Response> {
        let cf = db::cf(&self.db, CF_SM);
        let previous: Option<IdempotencyRecord> =
            match self.db.get_pinned_cf(cf, db::idempotency_key(key))? {
                Some(bytes) => Some(codec::decode(&bytes)?),
                None => None,
            };
        if let Some(previous) = &previous {
            if previous.issued_at_ms.saturating_add(window_ms) >= issued_at_ms {
                // A retry within the window: answer the first result, change nothing.
                return Ok(previous.response.clone());
            }
        }
        let response = self.execute(index, command, batch)?;
        if let Some(previous) = previous {
            batch.delete_cf(cf, db::idempotency_time_key(previous.issued_at_ms, key));
        }
        let record = IdempotencyRecord {
            issued_at_ms,
            response: response.clone(),
        };
        batch.put_cf(cf, db::idempotency_key(key), codec::encode(&record)?);
        batch.put_cf(cf, db::idempotency_time_key(issued_at_ms, key), []);
        self.prune_idempotency(issued_at_ms.saturating_sub(window_ms), key, batch)?;
        Ok(response)
    }

    /// Remove up to `MAX_EXPIRED_PRUNED_PER_APPLY` records issued before `expired_before_ms`.
    fn prune_idempotency(
        &self,
        expired_before_ms: u64,
        keep: &str,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let cf = db::cf(&self.db, CF_SM);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(db::idempotency_time_key(expired_before_ms, ""));
        let start = [db::IDEMPOTENCY_TIME_TAG];
        let iter = self.db.iterator_cf_opt(
            cf,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter.take(MAX_EXPIRED_PRUNED_PER_APPLY) {
            let (time_key, _) = item?;
            let Some(key) = time_key.get(9..).and_then(|k| std::str::from_utf8(k).ok()) else {
                return Err(StorageError::Invariant(
                    "malformed idempotency expiry key".into(),
                ));
            };
            if key == keep {
                continue;
            }
            batch.delete_cf(cf, &time_key);
            batch.delete_cf(cf, db::idempotency_key(key));
        }
        Ok(())
    }

    fn apply_one(&mut self, entry: Entry) -> Result<Response> {
        let log_id = entry.log_id;
        // Invariant: entries are applied once each, in log order.
        assert!(
            self.applied < Some(log_id),
            "apply out of order: applied {:?}, entry {log_id}",
            self.applied
        );
        let cf = db::cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        let nothing = Response {
            index: log_id.index,
            result: CommandResult::Nothing,
        };
        let response = match entry.payload {
            EntryPayload::Blank => nothing,
            EntryPayload::Normal(command) => self.execute(log_id.index, command, &mut batch)?,
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                batch.put_cf(cf, KEY_MEMBERSHIP, codec::encode(&self.membership)?);
                nothing
            }
        };
        batch.put_cf(cf, KEY_APPLIED, codec::encode(&Some(log_id))?);
        // Data and applied index move together; see the module doc for why no fsync here.
        self.db.write(batch)?;
        self.applied = Some(log_id);
        Ok(response)
    }
}

/// `Some(PreconditionFailed)` if `precondition` does not hold for `key`.
fn check(
    overlay: &Overlay<'_>,
    key: &str,
    precondition: Precondition,
) -> Result<Option<CommandResult>> {
    let current = overlay.get(key)?;
    let holds = match precondition {
        Precondition::None => true,
        Precondition::ModIndex(m) => current.as_ref().is_some_and(|r| r.mod_index == m),
        Precondition::Absent => current.is_none(),
    };
    Ok((!holds).then(|| CommandResult::PreconditionFailed {
        mod_index: current.map(|r| r.mod_index),
    }))
}

fn run_txn(overlay: &mut Overlay<'_>, index: u64, txn: Txn) -> Result<CommandResult> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let current = overlay.get(&compare.key)?;
        let holds = match &compare.target {
            CompareTarget::ModIndex(m) => current.as_ref().map_or(0, |r| r.mod_index) == *m,
            CompareTarget::Value(v) => current.as_ref().is_some_and(|r| &r.value == v),
            CompareTarget::Exists(exists) => current.is_some() == *exists,
        };
        if !holds {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Put { key, value } => TxnOpResult::Put {
                prev_mod_index: overlay.put(index, &key, value)?,
            },
            TxnOp::Delete { key } => TxnOpResult::Delete {
                deleted: overlay.delete(&key)?,
            },
            TxnOp::Get { key } => {
                let record = overlay.get(&key)?;
                TxnOpResult::Get { key, record }
            }
        });
    }
    Ok(CommandResult::Txn { succeeded, results })
}

fn sm_write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(&e).into()
}

/// Builds a snapshot from a RocksDB point-in-time view of the state machine.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    counters: Arc<StorageCounters>,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self {
            db,
            counters: Arc::default(),
        }
    }

    /// Build a snapshot of the applied state and store it (fsynced) as the current one.
    pub(crate) fn build(&self) -> Result<Snapshot<TypeConfig>> {
        // Everything below reads one consistent view, while apply() keeps writing.
        let view = self.db.snapshot();
        let applied = read_applied(&self.db, Some(&view))?;
        let membership = read_membership(&self.db, Some(&view))?;
        let mut payload = SnapshotPayload::default();
        for item in self.db.iterator_cf_opt(
            db::cf(&self.db, CF_SM),
            snapshot_read_options(&view),
            IteratorMode::Start,
        ) {
            let (key, value) = item?;
            if key.first() != Some(&db::META_TAG) {
                payload.entries.push((key.to_vec(), value.to_vec()));
            }
        }
        let data = codec::encode(&payload)?;
        let snapshot_id = match applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Fsynced: openraft purges the log behind this snapshot once we return.
        self.db.put_cf_opt(
            db::cf(&self.db, CF_SNAPSHOT),
            KEY_SNAPSHOT,
            codec::encode(&stored)?,
            &db::synced(),
        )?;
        self.counters
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, entries = payload.entries.len(), bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

fn snapshot_read_options(view: &rocksdb::Snapshot<'_>) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    read_options.set_snapshot(view);
    read_options
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let response = self
                .apply_one(entry)
                .map_err(|e| RaftStorageError::from(StorageIOError::apply(log_id, &e)))?;
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            counters: self.counters.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let payload: SnapshotPayload = codec::decode(&data).map_err(|e| {
            RaftStorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let cf = db::cf(&self.db, CF_SM);
        // Replace the whole state machine and store the snapshot in one atomic, fsynced batch:
        // a crash leaves either the old state or the new one, never a mix.
        let mut batch = WriteBatch::default();
        // Everything but the meta keys: below `m`, and from `n` up (no key starts with 0xff).
        batch.delete_range_cf(cf, &[][..], &[db::META_TAG][..]);
        batch.delete_range_cf(cf, &[db::META_TAG + 1][..], &[0xffu8][..]);
        for (key, value) in &payload.entries {
            if key.first() == Some(&db::META_TAG) || key.first() == Some(&0xff) {
                return Err(sm_write_err(StorageError::Invariant(
                    "snapshot carries a reserved key".into(),
                )));
            }
            batch.put_cf(cf, key, value);
        }
        batch.put_cf(
            cf,
            KEY_APPLIED,
            codec::encode(&meta.last_log_id).map_err(sm_write_err)?,
        );
        batch.put_cf(
            cf,
            KEY_MEMBERSHIP,
            codec::encode(&meta.last_membership).map_err(sm_write_err)?,
        );
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        batch.put_cf(
            db::cf(&self.db, CF_SNAPSHOT),
            KEY_SNAPSHOT,
            codec::encode(&stored).map_err(sm_write_err)?,
        );
        self.db
            .write_opt(batch, &db::synced())
            .map_err(sm_write_err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.counters
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, entries = payload.entries.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        Ok(self
            .stored_snapshot()
            .map_err(sm_read_err)?
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            }))
    }
}
