//! The controller: gather what is observed from the caches, plan, carry the plan out.
//!
//! A reconcile is three steps: [`observe::gather`] builds an [`Observed`] from the caches (and
//! reads the mounted ConfigMap's data), [`plan::plan`] decides everything as data (it cannot do
//! I/O), and [`execute::carry_out`] issues the writes batch by batch, writes the status once (when
//! it changed) and publishes the Events. Due promotion checks go to the [`CheckRunner`], which
//! measures off the reconcile path and requeues the MicroService when a measurement is in.
//!
//! - [`controller`]: the watches, caches and the kube-runtime controller.
//! - [`optional_crd`]: ServiceMonitor, PrometheusRule and ScaledObject, whose CRDs may not be served.

mod controller;
mod execute;
#[cfg(test)]
mod fixtures;
mod observe;
pub mod optional_crd;
#[cfg(test)]
mod scenarios;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::channel::mpsc;
use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
        policy::v1::PodDisruptionBudget,
    },
    jiff::Timestamp,
};
use kube::{
    Client, ResourceExt,
    api::{DynamicObject, PartialObjectMeta},
    runtime::{
        controller::Action,
        events::Recorder,
        reflector::{self, ObjectRef, Store},
    },
};
use tracing::{debug, warn};

pub use controller::{ControllerConfig, PAGE_SIZE, run};
pub use optional_crd::OptionalCrd;

use ferry_operator_core::{
    crd::MicroService,
    plan::{self, Observed, Requeue},
    status::ChildFailure,
};

use crate::{checks::CheckRunner, metrics::Metrics};

/// First retry delay after a transient error; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay after transient errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long a reconcile waits for the child caches before it requeues itself.
const CACHE_WAIT: Duration = Duration::from_millis(500);
/// When a reconcile that found the caches still filling runs again.
const CACHE_RETRY: Duration = Duration::from_millis(200);

/// Reconcile errors. Spec problems are not errors: they become the `InvalidSpec` condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("kubernetes API error: {0}")]
    KubeError(#[source] kube::Error),
    /// This process is not (or no longer) the leader, so it must not write.
    #[error("not the leader: refusing to write")]
    NotLeaderError,
    /// The MicroService has no namespace (it is a namespaced kind, so this is a bug).
    #[error("MicroService has no namespace")]
    MissingNamespaceError,
    /// Writing a child failed; reported on the MicroService (`Synced=False`) before it is retried.
    #[error("writing {} {}: {}", .0.kind, .0.name, .0.message)]
    ChildWriteError(Box<ChildFailure>),
    /// A child cache stopped before its first full list (the process is shutting down).
    #[error("child cache not ready: {0}")]
    CacheNotReadyError(#[source] reflector::store::WriterDropped),
}

impl Error {
    /// A short label for the failures metric: `kube_<http code>`, `kube_transport`, `not_leader`, ...
    pub fn metric_label(&self) -> String {
        match self {
            Self::KubeError(kube::Error::Api(status)) => format!("kube_{}", status.code),
            Self::KubeError(_) => "kube_transport".into(),
            Self::ChildWriteError(f) => {
                f.code.map_or_else(|| "kube_transport".into(), |c| format!("kube_{c}"))
            }
            Self::NotLeaderError => "not_leader".into(),
            Self::MissingNamespaceError => "missing_namespace".into(),
            Self::CacheNotReadyError(_) => "cache_not_ready".into(),
        }
    }

    /// The failure of writing child `kind`/`name`, from the API call's error.
    pub fn child_write(kind: &str, name: &str, err: kube::Error) -> Self {
        let (code, message) = match &err {
            kube::Error::Api(s) => (Some(s.code), s.message.clone()),
            other => (None, other.to_string()),
        };
        Self::ChildWriteError(Box::new(ChildFailure { kind: kind.into(), name: name.into(), code, message }))
    }
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Self::KubeError(err)
    }
}

