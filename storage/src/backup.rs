//! Backups: a consistent point-in-time copy of the replicated state as a byte stream, and the
//! restore that turns one into the store of a fresh data dir.
//!
//! Format (version 1), all integers little-endian:
//! ```text
//! MAGIC (16 bytes) | FORMAT_VERSION (u32)
//! frame*           where frame = len (u32) | crc32 of payload (u32) | payload (postcard `Frame`)
//! ```
//! The frames are one `Header`, any number of `Entries` (raw `sm` entries in strictly ascending
//! key order), and one `End` that repeats the counts. A frame whose checksum does not match is
//! corruption; a stream that stops before `End` is truncated; keys out of order, a count that
//! disagrees, or bytes after `End` are corruption. Restore checks all of it before the data dir
//! it builds may be used (see [`restore`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use openraft::{Membership, Vote};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{
    self, CF_RAFT_META, CF_SM, KEY_APPLIED, KEY_COMMITTED, KEY_MEMBERSHIP, KEY_PURGED, KEY_VOTE,
};
use crate::error::{Result, StorageError};
use crate::state_machine::{read_applied, read_membership, SnapshotBuilder};
use crate::types::{LogId, NodeId, NodeInfo, StoredMembership};
use crate::KvReader;

/// First bytes of every backup.
pub const MAGIC: &[u8; 16] = b"MIRRORKV-BACKUP\n";
/// Version of the format written; restore refuses any other.
pub const FORMAT_VERSION: u32 = 1;
/// Largest frame restore accepts: a bound on what a corrupted length can make it allocate.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
/// `Entries` frames are cut at about this many payload bytes.
const TARGET_FRAME_BYTES: usize = 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Header(BackupHeader),
    Entries(Vec<(Vec<u8>, Vec<u8>)>),
    End { entries: u64, entry_frames: u64 },
}

/// What a backup says about where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The last log entry the copy contains; the copy is the state at exactly this index.
    pub applied: Option<LogId>,
    /// The source cluster's membership at that point (informational: restore sets a new one).
    pub membership: StoredMembership,
    pub source_node: NodeId,
    pub cluster_id: String,
    pub created_unix_ms: u64,
}

/// What a finished backup or restore covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Log index of the copy (0 if nothing was ever applied).
    pub index: u64,
    /// Replicated `sm` entries (keys and idempotency records).
    pub entries: u64,
    /// Bytes of the whole stream.
    pub bytes: u64,
}

