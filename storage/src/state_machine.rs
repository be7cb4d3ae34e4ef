//! `StateMachine`: openraft's `RaftStateMachine` over the `sm` and `snapshot` column families,
//! and `KvReader`, the read side that the API uses.
//!
//! Applying an entry writes its data changes and the new applied log id in one `WriteBatch`, so
//! the state machine on disk is always exactly "all entries up to `applied`". Those writes are
//! not fsynced: after a crash the tail is re-applied from the (fsynced) log.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{
    self, CF_SM, CF_SNAPSHOT, KEY_APPLIED, KEY_INSTALLING, KEY_MEMBERSHIP, KEY_SNAPSHOT,
};
use crate::error::{Result, StorageError};
use crate::key_index::{KeyIndex, KeyMeta};
use crate::snapshot::{io_error, SnapshotDir, SnapshotFile};
use crate::stream::{self, View};
use std::collections::{BTreeMap, HashMap};

use crate::types::{
    ApplyRefusal, Command, CommandResult, CompareTarget, Entry, KeyRecord, LogId, Precondition,
    RaftStorageError, Response, SnapshotMeta, StoredMembership, Txn, TxnOp, TxnOpResult,
    TypeConfig, MAX_TXN_RESPONSE_BYTES,
};

/// The record of a snapshot in RocksDB: its metadata and the name of its file in the snapshot
/// directory (the data itself is the file, in the `stream` format).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    file: String,
}

/// The first answer to an idempotent command, kept to answer its retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    issued_at_ms: u64,
    response: Response,
    /// `codec::fingerprint` of the command it answered: a retry must be the same command.
    /// `None` for records written before fingerprints (`IdempotencyRecordV1`), which are
    /// trusted as before until they expire.
    fingerprint: Option<u64>,
}

/// The record as written before fingerprints; read when a stored record does not decode as
/// the current one (postcard is not self-describing: the two never decode as each other, as
/// `codec::decode` refuses leftover bytes and a short read alike).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecordV1 {
    issued_at_ms: u64,
    response: Response,
}

/// Check one raw `sm` entry of a state stream (a backup or a snapshot file) at applied index
/// `applied_index`: it must be a record apply could have written by then. Restore and install
/// write records as they are, so this is what keeps a crafted or damaged stream from planting a
/// record that later reads or applies cannot handle. `Err` says what is wrong.
pub(crate) fn check_stream_record(
    key: &[u8],
    value: &[u8],
    applied_index: u64,
) -> std::result::Result<(), String> {
    let (&tag, rest) = key.split_first().ok_or("an empty key")?;
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(|_| ())
            .map_err(|_| "a key that is not UTF-8".to_string())
    };
    match tag {
        db::DATA_TAG => {
            text(rest)?;
            // The indexes only (the value is stepped over, not copied); decoding them checks
            // the whole record's encoding all the same.
            let record: KeyRecordIndexes =
                codec::decode(value).map_err(|e| format!("an undecodable key record ({e})"))?;
            if !(1 <= record.create_index
                && record.create_index <= record.mod_index
                && record.mod_index <= applied_index)
            {
                return Err(format!(
                    "a key record with create_index {} and mod_index {} at applied index {applied_index}",
                    record.create_index, record.mod_index
                ));
            }
        }
        db::IDEMPOTENCY_TAG => {
            text(rest)?;
            let record = decode_idempotency_record(value)
                .map_err(|e| format!("an undecodable idempotency record ({e})"))?;
            if record.response.index > applied_index {
                return Err(format!(
                    "an idempotency record answered at index {} past applied index {applied_index}",
                    record.response.index
                ));
            }
        }
        db::IDEMPOTENCY_TIME_TAG => {
            if rest.len() < 8 || !value.is_empty() {
                return Err("a malformed idempotency expiry entry".into());
            }
            text(&rest[8..])?;
        }
        _ => return Err("a reserved key".into()),
    }
    Ok(())
}

fn decode_idempotency_record(bytes: &[u8]) -> Result<IdempotencyRecord> {
    match codec::decode::<IdempotencyRecord>(bytes) {
        Ok(record) => Ok(record),
        Err(_) => {
            let v1: IdempotencyRecordV1 = codec::decode(bytes)?;
            Ok(IdempotencyRecord {
                issued_at_ms: v1.issued_at_ms,
                response: v1.response,
                fingerprint: None,
            })
        }
    }
}

/// Most expired idempotency records removed per applied idempotent command: bounds the work of
/// one apply while keeping the table's size bounded by the writes of one window.
const MAX_EXPIRED_PRUNED_PER_APPLY: usize = 64;

/// What one entry's commands read of the state before the entry: a key's indexes from the
/// [`KeyIndex`] when it holds them, otherwise its record from RocksDB, looked up once; a
/// batch's keys missing from the index are looked up together, in one MultiGet, before its
/// commands run. Only state from before the entry is kept here: a batch's commands have
/// disjoint keys (`Command::Batch`), so no command reads a key that another command of the
/// entry changed.
struct Reads<'a> {
    db: &'a DB,
    index: &'a KeyIndex,
    records: HashMap<String, Option<KeyRecord>>,
    /// The index changes the entry's writes make, in order; applied to the index only once the
    /// entry's write batch is in RocksDB.
    index_updates: Vec<(String, Option<KeyMeta>)>,
    /// Idempotency keys this entry wrote records for, and the oldest issue time still inside
    /// a window among its commands: expired records are pruned once per entry, after its
    /// commands, and never one this entry wrote.
    idempotency_written: std::collections::HashSet<String>,
    idempotency_expired_before_ms: Option<u64>,
}

impl<'a> Reads<'a> {
    fn new(db: &'a DB, index: &'a KeyIndex) -> Self {
        Self {
            db,
            index,
            records: HashMap::new(),
            index_updates: Vec::new(),
            idempotency_written: std::collections::HashSet::new(),
            idempotency_expired_before_ms: None,
        }
    }

