//! `KeyIndex`: the mod and create indexes of live keys, in memory, so that applying a put or a
//! delete does not read the key's previous record from RocksDB.
//!
//! Every applied write must know the key's current `mod_index` (for its answer and for
//! preconditions) and `create_index` (which a put keeps). Reading them from RocksDB was a
//! memtable or SST lookup per key on every node, about a tenth of a put's CPU at 64 clients
//! (BENCHMARKS.md). etcd keeps the same thing in memory (its `treeIndex`).
//!
//! The index is a cache, not the truth: a key it does not hold is looked up in RocksDB as
//! before. What it holds is always what RocksDB holds:
//! - it changes only after the write batch that made the change is in RocksDB
//!   (`StateMachine::apply_one`);
//! - a deleted key is removed;
//! - a snapshot install, which replaces the whole state, clears it;
//! - it starts empty (after a restart it fills as keys are written), so start-up does not scan
//!   the keys.
//!
//! Bounded: once its estimated size reaches `max_bytes`, new keys are not added (keys already
//! in it are still updated and removed), and those keys are read from RocksDB.

use std::collections::HashMap;

use crate::types::KeyRecord;

/// What the index keeps of one key: the indexes of its current record, not its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyMeta {
    pub mod_index: u64,
    pub create_index: u64,
    /// The lease the key is attached to (0: none), so that a write that detaches it reads
    /// nothing more.
    pub lease: u64,
}

impl KeyRecord {
    /// The record's indexes, as the key index keeps them, with the key's `lease` (0: none).
    pub(crate) fn meta(&self, lease: u64) -> KeyMeta {
        KeyMeta {
            mod_index: self.mod_index,
            create_index: self.create_index,
            lease,
        }
    }
}

/// Estimated memory of one entry besides its key's bytes: the boxed key's pointer and length
/// (16), the `KeyMeta` (24), the hash table's control byte and spare capacity (about 16), and
/// the allocator's rounding of the key (about 16). An estimate: the bound is on this figure.
const ENTRY_OVERHEAD_BYTES: usize = 72;

/// The mod and create indexes of live keys; see the module doc.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    keys: HashMap<Box<str>, KeyMeta>,
    /// Estimated bytes of `keys` (`ENTRY_OVERHEAD_BYTES` plus the key's length per entry).
    bytes: usize,
    max_bytes: usize,
}

impl KeyIndex {
    /// An empty index that grows to at most `max_bytes` (estimated); 0 keeps nothing.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            keys: HashMap::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// The key's indexes if the index holds it; `None` means "not known here", not "absent".
    pub(crate) fn get(&self, key: &str) -> Option<KeyMeta> {
        self.keys.get(key).copied()
    }

    /// Record that `key`'s current record now has `meta` (`None`: the key does not exist).
    /// Call only once the change is in RocksDB.
    pub(crate) fn set(&mut self, key: &str, meta: Option<KeyMeta>) {
        match meta {
            Some(meta) => {
                if let Some(held) = self.keys.get_mut(key) {
                    *held = meta;
                    return;
                }
                let entry_bytes = key.len() + ENTRY_OVERHEAD_BYTES;
                if self.bytes + entry_bytes > self.max_bytes {
                    return;
                }
                self.keys.insert(key.into(), meta);
                self.bytes += entry_bytes;
            }
            None => {
                if self.keys.remove(key).is_some() {
                    self.bytes -= key.len() + ENTRY_OVERHEAD_BYTES;
                }
            }
        }
    }

    /// Forget everything (the state was replaced, e.g. by a snapshot install).
    pub(crate) fn clear(&mut self) {
        self.keys = HashMap::new();
        self.bytes = 0;
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Estimated bytes held (never above the bound).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mod_index: u64) -> Option<KeyMeta> {
        Some(KeyMeta {
            mod_index,
            create_index: 1,
            lease: 0,
        })
    }

    #[test]
    fn holds_updates_and_removes_keys() {
        let mut index = KeyIndex::new(1 << 20);
        assert_eq!(index.get("a"), None);
        index.set("a", meta(1));
        index.set("a", meta(2));
        assert_eq!(index.get("a"), meta(2));
        assert_eq!(index.bytes(), 1 + ENTRY_OVERHEAD_BYTES);
        index.set("a", None);
        assert_eq!(index.get("a"), None);
        assert_eq!((index.len(), index.bytes()), (0, 0));
        // Removing a key it does not hold changes nothing.
        index.set("b", None);
        assert_eq!((index.len(), index.bytes()), (0, 0));
    }

    #[test]
    fn stops_adding_keys_at_its_bound_but_still_updates_and_removes_held_ones() {
        let bound = 3 * (2 + ENTRY_OVERHEAD_BYTES);
        let mut index = KeyIndex::new(bound);
        for key in ["k1", "k2", "k3", "k4"] {
            index.set(key, meta(1));
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.get("k4"), None, "over the bound: not added");
        assert!(index.bytes() <= bound);
        index.set("k1", meta(9));
        assert_eq!(index.get("k1"), meta(9), "a held key is still updated");
        index.set("k2", None);
        index.set("k4", meta(4));
        assert_eq!(index.get("k4"), meta(4), "room again after a removal");
        index.clear();
        assert_eq!((index.len(), index.bytes(), index.get("k1")), (0, 0, None));
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut index = KeyIndex::new(0);
        index.set("a", meta(1));
        assert_eq!((index.len(), index.get("a")), (0, None));
    }
}
