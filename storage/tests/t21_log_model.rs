//! Model-based property test of the log store: `LogStore` and a `BTreeMap` model receive the
//! same random appends (small entries and ones of 3 MiB, which push older entries out of the
//! log cache), truncations, purges, commits and re-opens (which empty the cache), and every read
//! of a random range must return exactly the model's entries, whether the cache or RocksDB
//! answers. The committed log id reads back as last saved, and after a re-open as it was when
//! the last append, truncation or purge wrote it (it is saved with them, not on its own).
//!
//! The seed is printed; set `PROPTEST_RNG_SEED=<seed>` to replay a run exactly.

mod common;

use std::collections::BTreeMap;

use mirrorkv_storage::{Command, Entry, LogId, LogStore, Precondition, StateMachine};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries after the last one; `big` makes the first one 3 MiB.
    Append {
        count: u64,
        big: bool,
    },
    /// Remove every entry not yet applied from some point on (`offset` picks it); the next
    /// appends get a new term.
    Truncate {
        offset: u64,
    },
    /// Apply up to some entry (`offset` picks it), snapshot, and purge the log up to it, as
    /// openraft does.
    Purge {
        offset: u64,
    },
    /// Save a committed log id (`offset` picks it, never behind the last one).
    Commit {
        offset: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..8, prop::bool::weighted(0.1)).prop_map(|(count, big)| Op::Append { count, big }),
        1 => any::<u64>().prop_map(|offset| Op::Truncate { offset }),
        1 => any::<u64>().prop_map(|offset| Op::Purge { offset }),
        2 => any::<u64>().prop_map(|offset| Op::Commit { offset }),
        1 => Just(Op::Reopen),
    ]
}

/// Bytes of a big entry's value: three of them exceed the log cache.
const BIG_VALUE_BYTES: usize = 3 * 1024 * 1024;

