//! Writes a non-leader receives, sent to the leader many to a raft-net frame (`Forwarder`),
//! each keeping its own answer and deadline. Whether a write may have been sent is decided by
//! one claim per write (`QUEUED` → `TAKEN` or `ABANDONED`), tested alone (`tests::claim`).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, NetError, PeerPool};
use mirrorkv_storage::{Command, NodeId, NodeInfo, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::batch::{next_queued, BatchBudget, MAX_COMMANDS_PER_ENTRY};

/// Forwarded frames in flight at once; while they are, new writes queue up and form the next,
/// bigger frame (as with entries, the frame size adapts to the load).
const MAX_FRAMES_IN_FLIGHT: usize = 4;

/// Who owns a queued forward: the forwarder once it puts it in a frame, or its caller once it
/// gives up waiting. Exactly one of them wins, which is how the caller knows whether its
/// write may have been sent.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

pub type ForwardAnswer = Result<Result<Response, ForwardError>, NetError>;

pub(crate) struct Forwarded {
    leader: NodeId,
    node: NodeInfo,
    command: Command,
    deadline: Instant,
    claim: Arc<AtomicU8>,
    answer: oneshot::Sender<ForwardAnswer>,
}

impl Forwarded {
    /// Take this write into a frame; false if its caller already gave up on it.
    fn take(&self) -> bool {
        self.claim
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Sends the writes a non-leader receives to the leader, many in one raft-net frame: the writes
/// that arrive while earlier frames are in flight share the next one. Each write keeps its own
/// answer, and its own deadline for giving up.
pub struct Forwarder {
    queue: mpsc::Sender<Forwarded>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Forwarded>>>,
}

impl Forwarder {
    /// A forwarder whose queue holds at most `capacity` writes (senders wait beyond it).
    pub fn new(capacity: usize) -> Self {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        Self {
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
        }
    }

    /// Forward `command` to `leader` (advertised as `node`) and wait for its answer until
    /// `deadline`. The errors mean what `PeerClient::client_writes`' do: `not_delivered()`
    /// ones certainly did not reach the leader.
    pub async fn forward(
        &self,
        leader: NodeId,
        node: NodeInfo,
        command: Command,
        deadline: Instant,
    ) -> ForwardAnswer {
        let claim = Arc::new(AtomicU8::new(QUEUED));
        let addr = node.raft_addr.clone();
        let (answer, answered) = oneshot::channel();
        let forwarded = Forwarded {
            leader,
            node,
            command,
            deadline,
            claim: claim.clone(),
            answer,
        };
        let not_sent = |reason| NetError::NotTaken {
            addr: addr.clone(),
            reason,
        };
        let wait = async {
            if self.queue.send(forwarded).await.is_err() {
                return Err(not_sent("this node is shutting down"));
            }
            match answered.await {
                Ok(answer) => answer,
                // Dropped unanswered: sent only if the forwarder had taken it.
                Err(_) if claim.load(Ordering::Acquire) == TAKEN => {
                    Err(NetError::ConnectionClosed { addr: addr.clone() })
                }
                Err(_) => Err(not_sent("this node is shutting down")),
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, wait).await {
            Ok(answer) => answer,
            Err(_) => {
                match claim.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Err(not_sent("it was still queued at its deadline")),
                    Err(_) => Err(NetError::Timeout {
                        timeout_ms: remaining.as_millis() as u64,
                    }),
                }
            }
        }
    }

    /// The queue's receiving end, for `run`; `None` once taken.
    pub(crate) fn take_queue(&self) -> Option<mpsc::Receiver<Forwarded>> {
        self.receiver.lock().expect("forwarder lock").take()
    }
}

/// Form frames from `receiver` and send them through `pool` until `stop` resolves. Run once
/// per node.
pub(crate) async fn run(
    mut receiver: mpsc::Receiver<Forwarded>,
    pool: Arc<PeerPool>,
    max_value_bytes: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_FRAMES_IN_FLIGHT));
    let mut carried: Option<Forwarded> = None;
    tokio::pin!(stop);
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = next_queued(&mut carried, &mut receiver, stop.as_mut()).await else {
            return;
        };
        if !first.take() {
            continue;
        }
        // The answers come back in one frame: bounded like an entry's.
        let mut budget = BatchBudget::new(&first.command, max_value_bytes);
        let mut frame = vec![first];
        while frame.len() < MAX_COMMANDS_PER_ENTRY {
            let Ok(next) = receiver.try_recv() else { break };
            if next.leader != frame[0].leader || !budget.fits(&next.command) {
                carried = Some(next);
                break;
            }
            if next.take() {
                budget.add(&next.command);
                frame.push(next);
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            send_frame(&pool, frame).await;
            drop(permit);
        });
    }
}

