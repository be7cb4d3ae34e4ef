//! `report.html`: one self-contained page per run — a timeline per key (a row per process,
//! operations as bars, the operation the checker could not place marked) and latency over time
//! by operation and outcome, with fault periods shaded in both. Pure: history in, HTML out.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::checker::CheckResult;
use crate::history::{Event, EventType, Input, Operation, Output};
use crate::nemesis::Window;

const WIDTH_PX: f64 = 1100.0;
const ROW_PX: f64 = 14.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(input: &Input, output: Option<&Output>) -> String {
    let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "nil".into());
    match (input, output) {
        (Input::Read, Some(Output::Read { value, .. })) => format!("read → {}", v(value)),
        (Input::Read, _) => "read".into(),
        (Input::Write { value }, _) => format!("write {}", v(value)),
        (Input::Cas { from, to }, Some(Output::Cas { applied, .. })) => format!(
            "cas {}→{} {}",
            v(from),
            v(to),
            if *applied { "ok" } else { "no" }
        ),
        (Input::Cas { from, to }, _) => format!("cas {}→{}", v(from), v(to)),
        (Input::PutIf { mod_index, value }, _) => format!("put-if {mod_index} {}", v(value)),
    }
}

/// Latency over time, by operation and outcome.
fn latency_chart(
    html: &mut String,
    operations: &[Operation],
    x: &dyn Fn(u64) -> f64,
    shade: &dyn Fn(f64) -> String,
) {
    let latencies: Vec<(u64, f64, &'static str, String)> = operations
        .iter()
        .filter_map(|op| {
            let (call, ret) = (op.call_time_ns?, op.ret_time_ns?);
            let kind = match op.input {
                Input::Read => "read",
                Input::Write { .. } => "write",
                Input::Cas { .. } => "cas",
                Input::PutIf { .. } => "put-if",
            };
            let color = match (kind, &op.output) {
                ("read", _) => "#1f77b4",
                ("write", _) => "#2ca02c",
                (_, Some(Output::Cas { applied: false, .. })) => "#ff7f0e",
                _ => "#9467bd",
            };
            Some((
                call,
                (ret.saturating_sub(call)) as f64 / 1e6,
                color,
                format!("{kind} {:.1} ms", (ret - call) as f64 / 1e6),
            ))
        })
        .collect();
    let max_ms = latencies.iter().map(|l| l.1).fold(1.0, f64::max);
    let chart_h = 200.0;
    let _ = write!(html, "<h2>Latency over time</h2><p>blue read, green write, purple cas applied, orange cas not applied; y up to {max_ms:.0} ms (log scale)</p><svg width='{WIDTH_PX}' height='{chart_h}'>{}", shade(chart_h));
    for (call, ms, color, tip) in &latencies {
        let y = chart_h
            - (ms.max(0.01).ln() - 0.01f64.ln()) / (max_ms.ln() - 0.01f64.ln()).max(1e-9)
                * (chart_h - 4.0);
        let _ = write!(
            html,
            "<circle cx='{:.1}' cy='{y:.1}' r='1.6' fill='{color}'><title>{}</title></circle>",
            x(*call),
            escape(tip)
        );
    }
    html.push_str("</svg>");
}

/// One timeline per key, keys with a violation first (at most 50).
fn key_timelines(
    html: &mut String,
    operations: &[Operation],
    failed: &[usize],
    x: &dyn Fn(u64) -> f64,
    shade: &dyn Fn(f64) -> String,
) {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in operations {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_by_key(|k| !by_key[k].iter().any(|op| failed.contains(&op.id)));
    html.push_str("<h2>Operations per key</h2>");
    for key in keys.iter().take(50) {
        let ops = &by_key[key];
        let mut processes: Vec<u64> = ops.iter().map(|op| op.process).collect();
        processes.sort();
        processes.dedup();
        let height = processes.len() as f64 * ROW_PX + 4.0;
        let _ = write!(html, "<div class='k'>key <b>{}</b> ({} ops)</div><svg width='{WIDTH_PX}' height='{height:.0}'>{}", escape(key), ops.len(), shade(height));
        for op in ops {
            let row = processes.iter().position(|p| *p == op.process).unwrap_or(0) as f64;
            let start = x(op.call_time_ns.unwrap_or(0));
            let end = op.ret_time_ns.map_or(WIDTH_PX, x);
            let color = if failed.contains(&op.id) {
                "#d62728"
            } else if op.output.is_none() {
                "#aaaaaa"
            } else {
                "#4c78a8"
            };
            let _ = write!(
                html,
                "<rect x='{start:.1}' y='{:.1}' width='{:.1}' height='{:.0}' fill='{color}'><title>{}</title></rect>",
                row * ROW_PX + 2.0,
                (end - start).max(1.5),
                ROW_PX - 3.0,
                escape(&format!("process {} {}", op.process, label(&op.input, op.output.as_ref())))
            );
        }
        html.push_str("</svg>");
    }
    if keys.len() > 50 {
        let _ = write!(html, "<p>… and {} more keys</p>", keys.len() - 50);
    }
}

/// The page. `events` must carry `time_ns`; `faults` are relative to the same start.
pub fn render(
    events: &[Event],
    operations: &[Operation],
    check: Option<&CheckResult>,
    faults: &[Window],
    title: &str,
) -> String {
    let end_ns = events
        .iter()
        .filter_map(|e| e.time_ns)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |ns: u64| ns as f64 / end_ns * WIDTH_PX;
    let failed: Vec<usize> = check.map_or(Vec::new(), |c| {
        c.keys
            .iter()
            .filter_map(|k| k.violation.as_ref().map(|v| v.failed_op))
            .collect()
    });
    let shade = |height: f64| -> String {
        faults
            .iter()
            .map(|w| {
                let (a, b) = (x(w.start_ms * 1_000_000), x((w.start_ms + w.duration_ms) * 1_000_000));
                format!("<rect x='{a:.1}' y='0' width='{:.1}' height='{height:.0}' fill='#f4c7c3' opacity='0.5'><title>{}</title></rect>", b - a, escape(&format!("{:?}", w.fault)))
            })
            .collect()
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><meta charset='utf-8'><title>{t}</title><style>body{{font:13px sans-serif;margin:20px}} svg{{border:1px solid #ddd;background:#fff}} .k{{margin-top:18px}}</style><h1>{t}</h1>",
        t = escape(title)
    );
    if let Some(check) = check {
        let _ = write!(html, "<p>verdict: <b>{:?}</b> — {} operations, {} keys, checked in {} ms. Shaded: fault periods. Red bars: operations the checker could not place. Grey: outcome unknown (info).</p>", check.verdict, check.operations, check.keys.len(), check.elapsed_ms);
    }
    latency_chart(&mut html, operations, &x, &shade);
    key_timelines(&mut html, operations, &failed, &x, &shade);
    let infos = events
        .iter()
        .filter(|e| e.event_type == EventType::Info)
        .count();
    let _ = write!(
        html,
        "<p>{} events, {infos} with unknown outcome.</p>",
        events.len()
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    #[test]
    fn renders_a_timeline_and_marks_the_failed_op() {
        let events = vec![
            Event {
                process: 0,
                event_type: EventType::Invoke,
                key: "a<b".into(),
                input: Input::Write {
                    value: Some("1".into()),
                },
                output: None,
                time_ns: Some(0),
            },
            Event {
                process: 0,
                event_type: EventType::Ok,
                key: "a<b".into(),
                input: Input::Write {
                    value: Some("1".into()),
                },
                output: Some(Output::Written { index: None }),
                time_ns: Some(10),
            },
            Event {
                process: 1,
                event_type: EventType::Invoke,
                key: "a<b".into(),
                input: Input::Read,
                output: None,
                time_ns: Some(20),
            },
            Event {
                process: 1,
                event_type: EventType::Ok,
                key: "a<b".into(),
                input: Input::Read,
                output: Some(Output::Read {
                    value: Some("9".into()),
                    mod_index: None,
                }),
                time_ns: Some(30),
            },
        ];
        let ops = History {
            events: events.clone(),
        }
        .operations()
        .unwrap();
        let check = crate::check(
            &crate::model::Register,
            &ops,
            crate::CheckOptions::default(),
        );
        let html = render(&events, &ops, Some(&check), &[], "t");
        assert!(html.contains("a&lt;b"));
        assert!(
            html.contains("#d62728"),
            "the read of a value never written is marked"
        );
        assert!(html.contains("NotLinearizable"));
    }
}
