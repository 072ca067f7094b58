//! Prometheus metrics of the operator (OpenMetrics text on `/metrics`).

use std::{
    collections::BTreeSet,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use ferry_operator_core::plan::RolloutReport;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label set naming an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::reconciler::Error::metric_label`].
    pub error: String,
}

/// Label set naming a Kubernetes kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Kind, for example `Deployment`.
    pub kind: String,
}

/// Label set of an API write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind written.
    pub kind: String,
    /// `apply`, `delete`, `status`, `scale` or `event`.
    pub verb: String,
}

/// Label set of a MicroService's rollout phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Namespace.
    pub namespace: String,
    /// MicroService name.
    pub name: String,
    /// Phase.
    pub phase: String,
}

/// Every phase the rollout gauge reports (one series each; the current one is 1).
pub const ROLLOUT_PHASES: [&str; 8] =
    ["Pending", "Progressing", "Paused", "Promoting", "Healthy", "Degraded", "Aborted", "Invalid"];

/// Every metric the operator exports, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconcile_runs: Counter,
    /// Reconciles that returned an error, by error kind.
    pub reconcile_failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Objects in the operator's caches, by kind.
    pub objects_managed: Family<KindLabels, Gauge>,
    /// Writes to the API server, by kind and verb (a converged, idle operator writes nothing).
    pub writes: Family<WriteLabels, Counter>,
    /// 1 while this process holds the leader lease (or runs without leader election).
    pub leader: Gauge,
    /// 1 for the current phase of each blue-green MicroService, 0 for the others.
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    /// Seconds from the start of a blue-green rollout to the switch of the active Service.
    pub promotion_duration: Histogram,
    /// Blue-green rollouts aborted (by request, deadline or a failed check).
    pub rollout_aborts: Counter,
    /// Switches back to an older revision (fast rollback or after a failed post-promotion check).
    pub rollout_rollbacks: Counter,
    /// The MicroServices that have `rollout_phase` series, so deleting one removes them.
    phase_series: Mutex<BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_operator");
        let reconcile_runs = Counter::default();
        let reconcile_failures = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let objects_managed = Family::<KindLabels, Gauge>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        let promotion_duration =
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]);
        let rollout_aborts = Counter::default();
        let rollout_rollbacks = Counter::default();
        registry.register(
            "rollout_phase",
            "Blue-green rollout phase (1 for the current phase)",
            rollout_phase.clone(),
        );
        registry.register(
            "rollout_promotion_duration_seconds",
            "Seconds from the start of a blue-green rollout to the switch of the active Service",
            promotion_duration.clone(),
        );
        registry.register("rollout_aborts", "Blue-green rollouts aborted", rollout_aborts.clone());
        registry.register(
            "rollout_rollbacks",
            "Switches of the active Service back to an older revision",
            rollout_rollbacks.clone(),
        );
        registry.register("reconcile_runs", "Reconciles started", reconcile_runs.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            reconcile_failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Reconcile duration", reconcile_duration.clone());
        registry.register(
            "objects_managed",
            "Objects in the operator's caches, by kind",
            objects_managed.clone(),
        );
        registry.register("api_writes", "Writes to the API server, by kind and verb", writes.clone());
        registry.register("leader", "1 while this process is the leader", leader.clone());
        Self {
            registry,
            reconcile_runs,
            reconcile_failures,
            reconcile_duration,
            objects_managed,
            writes,
            leader,
            rollout_phase,
            promotion_duration,
            rollout_aborts,
            rollout_rollbacks,
            phase_series: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconcile_runs.inc();
        ReconcileTimer { histogram: &self.reconcile_duration, start: Instant::now() }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, error: &str) {
        self.reconcile_failures.get_or_create(&ErrorLabels { error: error.into() }).inc();
    }

    /// Counts one write.
    pub fn wrote(&self, kind: &str, verb: &str) {
        self.writes.get_or_create(&WriteLabels { kind: kind.into(), verb: verb.into() }).inc();
    }

    /// Sets the number of cached objects of a kind.
    pub fn set_managed(&self, kind: &str, count: usize) {
        self.objects_managed
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The metric facts of one blue-green reconcile: the phase, and an abort, a rollback or a
    /// promotion (with its duration).
    pub fn rollout_transition(&self, namespace: &str, name: &str, report: &RolloutReport) {
        if report.aborted {
            self.rollout_aborts.inc();
        }
        if report.rolled_back {
            self.rollout_rollbacks.inc();
        }
        if let Some(seconds) = report.promotion_seconds {
            self.promotion_duration.observe(seconds);
        }
        self.set_rollout_phase(namespace, name, report.phase.as_str());
    }

    fn series(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.phase_series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The MicroServices (namespace, name) with rollout-phase series.
    pub fn rollout_phase_objects(&self) -> Vec<(String, String)> {
        self.series().iter().cloned().collect()
    }

    /// Removes the rollout-phase series of a deleted MicroService.
    pub fn forget_rollout_phase(&self, namespace: &str, name: &str) {
        if !self.series().remove(&(namespace.to_string(), name.to_string())) {
            return;
        }
        for p in ROLLOUT_PHASES {
            self.rollout_phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                name: name.into(),
                phase: p.into(),
            });
        }
    }

    /// Sets the rollout phase gauge of one MicroService.
    pub fn set_rollout_phase(&self, namespace: &str, name: &str, phase: &str) {
        self.series().insert((namespace.to_string(), name.to_string()));
        for p in ROLLOUT_PHASES {
            self.rollout_phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: p.into(),
                })
                .set(i64::from(p == phase));
        }
    }

    /// The registry in OpenMetrics text form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // NB: encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_microservice_leaves_no_rollout_phase_series() {
        let m = Metrics::default();
        m.set_rollout_phase("shop", "order", "Healthy");
        m.set_rollout_phase("shop", "inventory", "Paused");
        assert!(m.render().contains("name=\"order\""));
        m.forget_rollout_phase("shop", "order");
        let text = m.render();
        assert!(!text.contains("name=\"order\""), "{text}");
        assert!(text.contains("name=\"inventory\",phase=\"Paused\"} 1"), "{text}");
        assert_eq!(m.rollout_phase_objects(), [("shop".to_string(), "inventory".to_string())]);
    }

    #[test]
    fn the_rendered_metrics_name_runs_failures_duration_and_objects() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.reconcile_failed("kube_409");
        m.set_managed("MicroService", 3);
        m.wrote("Deployment", "apply");
        m.set_rollout_phase("shop", "order", "Paused");
        m.rollout_aborts.inc();
        m.promotion_duration.observe(3.0);
        let text = m.render();
        assert!(
            text.contains(
                "ferry_operator_rollout_phase{namespace=\"shop\",name=\"order\",phase=\"Paused\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_operator_rollout_phase{namespace=\"shop\",name=\"order\",phase=\"Healthy\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("ferry_operator_rollout_aborts_total 1"), "{text}");
        assert!(text.contains("ferry_operator_rollout_promotion_duration_seconds_count 1"), "{text}");
        assert!(text.contains("ferry_operator_reconcile_runs_total 1"), "{text}");
        assert!(text.contains("ferry_operator_reconcile_failures_total{error=\"kube_409\"} 1"), "{text}");
        assert!(text.contains("ferry_operator_reconcile_duration_seconds_count 1"), "{text}");
        assert!(text.contains("ferry_operator_objects_managed{kind=\"MicroService\"} 3"), "{text}");
        assert!(
            text.contains("ferry_operator_api_writes_total{kind=\"Deployment\",verb=\"apply\"} 1"),
            "{text}"
        );
    }
}
