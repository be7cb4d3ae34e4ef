//! The node's metrics in the Prometheus text format (`Metrics::render`, served by
//! `ops::metrics`), and `RequestTimer`, which counts requests.
//!
//! Request metrics are updated as requests finish; Raft and storage gauges are read from
//! openraft's metrics and RocksDB when scraped, so they are never stale.

use std::sync::atomic::Ordering;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::ApiError;
use mirrorkv_coordinator::Coordinator;
use mirrorkv_coordinator::ReadLevel;

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    /// API connections this node closed on a deadline, by `reason`: `idle`, `header`,
    /// `write_stall` (the limits module).
    pub connections_closed: IntCounterVec,
    raft: RaftGauges,
    storage: StorageGauges,
    watch: WatchGauges,
    leases: LeaseGauges,
}

/// Lease gauges and counters, read from the node's lease timers and store when scraped.
struct LeaseGauges {
    live: IntGauge,
    keys: IntGauge,
    ended: IntCounter,
    expiries_proposed: IntCounter,
    keepalives: IntCounter,
}

impl LeaseGauges {
    fn new(r: &Registry) -> Self {
        Self {
            live: gauge(
                r,
                "mirrorkv_leases_live",
                "Leases live (granted, not yet revoked or expired).",
            ),
            keys: gauge(
                r,
                "mirrorkv_lease_keys_attached",
                "Keys attached to live leases.",
            ),
            ended: counter(
                r,
                "mirrorkv_leases_ended_total",
                "Leases this node's apply ended, by revoke or expiry.",
            ),
            expiries_proposed: counter(
                r,
                "mirrorkv_lease_expiries_proposed_total",
                "Leases this node, as leader, proposed to expire once their TTL ran out.",
            ),
            keepalives: counter(
                r,
                "mirrorkv_lease_keepalives_total",
                "Keepalives this node's clients sent (rate() gives keepalives per second).",
            ),
        }
    }
}

/// Watch gauges and counters, read from the node's `WatchHub` and store when scraped.
struct WatchGauges {
    watchers_open: IntGauge,
    watchers_synced: IntGauge,
    events_sent: IntCounter,
    lagging_ended: IntCounter,
    compacted_ended: IntCounter,
    refused: IntCounter,
    history_compact_index: IntGauge,
}

impl WatchGauges {
    fn new(r: &Registry) -> Self {
        Self {
            watchers_open: gauge(
                r,
                "mirrorkv_watchers_open",
                "Change streams and blocking reads open on this node (bounded by max_watchers).",
            ),
            watchers_synced: gauge(
                r,
                "mirrorkv_watchers_synced",
                "Of those, the ones caught up and fed by the node's change feed (the others read the history).",
            ),
            events_sent: counter(
                r,
                "mirrorkv_watch_events_sent_total",
                "Change events handed to streams, counted once per stream.",
            ),
            lagging_ended: counter(
                r,
                "mirrorkv_watch_lagging_ended_total",
                "Streams ended because their client fell watch_buffer_events behind.",
            ),
            compacted_ended: counter(
                r,
                "mirrorkv_watch_compacted_ended_total",
                "Streams ended because the changes they needed next left the history (a snapshot installed).",
            ),
            refused: counter(
                r,
                "mirrorkv_watch_refused_total",
                "Streams and blocking reads refused with 429 at max_watchers.",
            ),
            history_compact_index: gauge(
                r,
                "mirrorkv_watch_history_compact_index",
                "The change history holds every change after this index, up to mirrorkv_applied_index; a watch from at or before it is 410.",
            ),
        }
    }
}

/// Gauges read from openraft's metrics when scraped.
struct RaftGauges {
    term: IntGauge,
    leader_id: IntGauge,
    is_leader: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    members: IntGaugeVec,
    replication_lag: IntGaugeVec,
    log_entries: IntGauge,
    append_entries_sent: IntCounterVec,
}

/// Gauges and counters read from the store when scraped.
struct StorageGauges {
    snapshots_built: IntCounter,
    snapshots_installed: IntCounter,
    snapshot_bytes: IntGauge,
    key_index_keys: IntGauge,
    key_index_bytes: IntGauge,
    storage_memory: IntGaugeVec,
    log_bytes: IntGauge,
    state_bytes: IntGauge,
    db_dir_bytes: IntGauge,
    fs_available_bytes: IntGauge,
    fs_capacity_bytes: IntGauge,
}

