//! Backups: a consistent point-in-time copy of the replicated state as a byte stream (the
//! format of [`crate::stream`], shared with snapshot files), and the restore that turns one into
//! the store of a fresh data dir.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use openraft::{Membership, Vote};
use rocksdb::WriteBatch;

use crate::codec;
use crate::db::{
    self, CF_RAFT_META, CF_SM, KEY_APPLIED, KEY_COMMITTED, KEY_MEMBERSHIP, KEY_PURGED, KEY_VOTE,
};
use crate::error::{Result, StorageError};
use crate::snapshot::SnapshotDir;
use crate::state_machine::SnapshotBuilder;
use crate::stream::{self, View};
pub use crate::stream::{BackupHeader, BackupSummary, FORMAT_VERSION, MAGIC, MAX_FRAME_BYTES};
use crate::types::{NodeId, NodeInfo, StoredMembership};
use crate::KvReader;

impl KvReader {
    /// Write a backup of the state as of now to `sink`, in pieces. Everything is read from one
    /// RocksDB point-in-time view, so writes go on meanwhile. `started` is called once with the
    /// copy's index before any byte is sent. `sink` returns false to abort (the reader went
    /// away). Blocking: run it on a blocking thread.
    pub fn write_backup(
        &self,
        source_node: NodeId,
        cluster_id: &str,
        started: impl FnOnce(u64),
        sink: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<BackupSummary> {
        let view = View::take(self.db())?;
        started(view.applied.map_or(0, |id| id.index));
        view.write(source_node, cluster_id, sink)
    }
}

/// Build the store of a new node at `path` (which must not exist) from the backup in `input`:
/// the data is exactly the backup's, at the backup's index, and the membership is `members`
/// (this node, `node_id`, must be one of them), so the node starts a new cluster of those
/// members with that data. Every member of a multi-node cluster is restored from the same file.
///
/// All-or-nothing: any error (corruption, truncation, I/O) removes what was written, and the
/// caller publishes the result only after this returns Ok (see `mirrorkv restore`).
pub fn restore(
    input: impl Read,
    path: &Path,
    node_id: NodeId,
    members: &BTreeMap<NodeId, NodeInfo>,
) -> Result<BackupSummary> {
    if !members.contains_key(&node_id) {
        return Err(StorageError::Backup(format!(
            "node {node_id} is not one of the new members"
        )));
    }
    if path.exists() {
        return Err(StorageError::Backup(format!(
            "{} already exists; restore only creates a new store",
            path.display()
        )));
    }
    let result = restore_into(input, path, node_id, members);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
    result
}

fn restore_into(
    input: impl Read,
    path: &Path,
    node_id: NodeId,
    members: &BTreeMap<NodeId, NodeInfo>,
) -> Result<BackupSummary> {
    let db = Arc::new(db::open(path, &db::StoreOptions::default())?);
    let sm = db::cf(&db, CF_SM);
    // A bad stream fails before the final synced write, and `restore` removes the directory.
    let (header, summary) = stream::load_entries(&db, input)?;
    // The new cluster: the backup's data at the backup's log id, with a new membership.
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(
        header.applied,
        Membership::new(vec![voters], members.clone()),
    );
    let mut batch = WriteBatch::default();
    batch.put_cf(sm, KEY_APPLIED, codec::encode(&header.applied)?);
    batch.put_cf(sm, KEY_MEMBERSHIP, codec::encode(&membership)?);
    if let Some(applied) = header.applied {
        // The log starts after the copy: everything up to it is "purged" behind the snapshot
        // built below. The vote starts at the copy's term so that the new cluster's first
        // leader (term + 1) appends entries whose log ids sort after it.
        let meta = db::cf(&db, CF_RAFT_META);
        batch.put_cf(meta, KEY_PURGED, codec::encode(&applied)?);
        batch.put_cf(meta, KEY_COMMITTED, codec::encode(&Some(applied))?);
        let vote: Vote<NodeId> = Vote::new(applied.leader_id.term, node_id);
        batch.put_cf(meta, KEY_VOTE, codec::encode(&vote)?);
    }
    db.write_opt(batch, &db::synced())?;
    // A snapshot at the applied index, stored fsynced, keeps `purged ≤ snapshot ≤ applied`
    // and lets the node send the data to members that have none.
    let snapshots = Arc::new(SnapshotDir::open(path)?);
    SnapshotBuilder::new(db.clone(), snapshots).build()?;
    db.flush_wal(true)?;
    Ok(summary)
}
