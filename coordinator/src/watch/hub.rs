//! `WatchHub`: the node's one feed of applied changes, fanned out to the watchers that are
//! caught up ("synced").
//!
//! The state machine tells the hub of each applied batch of entries (`ChangeListener`), after
//! the changes are in the history and before their writes are answered. For each change the
//! hub finds the watchers it matches (a key map for single keys, an [`IntervalIndex`] for
//! prefixes and ranges: a lookup per change, not a scan of the watchers) and appends one shared
//! event to each one's queue. A watcher whose queue is full is ended as lagging; nothing ever
//! waits on a slow client here.
//!
//! A watcher joins only once it has read the history past everything the hub has published
//! (`join`); until then it reads the history itself (`stream`). Every change at or after its
//! `next_index` therefore reaches it exactly once: from the history if published before it
//! joined, from the hub after.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mirrorkv_storage::changes::{Change, ChangeListener, KeyFilter, PageLimit};
use tokio::sync::Notify;

use super::interval::{prefix_end, IntervalIndex};
use super::{StreamEnd, WatchEvent};
use crate::error::CoordError;

/// The limits and timing of watches, each with its unit.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Events a stream may have queued and unsent; past it the stream ends as lagging.
    pub buffer_events: usize,
    /// Streams and blocking reads registered at once on this node; past it `429`.
    pub max_watchers: usize,
    /// A stream with nothing to send says how current it is this often.
    pub progress_ms: u64,
    /// The longest `wait` of a blocking read, and its default.
    pub max_wait_s: u64,
    pub default_wait_s: u64,
    /// One read of the history while a stream catches up.
    pub catch_up_page: PageLimit,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            buffer_events: 10_000,
            max_watchers: 10_000,
            progress_ms: 1000,
            max_wait_s: 600,
            default_wait_s: 60,
            catch_up_page: PageLimit {
                max_changes: 1000,
                max_bytes: 4 * 1024 * 1024,
            },
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Events handed to streams (counted once per stream).
    pub events_sent: AtomicU64,
    /// Streams ended because their client fell `buffer_events` behind.
    pub lagging_ended: AtomicU64,
    /// Streams ended because the history they needed is gone (a snapshot was installed).
    pub compacted_ended: AtomicU64,
    /// Streams and blocking reads refused at `max_watchers`.
    pub refused: AtomicU64,
}

/// The events queued for one synced watcher, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    inner: Mutex<QueueInner>,
    pub(crate) notify: Notify,
}

#[derive(Debug, Default)]
struct QueueInner {
    events: VecDeque<Arc<WatchEvent>>,
    end: Option<StreamEnd>,
}

