//! Leases with a time to live (`POST /v1/lease`): their timers, kept by the leader alone on a
//! monotonic clock, and what expires them through the log.
//!
//! Not the leader's *read* lease (`crate::lease`): these are the clients' leases.
//!
//! - this file: `LeasesConfig`, and `LeaseTimers`, every live lease's deadline (pure apart
//!   from `Instant::now`, tested below). The state machine tells it what apply granted and
//!   ended (`LeaseListener`).
//! - `expiry`: the leader's task that proposes `Command::LeaseExpire` for leases past their
//!   deadline, a bounded number of keys per entry.
//! - `keepalive`: renewing leases and reading their timers from any node, through the leader,
//!   many to a frame.
//!
//! The rules (coordinator/DESIGN.md, "Leases"):
//! - Only the leader's timers count. A node that becomes leader gives every lease its full
//!   TTL again from that moment ([`LeaseTimers::lead`]), so a leader change can make a lease
//!   live longer (by at most its TTL plus the election) but never end early.
//! - A lease whose expiry the leader has proposed is *expiring*: it is never renewed again,
//!   even if the proposal fails (the leader proposes it again), so a keepalive that succeeded
//!   is never followed by an expiry decided before it.
//! - A renewal is answered only after a read index confirmed after the request arrived has
//!   been applied here: an expiry an earlier leader committed is applied first, so the
//!   answer never renews a lease already ended.

mod expiry;
mod keepalive;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mirrorkv_raft_net::LeaseTime;
use mirrorkv_storage::LeaseListener;
use tokio::sync::Notify;

pub(crate) use expiry::run_expiry;
pub(crate) use keepalive::{run_keepalives, KeepaliveBatcher};

/// The limits of leases, each with its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasesConfig {
    /// Shortest TTL a grant may ask for (`--min-lease-ttl-s`).
    pub min_ttl_s: u64,
    /// Longest TTL a grant may ask for.
    pub max_ttl_s: u64,
    /// Live leases at once in the cluster (`--max-leases`); a grant past it is refused.
    pub max_leases: u64,
    /// Keys attached to one lease (`--max-keys-per-lease`); a put past it is refused. Also
    /// bounds the keys one revoke deletes in its one entry.
    pub max_keys_per_lease: u64,
    /// Fault injection for tests only (0 in production): deadlines are set this much short of
    /// the TTL, a lease that ends early, for jepsen-lite's planted bug.
    pub fault_early_ms: u64,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self {
            min_ttl_s: 2,
            max_ttl_s: 86_400,
            max_leases: 100_000,
            max_keys_per_lease: 10_000,
            fault_early_ms: 0,
        }
    }
}

/// Counters of lease events, for `/metrics`.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    /// Leases this node's apply ended by expiry or revoke.
    pub ended_total: AtomicU64,
    /// Leases this node, as leader, proposed to expire.
    pub expiries_proposed_total: AtomicU64,
    /// Keepalives this node answered for its own clients (renewed or not found).
    pub keepalives_total: AtomicU64,
}

/// Every live lease's TTL and, on the leader, its deadline.
pub struct LeaseTimers {
    pub config: LeasesConfig,
    pub counters: LeaseCounters,
    timers: Mutex<Timers>,
    /// Woken when a deadline is set that may be earlier than the one the expiry task sleeps to.
    changed: Notify,
}

#[derive(Default)]
struct Timers {
    /// `LeasesConfig::fault_early_ms` (zero outside tests).
    early: Duration,
    leases: HashMap<u64, Timer>,
    /// `(deadline, id)` of every lease, earliest first.
    due: BTreeSet<(Instant, u64)>,
    /// The term in which this node, as leader, last gave every lease a full TTL.
    led_term: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    ttl: Duration,
    deadline: Instant,
    /// Its expiry was proposed: never renewed again (see the module doc).
    expiring: bool,
}

impl Timers {
    fn set_deadline(&mut self, id: u64, deadline: Instant) {
        if let Some(timer) = self.leases.get_mut(&id) {
            self.due.remove(&(timer.deadline, id));
            timer.deadline = deadline;
            self.due.insert((deadline, id));
        }
    }

    fn insert(&mut self, id: u64, ttl: Duration, now: Instant) {
        self.remove(id);
        let deadline = later(now, ttl.saturating_sub(self.early));
        self.leases.insert(
            id,
            Timer {
                ttl,
                deadline,
                expiring: false,
            },
        );
        self.due.insert((deadline, id));
    }

    fn remove(&mut self, id: u64) {
        if let Some(timer) = self.leases.remove(&id) {
            self.due.remove(&(timer.deadline, id));
        }
    }
}

