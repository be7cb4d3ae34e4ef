//! Watches: change streams and blocking reads over the change history.
//!
//! - [`hub`]: `WatchHub`, the node's one feed of applied changes, fanned out to the streams that
//!   are caught up, and the limits of watching.
//! - [`stream`]: `WatchStream`, one stream from an index on: it reads the history until it is
//!   caught up, then joins the hub; and the blocking read's wait.
//! - [`interval`]: `IntervalIndex`, which watched prefixes and ranges hold a key.
//!
//! Why it is shaped this way: `coordinator/DESIGN.md`, "Watches".

pub mod hub;
pub mod interval;
pub mod stream;

use std::sync::OnceLock;

use bytes::Bytes;
use mirrorkv_storage::changes::Change;

pub use hub::{WatchConfig, WatchCounters, WatchHub, WatcherSlot};
pub use stream::{WaitOutcome, WatchItem, WatchStream};

/// One change as the watchers see it: shared by every stream it matches, and encoded for the
/// wire once, by the first stream that sends it.
#[derive(Debug)]
pub struct WatchEvent {
    pub change: Change,
    encoded: OnceLock<Bytes>,
}

impl WatchEvent {
    pub fn new(change: Change) -> Self {
        Self {
            change,
            encoded: OnceLock::new(),
        }
    }

    /// The event encoded by `encode`, which runs once per event whichever stream asks first.
    pub fn encoded_with(&self, encode: impl FnOnce(&Change) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.change)).clone()
    }
}

/// How a stream ended (a client's disconnect needs no telling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Its client fell `buffer_events` behind; every change before `resume_index` was sent.
    Lagging { resume_index: u64 },
    /// The changes it needed next are gone from this node's history (pruned, or the state was
    /// replaced by a snapshot); the history starts after `compact_index`.
    Compacted { compact_index: u64 },
    /// The node is shutting down.
    Closed,
}
