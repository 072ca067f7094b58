//! Pure derivation of a MicroService's status (phase, conditions, counts, message) and of the Events
//! that go with its transitions.
//!
//! Conditions are assembled in one place, [`assemble`], whatever the situation: a reconcile that
//! applied everything ([`reconciled`]), a spec that cannot be reconciled ([`invalid`]), a child
//! write the API server refused ([`after_failed_write`]). Each keeps a condition's
//! `lastTransitionTime` while its status is unchanged, so deriving twice from the same facts yields
//! an equal status and the reconciler can skip the write. Reasons are [`Reason`]s.

mod events;
mod view;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

pub use events::{EventKind, EventReason, StatusEvent, events};
pub use view::{DeploymentCondition, DeploymentView};

use crate::{
    crd::{BlueGreenStatus, MicroServiceStatus, Phase, Reason, condition_type as ct},
    dependencies::DependencyState,
    validation::SpecError,
};

/// What happened to the ServiceMonitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorState {
    /// Monitoring is off.
    NotRequested,
    /// Monitoring is on but the ServiceMonitor CRD is not served.
    CrdNotInstalled,
    /// The ServiceMonitor is applied.
    Applied,
    /// Nothing was applied because the spec is invalid.
    Blocked,
}

/// What happened to the PrometheusRule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertsState {
    /// `monitoring.alerts` is absent or disabled.
    NotRequested,
    /// Alerts are asked for but the PrometheusRule CRD is not served.
    CrdNotInstalled,
    /// The PrometheusRule is applied.
    Applied,
}

/// What happened to the KEDA ScaledObject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalerState {
    /// `spec.autoscaling` sets no gRPC target (an HPA, or no autoscaler at all).
    NotRequested,
    /// A gRPC target is set but the ScaledObject CRD (KEDA) is not served: no autoscaler runs.
    CrdNotInstalled,
    /// The ScaledObject is applied.
    Applied,
}

/// What a blue-green decision says about the MicroService, for its status.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSummary {
    /// The rollout's phase.
    pub phase: Phase,
    /// One-line summary.
    pub message: String,
    /// The reason of `Progressing` (and of `Promoted=False`): the step the rollout is in.
    pub step: Reason,
    /// A rollout is in flight.
    pub progressing: bool,
    /// Why the rollout is degraded, if it is.
    pub degraded: Option<(Reason, String)>,
    /// The active Service selects the current spec's revision.
    pub promoted: bool,
    /// The revision the active Service selects.
    pub active: String,
    /// `status.selector`: the MicroService's pods of the active revision (what the HPA measures).
    pub selector: String,
    /// `status.blueGreen`, check results included.
    pub blue_green: BlueGreenStatus,
}

/// Everything the status of a reconciled MicroService is derived from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// `metadata.generation` of the MicroService.
    pub generation: Option<i64>,
    /// State of the `dependsOn` gate.
    pub dependencies: &'a DependencyState,
    /// The Deployment (blue-green: the active revision's) as last seen, if it exists.
    pub deployment: Option<&'a DeploymentView>,
    /// Pods the Deployment should run.
    pub desired_replicas: i32,
    /// A Deployment change is waiting for dependencies.
    pub held: bool,
    /// ServiceMonitor state.
    pub monitor: MonitorState,
    /// PrometheusRule state.
    pub alerts: AlertsState,
    /// ScaledObject state.
    pub scaler: ScalerState,
    /// The pod selector string.
    pub selector: String,
    /// Extra remarks for the message (for example a missing ConfigMap).
    pub notes: Vec<String>,
    /// Blue-green only: what the rollout decided.
    pub rollout: Option<&'a RolloutSummary>,
}

/// A child write (apply, scale, delete) that failed: the API server refused it, or it never got an
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildFailure {
    /// Kind of the child, e.g. `Deployment`.
    pub kind: String,
    /// Name of the child.
    pub name: String,
    /// HTTP status of the answer, if there was one.
    pub code: Option<u16>,
    /// The API server's message (or the transport error).
    pub message: String,
}

impl ChildFailure {
    /// `Kind name: message`, the text of the condition and the Event.
    pub fn describe(&self) -> String {
        format!("{} {}: {}", self.kind, self.name, self.message)
    }

    /// A 422: the spec makes a child the API server finds invalid. Retrying cannot help; the
    /// MicroService waits for a change of its spec.
    pub fn is_invalid(&self) -> bool {
        self.code == Some(422)
    }
}

/// `metav1.Time` at the second precision the API server keeps.
pub fn at_second(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// `metav1.Time` now, at the second precision the API server keeps.
pub fn now() -> Time {
    at_second(Timestamp::now())
}

/// A condition to set: its type, status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCondition {
    type_: &'static str,
    status: bool,
    reason: Reason,
    message: String,
}

