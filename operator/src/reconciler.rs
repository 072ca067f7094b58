//! The controller: watches, the reconcile function and the error policy. All API I/O lives here; the
//! decisions are made by the pure modules ([`crate::validation`], [`crate::desired`], [`crate::status`]).
//!
//! Memory stays flat as objects grow: MicroServices are cached in full (the reconciler needs their
//! spec and status), Deployments are cached with their pod template stripped (the status is what is
//! read), and Services, HPAs, PDBs, ServiceMonitors and ConfigMaps are watched metadata-only. Every
//! cache drops `managedFields` and lists in pages of [`PAGE_SIZE`].
//!
//! Writes happen only when something differs: each child carries a spec hash annotation that is
//! compared with the hash of the freshly built child; the status is written only when the derived
//! status differs from the stored one.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt, channel::mpsc};
use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    FIELD_MANAGER,
    crd::MicroService,
    desired::{self, Inputs, config, dependencies, labels, service_monitor, spec_hash_of},
    metrics::Metrics,
    status::{self, DeploymentView, EventKind, MonitorState, Observation},
    validation::{self, SpecError},
};

mod alerts;
mod blue_green;

/// Client-side `kubectl apply` keeps a full copy of the object here; the operator never reads it.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Page size of every list: small pages keep the peak memory of the initial list low.
pub const PAGE_SIZE: u32 = 50;
/// Requeue of a converged MicroService (a safety net; watches drive everything else).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Requeue while waiting for dependencies (dependents are also triggered when a dependency changes).
pub const DEPENDENCY_RECHECK: Duration = Duration::from_secs(30);
/// First retry delay after a transient error; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay after transient errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

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
            Self::NotLeaderError => "not_leader".into(),
            Self::MissingNamespaceError => "missing_namespace".into(),
            Self::CacheNotReadyError(_) => "cache_not_ready".into(),
        }
    }
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Self::KubeError(err)
    }
}

/// Result of the reconciler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operator's caches of child objects.
#[derive(Clone)]
pub struct Stores {
    /// MicroServices (full objects).
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
    /// Whether `servicemonitors.monitoring.coreos.com` is served (kept current by a CRD watch).
    pub service_monitors_served: watch::Receiver<bool>,
    /// Whether `prometheusrules.monitoring.coreos.com` is served (kept current by a CRD watch).
    pub prometheus_rules_served: watch::Receiver<bool>,
    /// True while this process may write (holds the lease, or runs without leader election).
    pub may_write: Arc<AtomicBool>,
    /// Consecutive transient failures per MicroService, for the per-object backoff.
    pub failures: Mutex<HashMap<ObjectRef<MicroService>, u32>>,
    /// Requests a reconcile of a MicroService (used to wake dependents).
    pub trigger: mpsc::UnboundedSender<ObjectRef<MicroService>>,
    /// Deployment generation after our last apply, to notice edits made behind the operator's back.
    pub applied_generations: Mutex<HashMap<ObjectRef<Deployment>, i64>>,
}

impl Context {
    fn ensure_leader(&self) -> Result<()> {
        if self.may_write.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::NotLeaderError)
        }
    }

    fn service_monitors_served(&self) -> bool {
        *self.service_monitors_served.borrow()
    }

    /// Delay before retrying after the `n`-th consecutive failure.
    pub fn backoff_delay(failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
    }
}

/// Applies `obj` with server-side apply, as [`FIELD_MANAGER`], forcing ownership of the fields it sets.
async fn apply<K>(ctx: &Context, api: &Api<K>, obj: &K, kind: &str) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    ctx.ensure_leader()?;
    ctx.metrics.wrote(kind, "apply");
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

