//! Operators' metrics in Prometheus' text format (the `prometheus-client` crate): snapshots by
//! outcome and consistency with their durations, freeze and frozen-window durations,
//! fallbacks by reason, auto-thaws, agent timeouts, rollbacks, volumes created, tasks and jobs
//! by state, RPC requests by method and code, and open connections by transport.
//!
//! One registry per process, reached through [`global`]: metrics are a cross-cutting record
//! that every layer adds to, and passing a handle through each would change every signature
//! for no behaviour. Counts that are states (tasks, jobs) are read at scrape time from the
//! services through [`Metrics::on_scrape`].

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Snapshot labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabels {
    /// `done` or `failed`.
    pub outcome: String,
    /// `quiesced`, `crash-consistent`, `unknown`, or `none` (failed).
    pub consistency: String,
}

/// A single `reason`, `state`, `transport` ... label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// A `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: String,
}

/// RPC labels (no allocation per request: verb names are static).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The verb, or `other`.
    pub method: &'static str,
    /// `0` on success, else the error code.
    pub code: i32,
}

/// A `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `tcp` or `unix`.
    pub transport: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Sets state gauges from the services before a scrape.
type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric rvdsm exports.
pub struct Metrics {
    registry: Registry,
    /// Snapshots ended, by outcome and consistency.
    pub snapshots: Family<SnapshotLabels, Counter>,
    /// Snapshot durations (flow start to end), by outcome and consistency.
    pub snapshot_seconds: Histograms<SnapshotLabels>,
    /// Guest freeze calls.
    pub freeze_seconds: Histogram,
    /// From the freeze's return to the thaw's return: how long the guest stayed frozen.
    pub frozen_window_seconds: Histogram,
    /// Snapshots taken without quiescing, by reason.
    pub fallbacks: Family<ReasonLabel, Counter>,
    /// Guests thawed by rvdsmd at a `VM.freeze` deadline.
    pub auto_thaws: Counter,
    /// Guest agent calls that timed out or found the agent not responding.
    pub agent_timeouts: Counter,
    /// Failed snapshots whose new volumes were rolled back.
    pub rollbacks: Counter,
    /// Volumes created (successful `Volume.create` tasks).
    pub volumes_created: Counter,
    /// Storage tasks by state, read at scrape time.
    pub tasks: Family<StateLabel, Gauge>,
    /// Virt jobs by status, read at scrape time.
    pub jobs: Family<StateLabel, Gauge>,
    /// RPC requests by method and code.
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// Open connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    refreshers: Mutex<Vec<Refresher>>,
}

