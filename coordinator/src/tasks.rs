//! The coordination's background tasks: the write batcher, the forwarder, the removal watch,
//! the leader's lease expiry and the keepalive batcher, each given only what it needs.

use std::future::Future;
use std::sync::Arc;

use crate::{batch, forward, leases, removal, Coordinator};

impl Coordinator {
    /// Start the tasks that run until `stop()` resolves: the write batcher, the forwarder, the
    /// removal watch, lease expiry and keepalives. Call once.
    pub fn spawn_tasks<F>(self: &Arc<Self>, stop: impl Fn() -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(queue) = self.write_batcher.take_queue() {
            tokio::spawn(batch::run(
                queue,
                self.appender.clone(),
                self.config.limits.max_value_bytes,
                stop(),
            ));
        }
        if let Some(queue) = self.forwarder.take_queue() {
            tokio::spawn(forward::run(
                queue,
                self.pool.clone(),
                self.config.limits.max_value_bytes,
                stop(),
            ));
        }
        tokio::spawn(removal::watch_removal(self.clone(), stop()));
        tokio::spawn(leases::run_expiry(self.clone(), stop()));
        tokio::spawn(leases::run_keepalives(self.clone(), stop()));
    }
}