/// Register `metric` (built from constant, valid names) and return a handle to it.
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "mirrorkv_http_requests_total",
                    "HTTP requests answered, by route, read level and status code.",
                ),
                &["route", "level", "status"],
            ),
        );
        let request_seconds = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "mirrorkv_http_request_duration_seconds",
                    "Time from receiving an HTTP request to its answer, by route and read level.",
                )
                // 50 µs to ~6.5 s, doubling.
                .buckets(
                    prometheus::exponential_buckets(0.000_05, 2.0, 18).expect("valid buckets"),
                ),
                &["route", "level"],
            ),
        );
        let r = &registry;
        Self {
            raft: RaftGauges::new(r),
            storage: StorageGauges::new(r),
            watch: WatchGauges::new(r),
            leases: LeaseGauges::new(r),
            connections_closed: registered(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "mirrorkv_api_connections_closed_total",
                        "API connections closed by this node, by reason: a deadline (idle, header, write_stall, handshake: a TLS handshake not finished in time), a failed TLS handshake (tls), or a new connection needing the slot of the longest-unused one (evicted).",
                    ),
                    &["reason"],
                ),
            ),
            registry,
            requests,
            request_seconds,
        }
    }
}

impl RaftGauges {
    fn new(r: &Registry) -> Self {
        Self {
            term: gauge(r, "mirrorkv_raft_term", "Current Raft term."),
            leader_id: gauge(
                r,
                "mirrorkv_raft_leader_id",
                "Leader this node knows (0: none).",
            ),
            is_leader: gauge(r, "mirrorkv_raft_is_leader", "1 on the leader, else 0."),
            commit_index: gauge(
                r,
                "mirrorkv_raft_commit_index",
                "Committed log index as this node knows it.",
            ),
            applied_index: gauge(
                r,
                "mirrorkv_raft_applied_index",
                "Last log index applied to the state machine.",
            ),
            last_log_index: gauge(r, "mirrorkv_raft_last_log_index", "Last log index stored."),
            snapshot_index: gauge(
                r,
                "mirrorkv_raft_snapshot_index",
                "Log index of the current snapshot.",
            ),
            purged_index: gauge(r, "mirrorkv_raft_purged_index", "Last purged log index."),
            members: gauge_vec(
                r,
                "mirrorkv_cluster_members",
                "Members of the cluster by role (voter, mirror).",
                &["role"],
            ),
            replication_lag: gauge_vec(
                r,
                "mirrorkv_replication_lag_entries",
                "On the leader: log entries each follower is behind the leader's last log index.",
                &["follower"],
            ),
            log_entries: gauge(
                r,
                "mirrorkv_log_entries",
                "Log entries stored (not yet purged).",
            ),
            append_entries_sent: counter_vec(
                r,
                "mirrorkv_raft_append_entries_sent_total",
                "AppendEntries requests this node sent its peers, by whether they carried entries (carrying=entries) or none (carrying=none: heartbeats, leadership checks, commit-only messages).",
                &["carrying"],
            ),
        }
    }
}

impl StorageGauges {
    fn new(r: &Registry) -> Self {
        Self {
            snapshots_built: counter(
                r,
                "mirrorkv_snapshots_built_total",
                "Snapshots built since start.",
            ),
            snapshots_installed: counter(
                r,
                "mirrorkv_snapshots_installed_total",
                "Snapshots received from a leader and installed since start.",
            ),
            snapshot_bytes: gauge(
                r,
                "mirrorkv_snapshot_size_bytes",
                "Size of the current snapshot.",
            ),
            key_index_keys: gauge(
                r,
                "mirrorkv_key_index_keys",
                "Keys whose indexes are held in memory (applying a write to one reads nothing).",
            ),
            key_index_bytes: gauge(
                r,
                "mirrorkv_key_index_bytes",
                "Estimated memory of the key index (bounded by key_index_mib).",
            ),
            storage_memory: gauge_vec(
                r,
                "mirrorkv_storage_memory_bytes",
                "RocksDB's memory by its own accounting: block_cache (the memory budget in use, memtables included), block_cache_pinned, memtables, table_readers (outside the cache).",
                &["kind"],
            ),
            log_bytes: gauge(
                r,
                "mirrorkv_log_size_bytes",
                "Size of the stored log (SST files and memtables).",
            ),
            state_bytes: gauge(
                r,
                "mirrorkv_state_size_bytes",
                "Size of the replicated state (SST files and memtables).",
            ),
            db_dir_bytes: gauge(
                r,
                "mirrorkv_db_size_bytes",
                "Size of the RocksDB directory on disk, WAL included.",
            ),
            fs_available_bytes: gauge(
                r,
                "mirrorkv_data_fs_available_bytes",
                "Bytes still free for the node on the filesystem of its data directory (statvfs f_bavail; -1: unknown).",
            ),
            fs_capacity_bytes: gauge(
                r,
                "mirrorkv_data_fs_capacity_bytes",
                "Size of the filesystem of the data directory (-1: unknown).",
            ),
        }
    }
}

