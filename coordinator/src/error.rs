//! `CoordError`: what the node's coordination can fail with. The HTTP layer maps it to status
//! codes (`api/src/error.rs`, the one mapping); the messages are safe to show a client.

use mirrorkv_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The request itself is wrong; retrying it unchanged cannot help.
    #[error("{0}")]
    InvalidArgument(String),
    /// A key, value, transaction or answer over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// Nothing was done (no leader, a leader leaving, a store installing a snapshot); another
    /// attempt, here or on another node, can succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A read bounded by `max_staleness_ms` that this node cannot serve fresh enough.
    #[error("{0}")]
    StaleRead(String),
    /// Something without side effects (a read, a barrier, a membership change, which are all
    /// idempotent) ran out of time; retrying is safe.
    #[error("{0}")]
    Timeout(String),
    /// A write ran out of time or lost its leader after it may have been appended: it may or
    /// may not have been applied.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A cluster member that does not exist.
    #[error("{0}")]
    NoSuchMember(String),
    /// A mirror too far behind to be promoted; clears by itself as it catches up.
    #[error("{0}")]
    NotCaughtUp(String),
    /// This node was removed from the cluster: it serves nothing any more; another member does.
    #[error("{0}")]
    Removed(String),
    /// Too many of something at once on this node (watches); another attempt later, or on
    /// another node, can succeed.
    #[error("{0}")]
    Overloaded(String),
    /// Changes asked for are no longer in this node's history; the history starts after
    /// `compact_index`.
    #[error("{message}")]
    Compacted { message: String, compact_index: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<mirrorkv_storage::InvalidCommand> for CoordError {
    fn from(invalid: mirrorkv_storage::InvalidCommand) -> Self {
        match invalid {
            mirrorkv_storage::InvalidCommand::TooLarge(message) => CoordError::TooLarge(message),
            mirrorkv_storage::InvalidCommand::Invalid(message) => {
                CoordError::InvalidArgument(message)
            }
        }
    }
}
