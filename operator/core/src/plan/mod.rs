//! `plan(observed, now) -> Plan`: everything one reconcile does, decided as data.
//!
//! The reconciler gathers an [`Observed`] from its caches, calls [`plan`], and carries the plan
//! out: the [`Batch`]es of writes in order (the writes inside a batch are independent), then the
//! status (only when it differs from the stored one), then the Events; it hands the due checks to
//! the check runner and requeues as the plan says. Nothing here does I/O, so every scenario of a
//! reconcile is a plain-data test (`plan/tests.rs`).
//!
//! The steps of [`plan`], in order: the spec is validated (an invalid one is parked), the replica
//! count is seeded for the autoscaler, the `dependsOn` gate and the config hash give the builders
//! their inputs, the workload is planned (RollingUpdate or blue-green), then the optional children,
//! then the status, the Events and the requeue.

mod blue_green;
mod rolling;
mod writes;

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    ResourceExt,
    core::{DynamicObject, PartialObjectMeta},
};

pub use blue_green::{DueCheck, PodTarget, is_blue_green};
pub use writes::{Batch, Child, ChildKind, Write, controlled_by, ensure};

use crate::{
    crd::{MicroService, MicroServiceStatus, Phase, condition_type as ct},
    dependencies::{self, DependencyState},
    desired::{self, Desired, Inputs, labels, prometheus_rule, scaled_object, service_monitor},
    drift::is_legacy_status,
    rollout::checks::Measurement,
    status::{self, AlertsState, DeploymentView, MonitorState, Observation, ScalerState, StatusEvent},
    validation::{self, PodExtras, SpecError},
};

/// Requeue of a converged MicroService (a safety net; watches drive everything else).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Requeue while waiting for dependencies (dependents are also triggered when a dependency changes).
pub const DEPENDENCY_RECHECK: Duration = Duration::from_secs(30);
/// The shortest requeue a rollout asks for: deadlines are at second precision, so a reconcile a
/// little after one sees it passed.
const ROLLOUT_REQUEUE_MIN: Duration = Duration::from_millis(500);
const ROLLOUT_REQUEUE_SLACK: Duration = Duration::from_millis(100);

/// The mounted ConfigMap, as far as the pods depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConfigObs {
    /// No config, or `rollOnChange: false`: its data does not roll the pods (not read).
    #[default]
    NotRolled,
    /// The ConfigMap to roll on does not exist.
    Missing,
    /// The hash of its data.
    Data(String),
}

/// Which optional CRDs the cluster serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServedCrds {
    /// `servicemonitors.monitoring.coreos.com`.
    pub service_monitors: bool,
    /// `prometheusrules.monitoring.coreos.com`.
    pub prometheus_rules: bool,
    /// `scaledobjects.keda.sh`.
    pub scaled_objects: bool,
}

/// Everything one reconcile decides from, as the caches hold it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The MicroService.
    pub microservice: Arc<MicroService>,
    /// The Deployment named after it (RollingUpdate), pod template stripped.
    pub deployment: Option<Arc<Deployment>>,
    /// Deployments carrying its selector label and a revision label (blue-green revisions; the
    /// planner keeps the ones the MicroService controls).
    pub revisions: Vec<Arc<Deployment>>,
    /// The Service named after it (metadata only).
    pub service: Option<Arc<PartialObjectMeta<Service>>>,
    /// The preview Service `NAME-preview` (metadata only).
    pub preview_service: Option<Arc<PartialObjectMeta<Service>>>,
    /// The autoscaler (metadata only).
    pub autoscaler: Option<Arc<PartialObjectMeta<HorizontalPodAutoscaler>>>,
    /// The disruption budget (metadata only).
    pub disruption_budget: Option<Arc<PartialObjectMeta<PodDisruptionBudget>>>,
    /// The ServiceMonitor (metadata only).
    pub service_monitor: Option<Arc<PartialObjectMeta<DynamicObject>>>,
    /// The PrometheusRule (metadata only).
    pub prometheus_rule: Option<Arc<PartialObjectMeta<DynamicObject>>>,
    /// The KEDA ScaledObject (metadata only).
    pub scaled_object: Option<Arc<PartialObjectMeta<DynamicObject>>>,
    /// The MicroServices of the namespace reachable through `dependsOn`, by name.
    pub dependencies: BTreeMap<String, Arc<MicroService>>,
    /// The mounted ConfigMap.
    pub config: ConfigObs,
    /// Which optional CRDs are served.
    pub crds: ServedCrds,
    /// Check measurements taken since they were last seen in status.
    pub measurements: Vec<Measurement>,
}

