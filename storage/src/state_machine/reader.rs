//! `KvReader`: the API's reads of the state machine, each at one point in time, and the store's
//! sizes for `/metrics`.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use super::{DiskUsage, MemoryUsage, ReadAt, Snapshots, StorageCounters};
use crate::changes::{self, ChangesPage, HistoryError, KeyFilter, PageLimit};
use crate::codec;
use crate::db::{self, consistent_view, read_applied, stored_snapshot, CF_SM};
use crate::error::{Result, StorageError};
use crate::leases::{LeaseInfo, LeaseRecord};
use crate::records::KeyRecordIndexes;
use crate::snapshot::io_error;
use crate::types::KeyRecord;

/// Read access to the state machine, shared with the API. Every read sees one point in time.
#[derive(Clone)]
pub struct KvReader {
    pub(super) db: Arc<DB>,
    pub(super) counters: Arc<StorageCounters>,
    pub(super) snapshots: Snapshots,
    pub(super) auth: crate::auth::SharedAuth,
}

impl KvReader {
    /// Roles and tokens as applied here: what the API checks every request against.
    pub fn auth(&self) -> &crate::auth::SharedAuth {
        &self.auth
    }

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
        let (fs_available_bytes, fs_capacity_bytes) = match filesystem_room(self.db.path()) {
            Some((available, capacity)) => (Some(available), Some(capacity)),
            None => (None, None),
        };
        Ok(DiskUsage {
            log_bytes: cf_bytes(db::CF_LOG)?,
            state_bytes: cf_bytes(CF_SM)?,
            db_dir_bytes,
            fs_available_bytes,
            fs_capacity_bytes,
        })
    }

    /// The changes matching `filter` from `from_index` on, up to the applied index of one view
    /// (within `limit`: a page never splits an index), or why the history cannot serve them
    /// (`changes`). Blocking: call it from a blocking thread.
    pub fn changes(
        &self,
        from_index: u64,
        filter: &KeyFilter,
        limit: PageLimit,
    ) -> Result<std::result::Result<ChangesPage, HistoryError>> {
        changes::read(&self.db, from_index, filter, limit)
    }

    /// The change history's compact index now: every change after it is kept
    /// (`changes`, the module doc).
    pub fn history_compact_index(&self) -> Result<u64> {
        Ok(changes::read_compact(&self.db, None)?.unwrap_or(0))
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
            Some(bytes) => Some(db::decode_record(&bytes)?.0),
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
                let (indexes, lease) = codec::decode_prefix::<KeyRecordIndexes>(&value)?;
                db::decode_lease_suffix(lease)?;
                KeyRecord {
                    value: Vec::new(),
                    mod_index: indexes.mod_index,
                    create_index: indexes.create_index,
                }
            } else {
                db::decode_record(&value)?.0
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

impl KvReader {
    /// Lease `id` if it lives, with its first `max_keys` keys in key order, read at one point
    /// in time.
    pub fn lease(&self, id: u64, max_keys: usize) -> Result<ReadAt<Option<LeaseInfo>>> {
        let (snapshot, applied) = consistent_view(&self.db)?;
        let index = applied.map_or(0, |id| id.index);
        let cf = db::cf(&self.db, CF_SM);
        let Some(bytes) = snapshot.get_cf(cf, db::lease_key(id))? else {
            return Ok(ReadAt { index, value: None });
        };
        let record: LeaseRecord = codec::decode(&bytes)?;
        let prefix = db::lease_member_key(id, "");
        let mut read_options = ReadOptions::default();
        read_options.set_snapshot(&snapshot);
        read_options.set_iterate_upper_bound(db::lease_members_end(id));
        let iter = self.db.iterator_cf_opt(
            cf,
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut keys = Vec::new();
        for item in iter.take(max_keys) {
            let (member, _) = item?;
            let key = std::str::from_utf8(&member[prefix.len()..])
                .map_err(|_| StorageError::Invariant("a lease's key that is not UTF-8".into()))?;
            keys.push(key.to_string());
        }
        let info = LeaseInfo {
            id,
            ttl_ms: record.ttl_ms,
            key_count: record.keys,
            keys,
        };
        Ok(ReadAt {
            index,
            value: Some(info),
        })
    }
}

/// Every live lease as `(id, ttl_ms)`, in id order (for the lease listener: at most
/// `--max-leases` of them), and the keys attached to them all.
pub(crate) fn live_leases(db: &DB) -> Result<(Vec<(u64, u64)>, u64)> {
    let mut read_options = ReadOptions::default();
    read_options.set_iterate_upper_bound(vec![db::LEASE_TAG + 1]);
    let iter = db.iterator_cf_opt(
        db::cf(db, CF_SM),
        read_options,
        IteratorMode::From(&[db::LEASE_TAG], Direction::Forward),
    );
    let mut leases = Vec::new();
    let mut keys = 0;
    for item in iter {
        let (key, value) = item?;
        let id = key
            .get(1..)
            .and_then(|id| id.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StorageError::Invariant("a malformed lease key".into()))?;
        let record: LeaseRecord = codec::decode(&value)?;
        leases.push((id, record.ttl_ms));
        keys += record.keys;
    }
    Ok((leases, keys))
}

/// Every role and token of the store (`db::ROLE_TAG`, `db::TOKEN_TAG`), as a table.
pub(crate) fn auth_table(db: &DB) -> Result<crate::auth::AuthTable> {
    let records = |tag: u8| {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(vec![tag + 1]);
        db.iterator_cf_opt(
            db::cf(db, CF_SM),
            read_options,
            IteratorMode::From(&[tag], Direction::Forward),
        )
    };
    let mut roles = Vec::new();
    for item in records(db::ROLE_TAG) {
        let (key, value) = item?;
        let name = std::str::from_utf8(&key[1..])
            .map_err(|_| StorageError::Invariant("a role name that is not UTF-8".into()))?;
        roles.push((name.to_string(), codec::decode(&value)?));
    }
    let mut tokens = Vec::new();
    for item in records(db::TOKEN_TAG) {
        let (_, value) = item?;
        tokens.push(codec::decode(&value)?);
    }
    Ok(crate::auth::AuthTable::from_records(roles, tokens))
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

/// One page of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    /// Keys and records in key order (records without values for `keys_only`).
    pub items: Vec<(String, KeyRecord)>,
    /// The first key after this page: the `start` of the next one.
    pub next: Option<String>,
}

/// `(available, capacity)` in bytes of the filesystem holding `path`, by `statvfs`.
fn filesystem_room(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is a
    // plain struct statvfs fills in (all-zero bytes are a valid value of it).
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let fragment = stat.f_frsize as u64;
    Some((
        (stat.f_bavail as u64).saturating_mul(fragment),
        (stat.f_blocks as u64).saturating_mul(fragment),
    ))
}

#[cfg(test)]
mod tests {
    use super::filesystem_room;

    #[test]
    fn the_room_of_a_filesystem_is_what_statvfs_says_and_a_missing_path_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (available, capacity) = filesystem_room(dir.path()).expect("statvfs of a directory");
        assert!(
            capacity > 0 && available <= capacity,
            "{available} of {capacity}"
        );
        assert!(filesystem_room(&dir.path().join("missing/deeper")).is_none());
    }
}
