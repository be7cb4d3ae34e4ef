//! The `lock` workload: clients on every node take one lock the way `mirrorkv ctl lock` does
//! (`mirrorkv_client::Lock`: a leased key under `_lock/jl/`, the first created holds it), then
//! write a guarded register with their fencing token (a txn that compares the lock key's
//! `mod_index` with the token), and release the lock, or crash holding it (drop it: its lease
//! runs out), or pause holding it (stop renewing for longer than the TTL, then write).
//!
//! `judge_lock` checks:
//! - **no two holders both succeed**: guarded writes that succeeded, in log order, carry
//!   non-decreasing tokens (a write with a smaller token after one with a larger means a
//!   holder wrote after the next one had the lock);
//! - **tokens strictly increasing per lock**: no two acquisitions got the same token, and each
//!   client's tokens grow;
//! - **no lease ends early**: a guarded write that found the lock gone, answered before the
//!   lease was certainly alive until (the send time of its last acknowledged keepalive plus the
//!   TTL, `Lease::alive_until`), is a lease that ended early. Not judged under the `clock`
//!   nemesis, which runs nodes' clocks at other rates: lease expiry, like the read lease,
//!   assumes the leader's clock runs at about real time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorkv_client::{Client, Compare, Lock, Txn, TxnOp};
use serde::Serialize;
use tokio::time::Instant;

use crate::workloads::{ClientContext, InvariantReport};

/// The lock every client takes.
pub const LOCK: &str = "jl";
/// The register the holders write.
pub const REGISTER: &str = "lock-register";
/// The lock's lease TTL: the shortest a node allows by default.
pub const TTL_S: u64 = 2;

/// One acquisition of the lock and what its holder did with it.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub slot: u64,
    pub token: u64,
    /// Guarded writes: `Some((index, succeeded))` when answered, `None` when the outcome is
    /// unknown.
    pub writes: Vec<Option<(u64, bool)>>,
    /// A guarded write found the lock gone while its lease was certainly alive: how long
    /// before `alive_until` the answer came, in ms.
    pub lost_early_ms: Option<u64>,
}

/// What a lock run's clients did.
#[derive(Debug, Default)]
pub struct LockTally {
    pub held: Vec<Held>,
    /// Acquisitions attempted (held or not).
    pub attempted: usize,
}

/// One client: take the lock on its node, write under it, let go, until `stop`.
pub async fn lock_client(slot: u64, ctx: ClientContext, tally: Arc<Mutex<LockTally>>) {
    let mut next_at = tokio::time::Instant::now();
    let mut rng = slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for counter in 0..ctx.max_ops {
        if !ctx.next_turn(&mut next_at).await {
            break;
        }
        let client = &ctx.clients[(counter as usize + slot as usize) % ctx.clients.len()];
        tally.lock().expect("tally").attempted += 1;
        // Bounded: a holder that never lets go is ended by its lease, so waiting longer than
        // a few TTLs means the cluster is unavailable.
        let wait = Duration::from_secs(4 * TTL_S) + ctx.timeout;
        let Ok(Ok(lock)) = tokio::time::timeout(wait, Lock::acquire(client, LOCK, TTL_S)).await
        else {
            continue;
        };
        let held = hold(slot, counter, client, lock, next(), &ctx).await;
        tally.lock().expect("tally").held.push(held);
    }
}

/// Write under `lock` once or twice, then release, crash or pause as `dice` says.
async fn hold(
    slot: u64,
    counter: u64,
    client: &Client,
    lock: Lock,
    dice: u64,
    ctx: &ClientContext,
) -> Held {
    let mut held = Held {
        slot,
        token: lock.fencing_token(),
        writes: Vec::new(),
        lost_early_ms: None,
    };
    let key = lock.key().to_string();
    let writes = 1 + dice % 2;
    let mut lock = Some(lock);
    for n in 0..writes {
        let mut alive_until = lock.as_ref().map(|l| l.lease().alive_until());
        if n == 1 && dice.is_multiple_of(8) {
            // A pause of the holder: it stops renewing (drops its lease keeper) and comes back
            // after the TTL has certainly passed; its write must then fail.
            drop(lock.take());
            alive_until = None;
            tokio::time::sleep(Duration::from_millis(TTL_S * 1000 + 500)).await;
        }
        let txn = Txn {
            compare: vec![Compare::ModIndex {
                key: key.clone(),
                mod_index: held.token,
            }],
            success: vec![TxnOp::Put {
                key: REGISTER.into(),
                value: format!("{slot}-{counter}-{n}").into_bytes(),
            }],
            failure: Vec::new(),
        };
        let answer = tokio::time::timeout(ctx.timeout, client.txn(&txn)).await;
        let answered_at = Instant::now();
        match answer {
            Ok(Ok(result)) => {
                held.writes.push(Some((result.index, result.succeeded)));
                if let Some(until) = alive_until.filter(|_| !result.succeeded) {
                    if answered_at < until {
                        held.lost_early_ms = Some((until - answered_at).as_millis() as u64);
                    }
                }
                if !result.succeeded {
                    break;
                }
            }
            Ok(Err(e)) if !e.write_may_have_applied() => {}
            _ => held.writes.push(None),
        }
    }
    match (lock, dice % 5) {
        // A crash: the lock is held until its lease runs out.
        (Some(lock), 0) => drop(lock),
        (Some(lock), _) => {
            let _ = tokio::time::timeout(ctx.timeout, lock.release()).await;
        }
        (None, _) => {}
    }
    held
}

