//! Prometheus metrics of the operator (OpenMetrics text on `/metrics`).

use std::time::Instant;

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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_operator");
        let reconcile_runs = Counter::default();
        let reconcile_failures = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let objects_managed = Family::<KindLabels, Gauge>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "reconcile_runs",
            "Reconciles started",
            reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        registry.register(
            "objects_managed",
            "Objects in the operator's caches, by kind",
            objects_managed.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the API server, by kind and verb",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this process is the leader",
            leader.clone(),
        );
        Self {
            registry,
            reconcile_runs,
            reconcile_failures,
            reconcile_duration,
            objects_managed,
            writes,
            leader,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconcile_runs.inc();
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, error: &str) {
        self.reconcile_failures
            .get_or_create(&ErrorLabels {
                error: error.into(),
            })
            .inc();
    }

    /// Counts one write.
    pub fn wrote(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    /// Sets the number of cached objects of a kind.
    pub fn set_managed(&self, kind: &str, count: usize) {
        self.objects_managed
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
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
    fn the_rendered_metrics_name_runs_failures_duration_and_objects() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.reconcile_failed("kube_409");
        m.set_managed("MicroService", 3);
        m.wrote("Deployment", "apply");
        let text = m.render();
        assert!(
            text.contains("ferry_operator_reconcile_runs_total 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_operator_reconcile_failures_total{error=\"kube_409\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_operator_objects_managed{kind=\"MicroService\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ferry_operator_api_writes_total{kind=\"Deployment\",verb=\"apply\"} 1"),
            "{text}"
        );
    }
}
