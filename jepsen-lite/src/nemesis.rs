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
    All,
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
}

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
}
