//! jepsen-lite: fault injection against real mirrorkv clusters, and a linearizability checker.
//!
//! Modules, one job each:
//! - [`history`]: events, the three outcomes (ok / fail / info), pairing into operations.
//! - [`model`]: sequential specifications: `Register` and mirrorkv's `KeyValue`.
//! - [`attack`]: `jepsen-lite attack`: the attacks that once stopped mirrorkv, then a write on
//!   every node.
//! - [`checker`]: Wing–Gong–Lowe search with memoization, per key, in parallel, time-limited.
//! - [`edn`]: a small EDN reader; [`edn_out`] writes histories as EDN.
//! - [`cluster`]: real `mirrorkv` processes on loopback, with a proxy per directed link
//!   ([`proxy`]).
//! - [`nemesis`]: the faults and the schedule one seed decides.
//! - [`harness`]: `jepsen-lite test`: cluster + workload + nemesis + final reads + check.
//! - [`report`]: `report.html`, timelines per key and latency over time, faults shaded.
//! - [`workloads`]: the `set` and `bank` workloads and their invariants.
//! - [`watch`]: the `watch` workload (writers, watchers that resume) and its checker.
//! - [`lock`]: the `lock` workload (holders that write under a fencing token, release, crash
//!   or pause) and its checker.
//! - [`parse`]: history formats: our JSON lines, Jepsen/Knossos EDN, the Jepsen console log.
//!
//! Why it is shaped this way: `jepsen-lite/DESIGN.md`.

pub mod attack;
pub mod checker;
pub mod cluster;
pub mod edn;
pub mod edn_out;
pub mod harness;
pub mod history;
pub mod lock;
pub mod model;
pub mod nemesis;
pub mod parse;
pub mod proxy;
pub mod report;
pub mod watch;
pub mod workloads;

pub use checker::{check, CheckOptions, CheckResult, GaveUp, Verdict, DEFAULT_MAX_STATES_PER_KEY};
pub use history::{Event, EventType, History, Input, Operation, Output};