    /// The key's indexes as applied before this entry: from the index if it holds the key,
    /// otherwise from the key's record.
    fn meta(&mut self, key: &str) -> Result<Option<KeyMeta>> {
        if !self.records.contains_key(key) {
            if let Some(meta) = self.index.get(key) {
                return Ok(Some(meta));
            }
        }
        Ok(self.record(key)?.map(KeyRecord::meta))
    }

    /// The key's record as applied before this entry; read from RocksDB the first time only.
    fn record(&mut self, key: &str) -> Result<Option<&KeyRecord>> {
        if !self.records.contains_key(key) {
            let record = get_record(self.db, key)?;
            self.records.insert(key.to_string(), record);
        }
        Ok(self.records.get(key).and_then(Option::as_ref))
    }

    /// Look up the data keys `commands` touch that the index does not hold, in one sorted
    /// MultiGet.
    fn prefetch(&mut self, commands: &[Command]) -> Result<()> {
        let mut keys: Vec<&str> = commands
            .iter()
            .flat_map(Command::conflict_keys)
            .filter(|(namespace, _)| *namespace == b'd')
            .map(|(_, key)| key)
            .filter(|key| !self.records.contains_key(*key) && self.index.get(key).is_none())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let data_keys: Vec<Vec<u8>> = keys.iter().map(|key| db::data_key(key)).collect();
        let found = self
            .db
            .batched_multi_get_cf(db::cf(self.db, CF_SM), &data_keys, true);
        for (key, found) in keys.into_iter().zip(found) {
            let record = match found? {
                Some(bytes) => Some(codec::decode(&bytes)?),
                None => None,
            };
            self.records.insert(key.to_string(), record);
        }
        Ok(())
    }
}

/// The writes of one command being applied: reads see them before they reach RocksDB, so the
/// ops of a transaction see each other, and they are committed as one batch.
struct Overlay<'r, 'a> {
    reads: &'r mut Reads<'a>,
    changes: BTreeMap<String, Option<KeyRecord>>,
}

impl<'r, 'a> Overlay<'r, 'a> {
    fn new(reads: &'r mut Reads<'a>) -> Self {
        Self {
            reads,
            changes: BTreeMap::new(),
        }
    }

    /// The key's record as this command sees it (its own changes first). Borrowed: only a
    /// txn's value compare and get need it; everything else needs only [`Self::meta`].
    fn record(&mut self, key: &str) -> Result<Option<&KeyRecord>> {
        match self.changes.get(key) {
            Some(change) => Ok(change.as_ref()),
            None => self.reads.record(key),
        }
    }

    /// The key's indexes as this command sees them (its own changes first).
    fn meta(&mut self, key: &str) -> Result<Option<KeyMeta>> {
        match self.changes.get(key) {
            Some(change) => Ok(change.as_ref().map(KeyRecord::meta)),
            None => self.reads.meta(key),
        }
    }

    fn put(&mut self, index: u64, key: &str, value: Vec<u8>) -> Result<Option<u64>> {
        let current = self.meta(key)?;
        let record = KeyRecord {
            value,
            mod_index: index,
            create_index: current.map_or(index, |c| c.create_index),
        };
        self.changes.insert(key.to_string(), Some(record));
        Ok(current.map(|c| c.mod_index))
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let existed = self.meta(key)?.is_some();
        self.changes.insert(key.to_string(), None);
        Ok(existed)
    }