impl Observed {
    /// A MicroService with no children, dependencies or measurements observed yet.
    pub fn new(microservice: Arc<MicroService>) -> Self {
        Self {
            microservice,
            deployment: None,
            revisions: Vec::new(),
            service: None,
            preview_service: None,
            autoscaler: None,
            disruption_budget: None,
            service_monitor: None,
            prometheus_rule: None,
            scaled_object: None,
            dependencies: BTreeMap::new(),
            config: ConfigObs::default(),
            crds: ServedCrds::default(),
            measurements: Vec::new(),
        }
    }
}

/// When to reconcile again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// After this long (also when nothing changes).
    After(Duration),
    /// Only when something changes (an invalid spec waits for a new one).
    AwaitChange,
}

/// What a rollout transition means for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutReport {
    /// The phase after this reconcile.
    pub phase: Phase,
    /// A rollout was aborted.
    pub aborted: bool,
    /// Traffic went back to an older revision.
    pub rolled_back: bool,
    /// Seconds from the rollout's start to the switch, when traffic moved to the new revision.
    pub promotion_seconds: Option<f64>,
}

/// A move of the active selector, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The revision traffic leaves (none on the first revision).
    pub from: Option<String>,
    /// The revision traffic goes to.
    pub to: String,
}

/// Everything one reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The writes, in order.
    pub batches: Vec<Batch>,
    /// `metadata.generation` once the writes are done (the seed moves it on).
    pub generation: Option<i64>,
    /// The status to write, when it differs from the stored one.
    pub status: Option<MicroServiceStatus>,
    /// Events to publish after the status.
    pub events: Vec<StatusEvent>,
    /// Check measurements to take now, off the reconcile path.
    pub checks: Vec<DueCheck>,
    /// Measurements the stored status already holds, or that no longer apply: the runner drops
    /// them once the plan is carried out.
    pub settled: Vec<Measurement>,
    /// When to reconcile again.
    pub requeue: Requeue,
    /// The MicroService appeared or its availability changed: its dependents look again.
    pub wake_dependents: bool,
    /// Blue-green only: the rollout's metric facts.
    pub rollout: Option<RolloutReport>,
    /// The active selector moves.
    pub switch: Option<Switch>,
    /// A status manager of an older operator still owns status fields: once the status is written
    /// by the current one, the old one gives them up (so fields no longer set do not linger).
    pub release_legacy_status: bool,
}

impl Plan {
    /// The writes in order, batches flattened.
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.batches.iter().flat_map(|b| b.0.iter())
    }

    fn idle(generation: Option<i64>) -> Self {
        Self {
            batches: Vec::new(),
            generation,
            status: None,
            events: Vec::new(),
            checks: Vec::new(),
            settled: Vec::new(),
            requeue: Requeue::AwaitChange,
            wake_dependents: false,
            rollout: None,
            switch: None,
            release_legacy_status: false,
        }
    }

    /// The status to write, and whether the old status manager lets go after it. NB: with an old
    /// manager's entry the status is written even when unchanged, so the current manager owns
    /// every field before the old one gives them up (an old manager giving up fields no one
    /// else owns would delete them).
    fn set_status(&mut self, ms: &MicroService, next: MicroServiceStatus) {
        let legacy = ms.managed_fields().iter().any(is_legacy_status);
        self.release_legacy_status = legacy;
        self.status = if legacy { Some(next) } else { changed(ms.status.as_ref(), next) };
    }
}

