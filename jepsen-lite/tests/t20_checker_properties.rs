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

/// The input of an operation of `kind` (0 read, 1 write, else cas) writing `next_value`.
fn invoke_input(kind: u8, p: u8, current: Option<String>, next_value: u64) -> Input {
    match kind {
        0 => Input::Read,
        1 => Input::Write {
            value: Some(next_value.to_string()),
        },
        // Compare against the current value half the time, so some cas apply.
        _ => Input::Cas {
            from: if p.is_multiple_of(2) {
                current
            } else {
                Some((next_value / 2).to_string())
            },
            to: Some(next_value.to_string()),
        },
    }
}

/// Apply `input` to `register`; what the client would be told.
fn take_effect(register: &mut Option<String>, input: &Input) -> Output {
    match input {
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
    }
}

/// The event that ends `op`: its output only if it completed `Ok`.
fn completion(op: Pending, event_type: EventType) -> Event {
    let output = if event_type == EventType::Ok {
        op.output
    } else {
        None
    };
    Event {
        process: op.process,
        event_type,
        key: op.key,
        input: op.input,
        output,
        time_ns: None,
    }
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
                let input = invoke_input(kind, p, current, next_value);
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
                op.output = Some(take_effect(register, &op.input));
            }
            Step::Return { pick: p } => {
                let done: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].output.is_some())
                    .collect();
                if done.is_empty() {
                    continue;
                }
                let op = pending.remove(done[pick(done.len(), p)]);
                events.push(completion(op, EventType::Ok));
            }
            Step::Crash { pick: p } => {
                if pending.is_empty() {
                    continue;
                }
                let op = pending.remove(pick(pending.len(), p));
                let slot = (op.process % 5) as usize;
                generation[slot] += 1;
                events.push(completion(op, EventType::Info));
            }
            Step::Fail { pick: p } => {
                let waiting: Vec<usize> = (0..pending.len())
                    .filter(|&i| pending[i].output.is_none())
                    .collect();
                if waiting.is_empty() {
                    continue;
                }
                let op = pending.remove(waiting[pick(waiting.len(), p)]);
                events.push(completion(op, EventType::Fail));
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
    max_states_per_key: jepsen_lite::DEFAULT_MAX_STATES_PER_KEY,
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

/// An EDN value of any shape Jepsen may log, for failed operations (which constrain nothing).
fn arbitrary_edn() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("nil".to_string()),
        (0u64..40).prop_map(|i| i.to_string()),
        "[a-z]{1,6}".prop_map(|s| format!("\"{s}\"")),
        "[a-z]{1,6}".prop_map(|s| format!(":{s}")),
        (0u64..40, 0u64..40).prop_map(|(a, b)| format!("[{a} {b}]")),
        (0u64..40).prop_map(|a| format!("{{:x {a} :y [1 2]}}")),
        Just(":timed-out".to_string()),
    ]
}

/// A failed operation to splice into a history: Jepsen's `:fail`, which did not take place.
#[derive(Debug, Clone)]
struct FailedOp {
    /// Where in the history it goes (an index into the events, wrapped).
    at: usize,
    key: u8,
    /// 0 read, 1 write, 2 cas.
    f: u8,
    /// For a cas, compare against a value the key held (`nil` or one written), so that reading
    /// the failure as an observation ("the value was not FROM") would contradict the history.
    from_written: bool,
    value: String,
    other: String,
}

fn failed_op() -> impl Strategy<Value = FailedOp> {
    (
        any::<usize>(),
        0u8..3,
        0u8..3,
        any::<bool>(),
        arbitrary_edn(),
        arbitrary_edn(),
    )
        .prop_map(|(at, key, f, from_written, value, other)| FailedOp {
            at,
            key,
            f,
            from_written,
            value,
            other,
        })
}

/// `value` as Jepsen writes a register value: an integer (our values are decimal numbers).
fn edn_register_value(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "nil".to_string())
}

