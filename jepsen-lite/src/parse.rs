//! Reading histories: our own JSON lines, EDN as Jepsen and Knossos write it, and the Jepsen
//! console log (`INFO  jepsen.util - PROCESS TYPE F VALUE`). Pure.
//!
//! How a `:fail` is read is a property of each format ([`FailedCas`], overridable with
//! `jepsen-lite check --failed-cas`):
//! - EDN (what Jepsen and Knossos write): Jepsen's own semantics. A `:fail` operation definitely
//!   did not take place; it has no effect and constrains nothing, whatever its `:f`, so it is
//!   dropped (as `jepsen.checker` and Knossos drop it).
//! - The Jepsen console log (`shared/corpus/jepsen-etcd`): that corpus documents its `:fail
//!   :cas` as "compare failed" (VERDICTS.md), a definite observation that the value was not
//!   `from`, so it is checked as a compare-and-set that did not apply. `:fail` on anything else
//!   is dropped.
//! - Our JSON lines say it explicitly: a `412` is recorded as an `ok` CAS with `applied: false`,
//!   and `fail` means no effect.
//!
//! `:info` is indeterminate everywhere. `:process :nemesis` entries are ignored.

use crate::edn::{self, Edn};
use crate::history::{Event, EventType, History, Input, Output, Value};

/// A history file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error(transparent)]
    Edn(#[from] edn::EdnError),
    #[error("{0}")]
    Shape(String),
}

/// The formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Edn,
    JepsenConsole,
}

/// How a `:fail` completion of a `:cas` is read in the Jepsen formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailedCas {
    /// Jepsen's semantics: the operation did not take place and is dropped.
    NoEffect,
    /// The compare did not match: checked as a compare-and-set that returned false.
    CompareFailed,
}

impl Format {
    /// The reading of a failed cas that each format documents (module docs).
    pub fn failed_cas(self) -> FailedCas {
        match self {
            Format::JepsenConsole => FailedCas::CompareFailed,
            Format::Edn | Format::JsonLines => FailedCas::NoEffect,
        }
    }
}

/// Guess the format from the text.
pub fn detect(text: &str) -> Format {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if first.contains("jepsen.util - ") {
        Format::JepsenConsole
    } else if first.starts_with('{') && serde_json::from_str::<serde_json::Value>(first).is_ok() {
        Format::JsonLines
    } else {
        Format::Edn
    }
}

/// Read `text` in the format it is in, with that format's reading of a failed cas.
pub fn parse(text: &str) -> Result<History, ParseError> {
    parse_with(text, None)
}

/// Read `text`; `failed_cas` overrides the format's own reading of a failed cas.
pub fn parse_with(text: &str, failed_cas: Option<FailedCas>) -> Result<History, ParseError> {
    let format = detect(text);
    let failed_cas = failed_cas.unwrap_or(format.failed_cas());
    match format {
        Format::JsonLines => parse_json_lines(text),
        Format::Edn => parse_edn(text, failed_cas),
        Format::JepsenConsole => parse_console(text, failed_cas),
    }
}

/// Our own format: one `Event` as JSON per line.
pub fn parse_json_lines(text: &str) -> Result<History, ParseError> {
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(line).map_err(|e| ParseError::Line {
            line: n + 1,
            message: e.to_string(),
        })?;
        events.push(event);
    }
    Ok(History { events })
}

/// The Jepsen console log of `shared/corpus/jepsen-etcd`.
pub fn parse_console(text: &str, failed_cas: FailedCas) -> Result<History, ParseError> {
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some((_, rest)) = line.split_once("jepsen.util - ") else {
            continue;
        };
        let bad = |message: String| ParseError::Line {
            line: n + 1,
            message,
        };
        let mut fields = rest.split_whitespace();
        let (Some(process), Some(event_type), Some(f)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(format!("expected PROCESS TYPE F VALUE, got {rest:?}")));
        };
        let value_text = fields.collect::<Vec<_>>().join(" ");
        let value = edn::parse_all(&value_text).map_err(|e| bad(e.to_string()))?;
        let value = value.into_iter().next().unwrap_or(Edn::Nil);
        let Ok(process) = process.parse::<u64>() else {
            continue; // the nemesis
        };
        let op = jepsen_op(
            JepsenOp {
                process,
                event_type: event_type.trim_start_matches(':'),
                f: f.trim_start_matches(':'),
                value: &value,
                time_ns: None,
            },
            failed_cas,
        )
        .map_err(bad)?;
        events.extend(op);
    }
    Ok(History { events })
}