async fn delete<K>(ctx: &Context, api: &Api<K>, name: &str, kind: &str) -> Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    ctx.ensure_leader()?;
    ctx.metrics.wrote(kind, "delete");
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Whether a cached child is controlled by this MicroService (never touch someone else's object).
fn controlled_by<K: Resource>(child: &K, ms: &MicroService) -> bool {
    let uid = ms.uid();
    child
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// An apply rejected as invalid (422) or forbidden by admission (e.g. Pod Security) is a spec problem.
fn as_spec_error(err: &Error) -> Option<SpecError> {
    match err {
        Error::KubeError(kube::Error::Api(s)) if s.code == 422 => Some(SpecError {
            reason: "RejectedByAPIServer",
            message: s.message.clone(),
        }),
        _ => None,
    }
}

/// Outcome of bringing one optional child in line.
enum ChildOutcome {
    Unchanged,
    Applied,
    Deleted,
    Absent,
}

/// Makes one child match: apply when the desired hash differs from the cached one, delete when it
/// must not exist but does.
async fn ensure_child<K>(
    ctx: &Context,
    ms: &MicroService,
    api: &Api<K>,
    observed: Option<Arc<PartialObjectMeta<K>>>,
    desired: Option<&K>,
    kind: &str,
) -> Result<ChildOutcome>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    match (desired, observed) {
        (Some(want), Some(have)) if spec_hash_of(have.as_ref()) == spec_hash_of(want) => {
            Ok(ChildOutcome::Unchanged)
        }
        (Some(want), _) => {
            apply(ctx, api, want, kind).await?;
            Ok(ChildOutcome::Applied)
        }
        (None, Some(have)) if controlled_by(have.as_ref(), ms) => {
            delete(ctx, api, &have.name_any(), kind).await?;
            Ok(ChildOutcome::Deleted)
        }
        (None, _) => Ok(ChildOutcome::Absent),
    }
}

fn lookup<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store.get(&ObjectRef::new_with(name, K::DynamicType::default()).within(ns))
}

async fn publish(ctx: &Context, ms: &MicroService, kind: EventKind, reason: &str, note: String) {
    if ctx.ensure_leader().is_err() {
        return;
    }
    ctx.metrics.wrote("Event", "event");
    let event = KubeEvent {
        type_: match kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        },
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // NB: an Event that cannot be published is not worth failing (and retrying) the reconcile.
    if let Err(err) = ctx.recorder.publish(&event, &ms.object_ref(&())).await {
        warn!(error = %err, reason, "cannot publish event");
    }
}

