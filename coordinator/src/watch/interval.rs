//! `IntervalIndex`: which watched key ranges contain a key, in O(log n) per key, however many
//! ranges are watched (a prefix is the range `[P, prefix_end(P))`).
//!
//! The key space is cut at every range's ends into segments; each segment holds the ids of
//! the ranges covering all of it. A key lies in exactly one segment, found with one lookup of
//! the greatest boundary at or below it. Adding or removing a range touches the segments it
//! covers only. Keys compare as bytes, as the store orders them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Ranges `[start, end)` (`end: None` is unbounded), each under an id.
#[derive(Debug, Default)]
pub struct IntervalIndex {
    /// Boundary → the ids of the ranges that cover `[boundary, next boundary)`. A key below
    /// the first boundary is in no range.
    segments: BTreeMap<Vec<u8>, BTreeSet<u64>>,
}

/// The first key after every key that starts with `prefix` (`None`: there is none, the range
/// is unbounded).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl IntervalIndex {
    /// Add the range `[start, end)` under `id`. An empty range (`end <= start`) covers nothing.
    pub fn insert(&mut self, id: u64, start: &[u8], end: Option<&[u8]>) {
        if end.is_some_and(|end| end <= start) {
            return;
        }
        self.split_at(start);
        if let Some(end) = end {
            self.split_at(end);
        }
        for (_, ids) in self.covered(start, end) {
            ids.insert(id);
        }
    }

    /// Remove the range `[start, end)` of `id` (as it was inserted).
    pub fn remove(&mut self, id: u64, start: &[u8], end: Option<&[u8]>) {
        if end.is_some_and(|end| end <= start) {
            return;
        }
        for (_, ids) in self.covered(start, end) {
            ids.remove(&id);
        }
        self.merge_at(start);
        if let Some(end) = end {
            self.merge_at(end);
        }
    }

    /// The ids of every range that contains `key`.
    pub fn containing(&self, key: &[u8]) -> impl Iterator<Item = u64> + '_ {
        self.segments
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .into_iter()
            .flat_map(|(_, ids)| ids.iter().copied())
    }

    /// Boundaries kept (for tests: removing every range leaves none).
    pub fn boundaries(&self) -> usize {
        self.segments.len()
    }

    fn covered<'a>(
        &'a mut self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a mut BTreeSet<u64>)> {
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.segments
            .range_mut::<[u8], _>((Bound::Included(start), upper))
    }

    /// Make `at` a boundary; the new segment starts with the ids of the one it splits.
    fn split_at(&mut self, at: &[u8]) {
        if self.segments.contains_key(at) {
            return;
        }
        let ids = self
            .segments
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(at)))
            .next_back()
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default();
        self.segments.insert(at.to_vec(), ids);
    }

    /// Drop the boundary `at` if it no longer separates different ids (or is the first one and
    /// covers nothing).
    fn merge_at(&mut self, at: &[u8]) {
        let Some(ids) = self.segments.get(at) else {
            return;
        };
        let before = self
            .segments
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(at)))
            .next_back()
            .map(|(_, ids)| ids);
        let redundant = match before {
            Some(before) => before == ids,
            None => ids.is_empty(),
        };
        if redundant {
            self.segments.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ids(index: &IntervalIndex, key: &str) -> Vec<u64> {
        let mut found: Vec<u64> = index.containing(key.as_bytes()).collect();
        found.sort_unstable();
        found
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_key_is_found_in_exactly_the_ranges_that_hold_it() {
        let mut index = IntervalIndex::default();
        index.insert(1, b"a/", prefix_end(b"a/").as_deref());
        index.insert(2, b"a/b", Some(b"a/d"));
        index.insert(3, b"", None);
        index.insert(4, b"c", Some(b"c"));
        assert_eq!(ids(&index, "a/a"), [1, 3]);
        assert_eq!(ids(&index, "a/c"), [1, 2, 3]);
        assert_eq!(ids(&index, "a/d"), [1, 3]);
        assert_eq!(ids(&index, "a0"), [3]);
        assert_eq!(ids(&index, "c"), [3], "an empty range holds nothing");
        index.remove(3, b"", None);
        assert_eq!(ids(&index, "b"), Vec::<u64>::new());
        assert_eq!(ids(&index, "a/c"), [1, 2]);
        index.remove(1, b"a/", prefix_end(b"a/").as_deref());
        index.remove(2, b"a/b", Some(b"a/d"));
        assert_eq!(index.boundaries(), 0, "nothing watched, nothing kept");
    }

    /// Random ranges added and removed, checked against a scan of every range, with a seed
    /// printed and taken from `MIRRORKV_TEST_SEED`.
    #[test]
    fn matches_a_scan_of_every_range() {
        let seed: u64 = std::env::var("MIRRORKV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("seed {seed} (MIRRORKV_TEST_SEED={seed} to repeat)");
        let mut state = seed | 1;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let key = |n: u64| format!("k{n:02}").into_bytes();
        let mut index = IntervalIndex::default();
        let mut live: HashMap<u64, (Vec<u8>, Option<Vec<u8>>)> = HashMap::new();
        for id in 0..2000u64 {
            if !live.is_empty() && next(3) == 0 {
                let victim = *live.keys().nth(next(live.len() as u64) as usize).unwrap();
                let (start, end) = live.remove(&victim).unwrap();
                index.remove(victim, &start, end.as_deref());
            } else {
                let start = key(next(40));
                let end = (next(5) != 0).then(|| key(next(40)));
                index.insert(id, &start, end.as_deref());
                live.insert(id, (start, end));
            }
            let probe = key(next(41));
            let mut expected: Vec<u64> = live
                .iter()
                .filter(|(_, (start, end))| {
                    probe >= *start && end.as_ref().is_none_or(|end| probe < *end)
                })
                .map(|(id, _)| *id)
                .collect();
            expected.sort_unstable();
            let mut found: Vec<u64> = index.containing(&probe).collect();
            found.sort_unstable();
            assert_eq!(found, expected, "seed {seed}, after id {id}");
        }
    }
}