/// EDN histories: op maps one per line or spread over lines, or one vector/list of op maps.
pub fn parse_edn(text: &str, failed_cas: FailedCas) -> Result<History, ParseError> {
    let values = edn::parse_all(text)?;
    let ops: Vec<Edn> = match values.as_slice() {
        [Edn::Vector(items)] | [Edn::List(items)] => items.clone(),
        _ => values,
    };
    let mut events = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let bad = |message: String| ParseError::Line {
            line: n + 1,
            message: format!("op {}: {message}", n + 1),
        };
        if !matches!(op, Edn::Map(_)) {
            return Err(bad(format!("expected an op map, got {op:?}")));
        }
        let process = match op.get("process") {
            Some(Edn::Int(p)) if *p >= 0 => *p as u64,
            // The nemesis, and any other non-client actor Jepsen logs by name.
            Some(Edn::Keyword(_)) => continue,
            other => {
                return Err(bad(format!(
                    ":process must be a non-negative integer, got {other:?}"
                )))
            }
        };
        let keyword = |name: &str| match op.get(name) {
            Some(Edn::Keyword(k)) => Ok(k.clone()),
            other => Err(bad(format!(
                ":{name} must be a keyword, got {other:?} (keys: {:?})",
                edn::keys(op)
            ))),
        };
        let event_type = keyword("type")?;
        let f = keyword("f")?;
        let value = op.get("value").cloned().unwrap_or(Edn::Nil);
        // Jepsen's `:time` is nanoseconds since the test started (reports only).
        let time_ns = match op.get("time") {
            Some(Edn::Int(t)) if *t >= 0 => Some(*t as u64),
            _ => None,
        };
        let op = JepsenOp {
            process,
            event_type: &event_type,
            f: &f,
            value: &value,
            time_ns,
        };
        events.extend(jepsen_op(op, failed_cas).map_err(bad)?);
    }
    Ok(History { events })
}

/// A register value: `nil` is no value; everything else compares by its canonical EDN text
/// (so a map read back with its entries in another order is the same value).
fn edn_value(value: &Edn) -> Value {
    match value {
        Edn::Nil => None,
        Edn::Str(s) => Some(s.clone()),
        other => Some(edn::canonical(other)),
    }
}

/// A `jepsen.independent` key: integers, strings and keywords as their text, anything else as
/// its canonical EDN text.
fn edn_key(value: &Edn) -> String {
    match value {
        Edn::Str(s) => s.clone(),
        Edn::Keyword(k) => k.clone(),
        other => edn::canonical(other),
    }
}

/// A `:value` map that names its key: `{:key K :value V}` (also `:k`/`:v`), as some Jepsen
/// clients log a keyed register operation.
fn keyed_map(value: &Edn) -> Option<(String, &Edn)> {
    let key = value.get("key").or_else(|| value.get("k"))?;
    let inner = value.get("value").or_else(|| value.get("v"))?;
    match value {
        Edn::Map(entries) if entries.len() == 2 => Some((edn_key(key), inner)),
        _ => None,
    }
}

/// Split a `jepsen.independent` `[key value]` tuple (or a keyed `:value` map) off `value`
/// when there is one.
fn independent<'a>(f: &str, value: &'a Edn) -> (String, &'a Edn) {
    if let Some((key, inner)) = keyed_map(value) {
        return (key, inner);
    }
    if let Edn::Vector(items) = value {
        if let [key, inner] = items.as_slice() {
            let tuple = match f {
                "cas" => matches!(inner, Edn::Vector(pair) if pair.len() == 2),
                _ => true,
            };
            if tuple {
                return (edn_key(key), inner);
            }
        }
    }
    (String::new(), value)
}

/// One Jepsen op as read from either Jepsen format.
struct JepsenOp<'a> {
    process: u64,
    event_type: &'a str,
    f: &'a str,
    value: &'a Edn,
    time_ns: Option<u64>,
}

