//! The RocksDB instance of one node: its column families, key layout and write options.
//!
//! Layout (see `storage/DESIGN.md`):
//! - `log`: big-endian `u64` log index → encoded `Entry`. Big-endian so RocksDB orders by index.
//! - `raft_meta`: `vote`, `committed`, `purged` → encoded values.
//! - `sm`: `d` + key bytes → encoded `KeyRecord`, followed by the key's lease id (a postcard
//!   `u64`) when it is attached to one (`encode_record`); `l` + lease id (BE) → encoded
//!   `LeaseRecord`; `k` + lease id (BE) + key bytes → () (the keys of a lease, in key order);
//!   `i` + idempotency key → encoded
//!   `IdempotencyRecord`, `t` + issued-at (BE) + idempotency key → expiry index;
//!   `r` + role name → encoded `Role`; `u` + token id → encoded `TokenRecord`;
//!   `m:applied`, `m:membership` → encoded values; `m:installing` → the snapshot being
//!   installed, while one is. Data and the applied index share one column family so one
//!   `WriteBatch` moves both.
//! - `snapshot`: `current` → the last built or installed snapshot: its meta and its file name
//!   (the data is a file, see `snapshot`).
//! - `changes`: big-endian `u64` index + key → the change of that key at that index (the
//!   change history, see `changes`); its compact index is `m:changes_compact` in `sm`.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBufferManager, WriteOptions, DB,
};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::records::StoredSnapshot;
use crate::types::{KeyRecord, LogId, StoredMembership};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SNAPSHOT: &str = "snapshot";
/// The change history (`changes`).
pub(crate) const CF_CHANGES: &str = "changes";
/// Every column family `open` creates.
pub(crate) const COLUMN_FAMILIES: [&str; 5] =
    [CF_LOG, CF_RAFT_META, CF_SM, CF_SNAPSHOT, CF_CHANGES];

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_PURGED: &[u8] = b"purged";
pub(crate) const KEY_APPLIED: &[u8] = b"m:applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"m:membership";
pub(crate) const KEY_SNAPSHOT: &[u8] = b"current";
/// Present while a snapshot is being installed (names its file): the `sm` data is then a mix of
/// old and new, readers refuse it, and opening the store finishes the install.
pub(crate) const KEY_INSTALLING: &[u8] = b"m:installing";
/// The change history's compact index (`changes`): every change after it is kept.
pub(crate) const KEY_CHANGES_COMPACT: &[u8] = b"m:changes_compact";

/// First byte of every data key in `sm`; data keys sort in `[DATA_TAG, DATA_TAG_END)`.
pub(crate) const DATA_TAG: u8 = b'd';
pub(crate) const DATA_TAG_END: u8 = DATA_TAG + 1;

/// First byte of idempotency records in `sm`: `i` + idempotency key → `IdempotencyRecord`.
pub(crate) const IDEMPOTENCY_TAG: u8 = b'i';
/// First byte of the idempotency expiry index: `t` + issued_at_ms (BE) + idempotency key → ().
pub(crate) const IDEMPOTENCY_TIME_TAG: u8 = b't';
/// First byte of lease records in `sm`: `l` + lease id (BE) → `LeaseRecord`.
pub(crate) const LEASE_TAG: u8 = b'l';
/// First byte of the keys attached to leases: `k` + lease id (BE) + key → ().
pub(crate) const LEASE_KEY_TAG: u8 = b'k';
/// First byte of roles in `sm`: `r` + role name → encoded `auth::Role`.
pub(crate) const ROLE_TAG: u8 = b'r';
/// First byte of tokens in `sm`: `u` + token id → encoded `auth::TokenRecord` (a hash, never
/// the secret).
pub(crate) const TOKEN_TAG: u8 = b'u';
/// Meta keys of `sm` start with this byte; everything else in `sm` is replicated data that a
/// snapshot carries.
pub(crate) const META_TAG: u8 = b'm';