/// What the workload (RollingUpdate or blue-green) planned, for the rest of the plan.
#[derive(Debug, Default)]
struct Workload {
    /// Writes in order (empty ones allowed); the optional children join the first batch.
    batches: Vec<Batch>,
    /// The Deployment the status is derived from (blue-green: the active revision).
    view: Option<DeploymentView>,
    /// A change of the workload waits for `dependsOn`.
    held: bool,
    /// Blue-green only.
    rollout: Option<blue_green::Rollout>,
}

/// What every step reads.
struct Ctx<'a> {
    ms: &'a MicroService,
    observed: &'a Observed,
    inputs: &'a Inputs,
    deps: &'a DependencyState,
    now: Timestamp,
}

/// Plans one reconcile of `observed.microservice` at `now`.
pub fn plan(observed: &Observed, now: Timestamp) -> Plan {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(Timestamp::UNIX_EPOCH);
    let ms = observed.microservice.as_ref();
    if ms.metadata.deletion_timestamp.is_some() {
        // NB: children are owned, so the garbage collector removes them; nothing to do.
        return Plan::idle(ms.metadata.generation);
    }
    match validation::check(ms) {
        Err(err) => park_invalid(observed, &err, &status::at_second(now)),
        Ok(extras) => reconcile(observed, extras, now),
    }
}

/// An invalid spec: `InvalidSpec` and nothing else written; wait for the next change.
fn park_invalid(observed: &Observed, err: &SpecError, now: &Time) -> Plan {
    let ms = observed.microservice.as_ref();
    let view = observed.deployment.as_deref().map(DeploymentView::from_deployment);
    let deps = DependencyState::default();
    let monitor =
        if service_monitor::wanted(ms) { MonitorState::Blocked } else { MonitorState::NotRequested };
    let obs = Observation {
        generation: ms.metadata.generation,
        dependencies: &deps,
        deployment: view.as_ref(),
        desired_replicas: desired::effective_replicas(ms),
        held: false,
        monitor,
        alerts: AlertsState::NotRequested,
        scaler: ScalerState::NotRequested,
        selector: labels::selector_string(ms),
        notes: vec![],
        rollout: None,
    };
    let next = status::invalid(ms.status.as_ref(), err, &obs, now);
    let mut plan = Plan::idle(ms.metadata.generation);
    plan.settled = observed.measurements.clone();
    plan.events = status::events(ms.status.as_ref(), &next);
    plan.wake_dependents = wakes_dependents(ms.status.as_ref(), &next);
    plan.set_status(ms, next);
    plan
}

fn reconcile(observed: &Observed, extras: PodExtras, now: Timestamp) -> Plan {
    let (ms, seed) = seed_replicas(observed.microservice.as_ref());
    let deps = dependency_gate(&ms, observed);
    let (config_hash, notes) = config_input(&ms, &observed.config);
    let inputs = Inputs {
        extras,
        dependencies: deps.resolved.clone(),
        config_hash,
        service_monitor_supported: observed.crds.service_monitors,
        prometheus_rule_supported: observed.crds.prometheus_rules,
        scaled_object_supported: observed.crds.scaled_objects,
    };
    let desired = desired::build(&ms, &inputs);
    let ctx = Ctx { ms: &ms, observed, inputs: &inputs, deps: &deps, now };
    let mut workload =
        if is_blue_green(&ms) { blue_green::plan(&ctx) } else { rolling::plan(&ctx, &desired) };
    let (optional, states) = optional_children(&ctx, &desired);
    join_first(&mut workload.batches, optional);
    if let Some(seed) = seed {
        workload.batches.insert(0, Batch(vec![seed]));
    }
    let batches = non_empty(std::mem::take(&mut workload.batches));
    let (view, rollout) = (workload.view.take(), workload.rollout.take());
    let obs = Observation {
        generation: ms.metadata.generation,
        dependencies: &deps,
        deployment: view.as_ref(),
        desired_replicas: desired::effective_replicas(&ms),
        held: workload.held,
        monitor: states.monitor,
        alerts: states.alerts,
        scaler: states.scaler,
        selector: labels::selector_string(&ms),
        notes,
        rollout: rollout.as_ref().map(|r| &r.summary),
    };
    let mut plan = finish(&ms, &observed.measurements, rollout.as_ref(), &obs, now);
    plan.batches = batches;
    plan
}

