//! `ReadIndexBatcher`: leadership-confirmation rounds shared between the reads of one node.
//!
//! A linearizable read needs a leadership confirmation that *started after the read arrived*.
//! Reads that arrive while a round is in flight wait for the next round, which starts as soon as
//! the current one ends and answers all of them at once: one quorum round trip (or one RPC to
//! the leader) serves every read queued behind it.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::CoordError;

type Waiter = oneshot::Sender<Result<u64, String>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    round_in_flight: bool,
}

/// Shares leadership-confirmation rounds between the reads of one node. It knows nothing of
/// the node: the caller hands it the round to run, so its rule (a read is answered only by a
/// round that started after it arrived) is tested alone (`tests`).
#[derive(Default)]
pub struct ReadIndexBatcher {
    queue: Arc<Mutex<Queue>>,
}

impl ReadIndexBatcher {
    /// A read index obtained by a round that started after this call, or an error by
    /// `deadline`. When no round is in flight, `round` starts one in a task of its own, and
    /// runs again for as long as reads wait; each run answers every read that was waiting when
    /// it began.
    pub async fn read_index<R, F>(&self, round: R, deadline: Instant) -> Result<u64, CoordError>
    where
        R: Fn() -> F + Send + 'static,
        F: Future<Output = Result<u64, String>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start_round = {
            let mut queue = self.queue.lock().expect("queue lock");
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.round_in_flight, true)
        };
        if start_round {
            tokio::spawn(run_rounds(self.queue.clone(), round));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(Ok(index))) => Ok(index),
            Ok(Ok(Err(message))) => Err(CoordError::Unavailable(message)),
            Ok(Err(_)) => Err(CoordError::Unavailable(
                "read index round ended without an answer".into(),
            )),
            Err(_) => Err(CoordError::Timeout(format!(
                "no leadership confirmation within {} ms",
                remaining.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
impl ReadIndexBatcher {
    /// Reads queued for the next round.
    fn waiting(&self) -> usize {
        self.queue.lock().expect("queue lock").waiting.len()
    }
}

/// Run rounds until nobody waits: each round answers everyone who was waiting when it started.
async fn run_rounds<R, F>(queue: Arc<Mutex<Queue>>, round: R)
where
    R: Fn() -> F,
    F: Future<Output = Result<u64, String>>,
{
    loop {
        let waiters = {
            let mut queue = queue.lock().expect("queue lock");
            if queue.waiting.is_empty() {
                queue.round_in_flight = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let result = round().await;
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::sync::Semaphore;

    use std::time::Duration;

    use super::*;

    /// A round that waits for a permit from `release`, then answers how many rounds began
    /// before it (1 for the first): which round answered a read says when that round began.
    fn counted_round(
        began: Arc<AtomicU64>,
        release: Arc<Semaphore>,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<u64, String>> + Send + 'static
    {
        move || {
            let number = began.fetch_add(1, Ordering::SeqCst) + 1;
            let release = release.clone();
            Box::pin(async move {
                release.acquire().await.expect("open").forget();
                Ok(number)
            })
        }
    }

    fn in_secs(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    /// Wait (at most 10 s) until `began` reaches `rounds`.
    async fn until_began(began: &AtomicU64, rounds: u64) {
        let deadline = in_secs(10);
        while began.load(Ordering::SeqCst) < rounds {
            assert!(Instant::now() < deadline, "round {rounds} never began");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_read_arriving_during_a_round_is_answered_by_the_next_one() {
        let batcher = Arc::new(ReadIndexBatcher::default());
        let began = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Semaphore::new(0));
        let first = tokio::spawn({
            let (batcher, round) = (
                batcher.clone(),
                counted_round(began.clone(), release.clone()),
            );
            async move { batcher.read_index(round, in_secs(10)).await }
        });
        until_began(&began, 1).await;
        // Round 1 is in flight: these three must not be answered by it.
        let late: Vec<_> = (0..3)
            .map(|_| {
                let (batcher, round) = (
                    batcher.clone(),
                    counted_round(began.clone(), release.clone()),
                );
                tokio::spawn(async move { batcher.read_index(round, in_secs(10)).await })
            })
            .collect();
        // All three queued while round 1 is still in flight.
        let deadline = in_secs(10);
        while batcher.waiting() < 3 {
            assert!(Instant::now() < deadline, "the late reads never queued");
            tokio::task::yield_now().await;
        }
        release.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        until_began(&began, 2).await;
        release.add_permits(1);
        for read in late {
            assert_eq!(
                read.await.unwrap().unwrap(),
                2,
                "one later round serves all three"
            );
        }
        assert_eq!(
            began.load(Ordering::SeqCst),
            2,
            "no third round without readers"
        );
    }

    #[tokio::test]
    async fn a_read_past_its_deadline_times_out_and_the_round_still_serves_later_reads() {
        let batcher = Arc::new(ReadIndexBatcher::default());
        let began = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Semaphore::new(0));
        let round = counted_round(began.clone(), release.clone());
        let short = Instant::now() + Duration::from_millis(20);
        match batcher.read_index(round, short).await {
            Err(CoordError::Timeout(message)) => {
                assert!(message.contains("no leadership confirmation"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        release.add_permits(2);
        let round = counted_round(began.clone(), release.clone());
        let answered = batcher.read_index(round, in_secs(10)).await.unwrap();
        assert_eq!(answered, 2, "answered by a round that began after it");
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_reads_as_unavailable() {
        let batcher = ReadIndexBatcher::default();
        let round = || async { Err::<u64, _>("no quorum".to_string()) };
        match batcher.read_index(round, in_secs(10)).await {
            Err(CoordError::Unavailable(message)) => assert_eq!(message, "no quorum"),
            other => panic!("{other:?}"),
        }
    }
}