/// One event as a Jepsen op map, with a `jepsen.independent` key (a keyword or a string) and a
/// `:time`.
fn jepsen_op_map(event: &Event, time_ns: u64, keyword_keys: bool) -> String {
    let type_ = match event.event_type {
        EventType::Invoke => ":invoke",
        EventType::Ok => ":ok",
        EventType::Fail => ":fail",
        EventType::Info => ":info",
    };
    let (f, value) = match (&event.input, &event.output) {
        (Input::Read, Some(Output::Read { value, .. })) => (":read", edn_register_value(value)),
        (Input::Read, _) => (":read", "nil".to_string()),
        (Input::Write { value }, _) => (":write", edn_register_value(value)),
        (Input::Cas { from, to }, _) => (
            ":cas",
            format!("[{} {}]", edn_register_value(from), edn_register_value(to)),
        ),
        (Input::PutIf { .. }, _) => unreachable!("registers only"),
    };
    // A cas that returned false is, in Jepsen, a `:fail :cas`: it did not take place.
    let type_ = match &event.output {
        Some(Output::Cas { applied: false, .. }) => ":fail",
        _ => type_,
    };
    let key = if keyword_keys {
        format!(":{}", event.key)
    } else {
        format!("\"{}\"", event.key)
    };
    format!(
        "{{:type {type_}, :f {f}, :value [{key} {value}], :process {}, :time {time_ns}, :index {time_ns}}}\n",
        event.process
    )
}

#[test]
fn t22_failed_operations_of_any_shape_change_no_edn_verdict() {
    let seed = seed();
    println!("t22 seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    runner(seed)
        .run(
            &(
                proptest::collection::vec(step(), 1..150),
                proptest::collection::vec(failed_op(), 1..12),
                any::<bool>(),
            ),
            |(steps, failed, keyword_keys)| {
                let history = generate(&steps);
                // Every value written to each key, and nil (a register never written), for the
                // failed cas that compare against a value the key really held.
                let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for e in &history.events {
                    if let Input::Write { value: Some(v) } | Input::Cas { to: Some(v), .. } =
                        &e.input
                    {
                        held.entry(e.key.clone()).or_default().push(v.clone());
                    }
                }
                let mut lines: Vec<String> = history
                    .events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| jepsen_op_map(e, i as u64 * 1000, keyword_keys))
                    .collect();
                lines.insert(
                    0,
                    "{:type :info, :f :start-partition, :value nil, :process :nemesis}\n".into(),
                );
                // Failed ops run as processes of their own (1000 and up), each invoked and
                // failed back to back at a random point.
                for (n, op) in failed.iter().enumerate() {
                    let key = format!("k{}", op.key);
                    let process = 1000 + n;
                    let keyed = |v: &str| {
                        if keyword_keys {
                            format!("[:{key} {v}]")
                        } else {
                            format!("[\"{key}\" {v}]")
                        }
                    };
                    let (f, invoke_value, fail_value) = match op.f {
                        0 => (":read", keyed("nil"), keyed(&op.value)),
                        1 => (":write", keyed(&op.value), keyed(&op.value)),
                        _ => {
                            let from = if op.from_written {
                                let values = held.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                                values
                                    .get(op.at % (values.len() + 1))
                                    .cloned()
                                    .unwrap_or_else(|| "nil".to_string())
                            } else {
                                op.value.clone()
                            };
                            let pair = format!("[{from} {}]", op.other);
                            (":cas", keyed(&pair), keyed(&pair))
                        }
                    };
                    let at = op.at % (lines.len() + 1);
                    lines.insert(
                        at,
                        format!(
                            "{{:process {process}, :type :invoke, :f {f}, :value {invoke_value}}}\n{{:process {process}, :type :fail, :f {f}, :value {fail_value}, :error :compare-failed}}\n"
                        ),
                    );
                }
                let text: String = lines.concat();
                let parsed = jepsen_lite::parse::parse(&text)
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                let ops = parsed
                    .operations()
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                let result = check(&Register, &ops, OPTIONS);
                prop_assert_eq!(result.verdict, Verdict::Linearizable, "history:\n{}", text);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}
