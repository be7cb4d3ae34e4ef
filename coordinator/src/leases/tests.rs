use std::time::{Duration, Instant};

use mirrorkv_storage::LeaseListener;

use super::expiry::{cut_by_keys, MAX_KEYS_PER_EXPIRY, MAX_LEASES_PER_EXPIRY};
use super::*;

fn timers() -> std::sync::Arc<LeaseTimers> {
    LeaseTimers::new(LeasesConfig::default())
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_lease_is_due_only_once_its_ttl_passed_and_then_never_renews() {
    let timers = timers();
    timers.granted(7, 2000);
    let start = Instant::now();
    assert!(
        timers.take_due(start + SECOND, 10).is_empty(),
        "not due at 1 s"
    );
    assert!(timers
        .time_left(7, start)
        .is_some_and(|t| t.ttl_ms == 2000 && t.remaining_ms <= 2000));
    let due = timers.take_due(start + 3 * SECOND, 10);
    assert_eq!(due, vec![7]);
    // Expiring: a keepalive now must fail, and the lookup says it does not live.
    assert_eq!(timers.renew(7, start + 3 * SECOND), None);
    assert_eq!(timers.time_left(7, start + 3 * SECOND), None);
    // Not proposed again before the retry delay; proposed again after it if still alive.
    assert!(timers.take_due(start + 3 * SECOND, 10).is_empty());
    let retry = start + 3 * SECOND + Duration::from_millis(EXPIRY_RETRY_MS);
    assert_eq!(timers.take_due(retry, 10), vec![7]);
    timers.ended(&[7]);
    assert_eq!(timers.live(), 0);
    assert_eq!(timers.next_deadline(), None);
}

#[test]
fn a_renewal_moves_the_deadline_a_full_ttl_from_now() {
    let timers = timers();
    timers.granted(1, 2000);
    let start = Instant::now();
    let renewed = timers
        .renew(1, start + Duration::from_millis(1500))
        .unwrap();
    assert_eq!((renewed.ttl_ms, renewed.remaining_ms), (2000, 2000));
    assert!(
        timers
            .take_due(start + Duration::from_millis(3000), 10)
            .is_empty(),
        "renewed at 1.5 s: lives to 3.5 s"
    );
    assert_eq!(
        timers.take_due(start + Duration::from_millis(3600), 10),
        vec![1]
    );
    assert_eq!(timers.renew(99, start), None, "an unknown lease");
}

/// The bound on a leader change: the new leader gives every lease its whole TTL from when it
/// starts to lead, and forgets which were expiring; never less.
#[test]
fn a_new_leader_gives_every_lease_its_full_ttl_again() {
    let timers = timers();
    timers.granted(1, 2000);
    timers.granted(2, 10_000);
    let start = Instant::now();
    timers.lead(5, start);
    assert_eq!(
        timers.take_due(start + 3 * SECOND, 10),
        vec![1],
        "lease 1 expiring"
    );
    // Leadership lost, then won again in a later term, 1 s later.
    timers.follow();
    let led_at = start + 4 * SECOND;
    timers.lead(7, led_at);
    assert!(timers.renew(1, led_at).is_some(), "no longer expiring");
    timers.lead(7, led_at + 10 * SECOND);
    assert!(
        timers
            .take_due(led_at + Duration::from_millis(1999), 10)
            .is_empty(),
        "the same term does not restart the timers again"
    );
    let due = timers.take_due(led_at + 11 * SECOND, 10);
    assert_eq!(due, vec![1, 2]);
    // Earliest first, and at most `max`.
    timers.reset(vec![(3, 5000), (4, 2000)]);
    assert_eq!(timers.take_due(Instant::now() + 6 * SECOND, 1), vec![4]);
}

#[test]
fn expiry_entries_hold_a_bounded_number_of_leases_and_keys() {
    // Leases without keys: groups of MAX_LEASES_PER_EXPIRY, the rest in the last.
    let leases = 2 * MAX_LEASES_PER_EXPIRY + 7;
    let groups = cut_by_keys((0..leases as u64).collect(), |_| 0);
    assert_eq!(
        groups.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![MAX_LEASES_PER_EXPIRY, MAX_LEASES_PER_EXPIRY, 7]
    );
    // 10 keys each: as many leases as MAX_KEYS_PER_EXPIRY keys allow.
    let per_group = (MAX_KEYS_PER_EXPIRY / 10).min(MAX_LEASES_PER_EXPIRY as u64) as usize;
    let groups = cut_by_keys((0..1000).collect(), |_| 10);
    assert_eq!(groups.len(), 1000usize.div_ceil(per_group));
    assert!(groups.iter().all(|g| g.len() <= per_group));
    // A lease of more keys than a group allows goes alone.
    let quarter = MAX_KEYS_PER_EXPIRY / 4;
    let groups = cut_by_keys(vec![1, 2, 3, 4], |id| {
        if id == 2 {
            MAX_KEYS_PER_EXPIRY + 5
        } else {
            quarter
        }
    });
    assert_eq!(groups, vec![vec![1], vec![2], vec![3, 4]]);
    for group in cut_by_keys((0..100).collect(), |id| id * 37 % (MAX_KEYS_PER_EXPIRY * 3)) {
        let keys: u64 = group
            .iter()
            .map(|id| id * 37 % (MAX_KEYS_PER_EXPIRY * 3))
            .sum();
        assert!(keys <= MAX_KEYS_PER_EXPIRY || group.len() == 1);
    }
    assert!(cut_by_keys(Vec::new(), |_| 1).is_empty());
}
