//! The change history: what each applied entry changed, key by key, kept for the last
//! `StoreOptions::history_entries` entries, so that a watch can start or resume from an index
//! (`storage/DESIGN.md`, "The change history"). A [`ChangeListener`] (the node's watch feed)
//! is told of each applied batch's changes as they are written.
//!
//! Layout: the `changes` column family, big-endian `u64` index + key bytes → encoded
//! [`StoredChange`]. One record per key an entry changed (an entry changes a key at most once:
//! a batch's commands have disjoint keys, and a transaction's writes to one key collapse into
//! its last). Written in the entry's own `WriteBatch`, so the history and the state move
//! together: after a crash both are exactly "everything up to the applied index".
//!
//! `m:changes_compact` in `sm` is the compact index C: every change with an index in
//! `(C, applied]` is in the history, and none at or below C may be. It starts at the applied
//! index the store had when it first kept a history (0 for a fresh store, the backup's index
//! for a restored one), becomes a snapshot's index when one is installed (the history is
//! emptied, as the state it described is replaced), and moves up as old changes are pruned.
//! Neither snapshots nor backups carry the history: a mirror's window starts where its state
//! came from.

use serde::{Deserialize, Serialize};

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};

use crate::codec;
use crate::db::{self, CF_CHANGES, CF_SM, KEY_CHANGES_COMPACT};
use crate::error::{Result, StorageError};

/// What one key became at one index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Put {
        value: Vec<u8>,
        mod_index: u64,
        create_index: u64,
    },
    Delete,
}

/// The stored part of a change (the index and the key are the record's key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChange {
    pub kind: ChangeKind,
    /// The key's `mod_index` before this change; `None` if it did not exist.
    pub prev_mod_index: Option<u64>,
}

/// One change of one key at one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub index: u64,
    pub key: String,
    pub kind: ChangeKind,
    pub prev_mod_index: Option<u64>,
}

/// How much one history read returns at most. A page never splits an index, so it may pass
/// either bound by the changes of its last index (one entry's, a few MiB at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub max_changes: usize,
    /// Keys and values, in bytes.
    pub max_bytes: usize,
}

impl PageLimit {
    /// At most `max_changes` changes, whatever their size.
    pub fn changes(max_changes: usize) -> Self {
        Self {
            max_changes,
            max_bytes: usize::MAX,
        }
    }
}

/// Told of every change as it is applied (the watches of a node). Called on the applying
/// task, after the changes are in RocksDB and before openraft answers their writes: it must
/// not block.
pub trait ChangeListener: Send + Sync + 'static {
    /// Every entry up to `applied_index` is applied; `changes` are those of the entries applied
    /// since the previous call, in index order, then key order within an index.
    fn applied(&self, applied_index: u64, changes: Vec<Change>);
    /// The state is now what it was at `applied_index`, with no history before it: the store
    /// was opened there (the listener was just set), or a snapshot was installed.
    fn restarted_at(&self, applied_index: u64);
}

/// The changes of a history read, in index order, then key order within an index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    /// Every change with an index up to this one was examined (those that match are in
    /// `changes`): the next read starts at `through_index + 1`.
    pub through_index: u64,
}

/// Prune in steps of this many entries, so that a range deletion is written once per step
/// rather than once per entry (RocksDB keeps each range tombstone until compaction).
pub(crate) const PRUNE_STEP_ENTRIES: u64 = 1024;

/// The key of the change of `key` at `index`.
pub(crate) fn change_key(index: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Stage the change of `key` at `index` into `batch`.
pub(crate) fn stage(
    db: &DB,
    batch: &mut WriteBatch,
    index: u64,
    key: &str,
    change: &StoredChange,
) -> Result<()> {
    batch.put_cf(
        db::cf(db, CF_CHANGES),
        change_key(index, key),
        codec::encode(change)?,
    );
    Ok(())
}

/// The compact index as stored; `None` for a store that has not kept a history yet.
pub(crate) fn read_compact(db: &DB, view: Option<&rocksdb::Snapshot<'_>>) -> Result<Option<u64>> {
    let cf = db::cf(db, CF_SM);
    let bytes = match view {
        Some(view) => view.get_cf(cf, KEY_CHANGES_COMPACT)?,
        None => db.get_cf(cf, KEY_CHANGES_COMPACT)?,
    };
    Ok(bytes.map(|bytes| codec::decode(&bytes)).transpose()?)
}

/// Stage: the history is empty and starts after `index` (a snapshot installed or a backup
/// restored at `index`).
pub(crate) fn stage_reset(db: &DB, batch: &mut WriteBatch, index: u64) -> Result<()> {
    let cf = db::cf(db, CF_CHANGES);
    batch.delete_range_cf(cf, &[][..], &[0xffu8; 9][..]);
    batch.put_cf(
        db::cf(db, CF_SM),
        KEY_CHANGES_COMPACT,
        codec::encode(&index)?,
    );
    Ok(())
}

/// The compact index after applying `applied` with a window of `history_entries`, if the
/// history should be pruned now: a step past the window beyond `compact`.
pub(crate) fn prune_to(compact: u64, applied: u64, history_entries: u64) -> Option<u64> {
    let floor = applied.saturating_sub(history_entries);
    (floor >= compact.saturating_add(PRUNE_STEP_ENTRIES)).then_some(floor)
}

/// Stage the removal of every change at or below `new_compact`, and the new compact index.
pub(crate) fn stage_prune(
    db: &DB,
    batch: &mut WriteBatch,
    compact: u64,
    new_compact: u64,
) -> Result<()> {
    debug_assert!(new_compact > compact);
    batch.delete_range_cf(
        db::cf(db, CF_CHANGES),
        compact.to_be_bytes(),
        (new_compact + 1).to_be_bytes(),
    );
    batch.put_cf(
        db::cf(db, CF_SM),
        KEY_CHANGES_COMPACT,
        codec::encode(&new_compact)?,
    );
    Ok(())
}

/// Which keys a history read wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFilter {
    Key(String),
    Prefix(String),
    /// `[start, end)`; `end: None` is unbounded.
    Range {
        start: String,
        end: Option<String>,
    },
}

