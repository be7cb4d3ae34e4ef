//! The leader's expiry task: leases past their deadline are ended through the log, a bounded
//! number of keys per entry, so that a mass expiry is spread over entries that other writes
//! interleave with instead of one apply that stalls every node.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkv_storage::{Command, CommandResult};

use crate::{write, Coordinator};

/// Most leases one expiry entry ends.
pub(crate) const MAX_LEASES_PER_EXPIRY: usize = 50;
/// Most keys one expiry entry deletes (a lease holding more goes alone in its entry; at most
/// `max_keys_per_lease`). Small, so that other writes never wait long behind one: a mass
/// expiry of 100000 keys with 10000 an entry kept puts on other keys waiting (p99 273 ms);
/// with 500, p99 29 ms, and it took 1.5 s instead of 1.1 (coordinator/DESIGN.md).
pub(crate) const MAX_KEYS_PER_EXPIRY: u64 = 500;
/// With nothing due, the task still looks again this often.
const IDLE_CHECK_MS: u64 = 1000;

/// Expire leases while this node leads, until `stop` resolves.
pub(crate) async fn run_expiry(node: Arc<Coordinator>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut metrics = node.raft.metrics();
    loop {
        let (leads, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader == Some(node.id), m.current_term)
        };
        if !leads {
            node.leases.follow();
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = &mut stop => return,
            }
            continue;
        }
        let now = Instant::now();
        node.leases.lead(term, now);
        let due = node.leases.take_due(now, MAX_LEASES_PER_EXPIRY * 8);
        if due.is_empty() {
            let idle = now + Duration::from_millis(IDLE_CHECK_MS);
            let wake = node.leases.next_deadline().map_or(idle, |d| d.min(idle));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = node.leases.changed() => {}
                _ = &mut stop => return,
            }
            continue;
        }
        for ids in entries_of(&node, due) {
            let proposed = ids.len() as u64;
            let deadline = tokio::time::Instant::now() + node.config.request_timeout();
            // Appended here only if this node still leads: an expiry is this leader's decision
            // and is never forwarded to another leader, whose timers may differ.
            let answer = tokio::time::timeout_at(
                deadline,
                write::apply_as_leader(&node, Command::LeaseExpire { ids }),
            )
            .await;
            node.leases
                .counters
                .expiries_proposed_total
                .fetch_add(proposed, Ordering::Relaxed);
            match answer {
                Ok(Ok(response)) => {
                    if let CommandResult::LeasesEnded {
                        leases,
                        keys_deleted,
                    } = response.result
                    {
                        tracing::debug!(
                            leases,
                            keys_deleted,
                            index = response.index,
                            "leases expired"
                        );
                    }
                }
                // The leases stay expiring and are proposed again (`EXPIRY_RETRY_MS`) if they
                // still live then.
                Ok(Err(e)) => tracing::debug!(error = %e, "proposing a lease expiry failed"),
                Err(_) => tracing::debug!("proposing a lease expiry timed out"),
            }
        }
    }
}

/// `due` cut into the ids of one expiry entry each: at most `MAX_LEASES_PER_EXPIRY` leases and
/// about `MAX_KEYS_PER_EXPIRY` keys (each entry holds at least one lease).
fn entries_of(node: &Coordinator, due: Vec<u64>) -> Vec<Vec<u64>> {
    let keys_of = |id: u64| match node.reader.lease(id, 0) {
        Ok(read) => read.value.map_or(0, |info| info.key_count),
        // Unknown here: counted as a full lease, so the entry stays bounded.
        Err(_) => MAX_KEYS_PER_EXPIRY,
    };
    cut_by_keys(due, keys_of)
}

/// `ids` in order, cut into groups of at most `MAX_LEASES_PER_EXPIRY` ids whose keys
/// (`keys_of`) stay within `MAX_KEYS_PER_EXPIRY`, except a group of one.
pub(crate) fn cut_by_keys(ids: Vec<u64>, mut keys_of: impl FnMut(u64) -> u64) -> Vec<Vec<u64>> {
    let mut groups: Vec<Vec<u64>> = Vec::new();
    let mut group = Vec::new();
    let mut group_keys = 0u64;
    for id in ids {
        let keys = keys_of(id);
        if !group.is_empty()
            && (group.len() >= MAX_LEASES_PER_EXPIRY || group_keys + keys > MAX_KEYS_PER_EXPIRY)
        {
            groups.push(std::mem::take(&mut group));
            group_keys = 0;
        }
        group.push(id);
        group_keys += keys;
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}
