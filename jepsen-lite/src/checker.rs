//! The linearizability checker: Wing & Gong's search with Lowe's memoization (the algorithm of
//! Knossos' `wgl` and porcupine), partitioned per key.
//!
//! A history is linearizable iff each key's sub-history is (linearizability is local), so keys
//! are checked independently and in parallel; the first violation stops the others. Past the
//! time limit the answer is `Unknown`, never a guess.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::Operation;
use crate::model::Model;

/// The three answers of the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The time limit or the memory bound passed (or another key's violation stopped the
    /// search) first.
    Unknown,
}

/// Why a key's history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The longest sequence of operations found that is a linearization of a prefix, with the
    /// state after each: `(operation id, state)`.
    pub longest_prefix: Vec<(usize, String)>,
    /// The operation that cannot be placed after that prefix before it returned.
    pub failed_op: usize,
    /// The state that operation would have had to act on.
    pub state_before_failed_op: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    pub operations: usize,
    pub violation: Option<Violation>,
    /// Why the answer is `Unknown`, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<GaveUp>,
}

/// What stopped a key's search before it had an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GaveUp {
    TimeLimit,
    /// The memo of visited (linearized set, state) pairs reached `max_states_per_key`.
    StateLimit,
    /// Another key was found not linearizable.
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub verdict: Verdict,
    pub model: &'static str,
    pub operations: usize,
    pub keys: Vec<KeyResult>,
    pub elapsed_ms: u64,
}

/// Limits of one check.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    pub time_limit: Duration,
    /// Keys checked at once.
    pub threads: usize,
    /// The memo of one key's search holds at most this many visited (linearized set, state)
    /// pairs; past it the key's answer is `Unknown` (`state_limit`). This bounds memory: a
    /// history with many open (`info`) writes on a key makes the memo grow exponentially in
    /// them. About 100 bytes a state plus the linearized set (operations / 8 bytes), per
    /// thread.
    pub max_states_per_key: usize,
}

/// The default of `CheckOptions::max_states_per_key`: about 1 GB a thread for keys of a few
/// hundred operations.
pub const DEFAULT_MAX_STATES_PER_KEY: usize = 8_000_000;

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            time_limit: Duration::from_secs(60),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
        }
    }
}

/// Check `operations` (of any number of keys) against `model`.
pub fn check<M: Model>(model: &M, operations: &[Operation], options: CheckOptions) -> CheckResult {
    let started = Instant::now();
    let deadline = started + options.time_limit;
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in operations {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    // Largest keys first, so the slowest work starts early.
    let mut keys: Vec<(&str, Vec<&Operation>)> = by_key.into_iter().collect();
    keys.sort_by_key(|(_, ops)| std::cmp::Reverse(ops.len()));
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..options.threads.clamp(1, keys.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, ops)) = keys.get(i) else { break };
                let result = if stop.load(Ordering::Relaxed) {
                    KeyResult {
                        key: key.to_string(),
                        verdict: Verdict::Unknown,
                        operations: ops.len(),
                        violation: None,
                        gave_up: Some(GaveUp::Stopped),
                    }
                } else {
                    check_key(model, key, ops, deadline, options.max_states_per_key, &stop)
                };
                if result.verdict == Verdict::NotLinearizable {
                    stop.store(true, Ordering::Relaxed);
                }
                results.lock().expect("results lock").push(result);
            });
        }
    });
    let mut keys = results.into_inner().expect("results lock");
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    let verdict = if keys.iter().any(|k| k.verdict == Verdict::NotLinearizable) {
        Verdict::NotLinearizable
    } else if keys.iter().any(|k| k.verdict == Verdict::Unknown) {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    };
    CheckResult {
        verdict,
        model: model.name(),
        operations: operations.len(),
        keys,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// A set of operation positions (within one key).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn with(&self, i: usize) -> Bits {
        let mut b = self.clone();
        b.set(i);
        b
    }
}

const NONE: usize = usize::MAX;

struct Frame<S> {
    entry: usize,
    state_before: S,
    alternatives: Vec<S>,
}

/// The calls and returns of one key's operations in history order, as a doubly linked list
/// over entries `1..=2n` (0 is the head) from which a linearized operation's call and return
/// are lifted, and put back when the search backtracks.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    is_return: Vec<bool>,
    op_of: Vec<usize>,
    return_of: Vec<usize>,
}