    fn stage(self, batch: &mut WriteBatch) -> Result<()> {
        let cf = db::cf(self.reads.db, CF_SM);
        for (key, change) in self.changes {
            let meta = match change {
                Some(record) => {
                    batch.put_cf(cf, db::data_key(&key), codec::encode(&record)?);
                    Some(record.meta())
                }
                None => {
                    batch.delete_cf(cf, db::data_key(&key));
                    None
                }
            };
            self.reads.index_updates.push((key, meta));
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
    snapshots: Snapshots,
    /// The indexes of live keys, so applying a write need not read its key (see `key_index`).
    index: KeyIndex,
}

/// The snapshot files and the lock that orders the steps which change which one is current:
/// an install holds it throughout; a build holds it to take its view and to publish its file;
/// readers of the current snapshot hold it while they find and open its file.
#[derive(Clone)]
pub(crate) struct Snapshots {
    dir: Arc<SnapshotDir>,
    lock: Arc<Mutex<()>>,
}

impl Snapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is on disk; a panic elsewhere leaves nothing half-done in memory.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
    snapshots: Snapshots,
}

/// Counters of storage events, for `/metrics`.
#[derive(Debug, Default)]
pub struct StorageCounters {
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
    /// Keys the key index holds, and its estimated bytes (`StoreOptions::key_index_max_bytes`).
    pub key_index_keys: AtomicU64,
    pub key_index_bytes: AtomicU64,
}

/// What RocksDB holds in memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// The block cache's use, memtables included: the write buffer manager charges them to the
    /// cache, so this is the part of the memory budget (`storage_memory_mib`) in use.
    pub block_cache_bytes: u64,
    /// Of that, entries in use that cannot be evicted now (held by readers or iterators).
    pub block_cache_pinned_bytes: u64,
    /// Memtables of every column family, active and immutable.
    pub memtable_bytes: u64,
    /// Open SST readers outside the cache (index and filter blocks are in the cache).
    pub table_readers_bytes: u64,
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

/// A point-in-time view of `db` and the applied log id it holds, refused while a snapshot is
/// being installed (the `sm` data is then a mix of old and new state).
pub(crate) fn consistent_view(db: &DB) -> Result<(rocksdb::Snapshot<'_>, Option<LogId>)> {
    let view = db.snapshot();
    if view.get_cf(db::cf(db, CF_SM), KEY_INSTALLING)?.is_some() {
        return Err(StorageError::Installing);
    }
    let applied = read_applied(db, Some(&view))?;
    Ok((view, applied))
}

fn stored_snapshot(db: &DB) -> Result<Option<StoredSnapshot>> {
    match db.get_cf(db::cf(db, CF_SNAPSHOT), KEY_SNAPSHOT)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
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

    /// Size of the current snapshot's file, 0 if there is none.
    ///
    /// Takes no lock (callers are async; an install holds the lock for seconds): a newer
    /// snapshot may remove the file between reading the record and the file's size, so that
    /// case reads the record again.
    pub fn snapshot_size_bytes(&self) -> Result<u64> {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let Some(stored) = stored_snapshot(&self.db)? else {
                return Ok(0);
            };
            let path = self.snapshots.dir.file(&stored.file);
            match std::fs::metadata(&path) {
                Ok(meta) => return Ok(meta.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < ATTEMPTS => {}
                Err(e) => return Err(io_error("reading", &path, e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// RocksDB's integer `property` of column family `cf_name` (0 when it has none).
    fn cf_property(&self, cf_name: &str, property: &str) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(db::cf(&self.db, cf_name), property)?
            .unwrap_or(0))
    }

    /// What RocksDB holds in memory, from its own accounting.
    pub fn memory_usage(&self) -> Result<MemoryUsage> {
        let sum = |property: &str| -> Result<u64> {
            db::COLUMN_FAMILIES
                .iter()
                .map(|name| self.cf_property(name, property))
                .sum()
        };
        // The block cache is shared by every column family: read it through one.
        Ok(MemoryUsage {
            block_cache_bytes: self.cf_property(CF_SM, "rocksdb.block-cache-usage")?,
            block_cache_pinned_bytes: self
                .cf_property(CF_SM, "rocksdb.block-cache-pinned-usage")?,
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables")?,
            table_readers_bytes: sum("rocksdb.estimate-table-readers-mem")?,
        })
    }

    /// How much room the store takes.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let cf_bytes = |name: &str| -> Result<u64> {
            Ok(self.cf_property(name, "rocksdb.total-sst-files-size")?
                + self.cf_property(name, "rocksdb.size-all-mem-tables")?)
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
        let (snapshot, applied) = consistent_view(&self.db)?;
        let index = applied.map_or(0, |id| id.index);
        let value = match snapshot.get_cf(db::cf(&self.db, CF_SM), db::data_key(key))? {
            Some(bytes) => Some(codec::decode(&bytes)?),
            None => None,
        };
        Ok(ReadAt { index, value })
    }

    /// Read one page of `request`'s range, all at one point in time. `next` is the first key
    /// after the page, if any.
    ///
    /// Blocking (a page may take milliseconds to read): call it from a blocking thread.
    pub fn range(&self, request: &RangeRequest) -> Result<ReadAt<RangePage>> {
        let (snapshot, applied) = consistent_view(&self.db)?;
        let index = applied.map_or(0, |id| id.index);
        let mut read_options = ReadOptions::default();
        read_options.set_snapshot(&snapshot);
        let upper = match &request.end {
            Some(end) => db::tagged(db::DATA_TAG, end),
            None => vec![db::DATA_TAG_END],
        };
        read_options.set_iterate_upper_bound(upper);
        let start_key = db::tagged(db::DATA_TAG, &request.start);
        let iter = self.db.iterator_cf_opt(
            db::cf(&self.db, CF_SM),
            read_options,
            IteratorMode::From(&start_key, Direction::Forward),
        );
        let mut page = RangePage::default();
        let mut page_bytes = 0usize;
        for item in iter {
            let (key, value) = item?;
            let user_key = db::user_key(&key)
                .ok_or_else(|| StorageError::Invariant("non-UTF-8 key in state machine".into()))?;
            let record = if request.keys_only {
                // The indexes only: the value's bytes are skipped, never copied.
                let indexes: KeyRecordIndexes = codec::decode(&value)?;
                KeyRecord {
                    value: Vec::new(),
                    mod_index: indexes.mod_index,
                    create_index: indexes.create_index,
                }
            } else {
                codec::decode(&value)?
            };
            let item_bytes = user_key.len() + record.value.len();
            let full = page.items.len() == request.max_keys
                || (!page.items.is_empty() && page_bytes + item_bytes > request.max_bytes);
            if full {
                page.next = Some(user_key.to_string());
                break;
            }
            page_bytes += item_bytes;
            page.items.push((user_key.to_string(), record));
        }
        Ok(ReadAt { index, value: page })
    }
}

/// What one range read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key of the range (raw bytes, inclusive).
    pub start: Vec<u8>,
    /// End of the range (exclusive); `None` is unbounded.
    pub end: Option<Vec<u8>>,
    /// Most keys in the page (at least 1).
    pub max_keys: usize,
    /// Most bytes of keys and values in the page: the page ends before the key that would pass
    /// it, except that its first key is always included, so every page makes progress (one key
    /// and value are bounded by the write limits).
    pub max_bytes: usize,
    /// Read only keys and indexes: each record's `value` is left empty and never read.
    pub keys_only: bool,
}

impl RangeRequest {
    /// Keys from `start` on, up to `max_keys`, with their values and no byte cap.
    pub fn from(start: &[u8], max_keys: usize) -> Self {
        Self {
            start: start.to_vec(),
            end: None,
            max_keys,
            max_bytes: usize::MAX,
            keys_only: false,
        }
    }
}

/// A `KeyRecord` decoded without its value: postcard writes `Vec<u8>` as a length and the bytes,
/// which `SkippedBytes` steps over (borrowing, never copying).
#[derive(Deserialize)]
struct KeyRecordIndexes {
    #[serde(rename = "value")]
    _value: SkippedBytes,
    mod_index: u64,
    create_index: u64,
}

/// A byte string read and dropped without a copy.
struct SkippedBytes;

impl<'de> Deserialize<'de> for SkippedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SkippedBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                _: &'de [u8],
            ) -> std::result::Result<Self::Value, E> {
                Ok(SkippedBytes)
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                _: &[u8],
            ) -> std::result::Result<Self::Value, E> {
                Ok(SkippedBytes)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// One page of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    /// Keys and records in key order (records without values for `keys_only`).
    pub items: Vec<(String, KeyRecord)>,
    /// The first key after this page: the `start` of the next one.
    pub next: Option<String>,
}

impl StateMachine {
    /// Open the state machine of the store at `db_path`. A snapshot install that a crash
    /// interrupted is finished first, from its file (fsynced before the install began).
    pub(crate) fn open(db: Arc<DB>, db_path: &Path, key_index_max_bytes: usize) -> Result<Self> {
        let snapshots = Snapshots {
            dir: Arc::new(SnapshotDir::open(db_path)?),
            lock: Arc::default(),
        };
        if let Some(bytes) = db.get_cf(db::cf(&db, CF_SM), KEY_INSTALLING)? {
            let installing: StoredSnapshot = codec::decode(&bytes)?;
            tracing::warn!(snapshot = %installing.meta.snapshot_id, "finishing a snapshot install that a crash interrupted");
            load_snapshot(&db, &snapshots.dir, &installing)?;
        }
        let current = stored_snapshot(&db)?;
        snapshots
            .dir
            .remove_stale(current.as_ref().map(|s| s.file.as_str()), true);
        let applied = read_applied(&db, None)?;
        let membership = read_membership(&db, None)?;
        Ok(Self {
            db,
            counters: Arc::default(),
            applied,
            membership,
            snapshots,
            index: KeyIndex::new(key_index_max_bytes),
        })
    }

