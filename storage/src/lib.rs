//! Durable storage of one mirrorkv node: openraft's log store and state machine over a single
//! RocksDB instance.
//!
//! Modules, one job each:
//! - [`codec`]: the only place values become bytes (postcard), for disk and for the wire.
//! - [`types`]: the replicated data model (`Command`, `Response`, `KeyRecord`, `NodeInfo`) and
//!   openraft's `TypeConfig`.
//! - `db`: opening RocksDB, column families, key layout, fsync write options, and reads of the
//!   state machine's own records (applied, membership, current snapshot).
//! - `records`: the records kept beside the user's keys (idempotency answers, the snapshot
//!   record) and the check that a state stream holds only records apply could have written.
//! - [`log_store`]: `LogStore`, the Raft log plus vote / committed / purged.
//! - [`state_machine`]: `StateMachine` and its three jobs, a file each: `apply` (commands,
//!   transactions, idempotency), `reader` (`KvReader`, reads for the API) and `snapshot_io`
//!   (building and installing snapshots).
//! - [`changes`]: the change history, what each applied entry changed key by key, kept for a
//!   window of entries.
//! - [`auth`]: roles and tokens as the state machine keeps them (hashes, never secrets), and
//!   `SharedAuth`, the table in memory that every request is checked against.
//! - [`leases`]: what the state machine keeps of leases, and `LeaseListener`, which tells the
//!   node's lease timers what apply granted and ended.
//! - `key_index`: the mod and create indexes of live keys in memory, so applying a write does
//!   not read its key from RocksDB.
//! - `log_cache`: the newest log entries, decoded, so replication and apply do not read back
//!   from RocksDB what was just appended.
//! - [`stream`]: the checksummed, point-in-time copy of the state that backups and snapshot
//!   files share (one writer, one reader with every check).
//! - [`snapshot`]: the snapshot files under `<db>/snapshots/` and `SnapshotFile`, the handle
//!   openraft sends from and receives into.
//! - [`backup`]: backups (`GET /v1/backup`), and restoring one into a new store.
//! - [`error`]: `StorageError`, the error of this layer.
//!
//! Why it is shaped this way, and every durability rule, is in `storage/DESIGN.md`.

pub mod auth;
pub mod backup;
pub mod changes;
pub mod codec;
mod db;
pub mod error;
mod key_index;
pub mod leases;
mod log_cache;
pub mod log_store;
mod records;
pub mod snapshot;
pub mod state_machine;
pub mod stream;
pub mod types;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{AuthCommand, AuthTable, Permission, Role, SharedAuth, TokenAccess, TokenRecord};
pub use db::StoreOptions;
pub use error::StorageError;
pub use leases::{LeaseInfo, LeaseListener};
pub use log_store::LogStore;
pub use state_machine::{
    DiskUsage, KvReader, MemoryUsage, RangePage, RangeRequest, ReadAt, StateMachine,
    StorageCounters,
};
pub use types::*;

/// Open the node's store at `path` (created if missing) with the default [`StoreOptions`].
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), StorageError> {
    open_with(path, &StoreOptions::default())
}

/// Open the node's store at `path` (created if missing) and check the log-pointer invariant
/// `purged ≤ snapshot ≤ applied` on what is on disk.
pub fn open_with(
    path: &Path,
    options: &StoreOptions,
) -> Result<(LogStore, StateMachine), StorageError> {
    let db = Arc::new(db::open(path, options)?);
    let log_store = LogStore::new(
        db.clone(),
        Duration::from_millis(options.fault_log_sync_delay_ms),
    )?;
    let state_machine = StateMachine::open(db, path, options)?;
    let purged = log_store.purged()?;
    let snapshot = state_machine.snapshot_log_id()?;
    let applied = state_machine.applied();
    // Invariant (storage/DESIGN.md): purged ≤ snapshot ≤ applied. A log is only purged behind a
    // durable snapshot, and a snapshot is only built or installed from applied state.
    if purged.is_some() && purged > snapshot {
        return Err(StorageError::Invariant(format!(
            "purged {purged:?} is ahead of the snapshot {snapshot:?}"
        )));
    }
    if snapshot > applied {
        return Err(StorageError::Invariant(format!(
            "snapshot {snapshot:?} is ahead of applied {applied:?}"
        )));
    }
    tracing::info!(?purged, ?snapshot, ?applied, "opened store");
    Ok((log_store, state_machine))
}
