//! Leases as the state machine keeps them: one record per live lease and one marker per key
//! attached to it (layout in `db`), and `LeaseListener`, which tells the node's lease timers
//! what apply granted and ended.
//!
//! The state machine keeps no clock. When a lease runs out is decided by the leader alone
//! (`mirrorkv-coordinator`'s lease timers), which then proposes `Command::LeaseExpire`; every
//! node deletes the same keys at the same index because the decision is in the log.

use serde::{Deserialize, Serialize};

/// What the state machine keeps of a live lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease's time to live as granted.
    pub ttl_ms: u64,
    /// Keys attached to it now.
    pub keys: u64,
}

/// A live lease as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    /// Keys attached to it now.
    pub key_count: u64,
    /// The first of them in key order, as many as the read asked for.
    pub keys: Vec<String>,
}

/// Told by the state machine of every lease granted and ended by an entry, as it applies the
/// entry, just before the entry's write batch (and with it the applied index) reaches RocksDB:
/// whoever sees the index applied finds the timers already changed. The node's lease timers
/// implement it.
pub trait LeaseListener: Send + Sync + 'static {
    /// The live leases are now exactly `leases` (`(id, ttl_ms)`): the store was opened (the
    /// listener was just set), or a snapshot was installed.
    fn reset(&self, leases: Vec<(u64, u64)>);
    /// Lease `id` of `ttl_ms` was granted.
    fn granted(&self, id: u64, ttl_ms: u64);
    /// The leases `ids` were revoked or expired.
    fn ended(&self, ids: &[u64]);
}

/// A lease event of one applied entry, kept until its batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseEvent {
    Granted { id: u64, ttl_ms: u64 },
    Ended { id: u64 },
}
