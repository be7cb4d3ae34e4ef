//! `StorageError`: everything that can go wrong below openraft.

use crate::codec::CodecError;

/// An error of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The data on disk breaks an invariant of `storage/DESIGN.md`; the node must not start.
    #[error("storage invariant violated: {0}")]
    Invariant(String),
    /// A backup stream that cannot be restored (corrupted, truncated, wrong format) or a
    /// restore that cannot proceed; the message says which.
    #[error("backup: {0}")]
    Backup(String),
    /// A file outside RocksDB (a snapshot file) could not be read or written.
    #[error("i/o: {0}")]
    Io(String),
    /// The node is replacing its state with a snapshot from the leader; until that finishes
    /// there is no consistent state to read. Clears by itself: retry, or read another node.
    #[error("this node is installing a snapshot from the leader; retry shortly or read from another node")]
    Installing,
}

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
