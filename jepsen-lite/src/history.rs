//! Histories: what clients invoked and what they saw, and their pairing into operations.
//!
//! Three outcomes per operation: `ok` took effect (and its result is checked), `fail` certainly
//! did not (it is dropped before checking), `info` may take effect at any point after its call,
//! or never (its result is not checked). A process whose operation ended in `info` never issues
//! another.

use serde::{Deserialize, Serialize};

/// A value held by a register or key. Histories use small integers or strings; `None` is "no
/// value" (a missing key, Jepsen's `nil`).
pub type Value = Option<String>;

/// What an operation asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Input {
    /// Register / key read.
    Read,
    /// Register / key write (a put of `value`; `None` deletes).
    Write { value: Value },
    /// Compare-and-set: if the value is `from`, set it to `to`.
    Cas { from: Value, to: Value },
    /// Conditional write on the key's `mod_index` (mirrorkv's `If-Match`): set `value` (or
    /// delete when `None`) if the key's mod_index is `mod_index`.
    PutIf { mod_index: u64, value: Value },
}

/// What an `ok` operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A read's value, and for the key-value model the key's `mod_index` if known.
    Read {
        value: Value,
        mod_index: Option<u64>,
    },
    /// A write took effect; for the key-value model the index it took effect at, if known.
    Written { index: Option<u64> },
    /// A compare-and-set or conditional write: whether it applied, and the index if it did.
    Cas { applied: bool, index: Option<u64> },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of a history: an invocation or a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The key the operation is on (histories of one register use "").
    #[serde(default)]
    pub key: String,
    #[serde(flatten)]
    pub input: Input,
    /// The result, on `ok` completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// Monotonic time in nanoseconds, if recorded (for reports only; order is line order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<u64>,
}

/// A history: events in real-time order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub events: Vec<Event>,
}

/// An operation: an invocation paired with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Position in the history's operation list (stable ids for reports).
    pub id: usize,
    pub process: u64,
    pub key: String,
    pub input: Input,
    /// `Some` for `ok` operations; `None` for `info` ones (result unknown).
    pub output: Option<Output>,
    /// Event positions of the call and the return; `None` return = never returned (`info`).
    pub call: usize,
    pub ret: Option<usize>,
    pub call_time_ns: Option<u64>,
    pub ret_time_ns: Option<u64>,
}

/// A history that cannot be paired.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("event {event}: process {process} completes an operation it never invoked")]
    CompletionWithoutInvoke { event: usize, process: u64 },
    #[error("event {event}: process {process} invokes while its previous operation is still open")]
    OverlappingInvoke { event: usize, process: u64 },
    #[error("event {event}: process {process} acts after an `info` outcome (a crashed process never acts again)")]
    ActAfterInfo { event: usize, process: u64 },
    #[error("event {event}: an `ok` completion of process {process} carries no result")]
    OkWithoutOutput { event: usize, process: u64 },
}

impl History {
    /// Pair invocations with completions. `fail` operations are dropped (they certainly had no
    /// effect); `info` operations and invocations that never complete stay open to the end.
    pub fn operations(&self) -> Result<Vec<Operation>, HistoryError> {
        use std::collections::{HashMap, HashSet};
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut crashed: HashSet<u64> = HashSet::new();
        let mut ops: Vec<Option<Operation>> = Vec::new();
        for (position, event) in self.events.iter().enumerate() {
            let process = event.process;
            if crashed.contains(&process) {
                return Err(HistoryError::ActAfterInfo {
                    event: position,
                    process,
                });
            }
            match event.event_type {
                EventType::Invoke => {
                    if open.contains_key(&process) {
                        return Err(HistoryError::OverlappingInvoke {
                            event: position,
                            process,
                        });
                    }
                    open.insert(process, ops.len());
                    ops.push(Some(Operation {
                        id: 0,
                        process,
                        key: event.key.clone(),
                        input: event.input.clone(),
                        output: None,
                        call: position,
                        ret: None,
                        call_time_ns: event.time_ns,
                        ret_time_ns: None,
                    }));
                }
                completion => {
                    let Some(index) = open.remove(&process) else {
                        return Err(HistoryError::CompletionWithoutInvoke {
                            event: position,
                            process,
                        });
                    };
                    match completion {
                        EventType::Ok => {
                            let op = ops[index].as_mut().expect("open op");
                            let Some(output) = event.output.clone() else {
                                return Err(HistoryError::OkWithoutOutput {
                                    event: position,
                                    process,
                                });
                            };
                            op.output = Some(output);
                            op.ret = Some(position);
                            op.ret_time_ns = event.time_ns;
                        }
                        EventType::Fail => ops[index] = None,
                        EventType::Info => {
                            crashed.insert(process);
                        }
                        EventType::Invoke => unreachable!("handled above"),
                    }
                }
            }
        }
        let mut out: Vec<Operation> = ops.into_iter().flatten().collect();
        for (id, op) in out.iter_mut().enumerate() {
            op.id = id;
        }
        Ok(out)
    }
}
