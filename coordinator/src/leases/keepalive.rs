//! Renewing leases and reading their timers from any node. Only the leader keeps the timers
//! (`LeaseTimers`), so every node asks it, many leases to a frame: this node's keepalives
//! queue in the `KeepaliveBatcher` while one frame is in flight and go together in the next.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mirrorkv_raft_net::{ForwardError, LeaseTime, LeaseTimes, Refusal};
use mirrorkv_storage::LeaseInfo;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::CoordError;
use crate::read::wait_applied;
use crate::Coordinator;

/// Most leases asked of the leader in one frame.
pub(crate) const MAX_LEASES_PER_FRAME: usize = 4096;
/// Between retries, wait at most this long for the leader to change.
const RETRY_WAIT_MS: u64 = 50;

type KeepaliveAnswer = Result<Option<LeaseTime>, CoordError>;

struct Asked {
    id: u64,
    answer: oneshot::Sender<KeepaliveAnswer>,
}

/// This node's keepalives, queued for the next frame to the leader.
pub(crate) struct KeepaliveBatcher {
    queue: mpsc::Sender<Asked>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Asked>>>,
}

impl KeepaliveBatcher {
    /// A batcher that queues at most `max_queued` keepalives (senders wait beyond).
    pub(crate) fn new(max_queued: usize) -> Self {
        let (queue, receiver) = mpsc::channel(max_queued.max(1));
        Self {
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
        }
    }
}

/// Send the queued keepalives to the leader, a frame at a time, until `stop` resolves.
pub(crate) async fn run_keepalives(node: Arc<Coordinator>, stop: impl Future<Output = ()>) {
    let Some(mut receiver) = node
        .keepalives
        .receiver
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            first = receiver.recv() => match first { Some(first) => first, None => return },
            _ = &mut stop => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_LEASES_PER_FRAME {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let ids = batch.iter().map(|asked| asked.id).collect();
        let deadline = Instant::now() + node.config.request_timeout();
        match node.lease_times(ids, true, deadline).await {
            Ok(times) => {
                for (asked, time) in batch.into_iter().zip(times.leases) {
                    let _ = asked.answer.send(Ok(time));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for asked in batch {
                    let _ = asked
                        .answer
                        .send(Err(CoordError::Unavailable(message.clone())));
                }
            }
        }
    }
}

impl Coordinator {
    /// Renew lease `id` through the leader, from any node: its TTL, or `None` if it does not
    /// live (never granted, revoked, expired, or its expiry proposed).
    pub async fn keepalive(&self, id: u64, deadline: Instant) -> KeepaliveAnswer {
        self.refuse_if_removed()?;
        let (answer, answered) = oneshot::channel();
        let queued =
            tokio::time::timeout_at(deadline, self.keepalives.queue.send(Asked { id, answer }));
        match queued.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(CoordError::Unavailable("the node is stopping".into())),
            Err(_) => {
                return Err(CoordError::Timeout(
                    "the keepalive queue stayed full until the deadline".into(),
                ))
            }
        }
        self.leases
            .counters
            .keepalives_total
            .fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CoordError::Unavailable("the node is stopping".into())),
            Err(_) => Err(CoordError::Timeout(
                "no leader renewed the lease before the deadline".into(),
            )),
        }
    }

    /// Lease `id` as the leader times it and as this node holds it (its first `max_keys`
    /// keys), read after this node applied a read index the leader confirmed after the call;
    /// `None` if it does not live.
    pub async fn lease_info(
        self: &Arc<Self>,
        id: u64,
        max_keys: usize,
        deadline: Instant,
    ) -> Result<Option<(LeaseInfo, LeaseTime)>, CoordError> {
        let times = self.lease_times(vec![id], false, deadline).await?;
        let Some(time) = times.leases.first().copied().flatten() else {
            return Ok(None);
        };
        wait_applied(self, times.read_index, deadline).await?;
        Ok(self
            .reader
            .lease(id, max_keys)?
            .value
            .map(|info| (info, time)))
    }

    /// The leader's timers of `ids` (renewed first if `renew`), retried across leader changes
    /// until `deadline` (both are safe to repeat).
    pub(crate) async fn lease_times(
        self: &Arc<Self>,
        ids: Vec<u64>,
        renew: bool,
        deadline: Instant,
    ) -> Result<LeaseTimes, CoordError> {
        loop {
            self.refuse_if_removed()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CoordError::Unavailable(
                    "no leader answered for the leases in time".into(),
                ));
            }
            let tried = self.leader();
            let answer = match tried {
                Some(leader) if leader == self.id => {
                    Some(self.leases_as_leader(ids.clone(), renew, deadline).await)
                }
                Some(leader) => match self.member(leader) {
                    Some(info) => match self
                        .pool
                        .client(leader, &info)
                        .leases(ids.clone(), renew, remaining)
                        .await
                    {
                        Ok(answer) => Some(answer),
                        Err(e) => {
                            tracing::debug!(leader, error = %e, "asking the leader for leases failed");
                            None
                        }
                    },
                    None => None,
                },
                None => None,
            };
            match answer {
                Some(Ok(times)) => return Ok(times),
                Some(Err(ForwardError::Refused { message, .. })) => {
                    return Err(CoordError::InvalidArgument(message))
                }
                Some(Err(e)) => tracing::debug!(error = %e, "the leader did not answer for leases"),
                None => {}
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(RETRY_WAIT_MS));
            self.wait_for_leader_change(tried, wait).await;
        }
    }

    /// On the leader: renew `ids` (if `renew`) or tell their timers, once a read index
    /// confirmed after the call is applied here (so an expiry an earlier leader committed is
    /// applied before any renewal is answered).
    pub(crate) async fn leases_as_leader(
        self: &Arc<Self>,
        ids: Vec<u64>,
        renew: bool,
        deadline: Instant,
    ) -> Result<LeaseTimes, ForwardError> {
        if ids.len() > MAX_LEASES_PER_FRAME {
            return Err(ForwardError::Refused {
                refusal: Refusal::InvalidArgument,
                message: format!(
                    "{} leases in one request, more than {MAX_LEASES_PER_FRAME}",
                    ids.len()
                ),
            });
        }
        let not_leader = || ForwardError::NotLeader {
            leader: self.leader(),
        };
        if !self.is_leader() {
            return Err(not_leader());
        }
        let term = self.term();
        let read_index = self
            .confirmed_read_index(deadline)
            .await
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        wait_applied(self, read_index, deadline)
            .await
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        // Renewed only by the leader of the term the round confirmed.
        if !self.is_leader() || self.term() != term {
            return Err(not_leader());
        }
        let now = std::time::Instant::now();
        self.leases.lead(term, now);
        let leases = ids
            .iter()
            .map(|&id| match renew {
                true => self.leases.renew(id, now),
                false => self.leases.time_left(id, now),
            })
            .collect();
        Ok(LeaseTimes { read_index, leases })
    }
}