fn snapshot_buckets() -> Histogram {
    // 5 ms to ~82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("rvdsm");
        let snapshots = Family::default();
        registry.register("snapshots", "Snapshots ended", snapshots.clone());
        let snapshot_seconds: Histograms<SnapshotLabels> =
            Family::new_with_constructor(snapshot_buckets);
        registry.register(
            "snapshot_duration_seconds",
            "Snapshot job duration, from its start (past the host-wide limit) to its end",
            snapshot_seconds.clone(),
        );
        let freeze_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "freeze_duration_seconds",
            "Guest filesystem freeze calls",
            freeze_seconds.clone(),
        );
        let frozen_window_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "frozen_window_seconds",
            "How long a guest stayed frozen for a snapshot (freeze return to thaw return)",
            frozen_window_seconds.clone(),
        );
        let fallbacks = Family::default();
        registry.register(
            "snapshot_fallbacks",
            "Snapshots taken without quiescing, by reason",
            fallbacks.clone(),
        );
        let auto_thaws = Counter::default();
        registry.register(
            "auto_thaws",
            "Guests thawed by rvdsmd at a VM.freeze deadline",
            auto_thaws.clone(),
        );
        let agent_timeouts = Counter::default();
        registry.register(
            "agent_timeouts",
            "Guest agent calls that timed out or found the agent unresponsive",
            agent_timeouts.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "snapshot_rollbacks",
            "Failed snapshots whose new volumes were rolled back",
            rollbacks.clone(),
        );
        let volumes_created = Counter::default();
        registry.register(
            "volumes_created",
            "Volumes created by Volume.create",
            volumes_created.clone(),
        );
        let tasks = Family::default();
        registry.register("tasks", "Storage tasks by state", tasks.clone());
        let jobs = Family::default();
        registry.register("jobs", "Virt jobs by status", jobs.clone());
        let rpc_requests = Family::default();
        registry.register(
            "rpc_requests",
            "JSON-RPC requests by method and code (0: success)",
            rpc_requests.clone(),
        );
        let connections = Family::default();
        registry.register(
            "open_connections",
            "Open client connections by transport",
            connections.clone(),
        );
        Self {
            registry,
            snapshots,
            snapshot_seconds,
            freeze_seconds,
            frozen_window_seconds,
            fallbacks,
            auto_thaws,
            agent_timeouts,
            rollbacks,
            volumes_created,
            tasks,
            jobs,
            rpc_requests,
            connections,
            refreshers: Mutex::default(),
        }
    }

    /// Adds a function run before each scrape (to set state gauges from the services).
    pub fn on_scrape(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refreshers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(refresh));
    }

    /// The exposition text (OpenMetrics).
    pub fn render(&self) -> String {
        for refresh in self
            .refreshers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            refresh(self);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one RPC request.
    pub fn rpc(&self, method: &'static str, code: Option<i32>) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method,
                code: code.unwrap_or(0),
            })
            .inc();
    }

    /// A connection opened on `transport`; closed when the guard drops.
    pub fn connection(&'static self, transport: &str) -> ConnectionGuard {
        let label = TransportLabel {
            transport: transport.to_owned(),
        };
        self.connections.get_or_create(&label).inc();
        ConnectionGuard {
            metrics: self,
            label,
        }
    }

    /// Sets a state gauge family to `counts` (states not listed drop to 0).
    pub fn set_states(family: &Family<StateLabel, Gauge>, counts: &[(&str, i64)]) {
        family.clear();
        for (state, count) in counts {
            family
                .get_or_create(&StateLabel {
                    state: (*state).to_owned(),
                })
                .set(*count);
        }
    }
}

/// Decrements the open-connections gauge when dropped.
pub struct ConnectionGuard {
    metrics: &'static Metrics,
    label: TransportLabel,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections.get_or_create(&self.label).dec();
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_every_family_with_rvdsm_prefix() {
        let metrics = Metrics::new();
        metrics.rpc("Host.ping2", None);
        metrics.rpc("VM.freeze", Some(1));
        metrics
            .snapshot_seconds
            .get_or_create(&SnapshotLabels {
                outcome: "done".into(),
                consistency: "quiesced".into(),
            })
            .observe(0.1);
        Metrics::set_states(&metrics.jobs, &[("done", 2), ("failed", 1)]);
        let text = metrics.render();
        assert!(
            text.contains(r#"rvdsm_rpc_requests_total{method="Host.ping2",code="0"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"rvdsm_rpc_requests_total{method="VM.freeze",code="1"} 1"#));
        assert!(text.contains(
            r#"rvdsm_snapshot_duration_seconds_count{outcome="done",consistency="quiesced"} 1"#
        ));
        assert!(text.contains(r#"rvdsm_jobs{state="failed"} 1"#));
        for family in [
            "rvdsm_freeze_duration_seconds",
            "rvdsm_frozen_window_seconds",
            "rvdsm_auto_thaws_total",
            "rvdsm_agent_timeouts_total",
            "rvdsm_snapshot_rollbacks_total",
            "rvdsm_volumes_created_total",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
    }

    #[test]
    fn connection_guard_counts_open_connections() {
        let metrics = global();
        let label = TransportLabel {
            transport: "test".into(),
        };
        let guard = metrics.connection("test");
        assert_eq!(metrics.connections.get_or_create(&label).get(), 1);
        drop(guard);
        assert_eq!(metrics.connections.get_or_create(&label).get(), 0);
    }
}
