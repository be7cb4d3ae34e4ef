//! The state stream: one checksummed, point-in-time copy of the replicated state, the format of
//! both backups (`GET /v1/backup`) and snapshot files (what openraft sends to a mirror that is
//! behind). One format means one writer and one reader, so every snapshot file is also a valid
//! backup: `mirrorkv restore --from DATA_DIR/db/snapshots/<file>.snap` works.
//!
//! Format (version 1), all integers little-endian:
//! ```text
//! MAGIC (16 bytes) | FORMAT_VERSION (u32)
//! frame*           where frame = len (u32) | crc32 of payload (u32) | payload (postcard `Frame`)
//! ```
//! The frames are one `Header`, any number of `Entries` (raw `sm` entries in strictly ascending
//! key order), and one `End` that repeats the counts. A frame whose checksum does not match is
//! corruption; a stream that stops before `End` is truncated; keys out of order, a count that
//! disagrees, or bytes after `End` are corruption. So is any content apply could not have
//! written: a header past the largest term or index, and an entry that is not a well-formed
//! record of the applied index (`records::check_stream_record`). [`read_state`] checks
//! all of it.

use std::io::Read;

use rocksdb::{IteratorMode, ReadOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{self, consistent_view, read_membership, CF_SM};
use crate::error::{Result, StorageError};
use crate::records::check_stream_record;
use crate::types::{LogId, NodeId, StoredMembership, MAX_LOG_POSITION};

/// First bytes of every stream.
pub const MAGIC: &[u8; 16] = b"MIRRORKV-BACKUP\n";
/// Version of the format written; readers refuse any other.
pub const FORMAT_VERSION: u32 = 1;
/// Largest frame a reader accepts: a bound on what a corrupted length can make it allocate.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
// Every record apply can write fits one frame: a key record holds one value (at most
// MAX_TXN_RESPONSE_BYTES, see node config), an idempotency record one answer (a transaction's
// answer is capped at MAX_TXN_RESPONSE_BYTES by apply, plus a little per op).
const _: () = assert!(2 * crate::types::MAX_TXN_RESPONSE_BYTES <= MAX_FRAME_BYTES as u64);

/// `Entries` frames are cut at about this many payload bytes; it bounds the memory a writer or
/// a reader of any size of state needs.
const TARGET_FRAME_BYTES: usize = 1024 * 1024;

/// Raw `sm` entries: key bytes and value bytes, in ascending key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Header(BackupHeader),
    Entries(Entries),
    End { entries: u64, entry_frames: u64 },
}

/// What a stream says about where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The last log entry the copy contains; the copy is the state at exactly this index.
    pub applied: Option<LogId>,
    /// The membership at that point (a snapshot installs it; restore sets a new one).
    pub membership: StoredMembership,
    /// The node that wrote a backup. 0 in a snapshot file: the store does not know its node id.
    pub source_node: NodeId,
    /// The cluster of a backup. Empty in a snapshot file, for the same reason.
    pub cluster_id: String,
    pub created_unix_ms: u64,
}

/// What a finished stream covered.
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

/// The state as of now: a RocksDB point-in-time view and what it says about itself.
pub(crate) struct View<'a> {
    db: &'a DB,
    snapshot: rocksdb::Snapshot<'a>,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl<'a> View<'a> {
    /// Take a view of `db` now. Refuses a view of a half-installed snapshot (see
    /// [`crate::state_machine`]): there is no consistent state to copy until it finishes.
    pub(crate) fn take(db: &'a DB) -> Result<Self> {
        let (snapshot, applied) = consistent_view(db)?;
        let membership = read_membership(db, Some(&snapshot))?;
        Ok(Self {
            db,
            snapshot,
            applied,
            membership,
        })
    }

    /// Write this view as a stream to `sink`, in pieces of about `TARGET_FRAME_BYTES`. `sink`
    /// returns false to abort (the reader went away). Blocking.
    pub(crate) fn write(
        &self,
        source_node: NodeId,
        cluster_id: &str,
        mut sink: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<BackupSummary> {
        let aborted = || StorageError::Backup("the reader went away".into());
        let header = BackupHeader {
            applied: self.applied,
            membership: self.membership.clone(),
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
        read_options.set_snapshot(&self.snapshot);
        let (mut entries, mut entry_frames) = (0u64, 0u64);
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut send = |chunk: Entries, bytes: &mut u64| -> Result<()> {
            let frame = frame_bytes(&Frame::Entries(chunk))?;
            *bytes += frame.len() as u64;
            if sink(frame) {
                Ok(())
            } else {
                Err(aborted())
            }
        };
        let db = self.db;
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
            index: self.applied.map_or(0, |id| id.index),
            entries,
            bytes,
        })
    }
}

