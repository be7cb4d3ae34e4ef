//! The real-cluster fixture of these tests: `jepsen_lite::cluster::Cluster` with this build's
//! `mirrorkv` binary, waits that panic with the reason, and the nodes' logs printed when a test
//! fails.

#![allow(dead_code, unused_imports)]

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

pub use jepsen_lite::cluster::{encode_key, put, WriteOutcome, DEADLINE};
use jepsen_lite::cluster::{ClusterError, ClusterOptions};

pub struct Cluster(jepsen_lite::cluster::Cluster);

impl Deref for Cluster {
    type Target = jepsen_lite::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn ok<T>(result: Result<T, ClusterError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Poll `check` until it returns `Some`; panics with `what` past `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    ok(jepsen_lite::cluster::wait_for(what, deadline, check).await)
}

impl Cluster {
    async fn start_inner(n: u64, extra_args: &[&str], proxies: bool) -> Cluster {
        let options = ClusterOptions {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_mirrorkv")),
            nodes: n,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            proxies,
            dir: None,
        };
        Cluster(ok(jepsen_lite::cluster::Cluster::start(options).await))
    }

    /// Start `n` nodes with ids 1..=n and `extra_args` on each.
    pub async fn start(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, false).await
    }

    /// Like `start`, but every directed link goes through its own proxy (`isolate`, `heal`).
    pub async fn start_with_proxies(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, true).await
    }

    pub async fn wait_for_leader(&self) -> u64 {
        ok(self.0.wait_for_leader().await)
    }

    pub async fn wait_ready(&self, id: u64) {
        ok(self.0.wait_ready(id).await)
    }

    pub fn kill(&mut self, id: u64) {
        ok(self.0.kill(id))
    }

    pub async fn restart(&mut self, id: u64) {
        ok(self.0.restart(id).await)
    }

    pub async fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        ok(self.0.terminate(id).await)
    }

    pub fn isolate(&self, id: u64) {
        ok(self.0.isolate(id))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.log_tails(40));
        }
    }
}
