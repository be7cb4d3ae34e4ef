//! `LogStore`: openraft's `RaftLogStorage` over the `log` and `raft_meta` column families.
//!
//! Durability rules (see `storage/DESIGN.md`): the vote is fsynced before `save_vote` returns;
//! `append` calls its callback only after a WAL fsync covers the batch (a follower's append is a
//! synced write; the leader's own is fsynced by the `LogSyncer` thread while replication goes
//! on); purge records the purged log id (fsynced) before it deletes the
//! entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::codec;
use crate::db::{self, CF_LOG, CF_RAFT_META, KEY_COMMITTED, KEY_PURGED, KEY_VOTE};
use crate::log_cache::{Cached, LogCache};
use crate::types::{Entry, LogId, NodeId, RaftStorageError, TypeConfig};

/// The Raft log and the Raft metadata (vote, committed, purged) of one node.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Confirms appends once a WAL fsync covers them.
    syncer: Arc<LogSyncer>,
    /// The latest committed index openraft told us about (0 if none); shared with the API for
    /// `/ready` and `GET /v1/cluster`.
    committed_index: Arc<AtomicU64>,
    /// The newest entries, decoded (see `log_cache`); shared by every clone (the log readers).
    cache: Arc<std::sync::Mutex<LogCache>>,
    /// The newest committed log id `save_committed` was given that is not in RocksDB yet
    /// (`None`: nothing pending). The next `append`, `truncate` or `purge` writes it in its own
    /// batch, so saving it costs no write of its own (see `save_committed`). Only the instance
    /// openraft writes through uses it; the log readers' clones never write.
    committed_unsaved: Option<Option<LogId>>,
}

/// Most encoded bytes of entries `LogCache` holds: about 2,000 entries of 24 small writes.
const LOG_CACHE_MAX_BYTES: usize = 8 * 1024 * 1024;

impl LogStore {
    /// `fault_sync_delay`: see `StoreOptions::fault_log_sync_delay_ms` (zero in production).
    pub(crate) fn new(
        db: Arc<DB>,
        fault_sync_delay: Duration,
    ) -> Result<Self, crate::StorageError> {
        let store = Self {
            syncer: Arc::new(LogSyncer::start(db.clone(), fault_sync_delay)?),
            db,
            committed_index: Arc::default(),
            cache: Arc::new(std::sync::Mutex::new(LogCache::new(LOG_CACHE_MAX_BYTES))),
            committed_unsaved: None,
        };
        let committed = store.committed()?.map_or(0, |id| id.index);
        store.committed_index.store(committed, Ordering::Release);
        Ok(store)
    }