/// Result of the reconciler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operator's caches.
#[derive(Clone)]
pub struct Stores {
    /// MicroServices (full objects, managedFields and kubectl's last-applied copy dropped).
    pub microservices: Store<MicroService>,
    /// Deployments (pod template stripped).
    pub deployments: Store<Deployment>,
    /// Services (metadata only).
    pub services: Store<PartialObjectMeta<Service>>,
    /// HorizontalPodAutoscalers (metadata only).
    pub autoscalers: Store<PartialObjectMeta<HorizontalPodAutoscaler>>,
    /// PodDisruptionBudgets (metadata only).
    pub disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    /// ServiceMonitors (metadata only; empty while the CRD is not served).
    pub service_monitors: Store<PartialObjectMeta<DynamicObject>>,
    /// PrometheusRules (metadata only; empty while the CRD is not served).
    pub prometheus_rules: Store<PartialObjectMeta<DynamicObject>>,
    /// KEDA ScaledObjects (metadata only; empty while the CRD is not served).
    pub scaled_objects: Store<PartialObjectMeta<DynamicObject>>,
}

/// The optional CRDs.
#[derive(Clone)]
pub struct OptionalCrds {
    /// `servicemonitors.monitoring.coreos.com`.
    pub service_monitors: OptionalCrd,
    /// `prometheusrules.monitoring.coreos.com`.
    pub prometheus_rules: OptionalCrd,
    /// `scaledobjects.keda.sh`.
    pub scaled_objects: OptionalCrd,
}

/// Shared state of every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on the MicroService.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Caches.
    pub stores: Stores,
    /// ServiceMonitor, PrometheusRule and ScaledObject CRDs, and whether they are served.
    pub crds: OptionalCrds,
    /// True while this process may write (holds the lease, or runs without leader election).
    pub may_write: Arc<AtomicBool>,
    /// Consecutive transient failures per MicroService, for the per-object backoff.
    pub failures: Mutex<HashMap<ObjectRef<MicroService>, u32>>,
    /// Requests a reconcile of a MicroService (used to wake dependents).
    pub trigger: mpsc::UnboundedSender<ObjectRef<MicroService>>,
    /// Measures due promotion checks in the background.
    pub checks: CheckRunner,
}

impl Context {
    fn ensure_leader(&self) -> Result<()> {
        if self.may_write.load(Ordering::SeqCst) { Ok(()) } else { Err(Error::NotLeaderError) }
    }