/// One Jepsen op (`:type :f :value`) as an event, or nothing for ops we drop.
fn jepsen_op(op: JepsenOp<'_>, failed_cas: FailedCas) -> Result<Option<Event>, String> {
    let JepsenOp {
        process,
        event_type,
        f,
        value,
        time_ns,
    } = op;
    // A failed op had no effect: nothing about it is checked, so its value (which may be of
    // any shape, or missing) is not read either. Its invocation is paired and dropped.
    if event_type == "fail" && !(f == "cas" && failed_cas == FailedCas::CompareFailed) {
        return Ok(Some(Event {
            process,
            event_type: EventType::Fail,
            key: String::new(),
            input: Input::Read,
            output: None,
            time_ns,
        }));
    }
    let (key, value) = independent(f, value);
    let cas_pair = || match value {
        Edn::Vector(pair) if pair.len() == 2 => Ok((edn_value(&pair[0]), edn_value(&pair[1]))),
        other => Err(format!("a cas value is [from to], got {other:?}")),
    };
    let input = match f {
        "read" => Input::Read,
        "write" => Input::Write {
            value: edn_value(value),
        },
        "cas" => {
            // Completions of timed-out ops carry `:timed-out` instead of the pair.
            match cas_pair() {
                Ok((from, to)) => Input::Cas { from, to },
                Err(_) if event_type != "invoke" => Input::Cas {
                    from: None,
                    to: None,
                },
                Err(e) => return Err(e),
            }
        }
        other => {
            return Err(format!(
                "unknown :f {other:?} (expected read, write or cas)"
            ))
        }
    };
    let (event_type, output) = match (event_type, f) {
        ("invoke", _) => (EventType::Invoke, None),
        ("ok", "read") => (
            EventType::Ok,
            Some(Output::Read {
                value: edn_value(value),
                mod_index: None,
            }),
        ),
        ("ok", "write") => (EventType::Ok, Some(Output::Written { index: None })),
        ("ok", "cas") => (
            EventType::Ok,
            Some(Output::Cas {
                applied: true,
                index: None,
            }),
        ),
        // The console corpus's reading (FailedCas::CompareFailed): a failed cas observed a
        // value other than `from`.
        ("fail", "cas") => (
            EventType::Ok,
            Some(Output::Cas {
                applied: false,
                index: None,
            }),
        ),
        ("fail", _) => (EventType::Fail, None),
        ("info", _) => (EventType::Info, None),
        (other, _) => return Err(format!("unknown :type {other:?}")),
    };
    Ok(Some(Event {
        process,
        event_type,
        key,
        input,
        output,
        time_ns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_edn_and_json_lines_agree_under_the_same_reading() {
        let console = "INFO  jepsen.util - 0\t:invoke\t:cas\t[3 0]\nINFO  jepsen.util - 0\t:fail\t:cas\t[3 0]\nINFO  jepsen.util - 1   :invoke   :write   2\nINFO  jepsen.util - 1   :info   :write   :timed-out\n";
        let edn = "[{:process 0 :type :invoke :f :cas :value [3 0]}\n {:process :nemesis :type :info :f :start}\n {:process 0, :type :fail, :f :cas, :value [3 0]}\n{:process 1 :type :invoke :f :write :value 2} {:process 1 :type :info :f :write :value :timed-out}]";
        let a = parse(console).unwrap();
        let b = parse_with(edn, Some(FailedCas::CompareFailed)).unwrap();
        assert_eq!(detect(console), Format::JepsenConsole);
        assert_eq!(detect(edn), Format::Edn);
        // EDN's own reading is Jepsen's: the failed cas did not happen.
        let jepsen = parse(edn).unwrap();
        assert_eq!(jepsen.events[1].event_type, EventType::Fail);
        assert_eq!(jepsen.operations().unwrap().len(), 1);
        // And the console's reading can be turned off the same way.
        let dropped = parse_with(console, Some(FailedCas::NoEffect)).unwrap();
        assert_eq!(dropped.events[1].event_type, EventType::Fail);
        assert_eq!(a.events.len(), 4);
        assert_eq!(
            a.events[1].output,
            Some(Output::Cas {
                applied: false,
                index: None
            })
        );
        assert_eq!(
            a.events.iter().map(|e| e.event_type).collect::<Vec<_>>(),
            b.events.iter().map(|e| e.event_type).collect::<Vec<_>>()
        );
        let json: String = a
            .events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        assert_eq!(detect(&json), Format::JsonLines);
        assert_eq!(parse(&json).unwrap(), a);
    }

    #[test]
    fn independent_tuples_become_keys() {
        let edn = "{:process 0 :type :invoke :f :write :value [7 3]}\n{:process 0 :type :ok :f :write :value [7 3]}\n{:process 1 :type :invoke :f :cas :value [\"k\" [3 4]]}";
        let h = parse(edn).unwrap();
        assert_eq!(h.events[0].key, "7");
        assert_eq!(
            h.events[0].input,
            Input::Write {
                value: Some("3".into())
            }
        );
        assert_eq!(h.events[2].key, "k");
        assert_eq!(
            h.events[2].input,
            Input::Cas {
                from: Some("3".into()),
                to: Some("4".into())
            }
        );
    }
}