/// `tag` followed by `bytes`: the layout of every tagged `sm` key.
pub(crate) fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(tag);
    out.extend_from_slice(bytes);
    out
}

pub(crate) fn idempotency_key(key: &str) -> Vec<u8> {
    tagged(IDEMPOTENCY_TAG, key.as_bytes())
}

pub(crate) fn idempotency_time_key(issued_at_ms: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 9);
    out.push(IDEMPOTENCY_TIME_TAG);
    out.extend_from_slice(&issued_at_ms.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The `sm` key of lease `id`'s record.
pub(crate) fn lease_key(id: u64) -> [u8; 9] {
    let mut out = [LEASE_TAG; 9];
    out[1..].copy_from_slice(&id.to_be_bytes());
    out
}

/// The `sm` key recording that `key` is attached to lease `id`; `key` empty gives the prefix
/// of every key of the lease.
pub(crate) fn lease_member_key(id: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 9);
    out.push(LEASE_KEY_TAG);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Just past every key of lease `id` (`lease_member_key`): the next lease's prefix, or past the
/// whole tag for the last possible id.
pub(crate) fn lease_members_end(id: u64) -> Vec<u8> {
    match id.checked_add(1) {
        Some(next) => lease_member_key(next, ""),
        None => vec![LEASE_KEY_TAG + 1],
    }
}

/// A key's stored value: its encoded record, then its lease id if it has one (0: none).
pub(crate) fn encode_record(record: &KeyRecord, lease: u64) -> Result<Vec<u8>> {
    let mut bytes = codec::encode(record)?;
    if lease != 0 {
        bytes.extend_from_slice(&codec::encode(&lease)?);
    }
    Ok(bytes)
}

/// A key's record and its lease id (0: none) from its stored value (`encode_record`). Records
/// stored before leases existed have no suffix and decode as before.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<(KeyRecord, u64)> {
    let (record, rest) = codec::decode_prefix::<KeyRecord>(bytes)?;
    Ok((record, decode_lease_suffix(rest)?))
}

/// The lease id after a key's record: none (0), or one non-zero postcard `u64` and nothing more.
pub(crate) fn decode_lease_suffix(rest: &[u8]) -> Result<u64> {
    if rest.is_empty() {
        return Ok(0);
    }
    match codec::decode::<u64>(rest)? {
        0 => Err(StorageError::Invariant(
            "a key record with lease id 0 after it".into(),
        )),
        lease => Ok(lease),
    }
}

/// The `sm` key under which a user key's record is stored.
pub(crate) fn data_key(key: &str) -> Vec<u8> {
    tagged(DATA_TAG, key.as_bytes())
}

/// The user key of an `sm` data key.
pub(crate) fn user_key(data_key: &[u8]) -> Option<&str> {
    match data_key.split_first() {
        Some((&DATA_TAG, rest)) => std::str::from_utf8(rest).ok(),
        _ => None,
    }
}

/// The `log` key of a log index.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index of a `log` key.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Write options that wait for the WAL to reach the disk (fsync) before returning.
///
/// Durability assumption: the WAL is shared by all column families and written in order, so a
/// synced write also makes every earlier (unsynced) write durable.
pub(crate) fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// How the store may use the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Memory RocksDB may use for its block cache and memtables together. Memtables take up to
    /// half of it (they are charged to the cache, then flushed); index and filter blocks are
    /// cached inside it too, so they do not grow with the data or with the requests served.
    /// The rest of the process (RocksDB's table readers and buffers outside the cache, the
    /// allocators' free lists, the node; not measured part by part) was about 130 MiB at 1M
    /// keys, levelling off (BENCHMARKS.md).
    pub memory_budget_bytes: usize,
    /// Fault injection, for tests only (0 in production): while this node leads, the log
    /// syncer waits this long before each fsync of its appends, as a slow disk would. Nothing
    /// else slows down (a follower's appends sync inline), so a test can show that a leader's
    /// own log write counts towards a commit only once it is on disk.
    pub fault_log_sync_delay_ms: u64,
    /// Most memory (estimated) for the key index: the mod and create indexes of live keys,
    /// kept so that applying a write does not read its key from RocksDB (`key_index`). Outside
    /// `memory_budget_bytes`. About 72 bytes plus the key's length per key: the default holds
    /// some one and a half million 16-byte keys; keys beyond it are read from RocksDB as they are written.
    pub key_index_max_bytes: usize,
    /// The change history keeps the changes of at least this many of the newest log entries
    /// (`changes`); a read from an older index is refused as compacted.
    pub history_entries: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            memory_budget_bytes: 256 * 1024 * 1024,
            fault_log_sync_delay_ms: 0,
            key_index_max_bytes: 128 * 1024 * 1024,
            history_entries: 100_000,
        }
    }
}

