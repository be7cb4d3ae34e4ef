//! `StateMachine`: openraft's `RaftStateMachine` over the `sm` and `snapshot` column families,
//! and `KvReader`, the read side that the API uses.
//!
//! - `apply`: applying entries (commands, transactions, idempotency).
//! - `auth_apply`: applying role and token changes (`Command::Auth`).
//! - `reader`: [`KvReader`], point-in-time reads and the store's sizes.
//! - `snapshot_io`: [`SnapshotBuilder`] and installing a received snapshot file.
//!
//! Applying an entry writes its data changes and the new applied log id in one `WriteBatch`, so
//! the state machine on disk is always exactly "all entries up to `applied`". Those writes are
//! not fsynced: after a crash the tail is re-applied from the (fsynced) log.

mod apply;
mod auth_apply;
mod reader;
mod snapshot_io;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{OptionalSend, StorageIOError};
use rocksdb::DB;

use crate::auth::SharedAuth;
use crate::changes::{self, ChangeListener};
use crate::codec;
use crate::db::{self, read_applied, read_membership, stored_snapshot, CF_SM, KEY_INSTALLING};
use crate::error::{Result, StorageError};
use crate::key_index::KeyIndex;
use crate::leases::LeaseListener;
use crate::records::StoredSnapshot;
use crate::snapshot::{SnapshotDir, SnapshotFile};
use crate::types::{
    Entry, LogId, RaftStorageError, Response, SnapshotMeta, StoredMembership, TypeConfig,
};

pub use reader::{KvReader, RangePage, RangeRequest};
pub use snapshot_io::SnapshotBuilder;
use snapshot_io::{install_file, load_snapshot};

/// The replicated key-value state of one node.
pub struct StateMachine {
    db: Arc<DB>,
    counters: Arc<StorageCounters>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: Snapshots,
    /// The indexes of live keys, so applying a write need not read its key (see `key_index`).
    index: KeyIndex,
    /// The change history's compact index (`changes`), as stored.
    changes_compact: u64,
    /// How many of the newest entries' changes the history keeps at least.
    history_entries: u64,
    /// Told of every applied change (the node's watches), once set.
    listener: Option<Arc<dyn ChangeListener>>,
    /// Live leases (`db::LEASE_TAG` records), counted at open and after an install.
    lease_count: u64,
    /// Told of every lease granted and ended (the node's lease timers), once set.
    lease_listener: Option<Arc<dyn LeaseListener>>,
    /// Roles and tokens (`auth`), as applied: loaded at open and after an install, changed by
    /// apply once an entry's batch is written.
    auth: SharedAuth,
}

/// The snapshot files and the lock that orders the steps which change which one is current:
/// an install holds it throughout; a build holds it to take its view and to publish its file;
/// readers of the current snapshot hold it while they find and open its file.
#[derive(Clone)]
pub(crate) struct Snapshots {
    pub(crate) dir: Arc<SnapshotDir>,
    pub(crate) lock: Arc<Mutex<()>>,
}

impl Snapshots {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
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

/// Counters of storage events, for `/metrics`.
#[derive(Debug, Default)]
pub struct StorageCounters {
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
    /// Keys the key index holds, and its estimated bytes (`StoreOptions::key_index_max_bytes`).
    pub key_index_keys: AtomicU64,
    pub key_index_bytes: AtomicU64,
    /// Keys attached to live leases.
    pub lease_keys: AtomicU64,
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
    /// The filesystem holding the directory: bytes an unprivileged writer may still use, and
    /// its size (`statvfs`; `None` where that fails).
    pub fs_available_bytes: Option<u64>,
    pub fs_capacity_bytes: Option<u64>,
}

impl StateMachine {
    /// Open the state machine of the store at `db_path`. A snapshot install that a crash
    /// interrupted is finished first, from its file (fsynced before the install began).
    pub(crate) fn open(db: Arc<DB>, db_path: &Path, options: &crate::StoreOptions) -> Result<Self> {
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
        let (leases, lease_keys) = reader::live_leases(&db)?;
        let lease_count = leases.len() as u64;
        let counters = Arc::new(StorageCounters::default());
        counters.lease_keys.store(lease_keys, Ordering::Relaxed);
        let membership = read_membership(&db, None)?;
        let auth = reader::auth_table(&db)?;
        let changes_compact = match changes::read_compact(&db, None)? {
            Some(compact) => compact,
            None => {
                // A store that kept no history yet (new, restored, or from before the history
                // existed): it starts after what is applied now.
                let compact = applied.map_or(0, |id| id.index);
                db.put_cf(
                    db::cf(&db, CF_SM),
                    db::KEY_CHANGES_COMPACT,
                    codec::encode(&compact)?,
                )?;
                compact
            }
        };
        Ok(Self {
            db,
            counters,
            applied,
            membership,
            snapshots,
            index: KeyIndex::new(options.key_index_max_bytes),
            changes_compact,
            history_entries: options.history_entries,
            listener: None,
            lease_count,
            lease_listener: None,
            auth: SharedAuth::new(auth),
        })
    }

    /// A reader over this state machine for the API.
    pub fn reader(&self) -> KvReader {
        KvReader {
            db: self.db.clone(),
            counters: self.counters.clone(),
            snapshots: self.snapshots.clone(),
            auth: self.auth.clone(),
        }
    }

    /// Tell `listener` of every change applied from now on; it is first told where the state
    /// is now (`ChangeListener::restarted_at`). Set before the state machine is handed to Raft.
    pub fn set_change_listener(&mut self, listener: Arc<dyn ChangeListener>) {
        listener.restarted_at(self.applied.map_or(0, |id| id.index));
        self.listener = Some(listener);
    }

    /// Tell `listener` of every lease granted and ended from now on; it is first told which
    /// leases live now (`LeaseListener::reset`). Set before the state machine is handed to Raft.
    pub fn set_lease_listener(&mut self, listener: Arc<dyn LeaseListener>) -> Result<()> {
        listener.reset(reader::live_leases(&self.db)?.0);
        self.lease_listener = Some(listener);
        Ok(())
    }

    /// The last applied log id (for the start-up invariant check).
    pub(crate) fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// The log id of the stored snapshot, if one is stored.
    pub(crate) fn snapshot_log_id(&self) -> Result<Option<LogId>> {
        Ok(stored_snapshot(&self.db)?.and_then(|s| s.meta.last_log_id))
    }
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(&e).into()
}

/// Run blocking storage work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Io(format!("a storage task failed: {e}")))?
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
        let mut changes = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let response = self
                .apply_one(entry, &mut changes)
                .map_err(|e| RaftStorageError::from(StorageIOError::apply(log_id, &e)))?;
            responses.push(response);
        }
        // After the entries are in RocksDB (a listener may read the history up to here) and
        // before openraft answers their writes.
        if let (Some(listener), Some(applied)) = (&self.listener, self.applied) {
            listener.applied(applied.index, changes);
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
        self.changes_compact = meta.last_log_id.map_or(0, |id| id.index);
        if let Some(listener) = &self.listener {
            listener.restarted_at(self.changes_compact);
        }
        let (leases, lease_keys) = reader::live_leases(&self.db).map_err(sm_read_err)?;
        self.lease_count = leases.len() as u64;
        self.counters
            .lease_keys
            .store(lease_keys, Ordering::Relaxed);
        if let Some(listener) = &self.lease_listener {
            listener.reset(leases);
        }
        self.auth
            .replace(reader::auth_table(&self.db).map_err(sm_read_err)?);
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