    /// A live view of the committed index as this node knows it.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, crate::StorageError> {
        let cf = db::cf(&self.db, CF_RAFT_META);
        match self.db.get_pinned_cf(cf, key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The last purged log id, as recorded on disk.
    pub(crate) fn purged(&self) -> Result<Option<LogId>, crate::StorageError> {
        self.get_meta(KEY_PURGED)
    }

    /// The last log id present in the log, if any entry is present.
    pub(crate) fn last_entry_log_id(&self) -> Result<Option<LogId>, crate::StorageError> {
        let cf = db::cf(&self.db, CF_LOG);
        let mut iter = self.db.iterator_cf(cf, IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (_, value) = item?;
                let entry: Entry = codec::decode(&value)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    /// The saved committed log id.
    pub(crate) fn committed(&self) -> Result<Option<LogId>, crate::StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    /// Add the pending committed log id, if any, to `batch`; call [`Self::committed_written`]
    /// once the batch is in RocksDB.
    fn stage_committed(&self, batch: &mut WriteBatch) -> Result<(), crate::StorageError> {
        if let Some(committed) = &self.committed_unsaved {
            let bytes = codec::encode(committed)?;
            batch.put_cf(db::cf(&self.db, CF_RAFT_META), KEY_COMMITTED, bytes);
        }
        Ok(())
    }

    fn committed_written(&mut self) {
        self.committed_unsaved = None;
    }
}

fn read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if let Cached::All(entries) = self.cache.lock().expect("log cache lock").get(start, end) {
            // Invariant: the cache holds the log's entries under their own indexes.
            assert!(
                entries
                    .iter()
                    .zip(start..)
                    .all(|(entry, index)| entry.log_id.index == index),
                "log cache out of step with the log"
            );
            return Ok(entries);
        }
        let cf = db::cf(&self.db, CF_LOG);
        let iter = self.db.iterator_cf(
            cf,
            IteratorMode::From(&db::log_key(start), Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(read_err)?;
            let index = db::log_index(&key).ok_or_else(|| {
                read_err(crate::StorageError::Invariant("malformed log key".into()))
            })?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = codec::decode(&value).map_err(read_err)?;
            // Invariant: the entry stored under index i has log id index i, without holes.
            assert_eq!(
                entry.log_id.index, index,
                "log entry stored under a wrong index"
            );
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                assert_eq!(prev.log_id.index + 1, index, "hole in the log");
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id = self.purged().map_err(read_err)?;
        let last_log_id = self
            .last_entry_log_id()
            .map_err(read_err)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let bytes = codec::encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let cf = db::cf(&self.db, CF_RAFT_META);
        // The vote is fsynced before we return: a node must never vote twice in a term.
        self.db
            .put_cf_opt(cf, KEY_VOTE, bytes, &db::synced())
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Kept in memory and written with the next append, truncate or purge, not fsynced. The
        // committed id only lets a restarted node re-apply sooner: a value on disk that lags
        // (by the entries committed since the last append) or is lost in a crash means fewer
        // entries are applied before the leader's first message. Its own write per commit was
        // about 2% of the machine at 64 clients (BENCHMARKS.md).
        self.committed_unsaved = Some(committed);
        self.committed_index
            .store(committed.map_or(0, |id| id.index), Ordering::Release);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        match self.committed_unsaved {
            Some(committed) => Ok(committed),
            None => self.committed().map_err(read_err),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = db::cf(&self.db, CF_LOG);
        let mut batch = WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(write_err)?;
            batch.put_cf(cf, db::log_key(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        self.stage_committed(&mut batch).map_err(write_err)?;
        // The callback lets openraft count this node towards a commit quorum, so it fires only
        // once the write is on disk (storage/DESIGN.md, rule 2).
        // - A follower's append is awaited: openraft does nothing else until the callback, so
        //   it syncs here, sparing the hand-off to the syncer thread and back.
        // - The leader's own append (vendor/openraft/PATCHED.md) is written now and made
        //   durable later: the entries are readable once this returns, replication reads them
        //   from here while the syncer fsyncs, and appends arriving meanwhile share that fsync.
        let awaited = callback.is_awaited();
        let outcome = if awaited {
            self.db.write_opt(batch, &db::synced())
        } else {
            self.db.write(batch)
        };
        if let Err(e) = outcome {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        self.committed_written();
        {
            let mut cache = self.cache.lock().expect("log cache lock");
            for (entry, bytes) in written {
                cache.appended(entry, bytes);
            }
        }
        if awaited {
            callback.log_io_completed(Ok(()));
        } else {
            self.syncer.confirm_when_durable(callback);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.cache
            .lock()
            .expect("log cache lock")
            .truncated(log_id.index);
        let cf = db::cf(&self.db, CF_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, db::log_key(log_id.index), db::log_key(u64::MAX));
        batch.delete_cf(cf, db::log_key(u64::MAX));
        self.stage_committed(&mut batch).map_err(write_err)?;
        self.db.write_opt(batch, &db::synced()).map_err(write_err)?;
        self.committed_written();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        if let Some(previous) = self.purged().map_err(read_err)? {
            assert!(
                previous <= log_id,
                "purged log id must not go back: {previous} > {log_id}"
            );
        }
        self.cache
            .lock()
            .expect("log cache lock")
            .purged(log_id.index);
        // The purged id and the deletion go in one atomic, fsynced batch: no crash leaves a hole
        // between `purged` and the first entry.
        let meta = db::cf(&self.db, CF_RAFT_META);
        let bytes = codec::encode(&log_id).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_PURGED, bytes);
        let log = db::cf(&self.db, CF_LOG);
        batch.delete_range_cf(log, db::log_key(0), db::log_key(log_id.index + 1));
        self.stage_committed(&mut batch).map_err(write_err)?;
        self.db.write_opt(batch, &db::synced()).map_err(write_err)?;
        self.committed_written();
        Ok(())
    }
}

/// The leader's log fsyncs, off the async runtime: `append` writes without waiting for the
/// disk and hands its callback here; this thread fsyncs the WAL once for every callback queued
/// up meanwhile, then confirms them all.
///
/// Durability: RocksDB writes the WAL in order and `flush_wal(true)` fsyncs all of it, so the
/// fsync that follows a callback's write covers that write (`db::synced` makes the same
/// assumption).
///
/// The queue holds one callback per leader append not yet synced. With a healthy disk that is
/// the few appends made during one fsync; behind a stalled disk, followers keep committing
/// without the leader, so the queue is bounded (`MAX_APPENDS_AWAITING_SYNC`): once it is full,
/// `append` blocks until the disk catches up, as it always did before the overlap.
struct LogSyncer {
    queue: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<LogFlushed<TypeConfig>>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Most leader appends written but not yet covered by an fsync (see `LogSyncer`).
const MAX_APPENDS_AWAITING_SYNC: usize = 1024;

impl LogSyncer {
    fn start(db: Arc<DB>, fault_sync_delay: Duration) -> Result<Self, crate::StorageError> {
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<LogFlushed<TypeConfig>>(MAX_APPENDS_AWAITING_SYNC);
        let thread = std::thread::Builder::new()
            .name("mirrorkv-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    if !fault_sync_delay.is_zero() {
                        // A slow disk (fault injection): appends that arrive meanwhile wait
                        // for the next round, as they would behind a slow fsync.
                        std::thread::sleep(fault_sync_delay);
                    }
                    let synced = db.flush_wal(true);
                    for callback in waiting {
                        callback.log_io_completed(
                            synced
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| std::io::Error::other(e.to_string())),
                        );
                    }
                }
            })
            .map_err(|e| crate::StorageError::Invariant(format!("starting the log syncer: {e}")))?;
        Ok(Self {
            queue: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn confirm_when_durable(&self, callback: LogFlushed<TypeConfig>) {
        // Send outside the lock: a full queue blocks the sender, not the store's closing.
        let queue = self.queue.lock().expect("syncer lock").clone();
        match queue {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(callback)) = tx.send(callback) {
                    callback.log_io_completed(Err(std::io::Error::other("the log syncer stopped")));
                }
            }
            None => {
                callback.log_io_completed(Err(std::io::Error::other("the log store is closed")))
            }
        }
    }
}

impl Drop for LogSyncer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has confirmed what is queued.
        self.queue.lock().expect("syncer lock").take();
        if let Some(thread) = self.thread.lock().expect("syncer lock").take() {
            let _ = thread.join();
        }
    }
}
