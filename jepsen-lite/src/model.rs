//! Sequential specifications the checker holds a history to. Pure.
//!
//! `step` answers every state the object can be in after applying `input` to `state`, given what
//! the operation returned (`Some(output)` for `ok`, `None` for `info`: any result). An empty
//! answer means the operation cannot have returned that in that state.

use std::fmt::Debug;
use std::hash::Hash;

use crate::history::{Input, Output, Value};

/// A sequential object.
pub trait Model: Sync {
    type State: Clone + Eq + Hash + Debug + Send + Sync;
    fn init(&self) -> Self::State;
    fn step(&self, state: &Self::State, input: &Input, output: Option<&Output>)
        -> Vec<Self::State>;
    fn name(&self) -> &'static str;
}

/// A register per key: read, write, compare-and-set. Starts at `nil`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

impl Model for Register {
    type State = Value;

    fn init(&self) -> Value {
        None
    }

    fn step(&self, state: &Value, input: &Input, output: Option<&Output>) -> Vec<Value> {
        match (input, output) {
            (Input::Read, Some(Output::Read { value, .. })) => ok_if(value == state, state.clone()),
            (Input::Read, None) => vec![state.clone()],
            (Input::Write { value }, Some(Output::Written { .. }) | None) => vec![value.clone()],
            (Input::Cas { from, to }, Some(Output::Cas { applied: true, .. })) => {
                ok_if(state == from, to.clone())
            }
            (Input::Cas { from, .. }, Some(Output::Cas { applied: false, .. })) => {
                ok_if(state != from, state.clone())
            }
            (Input::Cas { from, to }, None) => vec![if state == from {
                to.clone()
            } else {
                state.clone()
            }],
            // Anything else (a read answered as a write, a conditional write on a register) is
            // not something a register can do.
            _ => vec![],
        }
    }

    fn name(&self) -> &'static str {
        "register"
    }
}

fn ok_if<S>(condition: bool, state: S) -> Vec<S> {
    if condition {
        vec![state]
    } else {
        vec![]
    }
}

/// What the key-value model knows of a key: its value (`None`: absent) and, if known, its
/// `mod_index` (an `info` write's index is unknown until a read reveals it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KvState {
    pub value: Value,
    pub mod_index: Option<u64>,
}

/// mirrorkv's key-value model per key: get, put, delete (a put of `None`), compare-and-set on
/// the value, and conditional put/delete on `mod_index`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyValue;

impl KeyValue {
    fn written(value: &Value, index: Option<u64>) -> KvState {
        KvState {
            value: value.clone(),
            mod_index: if value.is_some() { index } else { None },
        }
    }

    /// Could the key's mod_index be `m`? (Unknown indexes could be anything.)
    fn may_match(state: &KvState, m: u64) -> bool {
        state.value.is_some() && state.mod_index.is_none_or(|i| i == m)
    }

    fn surely_matches(state: &KvState, m: u64) -> bool {
        state.value.is_some() && state.mod_index == Some(m)
    }
}

impl Model for KeyValue {
    type State = KvState;

    fn init(&self) -> KvState {
        KvState::default()
    }