async fn write_status(
    ctx: &Context,
    api: &Api<MicroService>,
    ms: &MicroService,
    next: &crate::crd::MicroServiceStatus,
) -> Result<()> {
    ctx.ensure_leader()?;
    ctx.metrics.wrote("MicroService", "status");
    let body = json!({
        "apiVersion": MicroService::api_version(&()),
        "kind": MicroService::kind(&()),
        "status": next,
    });
    api.patch_status(
        &ms.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Status, events and dependents after a reconcile decided what the status should be.
async fn publish_status(
    ctx: &Context,
    api: &Api<MicroService>,
    ms: &MicroService,
    next: &crate::crd::MicroServiceStatus,
) -> Result<()> {
    let previous = ms.status.as_ref();
    if previous != Some(next) {
        write_status(ctx, api, ms, next).await?;
    }
    for event in status::events(previous, next) {
        publish(ctx, ms, event.kind, event.reason, event.note).await;
    }
    let was_available = previous.is_some_and(|p| p.is_true(crate::crd::condition_type::AVAILABLE));
    // NB: a first status means the MicroService just appeared: its dependents may have been
    // waiting for it to exist (or may now close a cycle), so they look again at once.
    if previous.is_none() || was_available != next.is_true(crate::crd::condition_type::AVAILABLE) {
        wake_dependents(ctx, ms);
    }
    Ok(())
}

/// Requests a reconcile of every MicroService that depends on `ms`.
fn wake_dependents(ctx: &Context, ms: &MicroService) {
    let name = ms.name_any();
    let ns = ms.namespace();
    for other in ctx.stores.microservices.state() {
        let depends = other
            .spec
            .depends_on
            .iter()
            .flatten()
            .any(|d| d.name == name);
        if depends && other.namespace() == ns {
            let _ = ctx
                .trigger
                .unbounded_send(ObjectRef::from_obj(other.as_ref()));
        }
    }
}

/// Reconciles one MicroService.
pub async fn reconcile(ms: Arc<MicroService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    if ms.meta().deletion_timestamp.is_some() {
        // NB: children are owned, so the garbage collector removes them; nothing to do.
        return Ok(Action::await_change());
    }
    let ns = ms.namespace().ok_or(Error::MissingNamespaceError)?;
    let name = ms.name_any();
    let client = ctx.client.clone();
    let ms_api: Api<MicroService> = Api::namespaced(client.clone(), &ns);

    let result = reconcile_inner(&ms, &ctx, &ns, &name, &ms_api).await;
    if result.is_ok() {
        ctx.failures
            .lock()
            .map(|mut f| f.remove(&ObjectRef::from_obj(ms.as_ref())))
            .ok();
    }
    result
}

/// How long a reconcile waits for the child caches before it requeues itself.
const CACHE_WAIT: Duration = Duration::from_millis(500);
/// When a reconcile that found the caches still filling runs again.
const CACHE_RETRY: Duration = Duration::from_millis(200);

/// Whether the Deployment and Service caches hold their first full list, waiting at most
/// [`CACHE_WAIT`].
async fn caches_ready(ctx: &Context) -> Result<bool> {
    let both = async {
        ctx.stores.deployments.wait_until_ready().await?;
        ctx.stores.services.wait_until_ready().await
    };
    match tokio::time::timeout(CACHE_WAIT, both).await {
        Ok(ready) => ready.map(|()| true).map_err(Error::CacheNotReadyError),
        Err(_elapsed) => Ok(false),
    }
}

async fn reconcile_inner(
    ms: &MicroService,
    ctx: &Context,
    ns: &str,
    name: &str,
    ms_api: &Api<MicroService>,
) -> Result<Action> {
    // NB: decisions read the child caches; right after a (re)start they may still be filling, and an
    // empty cache would look like "no Service yet" (a blue-green rollout would start over). The wait
    // is bounded and retried by a requeue: an unbounded `wait_until_ready` was seen to miss its
    // wake-up when the store became ready at that very moment, parking the reconcile forever.
    if !caches_ready(ctx).await? {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let client = ctx.client.clone();
    let observed_deployment = lookup(&ctx.stores.deployments, ns, name);
    let deployment_view = observed_deployment
        .as_deref()
        .map(DeploymentView::from_deployment);

    // 1. Validate: an invalid spec is parked behind InvalidSpec; nothing else is written.
    let extras = match validation::check(ms) {
        Ok(extras) => extras,
        Err(err) => return park_invalid(ctx, ms_api, ms, &err, deployment_view.as_ref()).await,
    };
    // NB: the seed comes before every other write, so the one status write below already
    // records the generation it produced; the rest of the reconcile reads the seeded object.
    let seeded = seed_replicas(ctx, ms_api, ms).await?;
    let ms = seeded.as_ref().unwrap_or(ms);
    let desired_replicas = desired::effective_replicas(ms);

    // 2. Dependencies, from the MicroService cache.
    let deps_map: BTreeMap<String, Arc<MicroService>> = ms
        .spec
        .depends_on
        .iter()
        .flatten()
        .filter_map(|d| lookup(&ctx.stores.microservices, ns, &d.name).map(|m| (d.name.clone(), m)))
        .collect();
    let mut deps = dependencies::resolve(ms, |n| deps_map.get(n).map(AsRef::as_ref));
    if !deps_map.is_empty() {
        deps.cycle = dependencies::cycle_through(name, |n| {
            lookup(&ctx.stores.microservices, ns, n).map(|m| {
                m.spec
                    .depends_on
                    .iter()
                    .flatten()
                    .map(|d| d.name.clone())
                    .collect()
            })
        });
    }

    // 3. The ConfigMap hash, when a change should roll the pods.
    let mut notes = Vec::new();
    let config_hash = match ms
        .spec
        .config
        .as_ref()
        .filter(|_| config::rolls_on_change(ms))
    {
        Some(cfg) => {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            match cms.get_opt(&cfg.name).await? {
                Some(cm) => Some(config::config_hash(
                    cm.data.as_ref(),
                    cm.binary_data.as_ref(),
                )),
                None => {
                    notes.push(format!("ConfigMap {} not found", cfg.name));
                    None
                }
            }
        }
        None => None,
    };

    // 4. Build the desired children.
    let sm_served = ctx.service_monitors_served();
    let inputs = Inputs {
        extras,
        dependencies: deps.resolved.clone(),
        config_hash,
        service_monitor_supported: sm_served,
        prometheus_rule_supported: *ctx.prometheus_rules_served.borrow(),
    };
    let desired = desired::build(ms, &inputs);

    // 5. Bring the children in line, writing only what differs.
    let mut view = deployment_view;
    let held;
    let mut rollout: Option<Box<blue_green::Outcome>> = None;
    if blue_green::is_blue_green(ms) {
        match blue_green::reconcile(ctx, ms, ns, name, &inputs, deps.ready()).await? {
            blue_green::BlueGreenResult::Done(outcome) => {
                view = outcome.active_view.clone();
                held = outcome.held;
                rollout = Some(outcome);
            }
            blue_green::BlueGreenResult::Invalid(spec_err) => {
                return park_invalid(ctx, ms_api, ms, &spec_err, view.as_ref()).await;
            }
        }
    } else {
        let (v, h) =
            match reconcile_single(ctx, ms, ns, name, ms_api, &desired, &deps, view).await? {
                Ok(vh) => vh,
                Err(action) => return Ok(action),
            };
        view = v;
        held = h;
    }
    // NB: the remaining children do not depend on each other: apply them concurrently, so a
    // reconcile costs one apiserver round trip here instead of four.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let monitor = if !service_monitor::wanted(ms) {
        MonitorState::NotRequested
    } else if !sm_served {
        MonitorState::CrdNotInstalled
    } else {
        MonitorState::Applied
    };
    let ensure_monitor = async {
        if !sm_served {
            return Ok(ChildOutcome::Absent);
        }
        let ar = service_monitor::api_resource();
        let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let observed_sm = ctx
            .stores
            .service_monitors
            .get(&ObjectRef::new_with(name, ar.clone()).within(ns));
        ensure_child(
            ctx,
            ms,
            &sms,
            observed_sm,
            desired.service_monitor.as_ref(),
            "ServiceMonitor",
        )
        .await
    };
    let (_, _, _, alerts_state) = futures::try_join!(
        ensure_child(
            ctx,
            ms,
            &hpas,
            lookup(&ctx.stores.autoscalers, ns, name),
            desired.autoscaler.as_ref(),
            "HorizontalPodAutoscaler",
        ),
        ensure_child(
            ctx,
            ms,
            &pdbs,
            lookup(&ctx.stores.disruption_budgets, ns, name),
            desired.disruption_budget.as_ref(),
            "PodDisruptionBudget",
        ),
        ensure_monitor,
        alerts::ensure(ctx, ms, ns, name, desired.prometheus_rule.as_ref()),
    )?;

    // 6. Status and events.
    let observation = Observation {
        generation: ms.metadata.generation,
        spec_error: None,
        dependencies: &deps,
        deployment: view.as_ref(),
        desired_replicas,
        held,
        monitor,
        selector: labels::selector_string(ms),
        notes,
    };
    let now = status::now();
    let mut next = status::derive(ms.status.as_ref(), &observation, now.clone());
    alerts::overlay(&mut next, ms.status.as_ref(), alerts_state, &now);
    if let Some(event) = alerts::event(ms.status.as_ref(), &next) {
        publish(ctx, ms, event.kind, event.reason, event.note).await;
    }
    if let Some(outcome) = rollout.as_ref() {
        crate::rollout::report::overlay(
            &mut next,
            ms.status.as_ref(),
            &outcome.plan,
            outcome.checks.clone(),
            name,
            &now,
        );
    }
    publish_status(ctx, ms_api, ms, &next).await?;
    if let Some(outcome) = rollout.as_ref() {
        let t = crate::rollout::report::transitions(ms.status.as_ref(), &next, &outcome.plan);
        for event in t.events {
            publish(ctx, ms, event.kind, event.reason, event.note).await;
        }
        if t.aborted {
            ctx.metrics.rollout_aborts.inc();
        }
        if t.rolled_back {
            ctx.metrics.rollout_rollbacks.inc();
        }
        if t.promoted {
            let started = ms
                .status
                .as_ref()
                .and_then(|s| s.blue_green.as_ref())
                .and_then(|b| b.started_at.as_ref())
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            if let Some(started) = started {
                let secs = now.0.duration_since(started).as_secs_f64();
                ctx.metrics.promotion_duration.observe(secs.max(0.0));
            }
        }
        ctx.metrics.set_rollout_phase(ns, name, next.phase.as_str());
    }

    let base = if held || !deps.ready() {
        DEPENDENCY_RECHECK
    } else {
        RESYNC
    };
    let rollout_requeue = rollout
        .and_then(|o| o.requeue)
        .map(|r| r.max(Duration::from_millis(500)) + Duration::from_millis(100));
    Ok(Action::requeue(
        rollout_requeue.map_or(base, |r| r.min(base)),
    ))
}

/// With autoscaling and no replica count yet, seeds `spec.replicas = minReplicas` once and returns
/// the seeded object. An autoscaler reads a missing count as 0 (scaling disabled), and the scale
/// subresource cannot write a field that does not exist; from then on the autoscaler owns the field
/// through the scale subresource. The CRD's `optionalOldSelf` rule on `spec.replicas` lets this
/// update through because autoscaling was already on, while it refuses both fields at creation.
/// NB: the patch carries the observed resourceVersion, so it lands only on the object that was
/// validated; after any concurrent write (a `kubectl scale`, a spec edit) it fails with a
/// conflict and the reconcile is retried on the stored object.
async fn seed_replicas(
    ctx: &Context,
    ms_api: &Api<MicroService>,
    ms: &MicroService,
) -> Result<Option<MicroService>> {
    let (Some(autoscaling), None) = (&ms.spec.autoscaling, ms.spec.replicas) else {
        return Ok(None);
    };
    ctx.ensure_leader()?;
    ctx.metrics.wrote("MicroService", "seed_replicas");
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let seeded = ms_api
        .patch(
            &ms.name_any(),
            &params,
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": ms.resource_version()},
                "spec": {"replicas": autoscaling.min_replicas},
            })),
        )
        .await?;
    Ok(Some(seeded))
}

