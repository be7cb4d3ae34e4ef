//! Writing histories as EDN op maps, one per line, the way Jepsen and Knossos read them:
//! `{:process 0, :type :invoke, :f :write, :value ["k" "v"], :index 3}` — values of several keys
//! are `jepsen.independent` `[key value]` tuples. Pure.

use crate::history::{Event, EventType, Input, Output, Value};

fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn value(v: &Value) -> String {
    v.as_deref().map_or("nil".to_string(), string)
}

/// One event as an EDN map.
pub fn event(e: &Event) -> String {
    let event_type = match e.event_type {
        EventType::Invoke => ":invoke",
        EventType::Ok => ":ok",
        EventType::Fail => ":fail",
        EventType::Info => ":info",
    };
    let (f, v) = match (&e.input, &e.output) {
        (Input::Read, Some(Output::Read { value: read, .. })) => (":read", value(read)),
        (Input::Read, _) => (":read", "nil".to_string()),
        (Input::Write { value: written }, _) => (":write", value(written)),
        (Input::Cas { from, to }, _) => (":cas", format!("[{} {}]", value(from), value(to))),
        (
            Input::PutIf {
                mod_index,
                value: written,
            },
            _,
        ) => (":put-if", format!("[{mod_index} {}]", value(written))),
    };
    // A cas that did not apply is Jepsen's `:fail :cas`: in Jepsen's semantics "no effect",
    // which is true of it (only weaker than what we saw); `check --failed-cas compare-failed`
    // reads it back as the observation it was.
    let event_type = match (&e.output, event_type) {
        (Some(Output::Cas { applied: false, .. }), ":ok") => ":fail",
        (_, t) => t,
    };
    let mut out = format!(
        "{{:process {}, :type {event_type}, :f {f}, :value [{} {v}]",
        e.process,
        string(&e.key)
    );
    if let Some(time_ns) = e.time_ns {
        out.push_str(&format!(", :time {time_ns}"));
    }
    out.push('}');
    out
}

/// A whole history, one op map per line.
pub fn history(events: &[Event]) -> String {
    events.iter().map(|e| event(e) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn written_edn_reads_back_the_same_operations() {
        let events = vec![
            Event {
                process: 0,
                event_type: EventType::Invoke,
                key: "k\"1".into(),
                input: Input::Cas {
                    from: Some("1".into()),
                    to: Some("2".into()),
                },
                output: None,
                time_ns: Some(5),
            },
            Event {
                process: 0,
                event_type: EventType::Ok,
                key: "k\"1".into(),
                input: Input::Cas {
                    from: Some("1".into()),
                    to: Some("2".into()),
                },
                output: Some(Output::Cas {
                    applied: false,
                    index: None,
                }),
                time_ns: Some(9),
            },
            Event {
                process: 1,
                event_type: EventType::Invoke,
                key: "k\"1".into(),
                input: Input::Write {
                    value: Some("3".into()),
                },
                output: None,
                time_ns: None,
            },
            Event {
                process: 1,
                event_type: EventType::Info,
                key: "k\"1".into(),
                input: Input::Write {
                    value: Some("3".into()),
                },
                output: None,
                time_ns: None,
            },
        ];
        let text = history(&events);
        let jepsen = parse::parse_edn(&text, parse::FailedCas::NoEffect).unwrap();
        assert_eq!(
            jepsen.operations().unwrap().len(),
            1,
            "the failed cas is dropped"
        );
        let back = parse::parse_edn(&text, parse::FailedCas::CompareFailed).unwrap();
        assert_eq!(back.operations().unwrap().len(), 2);
        assert_eq!(
            back.events[1].output,
            Some(Output::Cas {
                applied: false,
                index: None
            })
        );
        assert_eq!(back.events[0].key, "k\"1");
    }
}