    fn step(&self, state: &KvState, input: &Input, output: Option<&Output>) -> Vec<KvState> {
        match (input, output) {
            (Input::Read, Some(Output::Read { value, mod_index })) => {
                let index_agrees = match (state.mod_index, mod_index) {
                    (Some(known), Some(seen)) => known == *seen,
                    _ => true,
                };
                // A read can reveal the index of an earlier write whose answer was lost.
                let refined = KvState {
                    value: state.value.clone(),
                    mod_index: state
                        .mod_index
                        .or(*mod_index)
                        .filter(|_| state.value.is_some()),
                };
                ok_if(value == &state.value && index_agrees, refined)
            }
            (Input::Read, None) => vec![state.clone()],
            (Input::Write { value }, Some(Output::Written { index })) => {
                vec![Self::written(value, *index)]
            }
            (Input::Write { value }, None) => vec![Self::written(value, None)],
            (
                Input::Cas { from, to },
                Some(Output::Cas {
                    applied: true,
                    index,
                }),
            ) => ok_if(&state.value == from, Self::written(to, *index)),
            (Input::Cas { from, .. }, Some(Output::Cas { applied: false, .. })) => {
                ok_if(&state.value != from, state.clone())
            }
            (Input::Cas { from, to }, None) => {
                vec![if &state.value == from {
                    Self::written(to, None)
                } else {
                    state.clone()
                }]
            }
            (
                Input::PutIf { mod_index, value },
                Some(Output::Cas {
                    applied: true,
                    index,
                }),
            ) => ok_if(
                Self::may_match(state, *mod_index),
                Self::written(value, *index),
            ),
            (Input::PutIf { mod_index, .. }, Some(Output::Cas { applied: false, .. })) => {
                ok_if(!Self::surely_matches(state, *mod_index), state.clone())
            }
            (Input::PutIf { mod_index, value }, None) => {
                let mut next = Vec::new();
                if Self::may_match(state, *mod_index) {
                    next.push(Self::written(value, None));
                }
                if !Self::surely_matches(state, *mod_index) {
                    next.push(state.clone());
                }
                next
            }
            _ => vec![],
        }
    }

    fn name(&self) -> &'static str {
        "kv"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        Some(s.to_string())
    }

    #[test]
    fn register_steps() {
        let r = Register;
        let read = |value: Value| Output::Read {
            value,
            mod_index: None,
        };
        assert_eq!(
            r.step(&v("1"), &Input::Read, Some(&read(v("1")))),
            vec![v("1")]
        );
        assert!(r
            .step(&v("1"), &Input::Read, Some(&read(v("2"))))
            .is_empty());
        let cas = Input::Cas {
            from: v("1"),
            to: v("2"),
        };
        assert_eq!(
            r.step(
                &v("1"),
                &cas,
                Some(&Output::Cas {
                    applied: true,
                    index: None
                })
            ),
            vec![v("2")]
        );
        assert!(r
            .step(
                &v("3"),
                &cas,
                Some(&Output::Cas {
                    applied: true,
                    index: None
                })
            )
            .is_empty());
        assert_eq!(
            r.step(
                &v("3"),
                &cas,
                Some(&Output::Cas {
                    applied: false,
                    index: None
                })
            ),
            vec![v("3")]
        );
        assert_eq!(r.step(&v("1"), &cas, None), vec![v("2")]);
    }

    #[test]
    fn kv_tracks_and_learns_mod_indexes() {
        let m = KeyValue;
        let s = m.step(&m.init(), &Input::Write { value: v("a") }, None)[0].clone();
        assert_eq!(s.mod_index, None);
        let s = m.step(
            &s,
            &Input::Read,
            Some(&Output::Read {
                value: v("a"),
                mod_index: Some(7),
            }),
        )[0]
        .clone();
        assert_eq!(s.mod_index, Some(7));
        assert!(m
            .step(
                &s,
                &Input::Read,
                Some(&Output::Read {
                    value: v("a"),
                    mod_index: Some(8)
                })
            )
            .is_empty());
        let put_if = Input::PutIf {
            mod_index: 7,
            value: v("b"),
        };
        assert_eq!(
            m.step(
                &s,
                &put_if,
                Some(&Output::Cas {
                    applied: true,
                    index: Some(9)
                })
            )[0]
            .mod_index,
            Some(9)
        );
        assert!(m
            .step(
                &s,
                &put_if,
                Some(&Output::Cas {
                    applied: false,
                    index: None
                })
            )
            .is_empty());
        let unknown = KvState {
            value: v("a"),
            mod_index: None,
        };
        assert_eq!(
            m.step(&unknown, &put_if, None).len(),
            2,
            "an unknown index may or may not match"
        );
        let deleted = m.step(
            &s,
            &Input::Write { value: None },
            Some(&Output::Written { index: Some(10) }),
        )[0]
        .clone();
        assert_eq!(deleted, KvState::default());
    }
}