fn frame_bytes(frame: &Frame) -> Result<Vec<u8>> {
    let payload = codec::encode(frame)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_BYTES)
        .ok_or_else(|| StorageError::Backup(format!("frame of {} bytes", payload.len())))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

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
        mut sink: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<BackupSummary> {
        let db = self.db();
        let view = db.snapshot();
        let applied = read_applied(db, Some(&view))?;
        let membership = read_membership(db, Some(&view))?;
        let index = applied.map_or(0, |id| id.index);
        started(index);
        let aborted = || StorageError::Backup("the reader went away".into());
        let header = BackupHeader {
            applied,
            membership,
            source_node,
            cluster_id: cluster_id.to_string(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut first = Vec::from(&MAGIC[..]);
        first.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        first.extend(frame_bytes(&Frame::Header(header))?);
        let mut bytes = first.len() as u64;
        if !sink(first) {
            return Err(aborted());
        }
        let mut read_options = ReadOptions::default();
        read_options.set_snapshot(&view);
        let (mut entries, mut entry_frames) = (0u64, 0u64);
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut send = |chunk: Vec<(Vec<u8>, Vec<u8>)>, bytes: &mut u64| -> Result<()> {
            let frame = frame_bytes(&Frame::Entries(chunk))?;
            *bytes += frame.len() as u64;
            if sink(frame) {
                Ok(())
            } else {
                Err(aborted())
            }
        };
        for item in db.iterator_cf_opt(db::cf(db, CF_SM), read_options, IteratorMode::Start) {
            let (key, value) = item?;
            if key.first() == Some(&db::META_TAG) {
                continue;
            }
            chunk_bytes += key.len() + value.len();
            chunk.push((key.to_vec(), value.to_vec()));
            entries += 1;
            if chunk_bytes >= TARGET_FRAME_BYTES {
                send(std::mem::take(&mut chunk), &mut bytes)?;
                entry_frames += 1;
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            send(chunk, &mut bytes)?;
            entry_frames += 1;
        }
        let end = frame_bytes(&Frame::End {
            entries,
            entry_frames,
        })?;
        bytes += end.len() as u64;
        if !sink(end) {
            return Err(aborted());
        }
        Ok(BackupSummary {
            index,
            entries,
            bytes,
        })
    }
}

/// Reads frames from a backup stream, checking lengths and checksums.
struct FrameReader<R> {
    input: R,
    bytes: u64,
}

impl<R: Read> FrameReader<R> {
    /// Fill `buf` completely; `Ok(false)` on a clean end of input before the first byte.
    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(StorageError::Backup(format!(
                        "truncated: the stream ends inside a frame after {} bytes",
                        self.bytes + filled as u64
                    )))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::Backup(format!("reading the backup: {e}"))),
            }
        }
        self.bytes += buf.len() as u64;
        Ok(true)
    }

    fn next(&mut self) -> Result<Option<Frame>> {
        let mut head = [0u8; 8];
        if !self.read_exact_or_eof(&mut head)? {
            return Ok(None);
        }
        let offset = self.bytes - 8;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES {
            return Err(StorageError::Backup(format!(
                "corrupted: frame at byte {offset} claims {len} bytes (at most {MAX_FRAME_BYTES})"
            )));
        }
        let mut payload = vec![0u8; len as usize];
        if !self.read_exact_or_eof(&mut payload)? && len > 0 {
            return Err(StorageError::Backup(format!(
                "truncated: the stream ends inside the frame at byte {offset}"
            )));
        }
        if crc32fast::hash(&payload) != crc {
            return Err(StorageError::Backup(format!(
                "corrupted: checksum mismatch in the frame at byte {offset}"
            )));
        }
        codec::decode(&payload).map(Some).map_err(|e| {
            StorageError::Backup(format!(
                "corrupted: undecodable frame at byte {offset}: {e}"
            ))
        })
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
    let mut reader = FrameReader { input, bytes: 0 };
    let mut preamble = [0u8; 20];
    if !reader.read_exact_or_eof(&mut preamble)? || &preamble[..16] != MAGIC {
        return Err(StorageError::Backup(
            "not a mirrorkv backup (bad magic bytes)".into(),
        ));
    }
    let version = u32::from_le_bytes(preamble[16..].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(StorageError::Backup(format!(
            "backup format version {version}; this build reads version {FORMAT_VERSION}"
        )));
    }
    let header = match reader.next()? {
        Some(Frame::Header(header)) => header,
        Some(_) => return Err(StorageError::Backup("corrupted: no header frame".into())),
        None => return Err(StorageError::Backup("truncated: no header frame".into())),
    };
    let db = Arc::new(db::open(path)?);
    let sm = db::cf(&db, CF_SM);
    let (mut entries, mut entry_frames) = (0u64, 0u64);
    let mut last_key: Option<Vec<u8>> = None;
    loop {
        match reader.next()? {
            Some(Frame::Entries(chunk)) => {
                let mut batch = WriteBatch::default();
                for (key, value) in chunk {
                    if key.first() == Some(&db::META_TAG) || key.first() == Some(&0xff) {
                        return Err(StorageError::Backup("corrupted: a reserved key".into()));
                    }
                    if last_key.as_ref().is_some_and(|last| *last >= key) {
                        return Err(StorageError::Backup("corrupted: keys out of order".into()));
                    }
                    batch.put_cf(sm, &key, value);
                    last_key = Some(key);
                    entries += 1;
                }
                // Not synced one by one: the final synced write below makes all of it durable
                // (the WAL is written in order; db::synced).
                db.write(batch)?;
                entry_frames += 1;
            }
            Some(Frame::End {
                entries: expected_entries,
                entry_frames: expected_frames,
            }) => {
                if (expected_entries, expected_frames) != (entries, entry_frames) {
                    return Err(StorageError::Backup(format!(
                        "corrupted: the end frame counts {expected_entries} entries in {expected_frames} frames, the stream had {entries} in {entry_frames}"
                    )));
                }
                break;
            }
            Some(Frame::Header(_)) => {
                return Err(StorageError::Backup("corrupted: a second header".into()))
            }
            None => {
                return Err(StorageError::Backup(format!(
                    "truncated: the stream ends after {} bytes without its end frame",
                    reader.bytes
                )))
            }
        }
    }
    let mut rest = [0u8; 1];
    if reader.read_exact_or_eof(&mut rest)? {
        return Err(StorageError::Backup(
            "corrupted: bytes after the end frame".into(),
        ));
    }
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
    SnapshotBuilder::new(db.clone()).build()?;
    db.flush_wal(true)?;
    Ok(BackupSummary {
        index: header.applied.map_or(0, |id| id.index),
        entries,
        bytes: reader.bytes,
    })
}