impl KeyFilter {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyFilter::Key(wanted) => key == wanted,
            KeyFilter::Prefix(prefix) => key.starts_with(prefix.as_str()),
            KeyFilter::Range { start, end } => {
                key >= start.as_str() && end.as_deref().is_none_or(|end| key < end)
            }
        }
    }
}

/// Why a history read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The changes from `from_index` were pruned (or never kept here): every change after
    /// `compact_index` is kept; re-read the state and read the history from its index on.
    #[error("changes from index {from_index} are no longer kept here; the history starts after index {compact_index}")]
    Compacted { from_index: u64, compact_index: u64 },
}

/// Read the changes matching `filter` with an index from `from_index` up to the applied index
/// of one view, within `limit` (the page then ends early, at the index of its last change).
/// Blocking: call it from a blocking thread.
pub(crate) fn read(
    db: &DB,
    from_index: u64,
    filter: &KeyFilter,
    limit: PageLimit,
) -> Result<std::result::Result<ChangesPage, HistoryError>> {
    let (view, applied) = db::consistent_view(db)?;
    let applied = applied.map_or(0, |id| id.index);
    let compact = read_compact(db, Some(&view))?.unwrap_or(applied);
    if from_index <= compact {
        return Ok(Err(HistoryError::Compacted {
            from_index,
            compact_index: compact,
        }));
    }
    let mut page = ChangesPage {
        changes: Vec::new(),
        through_index: applied.max(from_index.saturating_sub(1)),
    };
    if from_index > applied {
        return Ok(Ok(page));
    }
    let mut read_options = ReadOptions::default();
    read_options.set_snapshot(&view);
    read_options.set_iterate_upper_bound((applied + 1).to_be_bytes());
    let start = from_index.to_be_bytes();
    let iter = db.iterator_cf_opt(
        db::cf(db, CF_CHANGES),
        read_options,
        IteratorMode::From(&start, Direction::Forward),
    );
    let mut page_bytes = 0usize;
    for item in iter {
        let (record_key, value) = item?;
        let (index, key) = split_key(&record_key)?;
        let full = page.changes.len() >= limit.max_changes || page_bytes >= limit.max_bytes;
        if full && page.changes.last().is_some_and(|c| c.index < index) {
            page.through_index = index - 1;
            break;
        }
        if !filter.matches(key) {
            continue;
        }
        let stored: StoredChange = codec::decode(&value)?;
        page_bytes = page_bytes.saturating_add(record_key.len() + value.len());
        page.changes.push(Change {
            index,
            key: key.to_string(),
            kind: stored.kind,
            prev_mod_index: stored.prev_mod_index,
        });
    }
    Ok(Ok(page))
}

fn split_key(record_key: &[u8]) -> Result<(u64, &str)> {
    let corrupt = || StorageError::Invariant("a change record with a malformed key".into());
    let (index, key) = record_key.split_at_checked(8).ok_or_else(corrupt)?;
    let index = u64::from_be_bytes(index.try_into().map_err(|_| corrupt())?);
    Ok((index, std::str::from_utf8(key).map_err(|_| corrupt())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_comes_once_a_step_past_the_window() {
        // Window 100: nothing to prune until the floor (applied - 100) is a step past compact.
        assert_eq!(prune_to(0, 100, 100), None);
        assert_eq!(prune_to(0, 100 + PRUNE_STEP_ENTRIES - 1, 100), None);
        assert_eq!(
            prune_to(0, 100 + PRUNE_STEP_ENTRIES, 100),
            Some(PRUNE_STEP_ENTRIES)
        );
        // The window is always kept whole: applied - new compact = the window.
        let applied = 5 * PRUNE_STEP_ENTRIES + 7;
        let compact = prune_to(PRUNE_STEP_ENTRIES, applied, 100).unwrap();
        assert_eq!(applied - compact, 100);
        // A compact set by a snapshot ahead of the window is never moved back.
        assert_eq!(prune_to(applied, applied + 10, 100), None);
    }

    #[test]
    fn filters_match_a_key_a_prefix_and_a_half_open_range() {
        assert!(KeyFilter::Key("a/b".into()).matches("a/b"));
        assert!(!KeyFilter::Key("a/b".into()).matches("a/bc"));
        assert!(KeyFilter::Prefix("a/".into()).matches("a/b"));
        assert!(!KeyFilter::Prefix("a/".into()).matches("b/a"));
        let range = KeyFilter::Range {
            start: "b".into(),
            end: Some("d".into()),
        };
        assert!(range.matches("b") && range.matches("c/x") && !range.matches("d"));
        assert!(!range.matches("a"));
        let open = KeyFilter::Range {
            start: "b".into(),
            end: None,
        };
        assert!(open.matches("zzz"));
    }

    #[test]
    fn a_record_key_orders_by_index_then_key() {
        let a = change_key(2, "z");
        let b = change_key(10, "a");
        assert!(a < b, "index 2 before index 10 whatever the keys");
        assert_eq!(split_key(&change_key(7, "k/é")).unwrap(), (7, "k/é"));
        assert!(split_key(&[1, 2, 3]).is_err());
    }
}
