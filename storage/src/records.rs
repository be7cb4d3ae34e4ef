//! The records the state machine keeps beside the user's keys, and the check that a state
//! stream (a backup or a snapshot file) holds only records apply could have written.
//!
//! Shared by the state machine (which writes them) and `stream` (which checks them on restore
//! and install), so neither imports the other.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db;
use crate::error::Result;
use crate::leases::LeaseRecord;
use crate::types::{Response, SnapshotMeta};

/// The record of a snapshot in RocksDB: its metadata and the name of its file in the snapshot
/// directory (the data itself is the file, in the `stream` format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) file: String,
}

/// The first answer to an idempotent command, kept to answer its retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IdempotencyRecord {
    pub(crate) issued_at_ms: u64,
    pub(crate) response: Response,
    /// `codec::fingerprint` of the command it answered: a retry must be the same command.
    /// `None` for records written before fingerprints (`IdempotencyRecordV1`), which are
    /// trusted as before until they expire.
    pub(crate) fingerprint: Option<u64>,
}

/// The record as written before fingerprints; read when a stored record does not decode as
/// the current one (postcard is not self-describing: the two never decode as each other, as
/// `codec::decode` refuses leftover bytes and a short read alike).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecordV1 {
    issued_at_ms: u64,
    response: Response,
}

/// Check one raw `sm` entry of a state stream (a backup or a snapshot file) at applied index
/// `applied_index`: it must be a record apply could have written by then. Restore and install
/// write records as they are, so this is what keeps a crafted or damaged stream from planting a
/// record that later reads or applies cannot handle. `Err` says what is wrong.
pub(crate) fn check_stream_record(
    key: &[u8],
    value: &[u8],
    applied_index: u64,
) -> std::result::Result<(), String> {
    let (&tag, rest) = key.split_first().ok_or("an empty key")?;
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(|_| ())
            .map_err(|_| "a key that is not UTF-8".to_string())
    };
    match tag {
        db::DATA_TAG => {
            text(rest)?;
            // The indexes only (the value is stepped over, not copied); decoding them checks
            // the whole record's encoding all the same.
            let (record, lease) = codec::decode_prefix::<KeyRecordIndexes>(value)
                .map_err(|e| format!("an undecodable key record ({e})"))?;
            let lease = db::decode_lease_suffix(lease)
                .map_err(|e| format!("an undecodable lease id after a key record ({e})"))?;
            if lease >> 8 > applied_index {
                return Err(format!(
                    "a key attached to lease {lease}, granted past applied index {applied_index}"
                ));
            }
            if !(1 <= record.create_index
                && record.create_index <= record.mod_index
                && record.mod_index <= applied_index)
            {
                return Err(format!(
                    "a key record with create_index {} and mod_index {} at applied index {applied_index}",
                    record.create_index, record.mod_index
                ));
            }
        }
        db::IDEMPOTENCY_TAG => {
            text(rest)?;
            let record = decode_idempotency_record(value)
                .map_err(|e| format!("an undecodable idempotency record ({e})"))?;
            if record.response.index > applied_index {
                return Err(format!(
                    "an idempotency record answered at index {} past applied index {applied_index}",
                    record.response.index
                ));
            }
        }
        db::IDEMPOTENCY_TIME_TAG => {
            if rest.len() < 8 || !value.is_empty() {
                return Err("a malformed idempotency expiry entry".into());
            }
            text(&rest[8..])?;
        }
        db::LEASE_TAG => {
            let id = lease_id_of(rest)?;
            if rest.len() != 8 {
                return Err("a malformed lease key".into());
            }
            let record: LeaseRecord =
                codec::decode(value).map_err(|e| format!("an undecodable lease record ({e})"))?;
            if !(1..=crate::types::MAX_LEASE_TTL_MS).contains(&record.ttl_ms) {
                return Err(format!("lease {id} with a TTL of {} ms", record.ttl_ms));
            }
            if id >> 8 > applied_index || id >> 8 == 0 {
                return Err(format!(
                    "lease {id}, not granted by any entry up to applied index {applied_index}"
                ));
            }
        }
        db::LEASE_KEY_TAG => {
            lease_id_of(rest)?;
            if !value.is_empty() {
                return Err("a malformed lease key entry".into());
            }
            text(&rest[8..])?;
        }
        db::ROLE_TAG => {
            let name = std::str::from_utf8(rest).map_err(|_| "a role name that is not UTF-8")?;
            if !crate::auth::valid_role_name(name) {
                return Err(format!("a role with the invalid name {name:?}"));
            }
            codec::decode::<crate::auth::Role>(value)
                .map_err(|e| format!("an undecodable role ({e})"))?;
        }
        db::TOKEN_TAG => {
            let id = std::str::from_utf8(rest).map_err(|_| "a token id that is not UTF-8")?;
            let token: crate::auth::TokenRecord =
                codec::decode(value).map_err(|e| format!("an undecodable token ({e})"))?;
            if token.id != id || !crate::auth::valid_token_id(id) {
                return Err(format!(
                    "a token record under the wrong or invalid id {id:?}"
                ));
            }
        }
        _ => return Err("a reserved key".into()),
    }
    Ok(())
}

/// The lease id at the front of a lease key's rest.
fn lease_id_of(rest: &[u8]) -> std::result::Result<u64, String> {
    rest.get(..8)
        .and_then(|id| id.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| "a malformed lease key".to_string())
}

pub(crate) fn decode_idempotency_record(bytes: &[u8]) -> Result<IdempotencyRecord> {
    match codec::decode::<IdempotencyRecord>(bytes) {
        Ok(record) => Ok(record),
        Err(_) => {
            let v1: IdempotencyRecordV1 = codec::decode(bytes)?;
            Ok(IdempotencyRecord {
                issued_at_ms: v1.issued_at_ms,
                response: v1.response,
                fingerprint: None,
            })
        }
    }
}

/// A `KeyRecord` decoded without its value: postcard writes `Vec<u8>` as a length and the bytes,
/// which `SkippedBytes` steps over (borrowing, never copying).
#[derive(Deserialize)]
pub(crate) struct KeyRecordIndexes {
    #[serde(rename = "value")]
    _value: SkippedBytes,
    pub(crate) mod_index: u64,
    pub(crate) create_index: u64,
}

/// A byte string read and dropped without a copy.
struct SkippedBytes;

impl<'de> Deserialize<'de> for SkippedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SkippedBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                _: &'de [u8],
            ) -> std::result::Result<Self::Value, E> {
                Ok(SkippedBytes)
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                _: &[u8],
            ) -> std::result::Result<Self::Value, E> {
                Ok(SkippedBytes)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}
