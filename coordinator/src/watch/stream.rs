//! `WatchStream`: the changes matching one filter from one index on, each exactly once and in
//! order, with a progress mark when nothing matches for a while; and the blocking read's wait,
//! which is a stream that stops at its first change.
//!
//! A stream starts by reading the history (bounded pages, on a blocking thread) and joins the
//! hub once a read found nothing more: from then on the hub queues its events. Progress is
//! only reported for indexes whose changes were all handed out: while synced, the hub's
//! published index read before finding the queue empty (the hub queues a batch's events before
//! it publishes the batch's index).

use std::sync::Arc;
use std::time::Duration;

use mirrorkv_storage::changes::{ChangesPage, HistoryError, KeyFilter};
use mirrorkv_storage::KvReader;
use tokio::time::Instant;

use super::hub::{JoinRefused, Joined, Taken, WatchHub, WatcherSlot};
use super::{StreamEnd, WatchEvent};
use crate::error::CoordError;

/// What a stream has next.
#[derive(Debug)]
pub enum WatchItem {
    /// Changes in index order; all changes up to the last one's index were examined.
    Events(Vec<Arc<WatchEvent>>),
    /// Nothing matched up to this index (and everything before it was handed out).
    Progress(u64),
    /// The stream is over; nothing follows.
    End(StreamEnd),
}

/// One watcher; see the module doc. Leaves the hub (and frees its place) when dropped.
pub struct WatchStream {
    hub: Arc<WatchHub>,
    reader: KvReader,
    filter: KeyFilter,
    /// The first index not yet read from the history (or, once joined, not offered by the hub
    /// before it joined).
    next_index: u64,
    /// Every change up to here was handed out (as events or as nothing to send).
    sent_through: u64,
    joined: Option<Joined>,
    _slot: WatcherSlot,
}

/// How a blocking read's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// A matching change was applied after the index waited from (or the history cannot tell
    /// any more, which is answered the same way: read now).
    Changed,
    /// The wait ran out with nothing changed.
    TimedOut,
    /// The node is shutting down.
    Closed,
}

impl WatchStream {
    /// A stream of the changes matching `filter` from `from_index` on (at least 1). Takes one
    /// of the hub's `max_watchers` places, or fails with `Overloaded`.
    pub fn open(
        hub: &Arc<WatchHub>,
        reader: KvReader,
        filter: KeyFilter,
        from_index: u64,
    ) -> Result<Self, CoordError> {
        let slot = hub.reserve()?;
        let from_index = from_index.max(1);
        Ok(Self {
            hub: hub.clone(),
            reader,
            filter,
            next_index: from_index,
            sent_through: from_index - 1,
            joined: None,
            _slot: slot,
        })
    }

    /// The index a client resumes from to miss nothing and see nothing twice.
    pub fn resume_index(&self) -> u64 {
        self.sent_through + 1
    }

    /// The next item; `Progress` once nothing matched for `quiet_for`. Cancel-safe: nothing is
    /// lost if the future is dropped before it resolves.
    pub async fn next(&mut self, quiet_for: Duration) -> Result<WatchItem, CoordError> {
        if self.joined.is_none() {
            if let Some(item) = self.catch_up().await? {
                return Ok(item);
            }
        }
        let Some(joined) = &self.joined else {
            unreachable!("catch_up returns an item or joins the hub");
        };
        let deadline = Instant::now() + quiet_for;
        loop {
            let published = self.hub.published_index();
            let notified = joined.queue.notify.notified();
            match joined.queue.take() {
                Taken::Events(events) => {
                    let last = events.last().map_or(0, |e| e.change.index);
                    self.sent_through = self.sent_through.max(last);
                    return Ok(WatchItem::Events(events));
                }
                Taken::End(end) => return Ok(WatchItem::End(end)),
                Taken::Empty => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // The queue was empty after `published` was read: all up to it was handed out.
                self.sent_through = self
                    .sent_through
                    .max(published)
                    .max(self.next_index.saturating_sub(1));
                return Ok(WatchItem::Progress(self.sent_through));
            }
        }
    }

    /// Read the history until a page has events or the stream joins the hub.
    async fn catch_up(&mut self) -> Result<Option<WatchItem>, CoordError> {
        loop {
            let page = self.read_history().await?;
            let page = match page {
                Ok(page) => page,
                Err(HistoryError::Compacted { compact_index, .. }) => {
                    return Ok(Some(WatchItem::End(StreamEnd::Compacted { compact_index })))
                }
            };
            self.next_index = page.through_index + 1;
            if !page.changes.is_empty() {
                self.sent_through = page.through_index;
                let events = page
                    .changes
                    .into_iter()
                    .map(|change| Arc::new(WatchEvent::new(change)))
                    .collect();
                return Ok(Some(WatchItem::Events(events)));
            }
            match self.hub.join(&self.filter, self.next_index) {
                Ok(joined) => {
                    self.joined = Some(joined);
                    return Ok(None);
                }
                Err(JoinRefused::Behind) => continue,
                Err(JoinRefused::Closed) => return Ok(Some(WatchItem::End(StreamEnd::Closed))),
            }
        }
    }

    async fn read_history(&self) -> Result<Result<ChangesPage, HistoryError>, CoordError> {
        let (reader, filter) = (self.reader.clone(), self.filter.clone());
        let (from_index, limit) = (self.next_index, self.hub.config.catch_up_page);
        tokio::task::spawn_blocking(move || reader.changes(from_index, &filter, limit))
            .await
            .map_err(|e| {
                CoordError::Storage(mirrorkv_storage::StorageError::Io(format!(
                    "a history read failed: {e}"
                )))
            })?
            .map_err(CoordError::from)
    }

    /// Wait until a change matching the stream's filter is applied, at most `wait`.
    pub async fn wait_for_change(mut self, wait: Duration) -> Result<WaitOutcome, CoordError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await? {
                WatchItem::Events(_) => return Ok(WaitOutcome::Changed),
                WatchItem::End(StreamEnd::Closed) => return Ok(WaitOutcome::Closed),
                WatchItem::End(_) => return Ok(WaitOutcome::Changed),
                WatchItem::Progress(_) if Instant::now() >= deadline => {
                    return Ok(WaitOutcome::TimedOut)
                }
                WatchItem::Progress(_) => {}
            }
        }
    }
}