    /// A reader over this state machine for the API.
    pub fn reader(&self) -> KvReader {
        KvReader {
            db: self.db.clone(),
            counters: self.counters.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    /// The last applied log id (for the start-up invariant check).
    pub(crate) fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// The log id of the stored snapshot, if one is stored.
    pub(crate) fn snapshot_log_id(&self) -> Result<Option<LogId>> {
        Ok(stored_snapshot(&self.db)?.and_then(|s| s.meta.last_log_id))
    }

    /// Execute one command at `index`, staging its writes into `batch`. The answer's index is
    /// where the command took effect: `index`, or the first attempt's for an idempotent retry.
    fn execute(
        &self,
        index: u64,
        command: Command,
        reads: &mut Reads<'_>,
        batch: &mut WriteBatch,
    ) -> Result<Response> {
        let refused = |refusal| Response {
            index,
            result: CommandResult::Refused(refusal),
        };
        if let Command::Idempotent {
            key,
            issued_at_ms,
            window_ms,
            command,
        } = command
        {
            if matches!(*command, Command::Idempotent { .. } | Command::Batch(_)) {
                return Ok(refused(ApplyRefusal::NestedCommand));
            }
            return self.execute_idempotent(
                index,
                &key,
                (issued_at_ms, window_ms),
                *command,
                reads,
                batch,
            );
        }
        if let Command::Batch(commands) = command {
            // Each command stages its writes into `batch` in turn; they do not see each other's
            // writes, which is why a batch only groups commands with disjoint conflict keys.
            reads.prefetch(&commands)?;
            let mut responses = Vec::with_capacity(commands.len());
            for command in commands {
                responses.push(if matches!(command, Command::Batch(_)) {
                    refused(ApplyRefusal::NestedCommand)
                } else {
                    self.execute(index, command, reads, batch)?
                });
            }
            return Ok(Response {
                index,
                result: CommandResult::Batch(responses),
            });
        }
        let mut overlay = Overlay::new(reads);
        let result = match command {
            Command::Put {
                key,
                value,
                precondition,
            } => match check(&mut overlay, &key, precondition)? {
                Some(failed) => failed,
                None => CommandResult::Put {
                    prev_mod_index: overlay.put(index, &key, value)?,
                },
            },
            Command::Delete { key, precondition } => match check(&mut overlay, &key, precondition)?
            {
                Some(failed) => failed,
                None => CommandResult::Delete {
                    deleted: overlay.delete(&key)?,
                },
            },
            Command::Txn(txn) => match run_txn(&mut overlay, index, txn)? {
                // Nothing of a refused transaction is staged.
                refused @ CommandResult::Refused(_) => {
                    return Ok(Response {
                        index,
                        result: refused,
                    })
                }
                result => result,
            },
            Command::Barrier => CommandResult::Nothing,
            Command::Idempotent { .. } | Command::Batch(_) => {
                unreachable!("handled above")
            }
        };
        overlay.stage(batch)?;
        Ok(Response { index, result })
    }

    fn execute_idempotent(
        &self,
        index: u64,
        key: &str,
        (issued_at_ms, window_ms): (u64, u64),
        command: Command,
        reads: &mut Reads<'_>,
        batch: &mut WriteBatch,
    ) -> Result<Response> {
        let cf = db::cf(&self.db, CF_SM);
        let previous: Option<IdempotencyRecord> =
            match self.db.get_pinned_cf(cf, db::idempotency_key(key))? {
                Some(bytes) => Some(decode_idempotency_record(&bytes)?),
                None => None,
            };
        let fingerprint = codec::fingerprint(&command)?;
        if let Some(previous) = &previous {
            if previous.issued_at_ms.saturating_add(window_ms) >= issued_at_ms {
                if previous.fingerprint.is_some_and(|f| f != fingerprint) {
                    // The key names another request: refuse, change nothing.
                    return Ok(Response {
                        index,
                        result: CommandResult::Refused(ApplyRefusal::IdempotencyKeyReused),
                    });
                }
                // A retry within the window: answer the first result, change nothing.
                return Ok(previous.response.clone());
            }
        }
        let response = self.execute(index, command, reads, batch)?;
        if let Some(previous) = previous {
            batch.delete_cf(cf, db::idempotency_time_key(previous.issued_at_ms, key));
        }
        let record = IdempotencyRecord {
            issued_at_ms,
            response: response.clone(),
            fingerprint: Some(fingerprint),
        };
        batch.put_cf(cf, db::idempotency_key(key), codec::encode(&record)?);
        batch.put_cf(cf, db::idempotency_time_key(issued_at_ms, key), []);
        reads.idempotency_written.insert(key.to_string());
        let expired_before_ms = issued_at_ms.saturating_sub(window_ms);
        reads.idempotency_expired_before_ms = Some(
            reads
                .idempotency_expired_before_ms
                .map_or(expired_before_ms, |t| t.min(expired_before_ms)),
        );
        Ok(response)
    }

    /// Remove up to `MAX_EXPIRED_PRUNED_PER_APPLY` records issued before `expired_before_ms`,
    /// except those of `keep` (written by the entry being applied: its batch already holds
    /// their new records, which deleting the old key would remove).
    fn prune_idempotency(
        &self,
        expired_before_ms: u64,
        keep: &std::collections::HashSet<String>,
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
            if keep.contains(key) {
                continue;
            }
            batch.delete_cf(cf, &time_key);
            batch.delete_cf(cf, db::idempotency_key(key));
        }
        Ok(())
    }

    fn publish_index_size(&self) {
        let counters = &self.counters;
        let (keys, bytes) = (self.index.len() as u64, self.index.bytes() as u64);
        counters.key_index_keys.store(keys, Ordering::Relaxed);
        counters.key_index_bytes.store(bytes, Ordering::Relaxed);
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
        let mut index_updates = Vec::new();
        let nothing = Response {
            index: log_id.index,
            result: CommandResult::Nothing,
        };
        let response = match entry.payload {
            EntryPayload::Blank => nothing,
            EntryPayload::Normal(command) => {
                let mut reads = Reads::new(&self.db, &self.index);
                let response = self.execute(log_id.index, command, &mut reads, &mut batch)?;
                if let Some(expired_before_ms) = reads.idempotency_expired_before_ms {
                    self.prune_idempotency(
                        expired_before_ms,
                        &reads.idempotency_written,
                        &mut batch,
                    )?;
                }
                index_updates = reads.index_updates;
                response
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                batch.put_cf(cf, KEY_MEMBERSHIP, codec::encode(&self.membership)?);
                nothing
            }
        };
        batch.put_cf(cf, KEY_APPLIED, codec::encode(&Some(log_id))?);
        // Data and applied index move together; see the module doc for why no fsync here.
        self.db.write(batch)?;
        // Only now, so the index never holds what RocksDB does not.
        if !index_updates.is_empty() {
            for (key, meta) in index_updates {
                self.index.set(&key, meta);
            }
            self.publish_index_size();
        }
        self.applied = Some(log_id);
        Ok(response)
    }
}

/// `Some(PreconditionFailed)` if `precondition` does not hold for `key`.
fn check(
    overlay: &mut Overlay<'_, '_>,
    key: &str,
    precondition: Precondition,
) -> Result<Option<CommandResult>> {
    let current = overlay.meta(key)?.map(|m| m.mod_index);
    let holds = match precondition {
        Precondition::None => true,
        Precondition::ModIndex(m) => current == Some(m),
        Precondition::Absent => current.is_none(),
        Precondition::Exists => current.is_some(),
    };
    Ok((!holds).then_some(CommandResult::PreconditionFailed { mod_index: current }))
}

fn run_txn(overlay: &mut Overlay<'_, '_>, index: u64, txn: Txn) -> Result<CommandResult> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let holds = match &compare.target {
            CompareTarget::ModIndex(m) => {
                overlay.meta(&compare.key)?.map_or(0, |c| c.mod_index) == *m
            }
            CompareTarget::Value(v) => overlay.record(&compare.key)?.is_some_and(|r| &r.value == v),
            CompareTarget::Exists(exists) => overlay.meta(&compare.key)?.is_some() == *exists,
        };
        if !holds {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    let mut answer_bytes = 0u64;
    for op in ops {
        if let TxnOp::Get { key } = &op {
            let value_bytes = overlay.record(key)?.map_or(0, |r| r.value.len());
            answer_bytes += (key.len() + value_bytes) as u64;
            if answer_bytes > MAX_TXN_RESPONSE_BYTES {
                return Ok(CommandResult::Refused(ApplyRefusal::ResponseTooLarge {
                    at_least_bytes: answer_bytes,
                    max_bytes: MAX_TXN_RESPONSE_BYTES,
                }));
            }
        }
        results.push(match op {
            TxnOp::Put { key, value } => TxnOpResult::Put {
                prev_mod_index: overlay.put(index, &key, value)?,
            },
            TxnOp::Delete { key } => TxnOpResult::Delete {
                deleted: overlay.delete(&key)?,
            },
            TxnOp::Get { key } => {
                let record = overlay.record(&key)?.cloned();
                TxnOpResult::Get { key, record }
            }
        });
    }
    Ok(CommandResult::Txn { succeeded, results })
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(&e).into()
}

/// Builds a snapshot file from a RocksDB point-in-time view of the state machine.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    counters: Arc<StorageCounters>,
    snapshots: Snapshots,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<DB>, dir: Arc<SnapshotDir>) -> Self {
        Self {
            db,
            counters: Arc::default(),
            snapshots: Snapshots {
                dir,
                lock: Arc::default(),
            },
        }
    }

