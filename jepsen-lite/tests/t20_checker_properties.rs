//! Property test of the checker: histories generated from a real sequential execution — random
//! concurrency, crashes (`info`) and failures — are always linearizable; the same history with
//! one read changed to a value never written is never linearizable.
//!
//! The seed is printed; `PROPTEST_RNG_SEED=<seed>` replays a run exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use jepsen_lite::model::Register;
use jepsen_lite::{check, CheckOptions, Event, EventType, History, Input, Output, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

#[derive(Debug, Clone)]
enum Step {
    /// An idle process invokes an op on a key.
    Invoke {
        process: usize,
        key: u8,
        kind: u8,
        pick: u8,
    },
    /// A pending op takes effect (its linearization point).
    TakeEffect { pick: u8 },
    /// An op that took effect returns `ok`.
    Return { pick: u8 },
    /// A pending op's process crashes: `info`, whether or not it took effect.
    Crash { pick: u8 },
    /// A pending op that did not take effect fails (a read timing out, say): `fail`.
    Fail { pick: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..5, 0u8..3, 0u8..3, any::<u8>()).prop_map(|(process, key, kind, pick)| Step::Invoke { process, key, kind, pick }),
        4 => any::<u8>().prop_map(|pick| Step::TakeEffect { pick }),
        4 => any::<u8>().prop_map(|pick| Step::Return { pick }),
        1 => any::<u8>().prop_map(|pick| Step::Crash { pick }),
        1 => any::<u8>().prop_map(|pick| Step::Fail { pick }),
    ]
}

struct Pending {
    process: u64,
    key: String,
    input: Input,
    output: Option<Output>,
}

/// Run `steps` against a real register per key and record what clients see.
fn generate(steps: &[Step]) -> History {
    let mut registers: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut events = Vec::new();
    // Process ids: slot s runs as process s + 5 * generation; a crash moves it to a new id.
    let mut generation = [0u64; 5];
    let mut next_value = 0u64;
    let pick = |len: usize, p: u8| (p as usize) % len;
    for step in steps {
        match *step {
            Step::Invoke {
                process,
                key,
                kind,
                pick: p,
            } => {
                let id = process as u64 + 5 * generation[process];
                if pending.iter().any(|op| op.process == id) {
                    continue;
                }
                let key = format!("k{key}");
                let current = registers.get(&key).cloned().flatten();
                next_value += 1;
                let input = match kind {
                    0 => Input::Read,
                    1 => Input::Write {
                        value: Some(next_value.to_string()),
                    },
                    // Compare against the current value half the time, so some cas apply.
                    _ => Input::Cas {
                        from: if p % 2 == 0 {
                            current
                        } else {
                            Some((next_value / 2).to_string())
                        },
                        to: Some(next_value.to_string()),
                    },
                };
                events.push(Event {
                    process: id,
                    event_type: EventType::Invoke,
                    key: key.clone(),
                    input: input.clone(),
                    output: None,
                    time_ns: None,
                });
                pending.push(Pending {
                    process: id,
                    key,
                    input,
                    output: None,
                });
            }
            Step::TakeEffect { pick: p } => {
                let waiting: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].output.is_none())
                    .collect();
                if waiting.is_empty() {
                    continue;
                }
                let op = &mut pending[waiting[pick(waiting.len(), p)]];
                let register = registers.entry(op.key.clone()).or_default();
                op.output = Some(match &op.input {
                    Input::Read => Output::Read {
                        value: register.clone(),
                        mod_index: None,
                    },
                    Input::Write { value } => {
                        *register = value.clone();
                        Output::Written { index: None }
                    }
                    Input::Cas { from, to } => {
                        let applied = register == from;
                        if applied {
                            *register = to.clone();
                        }
                        Output::Cas {
                            applied,
                            index: None,
                        }
                    }
                    Input::PutIf { .. } => unreachable!(),
                });
            }
            Step::Return { pick: p } => {
                let done: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].output.is_some())
                    .collect();
                if done.is_empty() {
                    continue;
                }
                let op = pending.remove(done[pick(done.len(), p)]);
                events.push(Event {
                    process: op.process,
                    event_type: EventType::Ok,
                    key: op.key,
                    input: op.input,
                    output: op.output,
                    time_ns: None,
                });
            }
            Step::Crash { pick: p } => {
                if pending.is_empty() {
                    continue;
                }
                let op = pending.remove(pick(pending.len(), p));
                let slot = (op.process % 5) as usize;
                generation[slot] += 1;
                events.push(Event {
                    process: op.process,
                    event_type: EventType::Info,
                    key: op.key,
                    input: op.input,
                    output: None,
                    time_ns: None,
                });
            }
            Step::Fail { pick: p } => {
                let waiting: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].output.is_none())
                    .collect();
                if waiting.is_empty() {
                    continue;
                }
                let op = pending.remove(waiting[pick(waiting.len(), p)]);
                events.push(Event {
                    process: op.process,
                    event_type: EventType::Fail,
                    key: op.key,
                    input: op.input,
                    output: None,
                    time_ns: None,
                });
            }
        }
    }
    History { events }
}

fn seed() -> u64 {
    match std::env::var("PROPTEST_RNG_SEED") {
        Ok(value) => value.parse().expect("PROPTEST_RNG_SEED is a u64"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            nanos as u64 ^ u64::from(std::process::id())
        }
    }
}

fn runner(seed: u64) -> TestRunner {
    TestRunner::new(Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    })
}

const OPTIONS: CheckOptions = CheckOptions {
    time_limit: Duration::from_secs(30),
    threads: 2,
};

#[test]
fn t20_histories_of_a_real_execution_are_linearizable() {
    let seed = seed();
    println!("t20 seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    runner(seed)
        .run(&proptest::collection::vec(step(), 1..200), |steps| {
            let history = generate(&steps);
            let ops = history.operations().expect("generated histories pair up");
            let result = check(&Register, &ops, OPTIONS);
            prop_assert_eq!(
                result.verdict,
                Verdict::Linearizable,
                "history: {:#?}",
                history.events
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

#[test]
fn t21_a_read_of_a_value_never_written_is_caught() {
    let seed = seed();
    println!("t21 seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    runner(seed)
        .run(
            &(
                proptest::collection::vec(step(), 1..200),
                any::<prop::sample::Index>(),
            ),
            |(steps, which)| {
                let mut history = generate(&steps);
                let reads: Vec<usize> = (0..history.events.len())
                    .filter(|&i| matches!(history.events[i].output, Some(Output::Read { .. })))
                    .collect();
                prop_assume!(!reads.is_empty());
                let i = reads[which.index(reads.len())];
                history.events[i].output = Some(Output::Read {
                    value: Some("never-written".into()),
                    mod_index: None,
                });
                let ops = history.operations().unwrap();
                let result = check(&Register, &ops, OPTIONS);
                prop_assert_eq!(
                    result.verdict,
                    Verdict::NotLinearizable,
                    "history: {:#?}",
                    history.events
                );
                let key = result
                    .keys
                    .iter()
                    .find(|k| k.violation.is_some())
                    .expect("the violation is reported");
                prop_assert_eq!(&key.key, &history.events[i].key);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}