/// The RollingUpdate strategy: one Deployment named after the MicroService, and its Service.
/// `Err(action)` when the spec was parked as invalid.
#[allow(clippy::too_many_arguments)]
async fn reconcile_single(
    ctx: &Context,
    ms: &MicroService,
    ns: &str,
    name: &str,
    ms_api: &Api<MicroService>,
    desired: &desired::Desired,
    deps: &dependencies::DependencyState,
    mut view: Option<DeploymentView>,
) -> Result<Result<(Option<DeploymentView>, bool), Action>> {
    let client = ctx.client.clone();
    let observed_deployment = lookup(&ctx.stores.deployments, ns, name);
    let desired_replicas = desired::effective_replicas(ms);
    let mut held = false;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment_ref = ObjectRef::<Deployment>::new(name).within(ns);
    let drifted = observed_deployment.as_ref().is_some_and(|d| {
        let recorded = ctx
            .applied_generations
            .lock()
            .ok()
            .and_then(|g| g.get(&deployment_ref).copied());
        recorded.is_some_and(|g| Some(g) != d.metadata.generation)
    });
    let deployment_current = observed_deployment
        .as_deref()
        .is_some_and(|d| spec_hash_of(d) == spec_hash_of(&desired.deployment) && !drifted);
    // NB: the Deployment and the Service do not depend on each other: apply them concurrently.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let observed_service = lookup(&ctx.stores.services, ns, name);
    let apply_deployment = async {
        if deployment_current || !deps.ready() {
            return Ok(None);
        }
        apply(ctx, &deployments, &desired.deployment, "Deployment")
            .await
            .map(Some)
    };
    let ensure_service = ensure_child(
        ctx,
        ms,
        &services,
        observed_service,
        Some(&desired.service),
        "Service",
    );
    let (deployment_result, service_result) = futures::join!(apply_deployment, ensure_service);
    let applied = match deployment_result {
        Ok(applied) => applied,
        Err(err) => {
            return match as_spec_error(&err) {
                Some(spec_err) => park_invalid(ctx, ms_api, ms, &spec_err, view.as_ref())
                    .await
                    .map(Err),
                None => Err(err),
            };
        }
    };
    if let Some(applied) = applied {
        if let (Some(generation), Ok(mut g)) =
            (applied.metadata.generation, ctx.applied_generations.lock())
        {
            g.insert(deployment_ref.clone(), generation);
        }
        let (reason, note) = if observed_deployment.is_none() {
            (
                "Created",
                format!("created Deployment {name} running {}", ms.spec.image),
            )
        } else {
            (
                "Updated",
                format!(
                    "updated Deployment {name}: image {}, {desired_replicas} replicas",
                    ms.spec.image
                ),
            )
        };
        publish(ctx, ms, EventKind::Normal, reason, note).await;
        view = Some(DeploymentView::from_deployment(&applied));
    } else if !deployment_current {
        held = true;
    }
    if let Err(err) = service_result {
        return match as_spec_error(&err) {
            Some(spec_err) => park_invalid(ctx, ms_api, ms, &spec_err, view.as_ref())
                .await
                .map(Err),
            None => Err(err),
        };
    }
    // NB: leaving the blue-green strategy: once the plain Deployment is available, the revision
    // Deployments and the preview Service go.
    let plain_available = view.as_ref().is_some_and(|v| {
        v.conditions
            .iter()
            .any(|c| c.0 == "Available" && c.1 == "True")
    });
    if plain_available {
        for d in blue_green::revisions(ctx, ms, ns) {
            delete(ctx, &deployments, &d.name_any(), "Deployment").await?;
        }
        let preview = crate::rollout::preview_service_name(name);
        ensure_child(
            ctx,
            ms,
            &services,
            lookup(&ctx.stores.services, ns, &preview),
            None,
            "Service",
        )
        .await?;
    }
    Ok(Ok((view, held)))
}

