//! Installs that crash midway or get a bad file: the two ways a snapshot install can fail
//! that the conformance suite and the model test do not reach.

use std::path::PathBuf;

use super::snapshot_io::install_file;
use super::*;
use crate::changes::{HistoryError, KeyFilter, PageLimit};
use crate::types::{
    ApplyRefusal, Command, CommandResult, Precondition, Txn, TxnOp, MAX_TXN_RESPONSE_BYTES,
};
use openraft::CommittedLeaderId;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use rocksdb::WriteBatch;

fn put(index: u64, key: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put {
            key: key.to_string(),
            value: format!("value of {key} at {index}").into_bytes(),
            precondition: Precondition::None,
        }),
    }
}

/// Build a snapshot of `source` and install it in `target` through the chunked file path
/// openraft uses.
async fn send_snapshot(source: &mut StateMachine, target: &mut StateMachine) {
    let snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut receiving = target.begin_receiving_snapshot().await.unwrap();
    let mut sent = snapshot.snapshot;
    tokio::io::copy(&mut *sent, &mut *receiving).await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut *receiving)
        .await
        .unwrap();
    target
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();
}

/// A store at `dir` holding `keys`, put at indexes 1.., and a snapshot of it.
async fn store_with_snapshot(dir: &Path, keys: &[&str]) -> (StateMachine, SnapshotMeta, PathBuf) {
    let (_log, mut sm) = crate::open(dir).unwrap();
    let entries: Vec<Entry> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| put(i as u64 + 1, k))
        .collect();
    sm.apply(entries).await.unwrap();
    let builder = sm.get_snapshot_builder().await;
    let (meta, path) = builder.build().unwrap();
    (sm, meta, path)
}

#[tokio::test]
async fn an_install_interrupted_by_a_crash_is_finished_when_the_store_opens() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_source, meta, file) = store_with_snapshot(source_dir.path(), &["a", "b", "c"]).await;
    let (target, _, _) = store_with_snapshot(target_dir.path(), &["old"]).await;
    // The first steps of `install_file`, then a "crash": the file kept, the marker stored,
    // the old data deleted, none of the new data written yet.
    let name = target.snapshots.dir.final_name(3);
    target.snapshots.dir.publish(&file, &name).unwrap();
    let installing = StoredSnapshot {
        meta: meta.clone(),
        file: name,
    };
    let db = &target.db;
    db.put_cf_opt(
        db::cf(db, CF_SM),
        KEY_INSTALLING,
        codec::encode(&installing).unwrap(),
        &db::synced(),
    )
    .unwrap();
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(db::cf(db, CF_SM), &[][..], &[db::META_TAG][..]);
    db.write_opt(batch, &db::synced()).unwrap();
    // Readers refuse the mixed state instead of answering from it.
    let reader = target.reader();
    assert!(matches!(reader.get("old"), Err(StorageError::Installing)));
    assert!(matches!(
        reader.range(&RangeRequest::from(b"", 10)),
        Err(StorageError::Installing)
    ));
    drop((reader, target));

    let (_log, mut reopened) = crate::open(target_dir.path()).unwrap();
    let reader = reopened.reader();
    let page = reader.range(&RangeRequest::from(b"", 10)).unwrap();
    let keys: Vec<&str> = page.value.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b", "c"],
        "exactly the snapshot's keys after the finished install"
    );
    assert_eq!(page.index, 3);
    assert_eq!(reopened.applied_state().await.unwrap().0, meta.last_log_id);
    let current = reopened
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot");
    assert_eq!(current.meta, meta);
    assert_eq!(reopened.snapshot_log_id().unwrap(), meta.last_log_id);
    // The target's own history (its put of "old" at index 1) described the replaced state:
    // it is gone, and the history starts after the snapshot.
    let everything = KeyFilter::Prefix(String::new());
    assert!(matches!(
        reader
            .changes(1, &everything, PageLimit::changes(100))
            .unwrap(),
        Err(HistoryError::Compacted {
            compact_index: 3,
            ..
        })
    ));
    assert_eq!(
        reader
            .changes(4, &everything, PageLimit::changes(100))
            .unwrap()
            .unwrap()
            .changes,
        []
    );
}