/// Send one frame of forwarded writes and hand each its answer.
async fn send_frame(pool: &PeerPool, frame: Vec<Forwarded>) {
    let (leader, node) = (frame[0].leader, frame[0].node.clone());
    // Long enough for the most patient write in the frame; the others stop waiting on their
    // own at their deadlines.
    let timeout = frame
        .iter()
        .map(|f| f.deadline)
        .max()
        .map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(Instant::now())
        });
    let (commands, answers): (Vec<Command>, Vec<_>) =
        frame.into_iter().map(|f| (f.command, f.answer)).unzip();
    match pool
        .client(leader, &node)
        .client_writes(commands, timeout)
        .await
    {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(Ok(result));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mirrorkv_storage::Precondition;

    use super::*;

    /// The forwarder's side of the claim race, without a cluster: the queue is read by hand.
    mod claim {
        use super::*;

        fn leader() -> NodeInfo {
            NodeInfo {
                raft_addr: "127.0.0.1:1".into(),
                api_addr: "127.0.0.1:2".into(),
            }
        }

        fn put() -> Command {
            Command::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                precondition: Precondition::None,
            }
        }

        fn receiver(forwarder: &Forwarder) -> mpsc::Receiver<Forwarded> {
            forwarder.receiver.lock().unwrap().take().unwrap()
        }

        #[tokio::test]
        async fn a_write_still_queued_at_its_deadline_is_never_sent() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            let deadline = Instant::now() + Duration::from_millis(50);
            match forwarder.forward(1, leader(), put(), deadline).await {
                Err(e @ NetError::NotTaken { .. }) => {
                    assert!(e.to_string().contains("still queued"), "{e}")
                }
                other => panic!("{other:?}"),
            }
            // The forwarder comes to it late: the caller was told "not sent", so it must not be.
            let late = queue.recv().await.unwrap();
            assert!(!late.take(), "an abandoned write was taken into a frame");
        }

        #[tokio::test]
        async fn a_write_taken_into_a_frame_times_out_with_its_outcome_open() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            // Long enough that the taker below always takes it first, even on a loaded machine.
            let deadline = Instant::now() + Duration::from_secs(2);
            let forward = forwarder.forward(1, leader(), put(), deadline);
            let taker = async {
                let queued = queue.recv().await.unwrap();
                assert!(queued.take());
                // Held, unanswered, past the deadline: as a frame stuck in flight.
                queued
            };
            let (answer, _held) = tokio::join!(forward, taker);
            match answer {
                Err(NetError::Timeout { .. }) => {}
                other => panic!("a taken write may have been sent: {other:?}"),
            }
        }

        #[tokio::test]
        async fn a_taken_write_dropped_unanswered_may_have_been_sent() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            let deadline = Instant::now() + Duration::from_secs(10);
            let forward = forwarder.forward(1, leader(), put(), deadline);
            let taker = async {
                let queued = queue.recv().await.unwrap();
                assert!(queued.take());
                drop(queued);
            };
            let (answer, ()) = tokio::join!(forward, taker);
            assert!(
                matches!(answer, Err(NetError::ConnectionClosed { .. })),
                "{answer:?}"
            );
        }

        #[tokio::test]
        async fn a_write_queued_but_dropped_untaken_was_not_sent() {
            let forwarder = Forwarder::new(4);
            let mut queue = receiver(&forwarder);
            let deadline = Instant::now() + Duration::from_secs(10);
            let forward = forwarder.forward(1, leader(), put(), deadline);
            let dropper = async {
                // Shutting down: the queue is dropped with the write in it, never taken.
                let queued = queue.recv().await.unwrap();
                drop(queued);
            };
            let (answer, ()) = tokio::join!(forward, dropper);
            match answer {
                Err(e @ NetError::NotTaken { .. }) => {
                    assert!(e.to_string().contains("shutting down"), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