/// Writes the `InvalidSpec` status for a spec that cannot be reconciled, then waits for a change.
async fn park_invalid(
    ctx: &Context,
    ms_api: &Api<MicroService>,
    ms: &MicroService,
    err: &SpecError,
    deployment: Option<&DeploymentView>,
) -> Result<Action> {
    info!(microservice = %ms.name_any(), error = %err, "invalid spec; waiting for a change");
    let deps = dependencies::DependencyState::default();
    let observation = Observation {
        generation: ms.metadata.generation,
        spec_error: Some(err),
        dependencies: &deps,
        deployment,
        desired_replicas: desired::effective_replicas(ms),
        held: false,
        monitor: if service_monitor::wanted(ms) {
            MonitorState::Blocked
        } else {
            MonitorState::NotRequested
        },
        selector: labels::selector_string(ms),
        notes: vec![],
    };
    let mut next = status::derive(ms.status.as_ref(), &observation, status::now());
    // NB: keep the conditions this reconcile did not look at as they were.
    if let Some(previous) = &ms.status {
        for c in &mut next.conditions {
            if c.type_ != crate::crd::condition_type::INVALID_SPEC
                && let Some(old) = previous.condition(&c.type_)
            {
                *c = old.clone();
            }
        }
    }
    publish_status(ctx, ms_api, ms, &next).await?;
    Ok(Action::await_change())
}

