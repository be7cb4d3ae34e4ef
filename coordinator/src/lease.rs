//! The leader's read lease: how long after a leadership confirmation a leader may serve reads
//! without asking a quorum. Pure but for `Lease::valid` reading the clock; the rule takes the
//! clock as a parameter (`Lease::valid_at`) and is unit-tested alone.

use std::sync::Mutex;
use std::time::Duration;

/// The leader's read lease: after a leadership confirmation that started at `t`, no other node
/// can become leader before `t + leader_lease` (openraft's followers refuse to vote while they
/// heard from a leader within `leader_lease`, and a restarted node refuses every vote and
/// stands for no election for that long, see node/DESIGN.md), so until then minus a
/// clock-drift margin the leader may serve reads from local state without asking a quorum.
pub struct Lease {
    config: LeaseConfig,
    held: Mutex<Option<HeldLease>>,
}

#[derive(Clone, Copy)]
struct HeldLease {
    expires: std::time::Instant,
    term: u64,
    /// The read index of the confirmation that established the lease: local state must have
    /// applied it before serving (a new leader may not yet have applied its predecessor's
    /// commits).
    read_index: u64,
}

/// The lease timing of a node, from its Raft configuration.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// How long followers refuse to vote after hearing from the leader (openraft: the maximum
    /// election timeout).
    pub leader_lease_ms: u64,
    /// Subtracted from the lease for clock drift between nodes and scheduling delays.
    pub lease_margin_ms: u64,
}

impl Lease {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            held: Mutex::new(None),
        }
    }

    /// How long followers refuse to vote after hearing from a leader.
    pub fn leader_lease_ms(&self) -> u64 {
        self.config.leader_lease_ms
    }

    /// Record a confirmation in `term` that started at `started` and answered `read_index`.
    pub fn extend(&self, started: std::time::Instant, term: u64, read_index: u64) {
        let valid_ms = self
            .config
            .leader_lease_ms
            .saturating_sub(self.config.lease_margin_ms);
        let expires = started + Duration::from_millis(valid_ms);
        let mut held = self.held.lock().expect("lease lock");
        let newer = held.is_none_or(|h| h.term < term || (h.term == term && h.expires < expires));
        if newer {
            *held = Some(HeldLease {
                expires,
                term,
                read_index,
            });
        }
    }

    /// When the newest confirmation of `term` (a quorum acknowledging this node as leader)
    /// started, if there is one.
    pub fn confirmed_at(&self, term: u64) -> Option<std::time::Instant> {
        let held = (*self.held.lock().expect("lease lock"))?;
        let valid_ms = self
            .config
            .leader_lease_ms
            .saturating_sub(self.config.lease_margin_ms);
        (held.term == term).then(|| held.expires - Duration::from_millis(valid_ms))
    }

    /// The read index to wait for if the lease of `term` holds now.
    pub fn valid(&self, term: u64) -> Option<u64> {
        self.valid_at(term, std::time::Instant::now())
    }

    /// The read index to wait for if the lease of `term` holds at `now` (the clock is a
    /// parameter so that the rule is tested alone).
    fn valid_at(&self, term: u64, now: std::time::Instant) -> Option<u64> {
        let held = (*self.held.lock().expect("lease lock"))?;
        (held.term == term && now < held.expires).then_some(held.read_index)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn lease() -> Lease {
        Lease::new(LeaseConfig {
            leader_lease_ms: 1000,
            lease_margin_ms: 200,
        })
    }

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn a_lease_holds_for_the_leader_lease_less_the_margin_from_when_its_round_started() {
        let lease = lease();
        let started = Instant::now();
        assert_eq!(lease.valid_at(3, started), None, "no confirmation yet");
        lease.extend(started, 3, 42);
        assert_eq!(lease.valid_at(3, started + ms(799)), Some(42));
        assert_eq!(lease.valid_at(3, started + ms(800)), None, "1000 - 200 ms");
        assert_eq!(lease.valid_at(4, started), None, "another term");
        assert_eq!(lease.confirmed_at(3), Some(started));
        assert_eq!(lease.confirmed_at(4), None);
    }

    #[test]
    fn an_older_confirmation_never_shortens_a_lease_and_a_new_term_replaces_it() {
        let lease = lease();
        let started = Instant::now();
        lease.extend(started + ms(500), 3, 50);
        lease.extend(started, 3, 40);
        assert_eq!(
            lease.valid_at(3, started + ms(1200)),
            Some(50),
            "the newer one stays"
        );
        lease.extend(started, 4, 60);
        assert_eq!(lease.valid_at(3, started + ms(100)), None, "term 3 is over");
        assert_eq!(lease.valid_at(4, started + ms(100)), Some(60));
        lease.extend(started + ms(900), 3, 70);
        assert_eq!(
            lease.valid_at(4, started + ms(100)),
            Some(60),
            "a confirmation of an older term is ignored"
        );
    }

    #[test]
    fn a_margin_past_the_lease_leaves_no_lease() {
        let lease = Lease::new(LeaseConfig {
            leader_lease_ms: 100,
            lease_margin_ms: 500,
        });
        let started = Instant::now();
        lease.extend(started, 1, 1);
        assert_eq!(lease.valid_at(1, started), None);
    }
}