impl EntryList {
    fn new(ops: &[&Operation]) -> Self {
        let n = ops.len();
        // (position in history, is_return, op index); info returns at +infinity.
        let mut events: Vec<(usize, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            events.push((op.ret.unwrap_or(usize::MAX), true, i));
        }
        events.sort();
        let len = events.len() + 1;
        let mut list = EntryList {
            next: vec![NONE; len],
            prev: vec![NONE; len],
            is_return: vec![false; len],
            op_of: vec![0usize; len],
            return_of: vec![0usize; n],
        };
        for (e, &(_, ret, i)) in events.iter().enumerate() {
            let entry = e + 1;
            list.is_return[entry] = ret;
            list.op_of[entry] = i;
            if ret {
                list.return_of[i] = entry;
            }
            list.prev[entry] = entry - 1;
            list.next[entry - 1] = entry;
        }
        list
    }

    /// Take `entry` (a call) and `ret` (its return) out of the list.
    fn lift(&mut self, entry: usize, ret: usize) {
        let (next, prev) = (&mut self.next, &mut self.prev);
        next[prev[entry]] = next[entry];
        if next[entry] != NONE {
            prev[next[entry]] = prev[entry];
        }
        next[prev[ret]] = next[ret];
        if next[ret] != NONE {
            prev[next[ret]] = prev[ret];
        }
    }

    /// Put back what `lift(entry, ret)` took out.
    fn unlift(&mut self, entry: usize, ret: usize) {
        let (next, prev) = (&mut self.next, &mut self.prev);
        next[prev[ret]] = ret;
        if next[ret] != NONE {
            prev[next[ret]] = ret;
        }
        next[prev[entry]] = entry;
        if next[entry] != NONE {
            prev[next[entry]] = entry;
        }
    }
}

/// The violation the search found at `cur` (a return it could not place): the operations it
/// had linearized, each with the state it left, and the state the failed one met.
fn violation_at<S: std::fmt::Debug>(
    ops: &[&Operation],
    list: &EntryList,
    stack: &[Frame<S>],
    state: &S,
    cur: usize,
) -> Violation {
    let mut prefix = Vec::with_capacity(stack.len());
    for (k, frame) in stack.iter().enumerate() {
        let after = stack.get(k + 1).map_or(state, |f| &f.state_before);
        prefix.push((ops[list.op_of[frame.entry]].id, format!("{after:?}")));
    }
    Violation {
        longest_prefix: prefix,
        failed_op: ops[list.op_of[cur]].id,
        state_before_failed_op: format!("{state:?}"),
    }
}