    /// Delay before retrying after the `n`-th consecutive failure.
    pub fn backoff_delay(failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<MicroService>, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops everything kept in memory about a deleted MicroService: its failure count, its
    /// rollout-phase metric series, its check measurements (in flight ones are stopped).
    pub fn forget(&self, obj: &ObjectRef<MicroService>) {
        self.failures().remove(obj);
        self.metrics.forget_rollout_phase(obj.namespace.as_deref().unwrap_or_default(), &obj.name);
        self.checks.forget(obj);
    }

    /// After a re-list, forgets the MicroServices that are gone (deleted while the watch was
    /// down, so no delete event was seen).
    pub fn forget_missing(&self) {
        let present = |obj: &ObjectRef<MicroService>| self.stores.microservices.get(obj).is_some();
        let gone: Vec<ObjectRef<MicroService>> = (self.failures().keys().cloned())
            .chain(
                self.metrics
                    .rollout_phase_objects()
                    .into_iter()
                    .map(|(ns, name)| ObjectRef::new(&name).within(&ns)),
            )
            .chain(self.checks.objects())
            .filter(|obj| !present(obj))
            .collect();
        for obj in gone {
            self.forget(&obj);
        }
    }
}

/// Whether every child cache a reconcile reads holds its first full list, waiting at most
/// [`CACHE_WAIT`]. An optional CRD's cache counts only while the CRD is served: its watch does not
/// start before.
async fn caches_ready(ctx: &Context) -> Result<bool> {
    let (stores, crds) = (&ctx.stores, &ctx.crds);
    let optional = [
        (&crds.service_monitors, &stores.service_monitors),
        (&crds.prometheus_rules, &stores.prometheus_rules),
        (&crds.scaled_objects, &stores.scaled_objects),
    ];
    let all = async {
        stores.deployments.wait_until_ready().await?;
        stores.services.wait_until_ready().await?;
        stores.autoscalers.wait_until_ready().await?;
        stores.disruption_budgets.wait_until_ready().await?;
        for (crd, store) in optional {
            if crd.served() {
                store.wait_until_ready().await?;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(CACHE_WAIT, all).await {
        Ok(ready) => ready.map(|()| true).map_err(Error::CacheNotReadyError),
        Err(_elapsed) => Ok(false),
    }
}

/// Reconciles one MicroService: gather, plan, execute.
pub async fn reconcile(ms: Arc<MicroService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    // NB: decisions read the child caches; right after a (re)start they may still be filling, and an
    // empty cache would look like "no Service yet" (a blue-green rollout would start over). The wait
    // is bounded and retried by a requeue: an unbounded `wait_until_ready` was seen to miss its
    // wake-up when the store became ready at that very moment, parking the reconcile forever.
    if !caches_ready(&ctx).await? {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let observed: Observed = observe::gather(&ctx, &ms).await?;
    let plan = plan::plan(&observed, Timestamp::now());
    let obj = ObjectRef::from_obj(ms.as_ref());
    let carried = execute::carry_out(&ctx, &ms, &plan).await?;
    ctx.failures().remove(&obj);
    let execute::Carried::Done(requeue) = carried else {
        return Ok(Action::await_change());
    };
    ctx.checks.settle(&obj, &plan.settled);
    ctx.checks.start(&obj, &plan.checks);
    Ok(match requeue {
        Requeue::After(after) => Action::requeue(after),
        Requeue::AwaitChange => Action::await_change(),
    })
}

/// Per-object exponential backoff on transient errors.
pub fn error_policy(ms: Arc<MicroService>, err: &Error, ctx: Arc<Context>) -> Action {
    let label = err.metric_label();
    ctx.metrics.reconcile_failed(&label);
    let failures = {
        let mut failures = ctx.failures();
        let n = failures.entry(ObjectRef::from_obj(ms.as_ref())).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Context::backoff_delay(failures);
    match err {
        Error::KubeError(kube::Error::Api(s)) if s.code == 409 => {
            debug!(microservice = %ms.name_any(), error = %err, ?delay, "conflict; retrying")
        }
        _ => {
            warn!(microservice = %ms.name_any(), error = %err, failures, ?delay, "reconcile failed; backing off")
        }
    }
    Action::requeue(delay)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_and_is_capped() {
        assert_eq!(Context::backoff_delay(1), Duration::from_millis(500));
        assert_eq!(Context::backoff_delay(2), Duration::from_secs(1));
        assert_eq!(Context::backoff_delay(4), Duration::from_secs(4));
        assert_eq!(Context::backoff_delay(30), BACKOFF_MAX);
    }

    #[test]
    fn errors_map_to_short_metric_labels() {
        let conflict = Error::KubeError(kube::Error::Api(Box::new(
            kube::core::Status::failure("conflict", "Conflict").with_code(409),
        )));
        assert_eq!(conflict.metric_label(), "kube_409");
        assert_eq!(Error::NotLeaderError.metric_label(), "not_leader");
    }

    #[test]
    fn a_failed_child_write_names_the_child_and_keeps_the_api_servers_answer() {
        let invalid = kube::Error::Api(Box::new(
            kube::core::Status::failure("spec.template: Invalid value", "Invalid").with_code(422),
        ));
        let Error::ChildWriteError(failure) = Error::child_write("Deployment", "order", invalid) else {
            panic!("a child write error");
        };
        assert_eq!(failure.describe(), "Deployment order: spec.template: Invalid value");
        assert!(failure.is_invalid());
        let err = Error::ChildWriteError(failure);
        assert_eq!(err.metric_label(), "kube_422");
    }
}