fn cond(type_: &'static str, status: bool, reason: Reason, message: impl Into<String>) -> NewCondition {
    NewCondition { type_, status, reason, message: message.into() }
}

/// What happens to the conditions a status write does not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Others {
    /// They keep what the previous status says (a status that reports one fact, such as a failed
    /// write, leaves the others as they were).
    Keep,
    /// They are dropped (a reconcile looked at everything).
    Drop,
}

/// The one place conditions are assembled. For every condition type, in the fixed order of
/// [`ct::ORDER`]: the one in `set`; else, with [`Others::Keep`], the previous one unchanged; else
/// the one in `fallback`; else none. A set or fallback condition keeps its previous
/// `lastTransitionTime` while its status is unchanged.
fn assemble(
    previous: Option<&MicroServiceStatus>,
    set: &[NewCondition],
    others: Others,
    fallback: &[NewCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let find = |list: &[NewCondition], type_: &str| list.iter().find(|c| c.type_ == type_).cloned();
    let kept = |type_: &str| previous.and_then(|p| p.condition(type_)).cloned();
    ct::ORDER
        .iter()
        .filter_map(|type_| {
            if let Some(new) = find(set, type_) {
                return Some(merge_condition(previous, new, generation, now));
            }
            if others == Others::Keep
                && let Some(old) = kept(type_)
            {
                return Some(old);
            }
            find(fallback, type_).map(|new| merge_condition(previous, new, generation, now))
        })
        .collect()
}

fn merge_condition(
    previous: Option<&MicroServiceStatus>,
    new: NewCondition,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if new.status { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.condition(new.type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: new.type_.into(),
        status: status.into(),
        reason: new.reason.as_str().into(),
        message: new.message,
        observed_generation: generation,
        last_transition_time,
    }
}

// === the conditions, one function each ===

fn dependencies_condition(deps: &DependencyState) -> NewCondition {
    let (status, reason) = match (deps.ready(), deps.resolved.is_empty()) {
        (true, true) => (true, Reason::NoDependencies),
        (true, false) => (true, Reason::AllAvailable),
        (false, _) => (false, Reason::DependenciesNotReady),
    };
    cond(ct::DEPENDENCIES_READY, status, reason, deps.summary())
}

fn available_condition(d: Option<&DeploymentView>, held: bool, desired: i32) -> NewCondition {
    match d {
        Some(v) => {
            // The Deployment's own Available is "minimum availability", which a single replica
            // with maxSurge 0 meets with no pod at all; Ferry's also needs a pod serving.
            let serving = desired == 0 || v.available_replicas > 0;
            let (status, reason) = if v.is_true("Available") && serving {
                (true, Reason::MinimumReplicasAvailable)
            } else {
                (false, Reason::MinimumReplicasUnavailable)
            };
            let message = format!("{} of {desired} pods available", v.available_replicas);
            cond(ct::AVAILABLE, status, reason, message)
        }
        None if held => cond(
            ct::AVAILABLE,
            false,
            Reason::WaitingForDependencies,
            "no pods yet: waiting for dependencies",
        ),
        None => cond(ct::AVAILABLE, false, Reason::DeploymentNotFound, "the Deployment does not exist yet"),
    }
}

/// The Deployment's own `Progressing=False, ProgressDeadlineExceeded`, if it reports it.
fn deadline_exceeded(d: Option<&DeploymentView>) -> Option<&DeploymentCondition> {
    d.and_then(|v| v.condition("Progressing")).filter(|c| c.reason == "ProgressDeadlineExceeded")
}

fn progressing_condition(obs: &Observation<'_>) -> NewCondition {
    let (d, desired) = (obs.deployment, obs.desired_replicas);
    let complete = d.is_some_and(|v| {
        v.observed_generation >= v.generation
            && v.updated_replicas == desired
            && v.replicas == desired
            && v.available_replicas == desired
    });
    if obs.held {
        let message = format!("rollout held: {}", obs.dependencies.summary());
        cond(ct::PROGRESSING, false, Reason::WaitingForDependencies, message)
    } else if let Some(c) = deadline_exceeded(d) {
        let message = c.message.clone();
        cond(ct::PROGRESSING, false, Reason::ProgressDeadlineExceeded, message)
    } else if complete {
        let message = "every pod runs the current template";
        cond(ct::PROGRESSING, false, Reason::RolloutComplete, message)
    } else {
        let (updated, available) = d.map_or((0, 0), |v| (v.updated_replicas, v.available_replicas));
        let message = format!("{updated} of {desired} pods updated, {available} available");
        cond(ct::PROGRESSING, true, Reason::RolloutInProgress, message)
    }
}

fn degraded_condition(d: Option<&DeploymentView>) -> NewCondition {
    let replica_failure = d.and_then(|v| v.condition("ReplicaFailure")).filter(|c| c.is_true());
    if let Some(c) = deadline_exceeded(d) {
        cond(ct::DEGRADED, true, Reason::ProgressDeadlineExceeded, c.message.clone())
    } else if let Some(c) = replica_failure {
        cond(ct::DEGRADED, true, Reason::ReplicaFailure, c.message.clone())
    } else {
        cond(ct::DEGRADED, false, Reason::AsExpected, "")
    }
}

fn monitor_condition(state: MonitorState) -> NewCondition {
    let (status, reason, message) = match state {
        MonitorState::NotRequested => (false, Reason::NotRequested, "monitoring is off"),
        MonitorState::CrdNotInstalled => (
            false,
            Reason::CrdNotInstalled,
            "servicemonitors.monitoring.coreos.com is not served by this cluster; install the Prometheus Operator CRDs to get a ServiceMonitor",
        ),
        MonitorState::Applied => (true, Reason::Applied, "the ServiceMonitor is applied"),
        MonitorState::Blocked => (false, Reason::InvalidSpec, "not applied while the spec is invalid"),
    };
    cond(ct::SERVICE_MONITOR_READY, status, reason, message)
}

/// `PrometheusRuleReady`; a MicroService that never asked for alerts gets none.
fn alerts_condition(state: AlertsState, previous: Option<&MicroServiceStatus>) -> Option<NewCondition> {
    let had = previous.is_some_and(|p| p.condition(ct::PROMETHEUS_RULE_READY).is_some());
    let (status, reason, message) = match state {
        AlertsState::NotRequested if !had => return None,
        AlertsState::NotRequested => (false, Reason::NotRequested, "monitoring.alerts is off"),
        AlertsState::CrdNotInstalled => (
            false,
            Reason::CrdNotInstalled,
            "prometheusrules.monitoring.coreos.com is not served by this cluster; install the Prometheus Operator CRDs to get the alert rules",
        ),
        AlertsState::Applied => (true, Reason::Applied, "the PrometheusRule is applied"),
    };
    Some(cond(ct::PROMETHEUS_RULE_READY, status, reason, message))
}

/// `ScaledObjectReady`; a MicroService that never set a gRPC autoscaling target gets none.
fn scaler_condition(state: ScalerState, previous: Option<&MicroServiceStatus>) -> Option<NewCondition> {
    let had = previous.is_some_and(|p| p.condition(ct::SCALED_OBJECT_READY).is_some());
    let (status, reason, message) = match state {
        ScalerState::NotRequested if !had => return None,
        ScalerState::NotRequested => {
            (false, Reason::NotRequested, "autoscaling sets no gRPC target; no ScaledObject is needed")
        }
        ScalerState::CrdNotInstalled => (
            false,
            Reason::CrdNotInstalled,
            "scaledobjects.keda.sh is not served by this cluster; install KEDA to autoscale on gRPC latency or request rate (until then nothing autoscales and spec.replicas stays as it is)",
        ),
        ScalerState::Applied => (true, Reason::Applied, "the KEDA ScaledObject is applied"),
    };
    Some(cond(ct::SCALED_OBJECT_READY, status, reason, message))
}

fn promoted_condition(rollout: &RolloutSummary) -> NewCondition {
    let message = format!("the active Service selects revision {}", rollout.active);
    if rollout.promoted {
        cond(ct::PROMOTED, true, Reason::ActiveIsCurrent, message)
    } else {
        cond(ct::PROMOTED, false, rollout.step, message)
    }
}

/// The RollingUpdate phase and message, from the conditions (before a rollout overrides them).
fn phase_and_message(
    obs: &Observation<'_>,
    available: &NewCondition,
    progressing: &NewCondition,
    degraded: &NewCondition,
) -> (Phase, String) {
    let d = obs.deployment;
    let phase = if degraded.status {
        Phase::Degraded
    } else if d.is_none() || obs.held {
        Phase::Pending
    } else if progressing.status || !available.status {
        Phase::Progressing
    } else {
        Phase::Healthy
    };
    let message = match phase {
        Phase::Degraded => degraded.message.clone(),
        Phase::Pending if obs.held => {
            format!("waiting for dependencies: {}", obs.dependencies.summary())
        }
        Phase::Pending => "creating the Deployment".to_string(),
        Phase::Healthy => {
            let ready = d.map_or(0, |v| v.ready_replicas);
            format!("{ready} of {} pods ready", obs.desired_replicas)
        }
        _ => progressing.message.clone(),
    };
    (phase, message)
}

/// Counts, `ready`, selector and generation, from the Deployment.
fn counted(
    generation: Option<i64>,
    d: Option<&DeploymentView>,
    desired: i32,
    selector: String,
) -> MicroServiceStatus {
    let view = d.cloned().unwrap_or_default();
    MicroServiceStatus {
        observed_generation: generation,
        replicas: view.replicas,
        ready_replicas: view.ready_replicas,
        available_replicas: view.available_replicas,
        updated_replicas: view.updated_replicas,
        ready: Some(format!("{}/{desired}", view.ready_replicas)),
        selector: Some(selector),
        ..MicroServiceStatus::default()
    }
}

/// The status after a reconcile that applied every child: every condition from what it observed,
/// `Synced=True`, and with a blue-green rollout its phase, message, `Progressing`, `Degraded`,
/// `Promoted`, the revision selector and `status.blueGreen`.
pub fn reconciled(
    previous: Option<&MicroServiceStatus>,
    obs: &Observation<'_>,
    now: &Time,
) -> MicroServiceStatus {
    let d = obs.deployment;
    let available = available_condition(d, obs.held, obs.desired_replicas);
    let mut progressing = progressing_condition(obs);
    let mut degraded = degraded_condition(d);
    let (mut phase, mut message) = phase_and_message(obs, &available, &progressing, &degraded);
    let mut status = counted(obs.generation, d, obs.desired_replicas, obs.selector.clone());
    let mut set = vec![
        dependencies_condition(obs.dependencies),
        monitor_condition(obs.monitor),
        cond(ct::INVALID_SPEC, false, Reason::Valid, ""),
        cond(ct::SYNCED, true, Reason::AllApplied, "every child is applied"),
    ];
    set.extend(alerts_condition(obs.alerts, previous));
    set.extend(scaler_condition(obs.scaler, previous));
    for note in &obs.notes {
        message.push_str("; ");
        message.push_str(note);
    }
    if let Some(rollout) = obs.rollout {
        // NB: while the new revision waits for its dependencies, the phase says so (Pending).
        if phase != Phase::Pending {
            phase = rollout.phase;
            message = rollout.message.clone();
            progressing = cond(ct::PROGRESSING, rollout.progressing, rollout.step, rollout.message.clone());
            degraded = match &rollout.degraded {
                Some((reason, why)) => cond(ct::DEGRADED, true, *reason, why.clone()),
                None => cond(ct::DEGRADED, false, Reason::AsExpected, ""),
            };
        }
        set.push(promoted_condition(rollout));
        status.selector = Some(rollout.selector.clone());
        status.blue_green = Some(rollout.blue_green.clone());
    }
    set.extend([available, progressing, degraded]);
    status.phase = phase;
    status.message = Some(message);
    status.conditions = assemble(previous, &set, Others::Drop, &[], obs.generation, now);
    status
}

/// The status of a spec that cannot be reconciled: `InvalidSpec=True` with its reason, phase
/// Invalid, and every other condition (and `status.blueGreen`) as it was; a first status gets the
/// other standard conditions from what is observed.
pub fn invalid(
    previous: Option<&MicroServiceStatus>,
    err: &SpecError,
    obs: &Observation<'_>,
    now: &Time,
) -> MicroServiceStatus {
    let d = obs.deployment;
    let mut status = counted(obs.generation, d, obs.desired_replicas, obs.selector.clone());
    let set = [cond(ct::INVALID_SPEC, true, err.reason, err.message.clone())];
    let fallback = [
        available_condition(d, obs.held, obs.desired_replicas),
        progressing_condition(obs),
        degraded_condition(d),
        dependencies_condition(obs.dependencies),
        monitor_condition(obs.monitor),
    ];
    status.phase = Phase::Invalid;
    status.message = Some(err.message.clone());
    status.blue_green = previous.and_then(|p| p.blue_green.clone());
    status.conditions = assemble(previous, &set, Others::Keep, &fallback, obs.generation, now);
    status
}

/// The status after a failed child write: everything else as it was, `Synced=False` naming the
/// child with the API server's message, and with it `InvalidSpec` (a 422: phase Invalid) or
/// `Degraded` (anything else: phase Degraded, retried with backoff).
pub fn after_failed_write(
    previous: Option<&MicroServiceStatus>,
    generation: Option<i64>,
    failure: &ChildFailure,
    now: &Time,
) -> MicroServiceStatus {
    let mut next = previous.cloned().unwrap_or_default();
    let message = failure.describe();
    let refused = failure.code.is_some_and(|c| (400..500).contains(&c));
    let synced_reason = if refused { Reason::ChildRejected } else { Reason::ChildWriteFailed };
    let (type_, reason, phase) = if failure.is_invalid() {
        (ct::INVALID_SPEC, Reason::RejectedByApiServer, Phase::Invalid)
    } else {
        (ct::DEGRADED, Reason::ChildWriteFailed, Phase::Degraded)
    };
    let set =
        [cond(ct::SYNCED, false, synced_reason, message.clone()), cond(type_, true, reason, message.clone())];
    next.observed_generation = generation;
    next.conditions = assemble(previous, &set, Others::Keep, &[], generation, now);
    next.phase = phase;
    next.message = Some(message);
    next
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dependencies::ResolvedDependency;

    fn derive(previous: Option<&MicroServiceStatus>, obs: &Observation<'_>, now: Time) -> MicroServiceStatus {
        reconciled(previous, obs, &now)
    }

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        available: i32,
    ) -> DeploymentView {
        DeploymentView {
            generation,
            observed_generation: observed,
            replicas,
            ready_replicas: available,
            available_replicas: available,
            updated_replicas: updated,
            conditions: vec![DeploymentCondition::new(
                "Available",
                if available > 0 { "True" } else { "False" },
                "",
                "",
            )],
        }
    }

    fn obs<'a>(deps: &'a DependencyState, d: Option<&'a DeploymentView>) -> Observation<'a> {
        Observation {
            generation: Some(3),
            dependencies: deps,
            deployment: d,
            desired_replicas: 2,
            held: false,
            monitor: MonitorState::NotRequested,
            alerts: AlertsState::NotRequested,
            scaler: ScalerState::NotRequested,
            selector: "ferry.dev/microservice=order".into(),
            notes: vec![],
            rollout: None,
        }
    }

    fn t(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    fn status_of<'a>(s: &'a MicroServiceStatus, type_: &str) -> (&'a str, &'a str) {
        let c = s.condition(type_).expect("condition present");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_deployment_at_minimum_availability_with_no_pod_available_is_not_available() {
        // One replica with maxSurge 0 allows one unavailable pod, so the Deployment reports
        // Available=True with nothing running; a dependsOn gate must not open on that.
        let deps = DependencyState::default();
        let mut d = deployment(2, 2, 1, 1, 0);
        d.conditions = vec![DeploymentCondition::new("Available", "True", "MinimumReplicasAvailable", "")];
        let mut o = obs(&deps, Some(&d));
        o.desired_replicas = 1;
        let s = derive(None, &o, t(10));
        assert_eq!(status_of(&s, "Available"), ("False", "MinimumReplicasUnavailable"));

        d.available_replicas = 1;
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(status_of(&s, "Available"), ("True", "MinimumReplicasAvailable"));
    }

    #[test]
    fn a_fully_rolled_out_deployment_is_healthy_and_available() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(s.phase, Phase::Healthy);
        assert_eq!(status_of(&s, "Available"), ("True", "MinimumReplicasAvailable"));
        assert_eq!(status_of(&s, "Progressing"), ("False", "RolloutComplete"));
        assert_eq!(status_of(&s, "Degraded"), ("False", "AsExpected"));
        assert_eq!(status_of(&s, "InvalidSpec"), ("False", "Valid"));
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.selector.as_deref(), Some("ferry.dev/microservice=order"));
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    fn quota_failure() -> ChildFailure {
        ChildFailure {
            kind: "HorizontalPodAutoscaler".into(),
            name: "order".into(),
            code: Some(403),
            message: "exceeded quota: no-hpas".into(),
        }
    }

    #[test]
    fn a_refused_child_write_names_the_child_in_synced_and_degraded_and_warns_once() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let healthy = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(status_of(&healthy, "Synced"), ("True", "AllApplied"));

        let failed = after_failed_write(Some(&healthy), Some(4), &quota_failure(), &t(20));
        assert_eq!(status_of(&failed, "Synced"), ("False", "ChildRejected"));
        assert_eq!(status_of(&failed, "Degraded"), ("True", "ChildWriteFailed"));
        let message = &failed.condition("Synced").expect("synced").message;
        assert_eq!(message, "HorizontalPodAutoscaler order: exceeded quota: no-hpas");
        assert_eq!(failed.phase, Phase::Degraded);
        assert_eq!(failed.observed_generation, Some(4));
        assert_eq!(status_of(&failed, "Available"), ("True", "MinimumReplicasAvailable"));
        let reasons: Vec<_> = events(Some(&healthy), &failed).iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [EventReason::ChildWriteFailed], "one Warning, not a Degraded one too");
        // The same failure on a retry: the same status, no Event.
        let again = after_failed_write(Some(&failed), Some(4), &quota_failure(), &t(30));
        assert_eq!(again, failed);
        assert!(events(Some(&failed), &again).is_empty());
        // Another failure is announced.
        let mut other = quota_failure();
        other.kind = "PodDisruptionBudget".into();
        let next = after_failed_write(Some(&failed), Some(4), &other, &t(40));
        assert_eq!(events(Some(&failed), &next).len(), 1);
    }

    #[test]
    fn a_child_the_api_server_finds_invalid_parks_the_spec_with_one_warning() {
        let failure = ChildFailure {
            kind: "Deployment".into(),
            name: "order".into(),
            code: Some(422),
            message: "spec.template.spec.tolerations[0].operator: Unsupported value".into(),
        };
        assert!(failure.is_invalid());
        let failed = after_failed_write(None, Some(1), &failure, &t(10));
        assert_eq!(failed.phase, Phase::Invalid);
        assert_eq!(status_of(&failed, "InvalidSpec"), ("True", "RejectedByAPIServer"));
        assert_eq!(status_of(&failed, "Synced"), ("False", "ChildRejected"));
        let reasons: Vec<_> = events(None, &failed).iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [EventReason::ChildWriteFailed]);
        let unanswered = ChildFailure { code: None, ..failure };
        let failed = after_failed_write(None, Some(1), &unanswered, &t(10));
        assert_eq!(status_of(&failed, "Synced"), ("False", "ChildWriteFailed"));
    }

    #[test]
    fn every_standard_condition_is_always_present() {
        let deps = DependencyState::default();
        let s = derive(None, &obs(&deps, None), t(10));
        for type_ in &ct::ORDER[..ct::STANDARD] {
            assert!(s.condition(type_).is_some(), "missing {type_}");
        }
    }

    #[test]
    fn a_rollout_in_flight_is_progressing() {
        let deps = DependencyState::default();
        let d = deployment(3, 3, 3, 1, 2);
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(status_of(&s, "Progressing"), ("True", "RolloutInProgress"));
        assert_eq!(status_of(&s, "Available"), ("True", "MinimumReplicasAvailable"));
    }

    #[test]
    fn a_deployment_not_yet_observed_by_its_controller_is_progressing() {
        let deps = DependencyState::default();
        let d = deployment(4, 3, 2, 2, 2);
        assert_eq!(derive(None, &obs(&deps, Some(&d)), t(10)).phase, Phase::Progressing);
    }

    #[test]
    fn no_deployment_yet_is_pending_and_not_available() {
        let deps = DependencyState::default();
        let s = derive(None, &obs(&deps, None), t(10));
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(status_of(&s, "Available"), ("False", "DeploymentNotFound"));
    }

    #[test]
    fn a_progress_deadline_exceeded_is_degraded() {
        let deps = DependencyState::default();
        let mut d = deployment(2, 2, 2, 1, 1);
        d.conditions.push(DeploymentCondition::new(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "ReplicaSet has timed out",
        ));
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(s.phase, Phase::Degraded);
        assert_eq!(status_of(&s, "Degraded"), ("True", "ProgressDeadlineExceeded"));
        assert_eq!(status_of(&s, "Progressing"), ("False", "ProgressDeadlineExceeded"));
        assert_eq!(s.message.as_deref(), Some("ReplicaSet has timed out"));
    }

    #[test]
    fn a_replica_failure_is_degraded() {
        let deps = DependencyState::default();
        let mut d = deployment(2, 2, 0, 0, 0);
        d.conditions.push(DeploymentCondition::new("ReplicaFailure", "True", "FailedCreate", "forbidden"));
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(status_of(&s, "Degraded"), ("True", "ReplicaFailure"));
    }

    #[test]
    fn unready_dependencies_hold_the_rollout_and_say_which() {
        let deps = DependencyState {
            resolved: vec![ResolvedDependency {
                name: "inventory".into(),
                env: "INVENTORY_ADDR".into(),
                address: "inventory.shop.svc:50051".into(),
                available: false,
            }],
            ..DependencyState::default()
        };
        let o = Observation { held: true, ..obs(&deps, None) };
        let s = derive(None, &o, t(10));
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(status_of(&s, "DependenciesReady"), ("False", "DependenciesNotReady"));
        assert_eq!(status_of(&s, "Progressing"), ("False", "WaitingForDependencies"));
        assert_eq!(status_of(&s, "Available"), ("False", "WaitingForDependencies"));
        assert!(s.message.as_deref().expect("message").contains("not Available: inventory"));
    }

    #[test]
    fn an_invalid_spec_is_reported_with_its_reason_and_message() {
        let deps = DependencyState::default();
        let err =
            SpecError { reason: Reason::InvalidPassThroughField, message: "spec.pod.affinity is bad".into() };
        let s = invalid(None, &err, &obs(&deps, None), &t(10));
        assert_eq!(s.phase, Phase::Invalid);
        assert_eq!(status_of(&s, "InvalidSpec"), ("True", "InvalidPassThroughField"));
        assert_eq!(s.message.as_deref(), Some("spec.pod.affinity is bad"));
    }

    #[test]
    fn a_missing_service_monitor_crd_is_explained() {
        let deps = DependencyState::default();
        let o = Observation { monitor: MonitorState::CrdNotInstalled, ..obs(&deps, None) };
        let s = derive(None, &o, t(10));
        assert_eq!(status_of(&s, "ServiceMonitorReady"), ("False", "CRDNotInstalled"));
        let o = Observation { monitor: MonitorState::Applied, ..obs(&deps, None) };
        assert_eq!(status_of(&derive(None, &o, t(10)), "ServiceMonitorReady"), ("True", "Applied"));
    }

    #[test]
    fn deriving_twice_from_the_same_facts_gives_an_equal_status_so_nothing_is_written() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let first = derive(None, &obs(&deps, Some(&d)), t(10));
        let second = derive(Some(&first), &obs(&deps, Some(&d)), t(99));
        assert_eq!(first, second);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let deps = DependencyState::default();
        let progressing = deployment(2, 2, 2, 1, 1);
        let first = derive(None, &obs(&deps, Some(&progressing)), t(10));
        let done = deployment(2, 2, 2, 2, 2);
        let second = derive(Some(&first), &obs(&deps, Some(&done)), t(20));
        let time =
            |s: &MicroServiceStatus, ty: &str| s.condition(ty).expect("c").last_transition_time.clone();
        assert_eq!(time(&second, "Available"), t(10));
        assert_eq!(time(&second, "Progressing"), t(20));
    }

    #[test]
    fn events_fire_on_transitions_only() {
        let deps = DependencyState::default();
        let healthy = derive(None, &obs(&deps, Some(&deployment(2, 2, 2, 2, 2))), t(10));
        let reasons = |e: Vec<StatusEvent>| e.into_iter().map(|e| e.reason).collect::<Vec<_>>();
        assert_eq!(reasons(events(None, &healthy)), ["Available"]);
        assert!(events(Some(&healthy), &healthy).is_empty());

        let mut stuck = deployment(2, 2, 2, 1, 1);
        stuck.conditions.push(DeploymentCondition::new(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "x",
        ));
        let degraded = derive(Some(&healthy), &obs(&deps, Some(&stuck)), t(20));
        assert_eq!(reasons(events(Some(&healthy), &degraded)), ["Degraded"]);
        assert!(events(Some(&degraded), &degraded).is_empty());

        let recovered = derive(Some(&degraded), &obs(&deps, Some(&deployment(2, 2, 2, 2, 2))), t(30));
        assert_eq!(reasons(events(Some(&degraded), &recovered)), ["Recovered"]);
    }

    #[test]
    fn a_missing_service_monitor_crd_is_announced_once() {
        let deps = DependencyState::default();
        let o = Observation { monitor: MonitorState::CrdNotInstalled, ..obs(&deps, None) };
        let first = derive(None, &o, t(10));
        assert!(events(None, &first).iter().any(|e| e.reason == "ServiceMonitorUnavailable"));
        let second = derive(Some(&first), &o, t(20));
        assert!(events(Some(&first), &second).is_empty());
    }

    fn alerts_status(
        state: AlertsState,
        previous: Option<&MicroServiceStatus>,
        at: i64,
    ) -> MicroServiceStatus {
        let deps = DependencyState::default();
        let o = Observation { alerts: state, ..obs(&deps, None) };
        derive(previous, &o, t(at))
    }

    #[test]
    fn a_missing_prometheus_rule_crd_is_explained_and_announced_once() {
        let first = alerts_status(AlertsState::CrdNotInstalled, None, 10);
        assert_eq!(status_of(&first, ct::PROMETHEUS_RULE_READY), ("False", "CRDNotInstalled"));
        let message = &first.condition(ct::PROMETHEUS_RULE_READY).expect("c").message;
        assert!(message.contains("prometheusrules.monitoring.coreos.com"));
        assert!(events(None, &first).iter().any(|e| e.reason == EventReason::PrometheusRuleUnavailable));
        let second = alerts_status(AlertsState::CrdNotInstalled, Some(&first), 20);
        assert!(events(Some(&first), &second).is_empty());
        let c = second.condition(ct::PROMETHEUS_RULE_READY).expect("c");
        assert_eq!(c.last_transition_time, t(10));
    }

    #[test]
    fn an_applied_rule_makes_the_condition_true() {
        let previous = alerts_status(AlertsState::CrdNotInstalled, None, 10);
        let next = alerts_status(AlertsState::Applied, Some(&previous), 20);
        assert_eq!(status_of(&next, ct::PROMETHEUS_RULE_READY), ("True", "Applied"));
        let c = next.condition(ct::PROMETHEUS_RULE_READY).expect("c");
        assert_eq!(c.last_transition_time, t(20));
        assert!(
            !events(Some(&previous), &next)
                .iter()
                .any(|e| e.reason == EventReason::PrometheusRuleUnavailable)
        );
    }

    #[test]
    fn a_service_that_never_asked_for_alerts_gets_no_condition_and_one_that_stopped_is_told() {
        assert!(
            alerts_status(AlertsState::NotRequested, None, 10).condition(ct::PROMETHEUS_RULE_READY).is_none()
        );
        let applied = alerts_status(AlertsState::Applied, None, 10);
        let off = alerts_status(AlertsState::NotRequested, Some(&applied), 20);
        assert_eq!(status_of(&off, ct::PROMETHEUS_RULE_READY), ("False", "NotRequested"));
    }

    fn rollout(step: Reason, phase: Phase, active: &str, promoted: bool) -> RolloutSummary {
        RolloutSummary {
            phase,
            message: "m".into(),
            step,
            progressing: !promoted,
            degraded: None,
            promoted,
            active: active.into(),
            selector: format!("ferry.dev/microservice=order,ferry.dev/revision={active}"),
            blue_green: BlueGreenStatus::default(),
        }
    }

    #[test]
    fn a_rollout_sets_phase_progressing_promoted_selector_and_its_status() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let r = rollout(Reason::WaitingForPreview, Phase::Progressing, "aaa", false);
        let o = Observation { rollout: Some(&r), ..obs(&deps, Some(&d)) };
        let s = derive(None, &o, t(10));
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(s.message.as_deref(), Some("m"));
        assert_eq!(s.selector.as_deref(), Some("ferry.dev/microservice=order,ferry.dev/revision=aaa"));
        assert_eq!(status_of(&s, ct::PROGRESSING), ("True", "WaitingForPreview"));
        assert_eq!(status_of(&s, ct::PROMOTED), ("False", "WaitingForPreview"));
        assert!(s.blue_green.is_some());
        let mut degraded = rollout(Reason::RolloutAborted, Phase::Degraded, "aaa", false);
        degraded.degraded = Some((Reason::ReplicaFailure, "quota".into()));
        let o = Observation { rollout: Some(&degraded), ..obs(&deps, Some(&d)) };
        assert_eq!(status_of(&derive(None, &o, t(10)), ct::DEGRADED), ("True", "ReplicaFailure"));
    }

    #[test]
    fn a_rollout_held_by_dependencies_stays_pending_but_reports_promoted() {
        let deps = DependencyState::default();
        let r = rollout(Reason::WaitingForPreview, Phase::Progressing, "aaa", false);
        let o = Observation { held: true, rollout: Some(&r), ..obs(&deps, None) };
        let s = derive(None, &o, t(10));
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(status_of(&s, ct::PROGRESSING), ("False", "WaitingForDependencies"));
        assert_eq!(status_of(&s, ct::PROMOTED).0, "False");
    }

    #[test]
    fn an_invalid_spec_keeps_every_other_condition_and_the_rollout_record() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let r = rollout(Reason::RolloutComplete, Phase::Healthy, "aaa", true);
        let o = Observation { rollout: Some(&r), ..obs(&deps, Some(&d)) };
        let healthy = derive(None, &o, t(10));
        let err =
            SpecError { reason: Reason::InvalidPassThroughField, message: "spec.pod.affinity is bad".into() };
        let parked = invalid(Some(&healthy), &err, &obs(&deps, Some(&d)), &t(20));
        for type_ in [ct::AVAILABLE, ct::PROGRESSING, ct::SYNCED, ct::PROMOTED] {
            assert_eq!(parked.condition(type_), healthy.condition(type_), "{type_} kept");
        }
        assert_eq!(status_of(&parked, ct::INVALID_SPEC), ("True", "InvalidPassThroughField"));
        assert_eq!(parked.blue_green, healthy.blue_green);
    }

    #[test]
    fn notes_are_appended_to_the_message() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let o =
            Observation { notes: vec!["ConfigMap order-config not found".into()], ..obs(&deps, Some(&d)) };
        let s = derive(None, &o, t(10));
        assert_eq!(s.message.as_deref(), Some("2 of 2 pods ready; ConfigMap order-config not found"));
    }
}