/// `now + by`, or far in the future if that is past what `Instant` holds. TTLs are checked
/// where they enter (`Command::validate`, the state stream's validator); this keeps a timer
/// from ever panicking all the same.
fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How long after a proposed expiry the leader proposes it again if the lease still lives
/// (the proposal failed, or was lost in a leader change).
pub(crate) const EXPIRY_RETRY_MS: u64 = 1000;

impl LeaseTimers {
    pub fn new(config: LeasesConfig) -> std::sync::Arc<Self> {
        let timers = Timers {
            early: Duration::from_millis(config.fault_early_ms),
            ..Timers::default()
        };
        std::sync::Arc::new(Self {
            config,
            counters: LeaseCounters::default(),
            timers: Mutex::new(timers),
            changed: Notify::new(),
        })
    }

    fn timers(&self) -> std::sync::MutexGuard<'_, Timers> {
        // Every update leaves the maps consistent before it can panic.
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live leases.
    pub fn live(&self) -> usize {
        self.timers().leases.len()
    }

    /// This node leads in `term`: the first call in a term gives every lease its full TTL from
    /// `now` and forgets which were expiring (a new leader decides afresh).
    pub(crate) fn lead(&self, term: u64, now: Instant) {
        let mut timers = self.timers();
        if timers.led_term == Some(term) {
            return;
        }
        timers.led_term = Some(term);
        let leases: Vec<(u64, Duration)> =
            timers.leases.iter().map(|(id, t)| (*id, t.ttl)).collect();
        for (id, ttl) in leases {
            timers.insert(id, ttl, now);
        }
        drop(timers);
        self.changed.notify_one();
    }

    /// This node does not lead: the next time it does, it starts every lease afresh.
    pub(crate) fn follow(&self) {
        self.timers().led_term = None;
    }

    /// Renew lease `id` from `now`, unless it does not live or is expiring.
    pub(crate) fn renew(&self, id: u64, now: Instant) -> Option<LeaseTime> {
        let mut timers = self.timers();
        let timer = *timers.leases.get(&id)?;
        if timer.expiring {
            return None;
        }
        let deadline = later(now, timer.ttl.saturating_sub(timers.early));
        timers.set_deadline(id, deadline);
        Some(LeaseTime {
            ttl_ms: timer.ttl.as_millis() as u64,
            remaining_ms: timer.ttl.as_millis() as u64,
        })
    }

    /// Lease `id`'s TTL and time left at `now`, unless it does not live or is expiring.
    pub(crate) fn time_left(&self, id: u64, now: Instant) -> Option<LeaseTime> {
        let timers = self.timers();
        let timer = timers.leases.get(&id)?;
        if timer.expiring {
            return None;
        }
        Some(LeaseTime {
            ttl_ms: timer.ttl.as_millis() as u64,
            remaining_ms: timer.deadline.saturating_duration_since(now).as_millis() as u64,
        })
    }

    /// Leases whose deadline passed by `now`, at most `max`, earliest first: each is marked
    /// expiring and its deadline moved `EXPIRY_RETRY_MS` on, so that it is proposed again then
    /// if it still lives.
    pub(crate) fn take_due(&self, now: Instant, max: usize) -> Vec<u64> {
        let mut timers = self.timers();
        let due: Vec<u64> = timers
            .due
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect();
        for id in &due {
            if let Some(timer) = timers.leases.get_mut(id) {
                timer.expiring = true;
            }
            timers.set_deadline(*id, later(now, Duration::from_millis(EXPIRY_RETRY_MS)));
        }
        due
    }

    /// The earliest deadline, if any lease lives.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers().due.first().map(|(deadline, _)| *deadline)
    }

    /// Resolves when a deadline may have become earlier than the last `next_deadline`.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }
}

impl LeaseListener for LeaseTimers {
    fn reset(&self, leases: Vec<(u64, u64)>) {
        let now = Instant::now();
        let mut timers = self.timers();
        *timers = Timers {
            early: timers.early,
            led_term: timers.led_term,
            ..Timers::default()
        };
        for (id, ttl_ms) in leases {
            timers.insert(id, Duration::from_millis(ttl_ms), now);
        }
        drop(timers);
        self.changed.notify_one();
    }

    fn granted(&self, id: u64, ttl_ms: u64) {
        self.timers()
            .insert(id, Duration::from_millis(ttl_ms), Instant::now());
        self.changed.notify_one();
    }

    fn ended(&self, ids: &[u64]) {
        let mut timers = self.timers();
        for id in ids {
            timers.remove(*id);
        }
        self.counters
            .ended_total
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
    }
}