#[tokio::test]
async fn a_corrupted_snapshot_file_is_refused_and_the_old_state_stays() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_source, meta, file) = store_with_snapshot(source_dir.path(), &["a", "b", "c"]).await;
    let (target, old_meta, _) = store_with_snapshot(target_dir.path(), &["old"]).await;
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let received = target.snapshots.dir.receive_path();
    std::fs::write(&received, &bytes).unwrap();
    let error = install_file(&target.db, &target.snapshots, &meta, &received).unwrap_err();
    assert!(error.to_string().contains("corrupted"), "{error}");
    let reader = target.reader();
    let old = reader.get("old").unwrap();
    assert!(old.value.is_some(), "the old state is untouched");
    assert_eq!(old.index, 1);
    assert!(reader.get("a").unwrap().value.is_none());
    assert_eq!(target.snapshot_log_id().unwrap(), old_meta.last_log_id);
    // A file whose contents do not match the meta is refused too.
    let mut wrong_meta = meta.clone();
    wrong_meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), 99));
    let received = target.snapshots.dir.receive_path();
    std::fs::copy(&file, &received).unwrap();
    let error = install_file(&target.db, &target.snapshots, &wrong_meta, &received).unwrap_err();
    assert!(error.to_string().contains("meta says"), "{error}");
    assert_eq!(reader.get("old").unwrap().index, 1);
}

/// The key index holds what this node applied; an install replaces that state, so a key
/// the snapshot deleted and created again must not keep its old indexes.
#[tokio::test]
async fn a_snapshot_install_clears_the_key_index() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The target applied "k" at 1, so its key index holds k: mod 1, created 1.
    let (mut target, _, _) = store_with_snapshot(target_dir.path(), &["k"]).await;
    assert_eq!(target.index.get("k").map(|m| m.create_index), Some(1));
    // The leader went on: k deleted at 2 and created again at 3.
    let (_log, mut source) = crate::open(source_dir.path()).unwrap();
    let delete = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
        payload: EntryPayload::Normal(Command::Delete {
            key: "k".into(),
            precondition: Precondition::None,
        }),
    };
    source
        .apply([put(1, "k"), delete, put(3, "k")])
        .await
        .unwrap();
    send_snapshot(&mut source, &mut target).await;
    assert_eq!(target.index.len(), 0);

    let answers = target.apply([put(4, "k")]).await.unwrap();
    assert_eq!(
        answers[0].result,
        CommandResult::Put {
            prev_mod_index: Some(3)
        },
        "the previous write is the snapshot's, not the one this node applied before"
    );
    let record = target.reader().get("k").unwrap().value.unwrap();
    assert_eq!((record.mod_index, record.create_index), (4, 3));
    assert_eq!(target.index.get("k").map(|m| m.create_index), Some(3));
}

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// The poison pill of issue 19: an idempotent transaction of many gets of a large value
/// made an idempotency record larger than a snapshot frame, and every snapshot build
/// failed from then on. Apply now refuses the transaction whole, the record stays small,
/// and snapshots build.
#[tokio::test]
async fn a_transaction_answering_too_much_is_refused_whole_and_snapshots_still_build() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = crate::open(dir.path()).unwrap();
    let big = Command::Put {
        key: "big".into(),
        value: vec![7; 1 << 20],
        precondition: Precondition::None,
    };
    let mut success: Vec<TxnOp> = (0..70).map(|_| TxnOp::Get { key: "big".into() }).collect();
    success.insert(
        0,
        TxnOp::Put {
            key: "side-effect".into(),
            value: b"x".to_vec(),
        },
    );
    let txn = Command::Idempotent {
        key: "pill".into(),
        issued_at_ms: 1,
        window_ms: 600_000,
        command: Box::new(Command::Txn(Txn {
            compare: vec![],
            success,
            failure: vec![],
        })),
    };
    let answers = sm.apply([entry(1, big), entry(2, txn)]).await.unwrap();
    match &answers[1].result {
        CommandResult::Refused(ApplyRefusal::ResponseTooLarge {
            at_least_bytes,
            max_bytes,
        }) => {
            assert_eq!(*max_bytes, MAX_TXN_RESPONSE_BYTES);
            assert!(*at_least_bytes > MAX_TXN_RESPONSE_BYTES);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        sm.reader().get("side-effect").unwrap().value.is_none(),
        "nothing of a refused transaction is applied"
    );
    // Seven gets of 1 MiB fit.
    let fits = Command::Txn(Txn {
        compare: vec![],
        success: (0..7).map(|_| TxnOp::Get { key: "big".into() }).collect(),
        failure: vec![],
    });
    let answers = sm.apply([entry(3, fits)]).await.unwrap();
    assert!(matches!(&answers[0].result, CommandResult::Txn { results, .. } if results.len() == 7));
    let mut builder = sm.get_snapshot_builder().await;
    builder.build_snapshot().await.expect("the snapshot builds");
}

