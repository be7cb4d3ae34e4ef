//! Nemeses: the faults a test injects, and the schedule one seed decides. Pure.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Which faults a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisKind {
    None,
    Kill,
    Pause,
    Partition,
    /// Added latency and jitter on every link.
    Delay,
    /// Every kind above, one at a time.
    All,
    /// Clocks that run at other rates: every follower of the leader is restarted under
    /// libfaketime at 4× or 0.25× the leader's rate (seeded), then the leader is cut off
    /// ([`Fault::ClockSkew`]). `lease` reads assume clock rates differ by less than the lease
    /// margin, so this nemesis makes them fail by design; it is not part of `All`.
    Clock,
}

/// How a partition splits the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionShape {
    /// One node cut off from all others.
    NodeAlone(u64),
    /// Whoever leads when the fault starts, cut off.
    LeaderAlone,
    /// Two halves (the first has the smaller half).
    Halves(Vec<u64>, Vec<u64>),
    /// Two halves that both still reach the bridge node.
    Bridge {
        bridge: u64,
        left: Vec<u64>,
        right: Vec<u64>,
    },
    /// Messages from `from` to everyone else are dropped; the other direction works.
    OneWay { from: u64 },
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Kill(u64),
    Pause(u64),
    Partition(PartitionShape),
    /// Every link holds each message for `latency_ms` plus up to `jitter_ms`.
    Delay {
        latency_ms: u64,
        jitter_ms: u64,
    },
    /// Restart every follower of the current leader with its clocks (monotonic included) at
    /// `followers_rate_permille`/1000 of real time, then cut the leader off. Faster followers
    /// are the leader's clock running slow relative to theirs: they stop honouring its lease
    /// before it stops serving under it. Slower ones are the safe direction. Healing cuts
    /// nothing and restarts them at the normal rate.
    ClockSkew {
        followers_rate_permille: u64,
    },
}

/// The followers' clock rates of the clock nemesis, in permille: 4× (unsafe for `lease`) and
/// 0.25× (safe).
pub const CLOCK_RATES_PERMILLE: [u64; 2] = [4000, 250];

/// A fault held from `start_ms` for `duration_ms` (then healed), relative to the test's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fault: Fault,
}

/// The fault schedule of a run: quiet and faulty periods alternate, every fault heals before
/// `time_limit_ms`, and the same seed always gives the same schedule.
pub fn schedule(kind: NemesisKind, nodes: u64, time_limit_ms: u64, seed: u64) -> Vec<Window> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut windows = Vec::new();
    if kind == NemesisKind::None || nodes < 2 {
        return windows;
    }
    let ids: Vec<u64> = (1..=nodes).collect();
    let mut at_ms = rng.random_range(500..1500);
    loop {
        let duration_ms = rng.random_range(1000..4000);
        if at_ms + duration_ms + 500 > time_limit_ms {
            break;
        }
        let kind = match kind {
            // Under skewed clocks, what exposes a lease that outlives its leader: the leader
            // cut off from the others, again and again, so that leadership passes between
            // nodes whose clocks disagree.
            NemesisKind::Clock => {
                // Restarting the followers takes a few seconds of the window.
                let duration_ms = duration_ms + 3000;
                if at_ms + duration_ms + 500 > time_limit_ms {
                    break;
                }
                windows.push(Window {
                    start_ms: at_ms,
                    duration_ms,
                    fault: Fault::ClockSkew {
                        followers_rate_permille: CLOCK_RATES_PERMILLE
                            [rng.random_range(0..CLOCK_RATES_PERMILLE.len())],
                    },
                });
                at_ms += duration_ms + rng.random_range(1000..3000);
                continue;
            }
            NemesisKind::All => [
                NemesisKind::Kill,
                NemesisKind::Pause,
                NemesisKind::Partition,
                NemesisKind::Delay,
            ][rng.random_range(0..4)],
            other => other,
        };
        let node = ids[rng.random_range(0..ids.len())];
        let fault = match kind {
            NemesisKind::Kill => Fault::Kill(node),
            NemesisKind::Pause => Fault::Pause(node),
            NemesisKind::Delay => Fault::Delay {
                latency_ms: rng.random_range(20..200),
                jitter_ms: rng.random_range(0..100),
            },
            _ => {
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.random_range(0..=i));
                }
                let half = shuffled.len() / 2;
                Fault::Partition(match rng.random_range(0..5) {
                    0 => PartitionShape::NodeAlone(node),
                    1 => PartitionShape::LeaderAlone,
                    2 => {
                        PartitionShape::Halves(shuffled[..half].to_vec(), shuffled[half..].to_vec())
                    }
                    3 if nodes >= 3 => PartitionShape::Bridge {
                        bridge: shuffled[0],
                        left: shuffled[1..=half.max(1)].to_vec(),
                        right: shuffled[half.max(1) + 1..].to_vec(),
                    },
                    _ => PartitionShape::OneWay { from: node },
                })
            }
        };
        windows.push(Window {
            start_ms: at_ms,
            duration_ms,
            fault,
        });
        at_ms += duration_ms + rng.random_range(1000..3000);
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_one_schedule_and_everything_heals_in_time() {
        for kind in [
            NemesisKind::Kill,
            NemesisKind::Pause,
            NemesisKind::Partition,
            NemesisKind::All,
            NemesisKind::Clock,
        ] {
            let a = schedule(kind, 5, 60_000, 7);
            assert_eq!(a, schedule(kind, 5, 60_000, 7));
            assert!(!a.is_empty());
            for w in &a {
                assert!(w.start_ms + w.duration_ms < 60_000);
            }
            for pair in a.windows(2) {
                assert!(
                    pair[0].start_ms + pair[0].duration_ms < pair[1].start_ms,
                    "faults do not overlap"
                );
            }
        }
        assert_ne!(
            schedule(NemesisKind::All, 5, 60_000, 7),
            schedule(NemesisKind::All, 5, 60_000, 8)
        );
        assert!(schedule(NemesisKind::None, 5, 60_000, 7).is_empty());
    }

    #[test]
    fn clock_windows_skew_both_ways() {
        let windows = schedule(NemesisKind::Clock, 3, 120_000, 7);
        let rates: std::collections::BTreeSet<u64> = windows
            .iter()
            .map(|w| match w.fault {
                Fault::ClockSkew {
                    followers_rate_permille,
                } => followers_rate_permille,
                ref other => panic!("not a clock fault: {other:?}"),
            })
            .collect();
        assert_eq!(rates.len(), 2, "both directions: {windows:?}");
    }
}