/// Judge a lock run (see the module doc). `judge_early` is false under the `clock` nemesis.
pub fn judge_lock(tally: &LockTally, judge_early: bool) -> InvariantReport {
    let mut report = InvariantReport {
        attempted: tally.attempted,
        acknowledged: tally.held.len(),
        ..InvariantReport::default()
    };
    let mut succeeded: Vec<(u64, u64, u64)> = Vec::new();
    for held in &tally.held {
        for (index, ok) in held.writes.iter().flatten() {
            report.reads += 1;
            if *ok {
                succeeded.push((*index, held.token, held.slot));
            }
        }
        report.unknown += held.writes.iter().filter(|w| w.is_none()).count();
        if let (true, Some(ms)) = (judge_early, held.lost_early_ms) {
            report.lost.push(format!(
                "slot {} token {}: the lock was gone {ms} ms before its lease certainly ended",
                held.slot, held.token
            ));
        }
    }
    succeeded.sort_unstable();
    for pair in succeeded.windows(2) {
        let ((i, t, s), (j, u, r)) = (pair[0], pair[1]);
        if u < t {
            report.bad_reads.push(format!(
                "two holders: slot {r} wrote with token {u} at index {j}, after slot {s} wrote with the newer token {t} at index {i}"
            ));
        }
    }
    let mut tokens: Vec<u64> = tally.held.iter().map(|h| h.token).collect();
    tokens.sort_unstable();
    for pair in tokens.windows(2) {
        if pair[0] == pair[1] {
            report
                .bad_reads
                .push(format!("two acquisitions got token {}", pair[0]));
        }
    }
    let mut last_by_slot = std::collections::HashMap::new();
    for held in &tally.held {
        if let Some(last) = last_by_slot.insert(held.slot, held.token) {
            if held.token <= last {
                report.bad_reads.push(format!(
                    "slot {} got token {} after token {last}",
                    held.slot, held.token
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(slot: u64, token: u64, writes: &[(u64, bool)]) -> Held {
        Held {
            slot,
            token,
            writes: writes.iter().map(|w| Some(*w)).collect(),
            lost_early_ms: None,
        }
    }

    #[test]
    fn holders_in_token_order_are_valid() {
        let tally = LockTally {
            held: vec![
                held(0, 5, &[(6, true), (7, true)]),
                held(1, 9, &[(10, true)]),
                held(0, 12, &[(13, true), (20, false)]),
            ],
            attempted: 4,
        };
        let report = judge_lock(&tally, true);
        assert!(report.valid(), "{report:?}");
        assert_eq!((report.acknowledged, report.reads), (3, 5));
    }

    #[test]
    fn a_stale_holder_writing_after_the_next_one_is_caught() {
        let tally = LockTally {
            held: vec![
                held(0, 5, &[(6, true), (11, true)]),
                held(1, 9, &[(10, true)]),
            ],
            attempted: 2,
        };
        let report = judge_lock(&tally, true);
        assert!(!report.valid());
        assert!(report.bad_reads[0].contains("two holders"), "{report:?}");
    }

    #[test]
    fn a_shared_token_and_an_early_end_are_caught() {
        let mut early = held(1, 5, &[(8, false)]);
        early.lost_early_ms = Some(700);
        let tally = LockTally {
            held: vec![held(0, 5, &[(6, true)]), early],
            attempted: 2,
        };
        let report = judge_lock(&tally, true);
        assert!(report.bad_reads.iter().any(|r| r.contains("token 5")));
        assert_eq!(report.lost.len(), 1, "{report:?}");
        assert!(
            judge_lock(&tally, false).lost.is_empty(),
            "not judged under clock faults"
        );
    }
}