/// Apply is total: shapes the API never proposes are answered `Refused`, not an error that
/// would stop the raft core on every node (a batch nested in a batch used to).
#[tokio::test]
async fn nested_commands_are_refused_and_the_rest_of_the_entry_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = crate::open(dir.path()).unwrap();
    let put_cmd = |key: &str| Command::Put {
        key: key.into(),
        value: b"v".to_vec(),
        precondition: Precondition::None,
    };
    let batch = Command::Batch(vec![
        put_cmd("a"),
        Command::Batch(vec![put_cmd("nested")]),
        Command::Idempotent {
            key: "i".into(),
            issued_at_ms: 1,
            window_ms: 1,
            command: Box::new(Command::Idempotent {
                key: "j".into(),
                issued_at_ms: 1,
                window_ms: 1,
                command: Box::new(put_cmd("doubly")),
            }),
        },
        put_cmd("b"),
    ]);
    let answers = sm.apply([entry(1, batch)]).await.unwrap();
    let CommandResult::Batch(results) = &answers[0].result else {
        panic!("{answers:?}")
    };
    let refused = CommandResult::Refused(ApplyRefusal::NestedCommand);
    assert_eq!(results[1].result, refused);
    assert_eq!(results[2].result, refused);
    assert!(matches!(results[0].result, CommandResult::Put { .. }));
    assert!(matches!(results[3].result, CommandResult::Put { .. }));
    let reader = sm.reader();
    assert!(reader.get("a").unwrap().value.is_some());
    assert!(reader.get("b").unwrap().value.is_some());
    assert!(reader.get("nested").unwrap().value.is_none());
    assert!(reader.get("doubly").unwrap().value.is_none());
}

/// One entry re-writes the record of key `a` (its old one expired) and, in a later command
/// of the same batch, prunes expired records: the prune used to see `a`'s old record in
/// RocksDB and delete the key, taking the new record with it, so a retry of `a` applied
/// again. Also: a key reused for another command is refused within its window.
#[tokio::test]
async fn idempotency_records_survive_their_own_entry_and_refuse_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = crate::open(dir.path()).unwrap();
    let idempotent = |key: &str, issued_at_ms: u64, value: &str| Command::Idempotent {
        key: key.into(),
        issued_at_ms,
        window_ms: 10,
        command: Box::new(Command::Put {
            key: format!("data/{key}"),
            value: value.as_bytes().to_vec(),
            precondition: Precondition::None,
        }),
    };
    sm.apply([entry(1, idempotent("a", 0, "first"))])
        .await
        .unwrap();
    let batch = Command::Batch(vec![idempotent("a", 100, "x"), idempotent("b", 100, "y")]);
    sm.apply([entry(2, batch)]).await.unwrap();
    let retry = sm
        .apply([entry(3, idempotent("a", 101, "x"))])
        .await
        .unwrap();
    assert_eq!(
        retry[0].index, 2,
        "the retry answers the first attempt: {retry:?}"
    );
    let record = sm.reader().get("data/a").unwrap().value.unwrap();
    assert_eq!(record.mod_index, 2, "applied once");
    // Another command under the same key, within the window: refused, nothing applied.
    let other = sm
        .apply([entry(4, idempotent("a", 102, "other"))])
        .await
        .unwrap();
    assert_eq!(
        other[0].result,
        CommandResult::Refused(ApplyRefusal::IdempotencyKeyReused)
    );
    assert_eq!(
        sm.reader().get("data/a").unwrap().value.unwrap().value,
        b"x"
    );
}

