//! Read-index rounds shared by concurrent linearizable reads, and the leader's read lease.
//!
//! A linearizable read needs a leadership confirmation that *started after the read arrived*.
//! Reads that arrive while a round is in flight wait for the next round, which starts as soon as
//! the current one ends and answers all of them at once: one quorum round trip (or one RPC to
//! the leader) serves every read queued behind it.

use std::sync::Mutex;
use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, ReadIndexKind};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::NodeState;

/// Between retries inside a round, wait at most this long for the leader to change.
const RETRY_WAIT_MS: u64 = 50;

type Waiter = oneshot::Sender<Result<u64, String>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    round_in_flight: bool,
}

/// Batches read-index requests of one node.
#[derive(Default)]
pub struct ReadIndexBatcher {
    queue: Mutex<Queue>,
}

impl ReadIndexBatcher {
    /// A read index obtained by a round that started after this call.
    pub async fn read_index(
        &self,
        state: &std::sync::Arc<NodeState>,
        deadline: Instant,
    ) -> Result<u64, ApiError> {
        let (tx, rx) = oneshot::channel();
        let start_round = {
            let mut queue = self.queue.lock().expect("queue lock");
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.round_in_flight, true)
        };
        if start_round {
            let state = state.clone();
            tokio::spawn(async move { run_rounds(&state).await });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(Ok(index))) => Ok(index),
            Ok(Ok(Err(message))) => Err(ApiError::Unavailable(message)),
            Ok(Err(_)) => Err(ApiError::Unavailable(
                "read index round ended without an answer".into(),
            )),
            Err(_) => Err(ApiError::Timeout(format!(
                "no leadership confirmation within {} ms",
                remaining.as_millis()
            ))),
        }
    }
}

/// Run rounds until nobody waits: each round answers everyone who was waiting when it started.
async fn run_rounds(state: &NodeState) {
    loop {
        let waiters = {
            let mut queue = state.read_index.queue.lock().expect("queue lock");
            if queue.waiting.is_empty() {
                queue.round_in_flight = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let deadline = Instant::now() + state.config.request_timeout();
        let result = one_round(state, ReadIndexKind::Confirmed, deadline)
            .await
            .map_err(|e| e.to_string());
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// One leadership confirmation: on the leader a heartbeat round to a quorum; on a follower a
/// `ReadIndex` request to the leader over raft-net. With `Lease`, a leader holding its lease
/// answers without a round, and a follower asks the leader to answer under its lease. With
/// `LeaderApplied`, the leader answers its applied index without any check. Retries across
/// leader changes until `deadline`.
pub(crate) async fn one_round(
    state: &NodeState,
    kind: ReadIndexKind,
    deadline: Instant,
) -> Result<u64, ApiError> {
    loop {
        state.refuse_if_removed()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::Unavailable(
                "no leader confirmed a read index in time".into(),
            ));
        }
        let tried = state.leader();
        match tried {
            Some(leader) if leader == state.id => {
                if kind == ReadIndexKind::LeaderApplied {
                    return Ok(state.applied_index());
                }
                let term = state.term();
                if kind == ReadIndexKind::Lease {
                    if let Some(index) = state.lease_read_index().await {
                        return Ok(index);
                    }
                }
                let started = std::time::Instant::now();
                match tokio::time::timeout(remaining, state.raft.get_read_log_id()).await {
                    Ok(Ok((read_log_id, _))) => {
                        let index = read_log_id.map_or(0, |id| id.index);
                        // The confirmation was of the term we read before asking, or a later
                        // one; crediting the older term is the conservative choice.
                        state.lease.extend(started, term, index);
                        return Ok(index);
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {}
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                        tracing::debug!(error = %e, "read index: no quorum");
                    }
                    Ok(Err(e)) => {
                        return Err(ApiError::Unavailable(format!("read index failed: {e}")))
                    }
                    Err(_) => {
                        return Err(ApiError::Unavailable(
                            "leadership not confirmed in time".into(),
                        ))
                    }
                }
            }
            Some(leader) => {
                if let Some(index) = ask_leader(state, leader, kind, remaining).await {
                    return Ok(index);
                }
            }
            None => {}
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(RETRY_WAIT_MS));
        state.wait_for_leader_change(tried, wait).await;
    }
}

/// One read-index request to `leader` over raft-net; `None` if it did not answer one (not the
/// leader any more, unreachable, no quorum): the caller retries until its deadline.
pub(crate) async fn ask_leader(
    state: &NodeState,
    leader: u64,
    kind: ReadIndexKind,
    timeout: Duration,
) -> Option<u64> {
    let node = state.member(leader)?;
    match state
        .pool
        .client(leader, &node)
        .read_index(kind, timeout)
        .await
    {
        Ok(Ok(index)) => Some(index),
        Ok(Err(ForwardError::NotLeader { .. })) => None,
        Ok(Err(e @ (ForwardError::Unavailable(_) | ForwardError::Refused { .. }))) => {
            tracing::debug!(leader, ?kind, error = %e, "read index refused");
            None
        }
        Err(e) => {
            tracing::debug!(leader, ?kind, error = %e, "read index request failed");
            None
        }
    }
}

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
mod lease_tests {
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