struct Harness {
    dir: tempfile::TempDir,
    store: Option<(LogStore, StateMachine)>,
    /// The log as it should be.
    model: BTreeMap<u64, Entry>,
    /// The last index ever purged: appends never go back behind it.
    purged: Option<u64>,
    /// The last index applied: never truncated.
    applied: Option<u64>,
    /// The newest committed log id saved: never truncated, never goes back.
    committed: Option<LogId>,
    /// What `read_committed` must answer: the last saved, or after a re-open `committed_written`.
    committed_readable: Option<LogId>,
    /// Saved since the last append, truncation or purge of this open store: the next one writes it.
    committed_pending: Option<LogId>,
    /// The committed log id as the last append, truncation or purge wrote it.
    committed_written: Option<LogId>,
    term: u64,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = mirrorkv_storage::open(dir.path()).expect("open store");
        Self {
            dir,
            store: Some(store),
            model: BTreeMap::new(),
            purged: None,
            applied: None,
            committed: None,
            committed_readable: None,
            committed_pending: None,
            committed_written: None,
            term: 1,
        }
    }

    fn log(&mut self) -> &mut LogStore {
        &mut self.store.as_mut().expect("open").0
    }

    fn entry(&self, index: u64, big: bool) -> Entry {
        let value_bytes = if big {
            BIG_VALUE_BYTES
        } else {
            (index % 200) as usize
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(self.term, 1), index),
            payload: EntryPayload::Normal(Command::Put {
                key: format!("k{index}"),
                value: vec![index as u8; value_bytes],
                precondition: Precondition::None,
            }),
        }
    }

    fn next_index(&self) -> u64 {
        match (self.model.last_key_value(), self.purged) {
            (Some((&last, _)), _) => last + 1,
            (None, Some(purged)) => purged + 1,
            (None, None) => 1,
        }
    }

    async fn run(&mut self, op: Op) {
        match op {
            Op::Append { count, big } => {
                let first = self.next_index();
                let entries: Vec<Entry> = (first..first + count)
                    .map(|index| self.entry(index, big && index == first))
                    .collect();
                for entry in &entries {
                    self.model.insert(entry.log_id.index, entry.clone());
                }
                self.log().blocking_append(entries).await.expect("append");
                self.wrote_committed();
            }
            Op::Truncate { offset } => {
                let unapplied: Vec<u64> = self
                    .model
                    .keys()
                    .copied()
                    .filter(|&i| Some(i) > self.applied)
                    .filter(|&i| Some(i) > self.committed.map(|c| c.index))
                    .collect();
                if unapplied.is_empty() {
                    return;
                }
                let since = unapplied[(offset % unapplied.len() as u64) as usize];
                let log_id = self.model[&since].log_id;
                self.model.split_off(&since);
                self.term += 1;
                self.log().truncate(log_id).await.expect("truncate");
                self.wrote_committed();
            }
            Op::Purge { offset } => {
                let Some((&first, _)) = self.model.first_key_value() else {
                    return;
                };
                let upto = first + offset % self.model.len() as u64;
                let log_id = self.model[&upto].log_id;
                // Only committed entries are applied.
                if self.committed < Some(log_id) {
                    self.commit(log_id).await;
                }
                let to_apply: Vec<Entry> = self
                    .model
                    .range(..=upto)
                    .filter(|(&i, _)| Some(i) > self.applied)
                    .map(|(_, e)| e.clone())
                    .collect();
                let sm = &mut self.store.as_mut().expect("open").1;
                if !to_apply.is_empty() {
                    sm.apply(to_apply).await.expect("apply");
                    self.applied = Some(upto);
                }
                sm.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .expect("snapshot");
                self.model = self.model.split_off(&(upto + 1));
                self.purged = Some(upto);
                self.log().purge(log_id).await.expect("purge");
                self.wrote_committed();
            }
            Op::Commit { offset } => {
                let at_least = self.committed.map_or(0, |c| c.index);
                let candidates: Vec<LogId> = self
                    .model
                    .range(at_least..)
                    .map(|(_, e)| e.log_id)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                self.commit(candidates[(offset % candidates.len() as u64) as usize])
                    .await;
            }
            Op::Reopen => {
                self.store = None;
                self.store = Some(mirrorkv_storage::open(self.dir.path()).expect("reopen"));
                self.committed_pending = None;
                self.committed_readable = self.committed_written;
            }
        }
    }

    /// An append, truncation or purge wrote the pending committed log id, if any.
    fn wrote_committed(&mut self) {
        if let Some(committed) = self.committed_pending.take() {
            self.committed_written = Some(committed);
        }
    }

    async fn commit(&mut self, log_id: LogId) {
        self.committed = Some(log_id);
        self.committed_readable = Some(log_id);
        self.committed_pending = Some(log_id);
        self.log()
            .save_committed(Some(log_id))
            .await
            .expect("save committed");
    }

    /// Reads of the whole log, of every one-entry range at its ends, and of `ranges`.
    async fn check(&mut self, ranges: &[(u64, u64)]) {
        let committed = self.log().read_committed().await.expect("read committed");
        assert_eq!(committed, self.committed_readable, "committed log id");
        let first = self.model.first_key_value().map_or(0, |(&i, _)| i);
        let end = self.next_index();
        let mut all = vec![
            (first, end + 3),
            (end.saturating_sub(1), end),
            (end, end + 5),
        ];
        all.extend(ranges.iter().map(|&(a, len)| {
            let start = first + a % (end - first + 2);
            (start, start + len)
        }));
        for (start, stop) in all {
            let read = self
                .log()
                .try_get_log_entries(start..stop)
                .await
                .expect("read");
            let expected: Vec<&Entry> = self.model.range(start..stop).map(|(_, e)| e).collect();
            let read_ids: Vec<LogId> = read.iter().map(|e| e.log_id).collect();
            let expected_ids: Vec<LogId> = expected.iter().map(|e| e.log_id).collect();
            assert_eq!(read_ids, expected_ids, "log ids of {start}..{stop}");
            assert!(
                read.iter()
                    .zip(&expected)
                    .all(|(a, b)| a.payload == b.payload),
                "payloads of {start}..{stop}"
            );
        }
    }
}

#[test]
fn t21_log_store_matches_btreemap_model() {
    common::run_cases(
        "t21",
        24,
        &proptest::collection::vec(
            (op(), proptest::collection::vec((any::<u64>(), 0u64..12), 3)),
            1..60,
        ),
        |steps| async move {
            let mut harness = Harness::new();
            for (op, ranges) in steps {
                harness.run(op).await;
                harness.check(&ranges).await;
            }
        },
    );
}