#[tokio::test]
async fn the_history_keeps_its_window_across_pruning_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::StoreOptions {
        history_entries: 10,
        ..crate::StoreOptions::default()
    };
    let everything = KeyFilter::Prefix(String::new());
    let last = 10 + crate::changes::PRUNE_STEP_ENTRIES + 5;
    {
        let (_log, mut sm) = crate::open_with(dir.path(), &options).unwrap();
        let entries: Vec<Entry> = (1..=last).map(|i| put(i, &format!("k{}", i % 3))).collect();
        sm.apply(entries).await.unwrap();
    }
    // Reopened: what the history kept is on disk, the window whole.
    let (_log, sm) = crate::open_with(dir.path(), &options).unwrap();
    let reader = sm.reader();
    let compact = match reader
        .changes(1, &everything, PageLimit::changes(10_000))
        .unwrap()
    {
        Err(HistoryError::Compacted { compact_index, .. }) => compact_index,
        other => panic!("index 1 was pruned: {other:?}"),
    };
    // Pruned once, at the first index a step past the window: 10 + step applied, compact = step.
    assert_eq!(compact, crate::changes::PRUNE_STEP_ENTRIES);
    assert!(last - compact >= 10, "at least the window is kept");
    let page = reader
        .changes(compact + 1, &everything, PageLimit::changes(10_000))
        .unwrap()
        .unwrap();
    let indexes: Vec<u64> = page.changes.iter().map(|c| c.index).collect();
    assert_eq!(
        indexes,
        ((compact + 1)..=last).collect::<Vec<_>>(),
        "one change an index, none missing"
    );
    assert_eq!(page.through_index, last);
    // Each put names the key's previous version.
    let change = &page.changes[3];
    assert_eq!(change.prev_mod_index, Some(change.index - 3));
    // A page holds whole indexes up to its bound, and says where to go on.
    let first = reader
        .changes(compact + 1, &everything, PageLimit::changes(2))
        .unwrap()
        .unwrap();
    assert_eq!(first.changes.len(), 2);
    assert_eq!(first.through_index, compact + 2);
    // Past the applied index: nothing yet, and nothing examined beyond it.
    let ahead = reader
        .changes(last + 5, &everything, PageLimit::changes(10))
        .unwrap()
        .unwrap();
    assert_eq!((ahead.changes.len(), ahead.through_index), (0, last + 4));
}

#[tokio::test]
async fn a_restored_store_keeps_no_history_before_the_backup() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_log, mut source) = crate::open(source_dir.path()).unwrap();
    source
        .apply((1..=4).map(|i| put(i, "k")).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut copy = Vec::new();
    source
        .reader()
        .write_backup(
            1,
            "c",
            |_| {},
            |bytes| {
                copy.extend(bytes);
                true
            },
        )
        .unwrap();
    let path = target_dir.path().join("db");
    let node = crate::types::NodeInfo {
        api_addr: "127.0.0.1:1".into(),
        raft_addr: "127.0.0.1:2".into(),
    };
    crate::backup::restore(&copy[..], &path, 1, &[(1, node)].into()).unwrap();
    let (_log, restored) = crate::open(&path).unwrap();
    let reader = restored.reader();
    let everything = KeyFilter::Prefix(String::new());
    // The source's changes at 1..=4 are not in the copy: the history starts after it.
    assert!(matches!(
        reader
            .changes(4, &everything, PageLimit::changes(10))
            .unwrap(),
        Err(HistoryError::Compacted {
            compact_index: 4,
            ..
        })
    ));
    assert_eq!(
        reader
            .changes(5, &everything, PageLimit::changes(10))
            .unwrap()
            .unwrap()
            .changes,
        []
    );
}

/// What a change listener was told, in order.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl ChangeListener for Recorded {
    fn applied(&self, applied_index: u64, changes: Vec<crate::changes::Change>) {
        let keys: Vec<String> = changes
            .iter()
            .map(|c| format!("{}:{}", c.index, c.key))
            .collect();
        self.0
            .lock()
            .unwrap()
            .push(format!("applied {applied_index} [{}]", keys.join(" ")));
    }
    fn restarted_at(&self, applied_index: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("restarted {applied_index}"));
    }
}

#[tokio::test]
async fn the_listener_hears_each_apply_in_history_order_and_each_install() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_log, mut target) = crate::open(target_dir.path()).unwrap();
    let recorded = Arc::new(Recorded::default());
    target.set_change_listener(recorded.clone());
    // A batch stages command by command ("z" first); the listener hears key order, as the
    // history reads it; a delete of nothing changes nothing.
    let batch = Command::Batch(vec![
        Command::Put {
            key: "z".into(),
            value: b"1".to_vec(),
            precondition: Precondition::None,
        },
        Command::Put {
            key: "a".into(),
            value: b"2".to_vec(),
            precondition: Precondition::None,
        },
        Command::Delete {
            key: "none".into(),
            precondition: Precondition::None,
        },
    ]);
    target.apply([entry(1, batch), put(2, "m")]).await.unwrap();
    let everything = KeyFilter::Prefix(String::new());
    let history = target
        .reader()
        .changes(1, &everything, PageLimit::changes(10))
        .unwrap()
        .unwrap();
    let history: Vec<String> = history
        .changes
        .iter()
        .map(|c| format!("{}:{}", c.index, c.key))
        .collect();
    assert_eq!(history, ["1:a", "1:z", "2:m"]);

    let (mut source, _, _) = store_with_snapshot(source_dir.path(), &["x", "y", "w", "v"]).await;
    send_snapshot(&mut source, &mut target).await;
    assert_eq!(
        *recorded.0.lock().unwrap(),
        ["restarted 0", "applied 2 [1:a 1:z 2:m]", "restarted 4"]
    );
}