/// Wing–Gong–Lowe on one key. Entries are the calls and returns in history order; an
/// operation without a return (`info`) has its return after everything else, and the search
/// succeeds once every `ok` operation is linearized (the rest may never have happened).
fn check_key<M: Model>(
    model: &M,
    key: &str,
    ops: &[&Operation],
    deadline: Instant,
    max_states: usize,
    stop: &AtomicBool,
) -> KeyResult {
    let n = ops.len();
    let mut list = EntryList::new(ops);
    let mut ok_remaining = ops.iter().filter(|op| op.output.is_some()).count();
    let mut state = model.init();
    let mut bits = Bits::new(n);
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut best: Option<Violation> = None;
    let mut best_len = 0usize;
    let mut cur = list.next[0];
    let mut steps: u64 = 0;
    let result = |verdict, violation| KeyResult {
        key: key.to_string(),
        verdict,
        operations: n,
        violation,
        gave_up: None,
    };
    let gave_up = |why| KeyResult {
        gave_up: Some(why),
        ..result(Verdict::Unknown, None)
    };
    loop {
        if ok_remaining == 0 {
            return result(Verdict::Linearizable, None);
        }
        steps += 1;
        if steps.is_multiple_of(1024) {
            if stop.load(Ordering::Relaxed) {
                return gave_up(GaveUp::Stopped);
            }
            if Instant::now() > deadline {
                return gave_up(GaveUp::TimeLimit);
            }
        }
        if cache.len() >= max_states {
            return gave_up(GaveUp::StateLimit);
        }
        debug_assert!(
            cur != NONE,
            "an ok operation's return is always still in the list"
        );
        if !list.is_return[cur] {
            let i = list.op_of[cur];
            let op = ops[i];
            let linearized = bits.with(i);
            let mut alternatives: Vec<M::State> = model
                .step(&state, &op.input, op.output.as_ref())
                .into_iter()
                .filter(|s| cache.insert((linearized.clone(), s.clone())))
                .collect();
            if let Some(first) = alternatives.pop() {
                stack.push(Frame {
                    entry: cur,
                    state_before: std::mem::replace(&mut state, first),
                    alternatives,
                });
                bits.set(i);
                list.lift(cur, list.return_of[i]);
                if op.output.is_some() {
                    ok_remaining -= 1;
                }
                cur = list.next[0];
            } else {
                cur = list.next[cur];
            }
            continue;
        }
        // An operation returned before we could place it: remember how far we got, backtrack.
        if stack.len() >= best_len {
            best_len = stack.len();
            best = Some(violation_at(ops, &list, &stack, &state, cur));
        }
        let Some(mut frame) = stack.pop() else {
            return result(Verdict::NotLinearizable, best);
        };
        if let Some(alternative) = frame.alternatives.pop() {
            // Same operation, another state it could have left behind.
            state = alternative;
            stack.push(frame);
            cur = list.next[0];
            continue;
        }
        let i = list.op_of[frame.entry];
        state = frame.state_before;
        bits.clear(i);
        list.unlift(frame.entry, list.return_of[i]);
        if ops[i].output.is_some() {
            ok_remaining += 1;
        }
        cur = list.next[frame.entry];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, EventType, History, Input, Output};
    use crate::model::Register;

    fn ev(process: u64, event_type: EventType, input: Input, output: Option<Output>) -> Event {
        Event {
            process,
            event_type,
            key: "k".into(),
            input,
            output,
            time_ns: None,
        }
    }

    /// `writes` overlapping writes whose outcome is unknown, then a read nobody could explain:
    /// proving it impossible means trying every subset and order of the writes.
    fn hard_history(writes: u64) -> Vec<Operation> {
        let mut events = Vec::new();
        for p in 0..writes {
            events.push(ev(
                p,
                EventType::Invoke,
                Input::Write {
                    value: Some(p.to_string()),
                },
                None,
            ));
        }
        events.push(ev(100, EventType::Invoke, Input::Read, None));
        events.push(ev(
            100,
            EventType::Ok,
            Input::Read,
            Some(Output::Read {
                value: Some("nobody".into()),
                mod_index: None,
            }),
        ));
        for p in 0..writes {
            events.push(ev(
                p,
                EventType::Info,
                Input::Write {
                    value: Some(p.to_string()),
                },
                None,
            ));
        }
        History { events }.operations().unwrap()
    }

    #[test]
    fn past_the_time_limit_the_answer_is_unknown_not_a_guess() {
        let options = CheckOptions {
            time_limit: Duration::ZERO,
            threads: 1,
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
        };
        let result = check(&Register, &hard_history(20), options);
        assert_eq!(result.verdict, Verdict::Unknown);
        assert_eq!(result.keys[0].gave_up, Some(GaveUp::TimeLimit));
    }

    #[test]
    fn past_the_state_bound_the_answer_is_unknown_not_a_guess() {
        let options = CheckOptions {
            time_limit: Duration::from_secs(60),
            threads: 1,
            max_states_per_key: 1_000,
        };
        // 2^10 subsets of the writes, times the value each leaves: ~10k states to visit.
        let result = check(&Register, &hard_history(10), options);
        assert_eq!(result.verdict, Verdict::Unknown);
        assert_eq!(result.keys[0].gave_up, Some(GaveUp::StateLimit));
        // The same history with room to search has an answer.
        let unbounded = check(&Register, &hard_history(10), CheckOptions::default());
        assert_eq!(unbounded.verdict, Verdict::NotLinearizable);
        assert_eq!(unbounded.keys[0].gave_up, None);
    }

    #[test]
    fn info_operations_may_take_effect_late_or_never() {
        let write = |v: &str| Input::Write {
            value: Some(v.into()),
        };
        let read = |v: Option<&str>| {
            Some(Output::Read {
                value: v.map(str::to_string),
                mod_index: None,
            })
        };
        // p0's write never returns; p1 reads nil, then its value, then nil is impossible.
        let ops = |last: Option<&str>| {
            History {
                events: vec![
                    ev(0, EventType::Invoke, write("a"), None),
                    ev(1, EventType::Invoke, Input::Read, None),
                    ev(1, EventType::Ok, Input::Read, read(None)),
                    ev(1, EventType::Invoke, Input::Read, None),
                    ev(1, EventType::Ok, Input::Read, read(Some("a"))),
                    ev(1, EventType::Invoke, Input::Read, None),
                    ev(1, EventType::Ok, Input::Read, read(last)),
                    ev(0, EventType::Info, write("a"), None),
                ],
            }
            .operations()
            .unwrap()
        };
        assert_eq!(
            check(&Register, &ops(Some("a")), CheckOptions::default()).verdict,
            Verdict::Linearizable
        );
        let bad = check(&Register, &ops(None), CheckOptions::default());
        assert_eq!(bad.verdict, Verdict::NotLinearizable);
        let violation = bad.keys[0].violation.as_ref().unwrap();
        assert_eq!(violation.failed_op, 3, "the last read cannot be placed");
        assert!(!violation.longest_prefix.is_empty());
    }
}
