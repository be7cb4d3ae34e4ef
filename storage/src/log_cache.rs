//! `LogCache`: the newest entries of the Raft log, decoded, in memory.
//!
//! Right after an entry is appended, openraft reads it back: the leader once per follower to
//! replicate it and once to apply it, a follower once to apply it. Served from RocksDB, each
//! read opens an iterator, seeks, and decodes the entry again; served from here it is a clone.
//!
//! Invariant (asserted on every read it answers, and by the log store tests): while the cache holds
//! anything, it holds a contiguous run of the log that ends at the log's last entry, each entry
//! exactly as stored. It stays so because the log changes only through `LogStore`, which
//! updates the cache in the same step: `append` adds what it wrote (after the write succeeded),
//! `truncate` drops the same suffix and `purge` the same prefix (both before they delete from
//! RocksDB, so no reader finds here what RocksDB no longer has). It starts empty; a read whose
//! first entry it does not hold goes to RocksDB.
//!
//! Bounded by `max_bytes` (the entries' encoded size; decoded, an entry of small writes takes
//! somewhat more, its strings' and vectors' headers) and `MAX_ENTRIES`: past either, the oldest
//! entries leave first. Replication that lags further behind reads from RocksDB as before.

use std::collections::VecDeque;

use crate::types::Entry;

/// Most entries held, whatever their size.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// What a read found in the cache.
pub(crate) enum Cached {
    /// The range from its start, in order, up to the end of the range or of the cache.
    All(Vec<Entry>),
    /// The cache does not hold the range's start: read RocksDB.
    Miss,
}

pub(crate) struct LogCache {
    /// (entry, encoded bytes), consecutive indexes, oldest first.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl LogCache {
    /// An empty cache holding at most `max_bytes` of encoded entries (0: holds nothing).
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// `entry` was just written to the log after every entry before it; `encoded_bytes` is its
    /// stored size.
    pub(crate) fn appended(&mut self, entry: Entry, encoded_bytes: usize) {
        if self.max_bytes == 0 {
            return;
        }
        if let Some(last) = self.last_index() {
            if entry.log_id.index != last + 1 {
                // The log was cut back elsewhere, or this append does not follow the last one:
                // whatever is held no longer ends at the log's last entry.
                self.clear();
            }
        }
        self.entries.push_back((entry, encoded_bytes));
        self.bytes += encoded_bytes;
        while self.entries.len() > MAX_ENTRIES || self.bytes > self.max_bytes {
            let Some((_, bytes)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= bytes;
        }
    }

    /// Every entry from index `since` on is being removed from the log.
    pub(crate) fn truncated(&mut self, since: u64) {
        while self.last_index().is_some_and(|last| last >= since) {
            let (_, bytes) = self.entries.pop_back().expect("not empty");
            self.bytes -= bytes;
        }
    }

    /// Every entry up to and including index `upto` is being removed from the log.
    pub(crate) fn purged(&mut self, upto: u64) {
        while self.first_index().is_some_and(|first| first <= upto) {
            let (_, bytes) = self.entries.pop_front().expect("not empty");
            self.bytes -= bytes;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries with index in `start..end`, if the cache holds `start`. Past its last entry
    /// it answers nothing rather than "none there": an append may have written more to RocksDB
    /// a moment before it reaches the cache.
    pub(crate) fn get(&self, start: u64, end: u64) -> Cached {
        if end <= start {
            return Cached::All(Vec::new());
        }
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return Cached::Miss;
        };
        if start < first || start > last {
            return Cached::Miss;
        }
        let from = (start - first) as usize;
        let to = (end.min(last + 1) - first) as usize;
        Cached::All(
            self.entries
                .range(from..to)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }

    #[cfg(test)]
    fn indexes(&self) -> Vec<u64> {
        self.entries.iter().map(|(e, _)| e.log_id.index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(found: Cached) -> Option<Vec<u64>> {
        match found {
            Cached::All(entries) => Some(entries.iter().map(|e| e.log_id.index).collect()),
            Cached::Miss => None,
        }
    }

    #[test]
    fn answers_only_ranges_it_holds_from_their_start() {
        let mut cache = LogCache::new(1 << 20);
        assert!(indexes(cache.get(0, 10)).is_none(), "empty: ask RocksDB");
        for i in 5..=9 {
            cache.appended(entry(i), 10);
        }
        assert_eq!(indexes(cache.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(cache.get(7, 8)), Some(vec![7]));
        assert_eq!(indexes(cache.get(8, u64::MAX)), Some(vec![8, 9]));
        assert!(
            indexes(cache.get(10, 20)).is_none(),
            "past its end: ask RocksDB"
        );
        assert_eq!(indexes(cache.get(7, 7)), Some(vec![]));
        assert!(
            indexes(cache.get(4, 6)).is_none(),
            "starts before the cache"
        );
    }

    #[test]
    fn truncate_and_purge_follow_the_log() {
        let mut cache = LogCache::new(1 << 20);
        for i in 1..=6 {
            cache.appended(entry(i), 10);
        }
        cache.truncated(5);
        assert_eq!(cache.indexes(), vec![1, 2, 3, 4]);
        cache.purged(2);
        assert_eq!(cache.indexes(), vec![3, 4]);
        assert_eq!(cache.bytes, 20);
        cache.appended(entry(5), 10);
        assert_eq!(indexes(cache.get(3, 100)), Some(vec![3, 4, 5]));
        // An append that does not follow the last entry starts the cache afresh.
        cache.appended(entry(9), 10);
        assert_eq!(cache.indexes(), vec![9]);
        cache.truncated(0);
        assert!(indexes(cache.get(9, 10)).is_none());
    }

    #[test]
    fn holds_at_most_its_bytes_and_entries() {
        let mut cache = LogCache::new(100);
        for i in 1..=30 {
            cache.appended(entry(i), 30);
        }
        assert_eq!(cache.indexes(), vec![28, 29, 30]);
        assert!(indexes(cache.get(27, 31)).is_none());

        let mut off = LogCache::new(0);
        off.appended(entry(1), 1);
        assert!(indexes(off.get(1, 2)).is_none(), "0 bytes: holds nothing");

        let mut many = LogCache::new(usize::MAX);
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            many.appended(entry(i), 1);
        }
        assert_eq!(many.entries.len(), MAX_ENTRIES);
        assert_eq!(many.first_index(), Some(10));
    }
}