    /// Build a snapshot of the applied state into a file and make it the current one, durably
    /// (openraft purges the log behind it once this returns). Returns the current snapshot:
    /// the one built, or a newer one installed meanwhile. Blocking.
    pub(crate) fn build(&self) -> Result<(SnapshotMeta, PathBuf)> {
        let view = {
            let _guard = self.snapshots.lock();
            // Everything below reads this one view while apply() keeps writing. Installs hold
            // the lock throughout, so the view is never of a half-installed snapshot.
            View::take(&self.db)?
        };
        let temp = self.snapshots.dir.temp_path();
        let written = write_file(&view, &temp);
        let summary = match written {
            Ok(summary) => summary,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let applied = view.applied;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: view.membership.clone(),
            snapshot_id: match applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, summary.bytes),
                None => format!("empty-{}", summary.bytes),
            },
        };
        drop(view);
        let _guard = self.snapshots.lock();
        let current = stored_snapshot(&self.db)?;
        if let Some(current) = current.filter(|c| c.meta.last_log_id >= applied) {
            // An install (or another build) stored a snapshot at least as new meanwhile.
            let _ = std::fs::remove_file(&temp);
            let path = self.snapshots.dir.file(&current.file);
            return Ok((current.meta, path));
        }
        let name = self
            .snapshots
            .dir
            .final_name(applied.map_or(0, |id| id.index));
        let path = self.snapshots.dir.publish(&temp, &name)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            file: name,
        };
        // Fsynced: openraft purges the log behind this snapshot once we return.
        self.db.put_cf_opt(
            db::cf(&self.db, CF_SNAPSHOT),
            KEY_SNAPSHOT,
            codec::encode(&stored)?,
            &db::synced(),
        )?;
        self.snapshots.dir.remove_stale(Some(&stored.file), false);
        self.counters
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, entries = summary.entries, bytes = summary.bytes, "built snapshot");
        Ok((meta, path))
    }
}