/// What a watcher finds in its queue.
pub(crate) enum Taken {
    Events(Vec<Arc<WatchEvent>>),
    End(StreamEnd),
    Empty,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueInner> {
        // Queues hold plain data; a panic elsewhere leaves them consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a batch's events for this watcher, all or none (a client never sees part of an
    /// index before the stream ends); `false` if the watcher has ended (now, as lagging: they
    /// would pass `capacity`; or before).
    fn push_all(&self, events: Vec<Arc<WatchEvent>>, capacity: usize) -> bool {
        let mut inner = self.lock();
        if inner.end.is_some() {
            return false;
        }
        if inner.events.len() + events.len() > capacity {
            inner.end = Some(StreamEnd::Lagging {
                resume_index: events.first().map_or(0, |e| e.change.index),
            });
            drop(inner);
            self.notify.notify_one();
            return false;
        }
        let was_empty = inner.events.is_empty();
        inner.events.extend(events);
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    fn end(&self, end: StreamEnd) {
        let mut inner = self.lock();
        if inner.end.is_none() {
            inner.end = Some(end);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Every queued event, or once there are none, how the watcher ended.
    pub(crate) fn take(&self) -> Taken {
        let mut inner = self.lock();
        if !inner.events.is_empty() {
            return Taken::Events(inner.events.drain(..).collect());
        }
        match inner.end {
            Some(end) => Taken::End(end),
            None => Taken::Empty,
        }
    }
}

struct Watcher {
    filter: KeyFilter,
    /// Changes before this index reached the watcher from the history.
    next_index: u64,
    queue: Arc<Queue>,
}

#[derive(Default)]
struct HubState {
    /// Every change up to here was offered to the synced watchers.
    published_index: u64,
    closed: bool,
    next_id: u64,
    watchers: HashMap<u64, Watcher>,
    by_key: HashMap<String, Vec<u64>>,
    by_range: IntervalIndex,
}

impl HubState {
    fn index_filter(&mut self, id: u64, filter: &KeyFilter, add: bool) {
        let (start, end) = match filter {
            KeyFilter::Key(key) => {
                if add {
                    self.by_key.entry(key.clone()).or_default().push(id);
                } else if let Some(ids) = self.by_key.get_mut(key) {
                    ids.retain(|other| *other != id);
                    if ids.is_empty() {
                        self.by_key.remove(key);
                    }
                }
                return;
            }
            KeyFilter::Prefix(prefix) => (prefix.as_bytes(), prefix_end(prefix.as_bytes())),
            KeyFilter::Range { start, end } => (
                start.as_bytes(),
                end.as_ref().map(|e| e.as_bytes().to_vec()),
            ),
        };
        if add {
            self.by_range.insert(id, start, end.as_deref());
        } else {
            self.by_range.remove(id, start, end.as_deref());
        }
    }

    fn remove(&mut self, id: u64) -> Option<Watcher> {
        let watcher = self.watchers.remove(&id)?;
        self.index_filter(id, &watcher.filter, false);
        Some(watcher)
    }

    /// The ids of the watchers `key` matches.
    fn matching(&self, key: &str, into: &mut Vec<u64>) {
        into.clear();
        if let Some(ids) = self.by_key.get(key) {
            into.extend_from_slice(ids);
        }
        into.extend(self.by_range.containing(key.as_bytes()));
    }
}

/// The node's watch feed; see the module doc.
pub struct WatchHub {
    pub config: WatchConfig,
    pub counters: WatchCounters,
    state: Mutex<HubState>,
    /// `HubState::published_index`, readable without the lock; stored after the queues.
    published_index: AtomicU64,
    /// Watchers registered (streams and blocking reads), for `max_watchers`.
    open: AtomicUsize,
}

/// Why a watcher could not join the hub.
pub(crate) enum JoinRefused {
    /// Changes from its `next_index` were published before it joined: read the history again.
    Behind,
    /// The node is shutting down.
    Closed,
}

/// A watcher's place in the hub; leaves it when dropped.
pub(crate) struct Joined {
    hub: Arc<WatchHub>,
    id: u64,
    pub(crate) queue: Arc<Queue>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.hub.lock().remove(self.id);
    }
}

/// One of the `max_watchers` places; freed when dropped.
pub struct WatcherSlot {
    hub: Arc<WatchHub>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WatchHub {
    pub fn new(config: WatchConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            counters: WatchCounters::default(),
            state: Mutex::default(),
            published_index: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while matching leaves at worst a watcher not told of one change; it is
        // better to serve the others than to poison every later apply.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every change up to this index was offered to the synced watchers.
    pub fn published_index(&self) -> u64 {
        self.published_index.load(Ordering::Acquire)
    }

    /// Streams and blocking reads registered now.
    pub fn open_watchers(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Synced watchers (those the hub feeds) now.
    pub fn synced_watchers(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Take one of the `max_watchers` places, or `Overloaded`.
    pub fn reserve(self: &Arc<Self>) -> Result<WatcherSlot, CoordError> {
        let max = self.config.max_watchers;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(WatcherSlot { hub: self.clone() }),
            Err(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(CoordError::Overloaded(format!(
                    "this node has max_watchers={max} watches and blocking reads open; retry later or on another node"
                )))
            }
        }
    }

    /// Join the synced watchers with every change from `next_index` on still to come.
    pub(crate) fn join(
        self: &Arc<Self>,
        filter: &KeyFilter,
        next_index: u64,
    ) -> Result<Joined, JoinRefused> {
        let mut state = self.lock();
        if state.closed {
            return Err(JoinRefused::Closed);
        }
        if next_index <= state.published_index {
            return Err(JoinRefused::Behind);
        }
        let id = state.next_id;
        state.next_id += 1;
        let queue = Arc::new(Queue::default());
        state.index_filter(id, filter, true);
        state.watchers.insert(
            id,
            Watcher {
                filter: filter.clone(),
                next_index,
                queue: queue.clone(),
            },
        );
        Ok(Joined {
            hub: self.clone(),
            id,
            queue,
        })
    }

    /// End every stream (the node is shutting down) and refuse new ones; blocking reads answer
    /// with what they have.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let ids: Vec<u64> = state.watchers.keys().copied().collect();
        for id in ids {
            if let Some(watcher) = state.remove(id) {
                watcher.queue.end(StreamEnd::Closed);
            }
        }
    }
}

impl ChangeListener for WatchHub {
    fn applied(&self, applied_index: u64, changes: Vec<Change>) {
        let mut state = self.lock();
        let capacity = self.config.buffer_events;
        let mut matching = Vec::new();
        // Each watcher's events of this batch, queued together once matched.
        let mut batches: HashMap<u64, Vec<Arc<WatchEvent>>> = HashMap::new();
        for change in changes {
            if change.index <= state.published_index {
                continue;
            }
            state.matching(&change.key, &mut matching);
            matching.retain(|id| {
                state
                    .watchers
                    .get(id)
                    .is_some_and(|watcher| change.index >= watcher.next_index)
            });
            if matching.is_empty() {
                continue;
            }
            // One event, shared by every watcher it matches (and encoded once).
            let event = Arc::new(WatchEvent::new(change));
            for id in &matching {
                batches.entry(*id).or_default().push(event.clone());
            }
        }
        let mut ended = Vec::new();
        for (id, events) in batches {
            if !state.watchers[&id].queue.push_all(events, capacity) {
                ended.push(id);
            }
        }
        for id in ended.drain(..) {
            if state.remove(id).is_some() {
                self.counters.lagging_ended.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.published_index = state.published_index.max(applied_index);
        self.published_index
            .store(state.published_index, Ordering::Release);
    }

    fn restarted_at(&self, applied_index: u64) {
        let mut state = self.lock();
        if applied_index > state.published_index && !state.watchers.is_empty() {
            // What came between is not in the history: every synced watcher misses it.
            let ids: Vec<u64> = state.watchers.keys().copied().collect();
            for id in ids {
                if let Some(watcher) = state.remove(id) {
                    watcher.queue.end(StreamEnd::Compacted {
                        compact_index: applied_index,
                    });
                    self.counters
                        .compacted_ended
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        state.published_index = applied_index;
        self.published_index.store(applied_index, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorkv_storage::changes::ChangeKind;

    fn put(index: u64, key: &str) -> Change {
        Change {
            index,
            key: key.into(),
            kind: ChangeKind::Put {
                value: format!("v{index}").into_bytes(),
                mod_index: index,
                create_index: index,
            },
            prev_mod_index: None,
        }
    }

    fn hub(buffer_events: usize) -> Arc<WatchHub> {
        WatchHub::new(WatchConfig {
            buffer_events,
            ..Default::default()
        })
    }

    fn joined(hub: &Arc<WatchHub>, filter: KeyFilter, next_index: u64) -> Joined {
        match hub.join(&filter, next_index) {
            Ok(joined) => joined,
            Err(_) => panic!("join refused at {next_index}"),
        }
    }

    fn taken(joined: &Joined) -> Vec<(u64, String)> {
        match joined.queue.take() {
            Taken::Events(events) => events
                .iter()
                .map(|e| (e.change.index, e.change.key.clone()))
                .collect(),
            Taken::Empty => Vec::new(),
            Taken::End(end) => panic!("ended: {end:?}"),
        }
    }

    #[test]
    fn each_watcher_gets_exactly_its_changes_in_order_sharing_one_event() {
        let hub = hub(100);
        hub.restarted_at(10);
        let key = joined(&hub, KeyFilter::Key("a/1".into()), 11);
        let prefix = joined(&hub, KeyFilter::Prefix("a/".into()), 11);
        let range = joined(
            &hub,
            KeyFilter::Range {
                start: "a/2".into(),
                end: Some("b".into()),
            },
            11,
        );
        hub.applied(
            13,
            vec![put(11, "a/1"), put(11, "a/2"), put(12, "b"), put(13, "a/1")],
        );
        assert_eq!(hub.published_index(), 13);
        assert_eq!(taken(&key), [(11, "a/1".into()), (13, "a/1".into())]);
        assert_eq!(
            taken(&prefix),
            [(11, "a/1".into()), (11, "a/2".into()), (13, "a/1".into())]
        );
        assert_eq!(taken(&range), [(11, "a/2".into())]);
        hub.applied(14, vec![put(14, "a/1")]);
        let (Taken::Events(a), Taken::Events(b)) = (key.queue.take(), prefix.queue.take()) else {
            panic!("both watchers match index 14");
        };
        assert!(
            Arc::ptr_eq(&a[0], &b[0]),
            "one event shared, not a copy each"
        );
        drop((key, prefix, range));
        assert_eq!(hub.synced_watchers(), 0);
        let state = hub.lock();
        assert!(state.by_key.is_empty() && state.by_range.boundaries() == 0);
    }

    #[test]
    fn a_watcher_joins_only_past_what_was_published() {
        let hub = hub(100);
        hub.restarted_at(5);
        hub.applied(8, vec![put(7, "k")]);
        assert!(matches!(
            hub.join(&KeyFilter::Key("k".into()), 8),
            Err(JoinRefused::Behind)
        ));
        // Joined at 10 while the hub publishes 9 and 10 late: only index 10 on is queued.
        let late = joined(&hub, KeyFilter::Key("k".into()), 10);
        hub.applied(10, vec![put(9, "k"), put(10, "k")]);
        assert_eq!(taken(&late), [(10, "k".into())]);
    }

    #[test]
    fn a_full_queue_ends_the_watcher_at_the_first_index_it_would_miss() {
        let hub = hub(3);
        hub.restarted_at(0);
        let slow = joined(&hub, KeyFilter::Prefix(String::new()), 1);
        hub.applied(2, vec![put(1, "a"), put(2, "a")]);
        // Index 3 is a transaction of two keys: it does not fit whole, so none of it is queued.
        hub.applied(3, vec![put(3, "a"), put(3, "b")]);
        hub.applied(4, vec![put(4, "a")]);
        assert_eq!(taken(&slow), [(1, "a".into()), (2, "a".into())]);
        assert!(matches!(
            slow.queue.take(),
            Taken::End(StreamEnd::Lagging { resume_index: 3 })
        ));
        assert_eq!(hub.synced_watchers(), 0);
        assert_eq!(hub.counters.lagging_ended.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_snapshot_install_ends_synced_watchers_as_compacted_and_close_ends_all() {
        let hub = hub(100);
        hub.restarted_at(0);
        let before = joined(&hub, KeyFilter::Key("k".into()), 1);
        hub.restarted_at(50);
        assert!(matches!(
            before.queue.take(),
            Taken::End(StreamEnd::Compacted { compact_index: 50 })
        ));
        let after = joined(&hub, KeyFilter::Key("k".into()), 51);
        hub.close();
        assert!(matches!(after.queue.take(), Taken::End(StreamEnd::Closed)));
        assert!(matches!(
            hub.join(&KeyFilter::Key("k".into()), 51),
            Err(JoinRefused::Closed)
        ));
    }

    #[test]
    fn places_are_limited_and_freed() {
        let hub = WatchHub::new(WatchConfig {
            max_watchers: 2,
            ..Default::default()
        });
        let (a, _b) = (hub.reserve().unwrap(), hub.reserve().unwrap());
        assert!(matches!(hub.reserve(), Err(CoordError::Overloaded(_))));
        drop(a);
        assert!(hub.reserve().is_ok());
        assert_eq!(hub.counters.refused.load(Ordering::Relaxed), 1);
    }
}
