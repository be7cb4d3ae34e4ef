//! Snapshots of the state machine: building one from a point-in-time view into a file, and
//! installing a received file in place of the whole state.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{RaftSnapshotBuilder, StorageIOError};
use rocksdb::{WriteBatch, DB};

use super::{blocking, Snapshots, StorageCounters};
use crate::codec;
use crate::db::{
    self, stored_snapshot, CF_SM, CF_SNAPSHOT, KEY_APPLIED, KEY_INSTALLING, KEY_MEMBERSHIP,
    KEY_SNAPSHOT,
};
use crate::error::{Result, StorageError};
use crate::records::StoredSnapshot;
use crate::snapshot::{io_error, SnapshotDir, SnapshotFile};
use crate::stream::{self, View};
use crate::types::{RaftStorageError, SnapshotMeta, TypeConfig};

/// Builds a snapshot file from a RocksDB point-in-time view of the state machine.
pub struct SnapshotBuilder {
    pub(super) db: Arc<DB>,
    pub(super) counters: Arc<StorageCounters>,
    pub(super) snapshots: Snapshots,
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
pub(super) fn install_file(
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
/// makes the snapshot current, empties the change history (which now starts after the
/// snapshot) and removes the marker. Idempotent, so a crash midway is finished
/// by running it again. Returns the number of entries.
pub(super) fn load_snapshot(
    db: &DB,
    dir: &SnapshotDir,
    installing: &StoredSnapshot,
) -> Result<u64> {
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
    // The history described the state just replaced: it now starts after the snapshot.
    crate::changes::stage_reset(db, &mut batch, meta.last_log_id.map_or(0, |id| id.index))?;
    db.write_opt(batch, &db::synced())?;
    Ok(summary.entries)
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