/// Write `view` to a new file at `path` and fsync it.
fn write_file(view: &View<'_>, path: &Path) -> Result<stream::BackupSummary> {
    use std::io::Write;
    let file = std::fs::File::create(path).map_err(|e| io_error("creating", path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1024 * 1024, file);
    let mut failed = None;
    let summary = view.write(0, "", |bytes| match out.write_all(&bytes) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    if let Some(e) = failed {
        return Err(io_error("writing", path, e));
    }
    let summary = summary?;
    let file = out
        .into_inner()
        .map_err(|e| io_error("writing", path, e.into_error()))?;
    file.sync_all().map_err(|e| io_error("syncing", path, e))?;
    Ok(summary)
}

/// Install the snapshot in the file `received`: check the whole file first, keep it (fsynced)
/// as the current snapshot's file, then replace the state machine with it. Blocking.
fn install_file(
    db: &DB,
    snapshots: &Snapshots,
    meta: &SnapshotMeta,
    received: &Path,
) -> Result<u64> {
    let _guard = snapshots.lock();
    // A full check before anything changes: a bad file leaves the old state untouched.
    stream::read_state(
        open_buffered(received)?,
        |header| {
            if header.applied == meta.last_log_id {
                Ok(())
            } else {
                Err(StorageError::Backup(format!(
                    "the snapshot file holds the state at {:?}, its meta says {:?}",
                    header.applied, meta.last_log_id
                )))
            }
        },
        |_| Ok(()),
    )?;
    let name = snapshots
        .dir
        .final_name(meta.last_log_id.map_or(0, |id| id.index));
    snapshots.dir.publish(received, &name)?;
    let installing = StoredSnapshot {
        meta: meta.clone(),
        file: name,
    };
    // From this fsynced marker on, a crash is finished at the next open (`StateMachine::open`),
    // and readers refuse the mixed state in between (`consistent_view`).
    db.put_cf_opt(
        db::cf(db, CF_SM),
        KEY_INSTALLING,
        codec::encode(&installing)?,
        &db::synced(),
    )?;
    let entries = load_snapshot(db, &snapshots.dir, &installing)?;
    snapshots.dir.remove_stale(Some(&installing.file), false);
    Ok(entries)
}

/// A snapshot file opened for reading a frame at a time.
fn open_buffered(path: &Path) -> Result<BufReader<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| io_error("opening", path, e))?;
    Ok(BufReader::with_capacity(1024 * 1024, file))
}

/// Replace the whole state machine with the snapshot `installing` (whose file was checked and
/// fsynced, and whose `m:installing` marker is stored): delete the data, write the file's
/// entries in frame-sized batches, then one fsynced batch that sets applied and membership,
/// makes the snapshot current and removes the marker. Idempotent, so a crash midway is finished
/// by running it again. Returns the number of entries.
fn load_snapshot(db: &DB, dir: &SnapshotDir, installing: &StoredSnapshot) -> Result<u64> {
    let cf = db::cf(db, CF_SM);
    let mut batch = WriteBatch::default();
    // Everything but the meta keys: below `m`, and from `n` up (no key starts with 0xff).
    batch.delete_range_cf(cf, &[][..], &[db::META_TAG][..]);
    batch.delete_range_cf(cf, &[db::META_TAG + 1][..], &[0xffu8][..]);
    db.write(batch)?;
    // Not synced: the synced batch below covers it (WAL order, `db::synced`).
    let (_, summary) = stream::load_entries(db, open_buffered(&dir.file(&installing.file))?)?;
    let meta = &installing.meta;
    let mut batch = WriteBatch::default();
    batch.put_cf(cf, KEY_APPLIED, codec::encode(&meta.last_log_id)?);
    batch.put_cf(cf, KEY_MEMBERSHIP, codec::encode(&meta.last_membership)?);
    batch.put_cf(
        db::cf(db, CF_SNAPSHOT),
        KEY_SNAPSHOT,
        codec::encode(installing)?,
    );
    batch.delete_cf(cf, KEY_INSTALLING);
    db.write_opt(batch, &db::synced())?;
    Ok(summary.entries)
}