/// Reads frames from a stream, checking lengths and checksums.
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
                Err(e) => return Err(StorageError::Backup(format!("reading the stream: {e}"))),
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
        // The buffer grows with the bytes that arrive, never ahead of them from the claimed
        // length: a file that claims a 64 MiB frame and holds 10 bytes costs about what it holds.
        let mut payload = Vec::new();
        let read = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .map_err(|e| StorageError::Backup(format!("reading the stream: {e}")))?;
        self.bytes += read as u64;
        if read < len as usize {
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

/// Check a stream's header: log positions a cluster can reach, a membership no newer than the
/// state and whose voters all have addresses. A term of `u64::MAX`, say, would be restored into
/// the vote, and the first election after it would overflow.
fn check_header(header: &BackupHeader) -> Result<()> {
    let corrupted = |what: String| Err(StorageError::Backup(format!("corrupted header: {what}")));
    let positions = [header.applied, *header.membership.log_id()];
    for log_id in positions.into_iter().flatten() {
        if log_id.leader_id.term >= MAX_LOG_POSITION || log_id.index >= MAX_LOG_POSITION {
            return corrupted(format!(
                "log id {log_id} is past the largest term or index ({MAX_LOG_POSITION})"
            ));
        }
    }
    if header.membership.log_id() > &header.applied {
        return corrupted(format!(
            "the membership of {:?} is newer than the state at {:?}",
            header.membership.log_id(),
            header.applied
        ));
    }
    let membership = header.membership.membership();
    if let Some(id) = membership
        .voter_ids()
        .find(|id| membership.get_node(id).is_none())
    {
        return corrupted(format!("voter {id} has no address"));
    }
    Ok(())
}

/// Read and check a whole stream from `input`: `header` is called with its header first, then
/// `entries` with each chunk, in order. Every check of the module doc runs; `entries` may
/// already have seen earlier chunks when a later one fails, so a caller that writes them must
/// either check the stream first (a pass with no-op callbacks) or be able to throw its work away.
pub(crate) fn read_state(
    input: impl Read,
    mut header: impl FnMut(&BackupHeader) -> Result<()>,
    mut entries: impl FnMut(Entries) -> Result<()>,
) -> Result<(BackupHeader, BackupSummary)> {
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
    let first = match reader.next()? {
        Some(Frame::Header(first)) => first,
        Some(_) => return Err(StorageError::Backup("corrupted: no header frame".into())),
        None => return Err(StorageError::Backup("truncated: no header frame".into())),
    };
    check_header(&first)?;
    header(&first)?;
    let applied_index = first.applied.map_or(0, |id| id.index);
    let (mut count, mut entry_frames) = (0u64, 0u64);
    let mut last_key: Option<Vec<u8>> = None;
    loop {
        match reader.next()? {
            Some(Frame::Entries(chunk)) => {
                let mut previous = last_key.as_deref();
                for (key, value) in &chunk {
                    check_stream_record(key, value, applied_index).map_err(|what| {
                        StorageError::Backup(format!("corrupted: entry {}: {what}", count + 1))
                    })?;
                    if previous.is_some_and(|previous| previous >= key.as_slice()) {
                        return Err(StorageError::Backup("corrupted: keys out of order".into()));
                    }
                    previous = Some(key);
                }
                if let Some((key, _)) = chunk.last() {
                    last_key = Some(key.clone());
                }
                count += chunk.len() as u64;
                entry_frames += 1;
                entries(chunk)?;
            }
            Some(Frame::End {
                entries: expected_entries,
                entry_frames: expected_frames,
            }) => {
                if (expected_entries, expected_frames) != (count, entry_frames) {
                    return Err(StorageError::Backup(format!(
                        "corrupted: the end frame counts {expected_entries} entries in {expected_frames} frames, the stream had {count} in {entry_frames}"
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
    let summary = BackupSummary {
        index: first.applied.map_or(0, |id| id.index),
        entries: count,
        bytes: reader.bytes,
    };
    Ok((first, summary))
}

/// Read and check the stream in `input` and write its entries into the `sm` column family of
/// `db`, a batch per frame, without fsync: the caller's final synced write makes them durable
/// (the WAL is written in order; `db::synced`). A bad stream stops with an error partway, so the
/// caller must be able to throw the partial state away (a new directory, or a marked install).
pub(crate) fn load_entries(db: &DB, input: impl Read) -> Result<(BackupHeader, BackupSummary)> {
    let cf = db::cf(db, CF_SM);
    read_state(
        input,
        |_| Ok(()),
        |chunk| {
            let mut batch = rocksdb::WriteBatch::default();
            for (key, value) in chunk {
                batch.put_cf(cf, key, value);
            }
            db.write(batch)?;
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::types::{KeyRecord, NodeInfo};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn header(applied: LogId) -> BackupHeader {
        let node = NodeInfo {
            api_addr: "127.0.0.1:1".into(),
            raft_addr: "127.0.0.1:2".into(),
        };
        let membership = Membership::new(vec![[1].into()], BTreeMap::from([(1, node)]));
        BackupHeader {
            applied: Some(applied),
            membership: StoredMembership::new(Some(log_id(1, 1)), membership),
            source_node: 1,
            cluster_id: "test".into(),
            created_unix_ms: 0,
        }
    }

    /// A stream of `header` and one frame of `entries`, written as the writer would.
    fn stream_of(header: BackupHeader, entries: Entries) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let count = entries.len() as u64;
        for frame in [
            Frame::Header(header),
            Frame::Entries(entries),
            Frame::End {
                entries: count,
                entry_frames: 1,
            },
        ] {
            out.extend(frame_bytes(&frame).unwrap());
        }
        out
    }

    fn key_record(key: &str, create_index: u64, mod_index: u64) -> (Vec<u8>, Vec<u8>) {
        let record = KeyRecord {
            value: b"v".to_vec(),
            mod_index,
            create_index,
        };
        (db::data_key(key), codec::encode(&record).unwrap())
    }

    fn check(bytes: &[u8]) -> Result<BackupSummary> {
        read_state(bytes, |_| Ok(()), |_| Ok(())).map(|(_, summary)| summary)
    }

    #[test]
    fn a_well_formed_stream_is_read() {
        let entries = vec![key_record("a", 2, 5), key_record("b", 3, 3)];
        let summary = check(&stream_of(header(log_id(2, 5)), entries)).unwrap();
        assert_eq!((summary.index, summary.entries), (5, 2));
    }

    #[test]
    fn a_header_past_the_largest_term_or_index_is_refused() {
        for applied in [log_id(u64::MAX, 5), log_id(2, u64::MAX), log_id(1 << 62, 5)] {
            let error = check(&stream_of(header(applied), vec![])).unwrap_err();
            assert!(
                error.to_string().contains("past the largest term or index"),
                "{applied}: {error}"
            );
        }
    }

    #[test]
    fn a_membership_newer_than_the_state_is_refused() {
        let mut stream_header = header(log_id(2, 5));
        let membership = stream_header.membership.membership().clone();
        stream_header.membership = StoredMembership::new(Some(log_id(2, 6)), membership);
        let error = check(&stream_of(stream_header, vec![])).unwrap_err();
        assert!(
            error.to_string().contains("newer than the state"),
            "{error}"
        );
    }

    fn lease_record(id: u64, ttl_ms: u64) -> (Vec<u8>, Vec<u8>) {
        let record = crate::leases::LeaseRecord { ttl_ms, keys: 0 };
        (db::lease_key(id).to_vec(), codec::encode(&record).unwrap())
    }

    #[test]
    fn records_apply_could_not_have_written_are_refused() {
        type Case = ((Vec<u8>, Vec<u8>), &'static str);
        let cases: Vec<Case> = vec![
            (key_record("a", 2, 6), "mod_index 6 at applied index 5"),
            (key_record("a", 0, 3), "create_index 0"),
            (key_record("a", 4, 3), "create_index 4 and mod_index 3"),
            ((db::data_key("a"), vec![0xff; 3]), "undecodable key record"),
            (
                (
                    vec![db::DATA_TAG, 0xff, 0xfe],
                    codec::encode(&KeyRecord {
                        value: vec![],
                        mod_index: 1,
                        create_index: 1,
                    })
                    .unwrap(),
                ),
                "not UTF-8",
            ),
            ((b"m:applied".to_vec(), vec![]), "a reserved key"),
            ((b"zzz".to_vec(), vec![]), "a reserved key"),
            (
                (db::idempotency_key("k"), vec![1, 2, 3]),
                "undecodable idempotency record",
            ),
            (
                (vec![db::IDEMPOTENCY_TIME_TAG, 1], vec![]),
                "malformed idempotency expiry",
            ),
            // Leases (applied index 5: lease ids up to 5 << 8 | 255).
            (
                lease_record(6 << 8, 2000),
                "not granted by any entry up to applied index 5",
            ),
            (lease_record(3 << 8, 0), "a TTL of 0 ms"),
            (lease_record(3 << 8, u64::MAX), "a TTL of"),
            ((vec![db::LEASE_TAG, 1, 2], vec![]), "a malformed lease key"),
            (
                (db::lease_member_key(3 << 8, "k"), vec![1]),
                "a malformed lease key entry",
            ),
            (
                (db::data_key("a"), {
                    let mut bytes = codec::encode(&KeyRecord {
                        value: vec![],
                        mod_index: 2,
                        create_index: 2,
                    })
                    .unwrap();
                    bytes.extend(codec::encode(&(9u64 << 8)).unwrap());
                    bytes
                }),
                "granted past applied index 5",
            ),
        ];
        for ((key, value), expected) in cases {
            let error = check(&stream_of(header(log_id(2, 5)), vec![(key.clone(), value)]))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("corrupted") && error.contains(expected),
                "{key:?}: {error}"
            );
        }
    }

    /// Every cut of a good stream short of its end, and every single-byte change anywhere in
    /// it (magic, version, a frame's length, checksum or payload), is refused: never read as a
    /// shorter or different state, never a panic.
    #[test]
    fn every_cut_and_every_flipped_byte_of_a_stream_is_refused() {
        let good = stream_of(
            header(log_id(2, 5)),
            vec![key_record("a", 2, 5), key_record("b", 3, 3)],
        );
        assert!(check(&good).is_ok());
        for cut in 0..good.len() {
            assert!(check(&good[..cut]).is_err(), "cut at {cut} was read");
        }
        for at in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                assert!(check(&bad).is_err(), "byte {at} ^ {flip:#x} was read");
            }
        }
    }

    /// A frame that claims the largest length and brings a few bytes is refused as truncated
    /// (its buffer grows with what arrives, `FrameReader::next`).
    #[test]
    fn a_frame_claiming_more_than_it_holds_is_truncated() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&MAX_FRAME_BYTES.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(b"ten bytes!");
        let error = check(&bytes).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
    }

    /// Arbitrary bytes after a good preamble: refused with an error, never a panic. Seeded:
    /// the seed is printed, `PROPTEST_RNG_SEED=<seed>` replays it.
    #[test]
    fn arbitrary_bytes_after_the_preamble_are_refused() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed, TestRunner};
        let seed = std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x5eed);
        println!("stream fuzz seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
        let config = Config {
            cases: 2000,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config)
            .run(&proptest::collection::vec(any::<u8>(), 0..2048), |tail| {
                let mut bytes = MAGIC.to_vec();
                bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                bytes.extend_from_slice(&tail);
                prop_assert!(check(&bytes).is_err());
                Ok(())
            })
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}