/// Size of one memtable of the state machine. Every applied write looks its key up here
/// first, and a lookup in a skiplist of a few hundred thousand entries (the 64 MiB default)
/// cost a few microseconds of cache misses; a small one stays in the CPU's cache. The price is
/// more flushes, and at 1M keys more compaction after them (BENCHMARKS.md, "2026-11-27, puts").
const SM_MEMTABLE_BYTES: usize = 8 * 1024 * 1024;

/// Open (or create) the node's database at `path`.
pub(crate) fn open(path: &Path, store: &StoreOptions) -> Result<DB> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Two cores is the machine we plan for; more background jobs only contend.
    options.set_max_background_jobs(2);
    // Writes are durable through the WAL; never turn it off. Every write reaches the WAL file
    // when it returns (not flushed by hand), so a `kill -9` keeps the applies made since the
    // last fsync (storage/DESIGN.md, "Assumptions").
    options.set_manual_wal_flush(false);
    // One memory budget for the whole instance (see `StoreOptions`).
    let cache = Cache::new_lru_cache(store.memory_budget_bytes);
    let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
        store.memory_budget_bytes / 2,
        false,
        cache.clone(),
    );
    options.set_write_buffer_manager(&write_buffers);
    let cf = |name: &str| {
        let mut cf_options = Options::default();
        cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        if name == CF_SM {
            // Every get and every applied write looks keys up here; a bloom filter (10 bits a
            // key, about 1% false positives) skips the SST files that do not hold the key.
            table.set_bloom_filter(10.0, false);
            cf_options.set_write_buffer_size(SM_MEMTABLE_BYTES);
            cf_options.set_memtable_prefix_bloom_ratio(0.05);
            cf_options.set_memtable_whole_key_filtering(true);
        }
        cf_options.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(name, cf_options)
    };
    let db = DB::open_cf_descriptors(&options, path, COLUMN_FAMILIES.map(cf))?;
    Ok(db)
}

/// The handle of a column family that `open` always creates.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| unreachable!("column family {name} is created by open()"))
}

// Reads of the state machine's own records, shared by the state machine, its reader and
// `stream`.

pub(crate) fn read_applied(db: &DB, opts: Option<&rocksdb::Snapshot<'_>>) -> Result<Option<LogId>> {
    let cf = cf(db, CF_SM);
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
    let cf = cf(db, CF_SM);
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
    if view.get_cf(cf(db, CF_SM), KEY_INSTALLING)?.is_some() {
        return Err(StorageError::Installing);
    }
    let applied = read_applied(db, Some(&view))?;
    Ok((view, applied))
}

pub(crate) fn stored_snapshot(db: &DB) -> Result<Option<StoredSnapshot>> {
    match db.get_cf(cf(db, CF_SNAPSHOT), KEY_SNAPSHOT)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

/// A key's record and its lease id (0: none).
pub(crate) fn get_record(db: &DB, key: &str) -> Result<Option<(KeyRecord, u64)>> {
    match db.get_pinned_cf(cf(db, CF_SM), data_key(key))? {
        Some(bytes) => Ok(Some(decode_record(&bytes)?)),
        None => Ok(None),
    }
}
