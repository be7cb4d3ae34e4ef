//! `WriteGate`: admission of client writes to the log while this node leads, closed by a leader
//! that is leaving (shutting down, or removing itself) so that no admitted write is left
//! unanswered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Admission of client writes on a leader that may be leaving (shutting down, or removing
/// itself from the cluster).
///
/// Why: openraft answers a client write once its entry is applied. A leader that removes
/// itself steps down right after the new membership is applied, and a leader that shuts down
/// stops; an entry appended after that point would never be answered, and its writer would get
/// `outcome: unknown`. So a leaving leader first closes this gate — writes arriving later are
/// refused *before* they are appended, which is safe to retry anywhere — then waits for the
/// writes already admitted to be answered, then leaves.
///
/// Invariant: once `close()` returns, no further entry from `admit` reaches openraft, because
/// admission (check + enqueue into openraft's ordered channel) happens under the read side of
/// `order`, and `close` takes the write side.
#[derive(Debug, Default)]
pub struct WriteGate {
    /// Closes not yet undone by `reopen`: a failed self-removal reopens only its own close,
    /// never a shutdown's.
    closes: AtomicUsize,
    in_flight: AtomicUsize,
    order: tokio::sync::RwLock<()>,
}

/// A write admitted through the gate; dropping it marks the write answered.
pub struct Admitted<'a>(&'a WriteGate);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriteGate {
    pub fn is_closed(&self) -> bool {
        self.closes.load(Ordering::Acquire) > 0
    }

    /// Run `enqueue` (which must hand the write to openraft and return without waiting for
    /// the answer) unless the gate is closed; `None` if it is.
    pub async fn admit<T, F: std::future::Future<Output = T>>(
        &self,
        enqueue: F,
    ) -> Option<(Admitted<'_>, T)> {
        let _order = self.order.read().await;
        if self.is_closed() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self);
        Some((admitted, enqueue.await))
    }

    /// Refuse every later write, then wait (at most `timeout`) until every admitted write was
    /// answered. Returns the number still unanswered at the deadline.
    pub async fn close(&self, timeout: Duration) -> usize {
        {
            let _order = self.order.write().await;
            self.closes.fetch_add(1, Ordering::AcqRel);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let in_flight = self.in_flight.load(Ordering::Acquire);
            if in_flight == 0 || tokio::time::Instant::now() >= deadline {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(GATE_POLL_MS)).await;
        }
    }

    /// Undo one `close` (a self-removal that did not happen). The gate admits writes again
    /// once every close has been undone.
    pub fn reopen(&self) {
        let undone = self
            .closes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        debug_assert!(undone.is_ok(), "reopen without a close");
    }
}

/// How often `WriteGate::close` looks at the writes still in flight.
const GATE_POLL_MS: u64 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_removal_does_not_reopen_a_shutdown_close() {
        let gate = WriteGate::default();
        assert!(gate.admit(async {}).await.is_some());
        assert_eq!(
            gate.close(Duration::ZERO).await,
            0,
            "the admitted write was answered"
        );
        assert!(gate.admit(async {}).await.is_none(), "closed for a removal");
        gate.close(Duration::ZERO).await; // shutdown
        gate.reopen(); // the removal failed
        assert!(gate.is_closed(), "still closed for the shutdown");
        assert!(gate.admit(async {}).await.is_none());
    }

    #[tokio::test]
    async fn close_waits_for_admitted_writes() {
        let gate = std::sync::Arc::new(WriteGate::default());
        let (admitted, ()) = gate.admit(async {}).await.expect("open");
        let closing = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close(Duration::from_secs(10)).await })
        };
        // Not answered yet: close keeps waiting.
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        drop(admitted);
        assert_eq!(closing.await.unwrap(), 0);
        gate.reopen();
        assert!(!gate.is_closed());
    }
}