/// Per-object exponential backoff on transient errors.
pub fn error_policy(ms: Arc<MicroService>, err: &Error, ctx: Arc<Context>) -> Action {
    let label = err.metric_label();
    ctx.metrics.reconcile_failed(&label);
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(ObjectRef::from_obj(ms.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
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

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Watch one namespace only (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Quiet period before a reconcile, merging bursts of events for one MicroService.
    pub debounce: Duration,
    /// Watch ConfigMaps (metadata only) so `rollOnChange` reacts at once.
    pub watch_config_maps: bool,
    /// Name of this instance, for Events.
    pub instance: String,
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn child_watch_config() -> watcher::Config {
    watcher::Config::default()
        .labels(&labels::managed_by_selector())
        .page_size(PAGE_SIZE)
        .any_semantic()
}

/// A metadata-only, trimmed, reflected watch of one child kind, as a trigger stream for `owns_stream`.
fn metadata_reflector<K>(
    api: Api<PartialObjectMeta<K>>,
) -> (
    Store<PartialObjectMeta<K>>,
    impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, child_watch_config())
        .default_backoff()
        .modify(|m| {
            m.managed_fields_mut().clear();
        })
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// Whether the cluster serves ServiceMonitors (API discovery of `monitoring.coreos.com/v1`).
pub async fn service_monitors_served(client: &Client) -> bool {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
        Err(_) => false,
    }
}

/// Keeps `served` current: watches the ServiceMonitor CRD (metadata only) and re-runs discovery on
/// every change. Runs until the process ends.
async fn track_service_monitor_crd(client: Client, served: watch::Sender<bool>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client.clone());
    let wc =
        watcher::Config::default().fields(&format!("metadata.name={}", service_monitor::CRD_NAME));
    let mut events = watcher(crds, wc).default_backoff().boxed();
    while let Some(event) = events.next().await {
        if let Err(err) = event {
            debug!(error = %err, "ServiceMonitor CRD watch error");
            continue;
        }
        // NB: a CRD that was just created is served a moment later; look a few times.
        for attempt in 0..10u64 {
            let now = service_monitors_served(&client).await;
            if now != *served.borrow() {
                info!(served = now, "ServiceMonitor CRD availability changed");
                served.send_replace(now);
                break;
            }
            if attempt < 9 {
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
}

/// Builds the controller and runs it until `shutdown` resolves, then drains in-flight reconciles.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    may_write: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let ns = config.namespace.as_deref();
    let microservices: Api<MicroService> = api_for(&client, ns);
    if let Err(err) = microservices.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list MicroServices ({err}); is the CRD installed? `kubectl apply -f crds/microservice.yaml`"
        );
    }

    let (served_tx, served_rx) = watch::channel(service_monitors_served(&client).await);
    info!(served = *served_rx.borrow(), "ServiceMonitor CRD detection");
    tokio::spawn(track_service_monitor_crd(client.clone(), served_tx));
    let (rules_served_tx, rules_served_rx) = watch::channel(alerts::served(&client).await);
    info!(
        served = *rules_served_rx.borrow(),
        "PrometheusRule CRD detection"
    );
    tokio::spawn(alerts::track_crd(client.clone(), rules_served_tx));
    let (rules_reader, rules_stream) = alerts::watch_rules(&client, ns, rules_served_rx.clone());

    let ms_config = watcher::Config::default()
        .page_size(PAGE_SIZE)
        .any_semantic();
    // NB: our own reflector instead of `Controller::new`'s, so the cache drops what no decision
    // reads: managedFields (one entry per writer: the user, the autoscaler, our status) and
    // kubectl's last-applied copy of the spec. At 1,000 MicroServices that is most of the cache.
    let (ms_store, ms_writer) = reflector::store();
    let ms_stream = watcher(microservices, ms_config)
        .default_backoff()
        .modify(|ms: &mut MicroService| {
            ms.managed_fields_mut().clear();
            if let Some(annotations) = ms.metadata.annotations.as_mut() {
                annotations.remove(LAST_APPLIED_ANNOTATION);
            }
        })
        .reflect(ms_writer)
        .applied_objects();
    let controller = Controller::for_stream(ms_stream, ms_store.clone());

    let (deploy_reader, deploy_writer) = reflector::store();
    let deploy_stream = watcher(api_for::<Deployment>(&client, ns), child_watch_config())
        .default_backoff()
        .modify(|d: &mut Deployment| {
            d.managed_fields_mut().clear();
            if let Some(spec) = d.spec.as_mut() {
                spec.template = Default::default();
            }
        })
        .reflect(deploy_writer)
        .touched_objects();
    let (svc_reader, svc_stream) = metadata_reflector::<Service>(api_for(&client, ns));
    let (hpa_reader, hpa_stream) =
        metadata_reflector::<HorizontalPodAutoscaler>(api_for(&client, ns));
    let (pdb_reader, pdb_stream) = metadata_reflector::<PodDisruptionBudget>(api_for(&client, ns));

    let ar = service_monitor::api_resource();
    let sm_writer = reflector::store::Writer::new(ar.clone());
    let sm_reader = sm_writer.as_reader();
    let sm_api: Api<PartialObjectMeta<DynamicObject>> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut served_wait = served_rx.clone();
    // NB: the ServiceMonitor watch starts only once its CRD is served, so a cluster without the
    // Prometheus Operator logs no watch errors.
    let sm_stream = futures::stream::once(async move {
        let _ = served_wait.wait_for(|served| *served).await;
    })
    .map(move |()| watcher(sm_api.clone(), child_watch_config()).default_backoff())
    .flatten()
    .modify(|m| {
        m.managed_fields_mut().clear();
    })
    .reflect(sm_writer)
    .touched_objects();

    let served_trigger = futures::stream::unfold(served_rx.clone(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });

    let (trigger_tx, trigger_rx) = mpsc::unbounded();
    let stores = Stores {
        microservices: ms_store.clone(),
        deployments: deploy_reader,
        services: svc_reader,
        autoscalers: hpa_reader,
        disruption_budgets: pdb_reader,
        service_monitors: sm_reader,
        prometheus_rules: rules_reader,
    };
    tokio::spawn(report_cache_sizes(stores.clone(), metrics.clone()));

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(config.instance.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        stores,
        service_monitors_served: served_rx,
        prometheus_rules_served: rules_served_rx.clone(),
        may_write,
        failures: Mutex::new(HashMap::new()),
        trigger: trigger_tx,
        applied_generations: Mutex::new(HashMap::new()),
    });

    let mut controller = controller
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .owns_stream(hpa_stream)
        .owns_stream(pdb_stream)
        .owns_stream_with(sm_stream, ar)
        .owns_stream_with(rules_stream, desired::prometheus_rule::api_resource())
        .reconcile_on(trigger_rx)
        .reconcile_all_on(served_trigger)
        .reconcile_all_on(alerts::served_changes(rules_served_rx));
    if config.watch_config_maps {
        let cm_api: Api<PartialObjectMeta<ConfigMap>> = api_for(&client, ns);
        let cm_stream = watcher(cm_api, watcher::Config::default().page_size(PAGE_SIZE))
            .default_backoff()
            .touched_objects();
        let store = ms_store.clone();
        controller =
            controller.watches_stream(cm_stream, move |cm: PartialObjectMeta<ConfigMap>| {
                let (cm_name, cm_ns) = (cm.name_any(), cm.namespace());
                store
                    .state()
                    .into_iter()
                    .filter(|ms| {
                        ms.namespace() == cm_ns
                            && ms.spec.config.as_ref().is_some_and(|c| c.name == cm_name)
                    })
                    .map(|ms| ObjectRef::from_obj(ms.as_ref()))
                    .collect::<Vec<_>>()
            });
    }

    info!(concurrency = config.concurrency, namespace = ?config.namespace, "controller starting");
    controller
        .with_config(
            controller::Config::default()
                .concurrency(config.concurrency)
                .debounce(config.debounce),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => {
                    debug!(microservice = %obj.name, namespace = ?obj.namespace, "reconciled")
                }
                Err(controller::Error::ReconcilerFailed(err, obj)) => {
                    debug!(microservice = %obj.name, error = %err, "reconcile failed")
                }
                Err(err) => warn!(error = %err, "controller error"),
            }
        })
        .await;
    info!("controller stopped; in-flight reconciles drained");
    Ok(())
}

async fn report_cache_sizes(stores: Stores, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        metrics.set_managed("MicroService", stores.microservices.len());
        metrics.set_managed("Deployment", stores.deployments.len());
        metrics.set_managed("Service", stores.services.len());
        metrics.set_managed("HorizontalPodAutoscaler", stores.autoscalers.len());
        metrics.set_managed("PodDisruptionBudget", stores.disruption_budgets.len());
        metrics.set_managed("ServiceMonitor", stores.service_monitors.len());
        metrics.set_managed("PrometheusRule", stores.prometheus_rules.len());
    }
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
    fn an_invalid_apply_is_treated_as_a_spec_error_and_other_failures_are_not() {
        let invalid = Error::KubeError(kube::Error::Api(Box::new(
            kube::core::Status::failure("spec.template: Invalid value", "Invalid").with_code(422),
        )));
        let spec_err = as_spec_error(&invalid).expect("spec error");
        assert_eq!(spec_err.reason, "RejectedByAPIServer");
        assert!(spec_err.message.contains("Invalid value"));
        assert!(as_spec_error(&Error::NotLeaderError).is_none());
    }
}