/// The status, Events, checks and requeue of a reconciled MicroService.
fn finish(
    ms: &MicroService,
    obs_measurements: &[Measurement],
    rollout: Option<&blue_green::Rollout>,
    obs: &Observation<'_>,
    now: Timestamp,
) -> Plan {
    let previous = ms.status.as_ref();
    let next = status::reconciled(previous, obs, &status::at_second(now));
    let mut events = status::events(previous, &next);
    let base = if obs.held || !obs.dependencies.ready() { DEPENDENCY_RECHECK } else { RESYNC };
    let mut plan = Plan::idle(ms.metadata.generation);
    if let Some(rollout) = rollout {
        let (report, rollout_events) = rollout.report(previous, &next, now);
        events.extend(rollout_events);
        plan.rollout = Some(report);
        plan.switch = rollout.switch.clone();
        plan.checks = rollout.checks.clone();
        plan.settled = rollout.settled.clone();
        let after = rollout.requeue.map(|r| r.max(ROLLOUT_REQUEUE_MIN) + ROLLOUT_REQUEUE_SLACK);
        plan.requeue = Requeue::After(after.map_or(base, |r| r.min(base)));
    } else {
        plan.requeue = Requeue::After(base);
        plan.settled = obs_measurements.to_vec();
    }
    plan.events = events;
    plan.wake_dependents = wakes_dependents(previous, &next);
    plan.set_status(ms, next);
    plan
}

/// `Some(next)` when it differs from the stored status.
fn changed(previous: Option<&MicroServiceStatus>, next: MicroServiceStatus) -> Option<MicroServiceStatus> {
    (previous != Some(&next)).then_some(next)
}

/// A first status means the MicroService just appeared: its dependents may have been waiting for
/// it to exist (or may now close a cycle), so they look again; so they do when it becomes (un)available.
fn wakes_dependents(previous: Option<&MicroServiceStatus>, next: &MicroServiceStatus) -> bool {
    let was_available = previous.is_some_and(|p| p.is_true(ct::AVAILABLE));
    previous.is_none() || was_available != next.is_true(ct::AVAILABLE)
}

/// With autoscaling and no replica count yet, `spec.replicas = minReplicas` is seeded first: an
/// autoscaler reads a missing count as 0 (scaling disabled), and the scale subresource cannot
/// write a field that does not exist. The rest of the plan reads the seeded object (the patch is
/// conditional on the observed resourceVersion, so when it lands the spec is exactly this, one
/// generation on).
fn seed_replicas(ms: &MicroService) -> (Cow<'_, MicroService>, Option<Write>) {
    let (Some(autoscaling), None) = (&ms.spec.autoscaling, ms.spec.replicas) else {
        return (Cow::Borrowed(ms), None);
    };
    let seed =
        Write::SeedReplicas { replicas: autoscaling.min_replicas, resource_version: ms.resource_version() };
    let mut seeded = ms.clone();
    seeded.spec.replicas = Some(autoscaling.min_replicas);
    seeded.metadata.generation = ms.metadata.generation.map(|g| g + 1);
    (Cow::Owned(seeded), Some(seed))
}