/// The read level a request asked for, as a metric label: reads by level, writes as `write`,
/// everything else as `none`.
fn level_label(method: &Method, route: &str, query: Option<&str>) -> &'static str {
    let is_kv = route.starts_with("/v1/kv");
    let is_read = (is_kv && method == Method::GET) || route == "/v1/backup" || route == "/v1/watch";
    if !is_read {
        return if is_kv || route == "/v1/txn" {
            "write"
        } else {
            "none"
        };
    }
    let asked = query.and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("consistency="))
    });
    match asked {
        None => ReadLevel::default().as_str(),
        Some(value) => value
            .parse::<ReadLevel>()
            .map_or("invalid", ReadLevel::as_str),
    }
}

/// One request being counted and timed, by route (the route pattern, never the raw path, so
/// the label set stays bounded), level and status. Started and finished by the API's one
/// middleware (`front_door` in `lib.rs`), so requests shed with 429 are counted too.
pub struct RequestTimer {
    started: std::time::Instant,
    route: Option<MatchedPath>,
    level: &'static str,
}

impl RequestTimer {
    pub fn start(request: &Request) -> Self {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let level = level_label(
            request.method(),
            route.as_ref().map_or("unmatched", MatchedPath::as_str),
            request.uri().query(),
        );
        Self {
            started: std::time::Instant::now(),
            route,
            level,
        }
    }