/// Run blocking storage work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Io(format!("a storage task failed: {e}")))?
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let builder = SnapshotBuilder {
            db: self.db.clone(),
            counters: self.counters.clone(),
            snapshots: self.snapshots.clone(),
        };
        let (meta, path) = blocking(move || builder.build())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let file = SnapshotFile::open(path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
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
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, RaftStorageError> {
        let path = self.snapshots.dir.receive_path();
        let file = SnapshotFile::create(path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), RaftStorageError> {
        let received = snapshot
            .finish()
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        // The install replaces every key; cleared first, so that a failed install leaves
        // nothing stale in it.
        self.index.clear();
        self.publish_index_size();
        let (db, snapshots, owned_meta) = (self.db.clone(), self.snapshots.clone(), meta.clone());
        let entries = blocking(move || install_file(&db, &snapshots, &owned_meta, &received))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.counters
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, entries, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let current = {
            let _guard = self.snapshots.lock();
            match stored_snapshot(&self.db).map_err(sm_read_err)? {
                None => None,
                Some(stored) => {
                    // Opened under the lock: a newer snapshot cannot remove the file first.
                    let path = self.snapshots.dir.file(&stored.file);
                    let file = std::fs::File::open(&path).map_err(|e| {
                        RaftStorageError::from(StorageIOError::read_snapshot(
                            Some(stored.meta.signature()),
                            &e,
                        ))
                    })?;
                    Some((stored.meta, path, file))
                }
            }
        };
        Ok(current.map(|(meta, path, file)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::from_std(path, file)),
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Installs that crash midway or get a bad file: the two ways a snapshot install can fail
    //! that the conformance suite and the model test do not reach.

    use super::*;
    use crate::types::Precondition;
    use openraft::CommittedLeaderId;

    fn put(index: u64, key: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put {
                key: key.to_string(),
                value: format!("value of {key} at {index}").into_bytes(),
                precondition: Precondition::None,
            }),
        }
    }

    /// A store at `dir` holding `keys`, put at indexes 1.., and a snapshot of it.
    async fn store_with_snapshot(
        dir: &Path,
        keys: &[&str],
    ) -> (StateMachine, SnapshotMeta, PathBuf) {
        let (_log, mut sm) = crate::open(dir).unwrap();
        let entries: Vec<Entry> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| put(i as u64 + 1, k))
            .collect();
        sm.apply(entries).await.unwrap();
        let builder = sm.get_snapshot_builder().await;
        let (meta, path) = builder.build().unwrap();
        (sm, meta, path)
    }

    #[tokio::test]
    async fn an_install_interrupted_by_a_crash_is_finished_when_the_store_opens() {
        let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_source, meta, file) = store_with_snapshot(source_dir.path(), &["a", "b", "c"]).await;
        let (target, _, _) = store_with_snapshot(target_dir.path(), &["old"]).await;
        // The first steps of `install_file`, then a "crash": the file kept, the marker stored,
        // the old data deleted, none of the new data written yet.
        let name = target.snapshots.dir.final_name(3);
        target.snapshots.dir.publish(&file, &name).unwrap();
        let installing = StoredSnapshot {
            meta: meta.clone(),
            file: name,
        };
        let db = &target.db;
        db.put_cf_opt(
            db::cf(db, CF_SM),
            KEY_INSTALLING,
            codec::encode(&installing).unwrap(),
            &db::synced(),
        )
        .unwrap();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(db::cf(db, CF_SM), &[][..], &[db::META_TAG][..]);
        db.write_opt(batch, &db::synced()).unwrap();
        // Readers refuse the mixed state instead of answering from it.
        let reader = target.reader();
        assert!(matches!(reader.get("old"), Err(StorageError::Installing)));
        assert!(matches!(
            reader.range(&RangeRequest::from(b"", 10)),
            Err(StorageError::Installing)
        ));
        drop((reader, target));

        let (_log, mut reopened) = crate::open(target_dir.path()).unwrap();
        let reader = reopened.reader();
        let page = reader.range(&RangeRequest::from(b"", 10)).unwrap();
        let keys: Vec<&str> = page.value.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["a", "b", "c"],
            "exactly the snapshot's keys after the finished install"
        );
        assert_eq!(page.index, 3);
        assert_eq!(reopened.applied_state().await.unwrap().0, meta.last_log_id);
        let current = reopened
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a current snapshot");
        assert_eq!(current.meta, meta);
        assert_eq!(reopened.snapshot_log_id().unwrap(), meta.last_log_id);
    }

    #[tokio::test]
    async fn a_corrupted_snapshot_file_is_refused_and_the_old_state_stays() {
        let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_source, meta, file) = store_with_snapshot(source_dir.path(), &["a", "b", "c"]).await;
        let (target, old_meta, _) = store_with_snapshot(target_dir.path(), &["old"]).await;
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        let received = target.snapshots.dir.receive_path();
        std::fs::write(&received, &bytes).unwrap();
        let error = install_file(&target.db, &target.snapshots, &meta, &received).unwrap_err();
        assert!(error.to_string().contains("corrupted"), "{error}");
        let reader = target.reader();
        let old = reader.get("old").unwrap();
        assert!(old.value.is_some(), "the old state is untouched");
        assert_eq!(old.index, 1);
        assert!(reader.get("a").unwrap().value.is_none());
        assert_eq!(target.snapshot_log_id().unwrap(), old_meta.last_log_id);
        // A file whose contents do not match the meta is refused too.
        let mut wrong_meta = meta.clone();
        wrong_meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), 99));
        let received = target.snapshots.dir.receive_path();
        std::fs::copy(&file, &received).unwrap();
        let error =
            install_file(&target.db, &target.snapshots, &wrong_meta, &received).unwrap_err();
        assert!(error.to_string().contains("meta says"), "{error}");
        assert_eq!(reader.get("old").unwrap().index, 1);
    }

    /// The key index holds what this node applied; an install replaces that state, so a key
    /// the snapshot deleted and created again must not keep its old indexes.
    #[tokio::test]
    async fn a_snapshot_install_clears_the_key_index() {
        let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The target applied "k" at 1, so its key index holds k: mod 1, created 1.
        let (mut target, _, _) = store_with_snapshot(target_dir.path(), &["k"]).await;
        assert_eq!(target.index.get("k").map(|m| m.create_index), Some(1));
        // The leader went on: k deleted at 2 and created again at 3.
        let (_log, mut source) = crate::open(source_dir.path()).unwrap();
        let delete = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
            payload: EntryPayload::Normal(Command::Delete {
                key: "k".into(),
                precondition: Precondition::None,
            }),
        };
        source
            .apply([put(1, "k"), delete, put(3, "k")])
            .await
            .unwrap();
        let mut builder = source.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        let mut receiving = target.begin_receiving_snapshot().await.unwrap();
        let mut sent = snapshot.snapshot;
        tokio::io::copy(&mut *sent, &mut *receiving).await.unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut *receiving)
            .await
            .unwrap();
        target
            .install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap();
        assert_eq!(target.index.len(), 0);

        let answers = target.apply([put(4, "k")]).await.unwrap();
        assert_eq!(
            answers[0].result,
            CommandResult::Put {
                prev_mod_index: Some(3)
            },
            "the previous write is the snapshot's, not the one this node applied before"
        );
        let record = target.reader().get("k").unwrap().value.unwrap();
        assert_eq!((record.mod_index, record.create_index), (4, 3));
        assert_eq!(target.index.get("k").map(|m| m.create_index), Some(3));
    }

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// The poison pill of issue 19: an idempotent transaction of many gets of a large value
    /// made an idempotency record larger than a snapshot frame, and every snapshot build
    /// failed from then on. Apply now refuses the transaction whole, the record stays small,
    /// and snapshots build.
    #[tokio::test]
    async fn a_transaction_answering_too_much_is_refused_whole_and_snapshots_still_build() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        let big = Command::Put {
            key: "big".into(),
            value: vec![7; 1 << 20],
            precondition: Precondition::None,
        };
        let mut success: Vec<TxnOp> = (0..70).map(|_| TxnOp::Get { key: "big".into() }).collect();
        success.insert(
            0,
            TxnOp::Put {
                key: "side-effect".into(),
                value: b"x".to_vec(),
            },
        );
        let txn = Command::Idempotent {
            key: "pill".into(),
            issued_at_ms: 1,
            window_ms: 600_000,
            command: Box::new(Command::Txn(Txn {
                compare: vec![],
                success,
                failure: vec![],
            })),
        };
        let answers = sm.apply([entry(1, big), entry(2, txn)]).await.unwrap();
        match &answers[1].result {
            CommandResult::Refused(ApplyRefusal::ResponseTooLarge {
                at_least_bytes,
                max_bytes,
            }) => {
                assert_eq!(*max_bytes, MAX_TXN_RESPONSE_BYTES);
                assert!(*at_least_bytes > MAX_TXN_RESPONSE_BYTES);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            sm.reader().get("side-effect").unwrap().value.is_none(),
            "nothing of a refused transaction is applied"
        );
        // Seven gets of 1 MiB fit.
        let fits = Command::Txn(Txn {
            compare: vec![],
            success: (0..7).map(|_| TxnOp::Get { key: "big".into() }).collect(),
            failure: vec![],
        });
        let answers = sm.apply([entry(3, fits)]).await.unwrap();
        assert!(
            matches!(&answers[0].result, CommandResult::Txn { results, .. } if results.len() == 7)
        );
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.expect("the snapshot builds");
    }

    /// Apply is total: shapes the API never proposes are answered `Refused`, not an error that
    /// would stop the raft core on every node (a batch nested in a batch used to).
    #[tokio::test]
    async fn nested_commands_are_refused_and_the_rest_of_the_entry_applies() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        let put_cmd = |key: &str| Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
            precondition: Precondition::None,
        };
        let batch = Command::Batch(vec![
            put_cmd("a"),
            Command::Batch(vec![put_cmd("nested")]),
            Command::Idempotent {
                key: "i".into(),
                issued_at_ms: 1,
                window_ms: 1,
                command: Box::new(Command::Idempotent {
                    key: "j".into(),
                    issued_at_ms: 1,
                    window_ms: 1,
                    command: Box::new(put_cmd("doubly")),
                }),
            },
            put_cmd("b"),
        ]);
        let answers = sm.apply([entry(1, batch)]).await.unwrap();
        let CommandResult::Batch(results) = &answers[0].result else {
            panic!("{answers:?}")
        };
        let refused = CommandResult::Refused(ApplyRefusal::NestedCommand);
        assert_eq!(results[1].result, refused);
        assert_eq!(results[2].result, refused);
        assert!(matches!(results[0].result, CommandResult::Put { .. }));
        assert!(matches!(results[3].result, CommandResult::Put { .. }));
        let reader = sm.reader();
        assert!(reader.get("a").unwrap().value.is_some());
        assert!(reader.get("b").unwrap().value.is_some());
        assert!(reader.get("nested").unwrap().value.is_none());
        assert!(reader.get("doubly").unwrap().value.is_none());
    }

    /// One entry re-writes the record of key `a` (its old one expired) and, in a later command
    /// of the same batch, prunes expired records: the prune used to see `a`'s old record in
    /// RocksDB and delete the key, taking the new record with it, so a retry of `a` applied
    /// again. Also: a key reused for another command is refused within its window.
    #[tokio::test]
    async fn idempotency_records_survive_their_own_entry_and_refuse_other_commands() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        let idempotent = |key: &str, issued_at_ms: u64, value: &str| Command::Idempotent {
            key: key.into(),
            issued_at_ms,
            window_ms: 10,
            command: Box::new(Command::Put {
                key: format!("data/{key}"),
                value: value.as_bytes().to_vec(),
                precondition: Precondition::None,
            }),
        };
        sm.apply([entry(1, idempotent("a", 0, "first"))])
            .await
            .unwrap();
        let batch = Command::Batch(vec![idempotent("a", 100, "x"), idempotent("b", 100, "y")]);
        sm.apply([entry(2, batch)]).await.unwrap();
        let retry = sm
            .apply([entry(3, idempotent("a", 101, "x"))])
            .await
            .unwrap();
        assert_eq!(
            retry[0].index, 2,
            "the retry answers the first attempt: {retry:?}"
        );
        let record = sm.reader().get("data/a").unwrap().value.unwrap();
        assert_eq!(record.mod_index, 2, "applied once");
        // Another command under the same key, within the window: refused, nothing applied.
        let other = sm
            .apply([entry(4, idempotent("a", 102, "other"))])
            .await
            .unwrap();
        assert_eq!(
            other[0].result,
            CommandResult::Refused(ApplyRefusal::IdempotencyKeyReused)
        );
        assert_eq!(
            sm.reader().get("data/a").unwrap().value.unwrap().value,
            b"x"
        );
    }
}