/// The `dependsOn` gate (with the cycle through this MicroService, if any).
fn dependency_gate(ms: &MicroService, observed: &Observed) -> DependencyState {
    let lookup = |name: &str| observed.dependencies.get(name).map(AsRef::as_ref);
    let mut deps = dependencies::resolve(ms, lookup);
    if ms.spec.depends_on.as_ref().is_some_and(|d| !d.is_empty()) && !observed.dependencies.is_empty() {
        let name = ms.name_any();
        let node = |n: &str| if n == name { Some(ms) } else { lookup(n) };
        deps.cycle = dependencies::cycle_through(&name, |n| {
            node(n).map(|m| m.spec.depends_on.iter().flatten().map(|d| d.name.clone()).collect())
        });
    }
    deps
}

/// The config hash the pod template carries, and a note for the message when the ConfigMap to
/// roll on is missing.
fn config_input(ms: &MicroService, config: &ConfigObs) -> (Option<String>, Vec<String>) {
    let name = ms.spec.config.as_ref().map(|c| c.name.as_str()).unwrap_or_default();
    match config {
        ConfigObs::NotRolled => (None, vec![]),
        ConfigObs::Missing => (None, vec![format!("ConfigMap {name} not found")]),
        ConfigObs::Data(hash) => (Some(hash.clone()), vec![]),
    }
}

/// What happened to the children whose CRD may not be served.
struct OptionalStates {
    monitor: MonitorState,
    alerts: AlertsState,
    scaler: ScalerState,
}

/// The HPA, PDB, ServiceMonitor, PrometheusRule and ScaledObject: independent of each other and of
/// the workload. The children of optional CRDs are written only while their CRD is served. The
/// HPA and the ScaledObject exclude each other: the desired one is applied and the other, if it
/// exists, deleted (in the same batch), so one MicroService never has two autoscalers.
fn optional_children(ctx: &Ctx<'_>, desired: &Desired) -> (Vec<Write>, OptionalStates) {
    let (ms, observed) = (ctx.ms, ctx.observed);
    let served = observed.crds;
    let monitor = match (service_monitor::wanted(ms), served.service_monitors) {
        (false, _) => MonitorState::NotRequested,
        (true, false) => MonitorState::CrdNotInstalled,
        (true, true) => MonitorState::Applied,
    };
    let alerts = match (prometheus_rule::wanted(ms).is_some(), served.prometheus_rules) {
        (false, _) => AlertsState::NotRequested,
        (true, false) => AlertsState::CrdNotInstalled,
        (true, true) => AlertsState::Applied,
    };
    let scaler = match (scaled_object::wanted(ms).is_some(), served.scaled_objects) {
        (false, _) => ScalerState::NotRequested,
        (true, false) => ScalerState::CrdNotInstalled,
        (true, true) => ScalerState::Applied,
    };
    // NB: the observed and the desired child of a kind have the same field name.
    macro_rules! child {
        ($field:ident, $kind:ident) => {
            ensure(ms, observed.$field.as_deref(), desired.$field.as_ref(), Child::$kind, ChildKind::$kind)
        };
    }
    let writes: Vec<Write> = [
        child!(autoscaler, HorizontalPodAutoscaler),
        child!(disruption_budget, PodDisruptionBudget),
        served.service_monitors.then(|| child!(service_monitor, ServiceMonitor)).flatten(),
        served.prometheus_rules.then(|| child!(prometheus_rule, PrometheusRule)).flatten(),
        served.scaled_objects.then(|| child!(scaled_object, ScaledObject)).flatten(),
    ]
    .into_iter()
    .flatten()
    .collect();
    (writes, OptionalStates { monitor, alerts, scaler })
}

/// Adds independent writes to the first batch (creating it when there is none).
fn join_first(batches: &mut Vec<Batch>, writes: Vec<Write>) {
    if writes.is_empty() {
        return;
    }
    match batches.first_mut() {
        Some(first) => first.0.extend(writes),
        None => batches.push(Batch(writes)),
    }
}

/// Drops empty batches.
fn non_empty(batches: Vec<Batch>) -> Vec<Batch> {
    batches.into_iter().filter(|b| !b.0.is_empty()).collect()
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests;