    pub fn finish(self, metrics: &Metrics, status: StatusCode) {
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        metrics
            .requests
            .with_label_values(&[route, self.level, status.as_str()])
            .inc();
        metrics
            .request_seconds
            .with_label_values(&[route, self.level])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Every metric in the Prometheus text format, the gauges read from `node` now; the
    /// answer's content type and body.
    pub fn render(&self, node: &Coordinator) -> Result<(String, Vec<u8>), ApiError> {
        self.refresh_raft(node);
        self.refresh_storage(node)?;
        self.refresh_watch(node)?;
        self.refresh_leases(node);
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        encoder
            .encode(&self.registry.gather(), &mut body)
            .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
        Ok((encoder.format_type().to_string(), body))
    }

    /// The Raft gauges, from openraft's metrics.
    fn refresh_raft(&self, node: &Coordinator) {
        let m = &self.raft;
        let raft_metrics = node.raft.metrics();
        let raft_metrics = raft_metrics.borrow();
        let index = |id: Option<mirrorkv_storage::LogId>| id.map_or(0, |id| id.index) as i64;
        m.term.set(raft_metrics.current_term as i64);
        m.leader_id
            .set(raft_metrics.current_leader.unwrap_or(0) as i64);
        m.is_leader
            .set(i64::from(raft_metrics.current_leader == Some(node.id)));
        m.commit_index.set(node.committed_index() as i64);
        m.applied_index.set(index(raft_metrics.last_applied));
        let last_log_index = raft_metrics.last_log_index.unwrap_or(0);
        m.last_log_index.set(last_log_index as i64);
        m.snapshot_index.set(index(raft_metrics.snapshot));
        m.purged_index.set(index(raft_metrics.purged));
        // The log holds (purged, last]; openraft's first entry has index 0.
        let first_index = raft_metrics.purged.map_or(0, |id| id.index + 1);
        let entries = raft_metrics
            .last_log_index
            .map_or(0, |last| (last + 1).saturating_sub(first_index));
        m.log_entries.set(entries as i64);
        let membership = raft_metrics.membership_config.membership();
        let voters = membership.voter_ids().count();
        let all = membership.nodes().count();
        m.members.with_label_values(&["voter"]).set(voters as i64);
        m.members
            .with_label_values(&["mirror"])
            .set((all - voters) as i64);
        let sent = node.sent_to_peers();
        for (carrying, source) in [
            ("entries", &sent.append_entries_with_entries),
            ("none", &sent.append_entries_empty),
        ] {
            let metric = m.append_entries_sent.with_label_values(&[carrying]);
            let total = source.load(Ordering::Relaxed);
            metric.inc_by(total.saturating_sub(metric.get()));
        }
        m.replication_lag.reset();
        if let Some(replication) = &raft_metrics.replication {
            for (follower, matched) in replication {
                if *follower == node.id {
                    continue;
                }
                let matched = matched.map_or(0, |id| id.index);
                m.replication_lag
                    .with_label_values(&[follower.to_string().as_str()])
                    .set(last_log_index.saturating_sub(matched) as i64);
            }
        }
    }

    /// The watch gauges and counters, from the hub and the store.
    fn refresh_leases(&self, node: &Coordinator) {
        let m = &self.leases;
        let timers = &node.leases;
        m.live.set(timers.live() as i64);
        let keys = node.reader.counters().lease_keys.load(Ordering::Relaxed);
        m.keys.set(keys as i64);
        for (metric, source) in [
            (&m.ended, &timers.counters.ended_total),
            (
                &m.expiries_proposed,
                &timers.counters.expiries_proposed_total,
            ),
            (&m.keepalives, &timers.counters.keepalives_total),
        ] {
            let total = source.load(Ordering::Relaxed);
            metric.inc_by(total.saturating_sub(metric.get()));
        }
    }

    fn refresh_watch(&self, node: &Coordinator) -> Result<(), ApiError> {
        let m = &self.watch;
        let hub = &node.watch;
        m.watchers_open.set(hub.open_watchers() as i64);
        m.watchers_synced.set(hub.synced_watchers() as i64);
        for (metric, source) in [
            (&m.events_sent, &hub.counters.events_sent),
            (&m.lagging_ended, &hub.counters.lagging_ended),
            (&m.compacted_ended, &hub.counters.compacted_ended),
            (&m.refused, &hub.counters.refused),
        ] {
            let total = source.load(Ordering::Relaxed);
            metric.inc_by(total.saturating_sub(metric.get()));
        }
        m.history_compact_index
            .set(node.reader.history_compact_index()? as i64);
        Ok(())
    }

    /// The storage gauges and counters, from the store.
    fn refresh_storage(&self, node: &Coordinator) -> Result<(), ApiError> {
        let m = &self.storage;
        let counters = node.reader.counters();
        let built = counters.snapshots_built.load(Ordering::Relaxed);
        m.snapshots_built
            .inc_by(built.saturating_sub(m.snapshots_built.get()));
        let installed = counters.snapshots_installed.load(Ordering::Relaxed);
        m.snapshots_installed
            .inc_by(installed.saturating_sub(m.snapshots_installed.get()));
        m.snapshot_bytes
            .set(node.reader.snapshot_size_bytes()? as i64);
        m.key_index_keys
            .set(counters.key_index_keys.load(Ordering::Relaxed) as i64);
        m.key_index_bytes
            .set(counters.key_index_bytes.load(Ordering::Relaxed) as i64);
        let memory = node.reader.memory_usage()?;
        for (kind, bytes) in [
            ("block_cache", memory.block_cache_bytes),
            ("block_cache_pinned", memory.block_cache_pinned_bytes),
            ("memtables", memory.memtable_bytes),
            ("table_readers", memory.table_readers_bytes),
        ] {
            m.storage_memory
                .with_label_values(&[kind])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let usage = node.reader.disk_usage()?;
        m.log_bytes.set(usage.log_bytes as i64);
        m.state_bytes.set(usage.state_bytes as i64);
        m.db_dir_bytes.set(usage.db_dir_bytes as i64);
        let gauge_value =
            |bytes: Option<u64>| bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
        m.fs_available_bytes
            .set(gauge_value(usage.fs_available_bytes));
        m.fs_capacity_bytes
            .set(gauge_value(usage.fs_capacity_bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_reads_by_level_and_the_rest_by_kind() {
        let get = Method::GET;
        assert_eq!(level_label(&get, "/v1/kv/{*key}", None), "linearizable");
        assert_eq!(
            level_label(&get, "/v1/kv", Some("prefix=a&consistency=stale")),
            "stale"
        );
        assert_eq!(
            level_label(&get, "/v1/kv/{*key}", Some("consistency=bogus")),
            "invalid"
        );
        assert_eq!(level_label(&Method::PUT, "/v1/kv/{*key}", None), "write");
        assert_eq!(level_label(&Method::POST, "/v1/txn", None), "write");
        assert_eq!(level_label(&get, "/v1/cluster", None), "none");
    }
}
