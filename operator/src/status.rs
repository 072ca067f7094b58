//! Pure derivation of a MicroService's status (phase, conditions, counts, message) and of the Events
//! that go with its transitions.
//!
//! The reconciler gathers an [`Observation`]; [`derive`] turns it into the next status, keeping each
//! condition's `lastTransitionTime` while its status is unchanged, so that deriving twice from the
//! same facts yields an equal status and the reconciler can skip the write.

use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::{
    crd::{MicroServiceStatus, Phase, condition_type as ct},
    desired::dependencies::DependencyState,
    validation::SpecError,
};

/// The parts of a Deployment the status is derived from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentView {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.replicas` (all pods, old and new).
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `(type, status, reason, message)` of each Deployment condition.
    pub conditions: Vec<(String, String, String, String)>,
}

impl DeploymentView {
    /// Extracts the view from a Deployment (its spec may have been trimmed from the cache).
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        Self {
            generation: d.metadata.generation.unwrap_or_default(),
            observed_generation: status.observed_generation.unwrap_or_default(),
            replicas: status.replicas.unwrap_or_default(),
            ready_replicas: status.ready_replicas.unwrap_or_default(),
            available_replicas: status.available_replicas.unwrap_or_default(),
            updated_replicas: status.updated_replicas.unwrap_or_default(),
            conditions: status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    (
                        c.type_,
                        c.status,
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }

    fn condition(&self, type_: &str) -> Option<&(String, String, String, String)> {
        self.conditions.iter().find(|c| c.0 == type_)
    }
}

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

/// Everything the status is derived from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// `metadata.generation` of the MicroService.
    pub generation: Option<i64>,
    /// Set when the spec cannot be reconciled.
    pub spec_error: Option<&'a SpecError>,
    /// State of the `dependsOn` gate.
    pub dependencies: &'a DependencyState,
    /// The Deployment as last seen, if it exists.
    pub deployment: Option<&'a DeploymentView>,
    /// Pods the Deployment should run.
    pub desired_replicas: i32,
    /// A Deployment change is waiting for dependencies.
    pub held: bool,
    /// ServiceMonitor state.
    pub monitor: MonitorState,
    /// The pod selector string.
    pub selector: String,
    /// Extra remarks for the message (for example a missing ConfigMap).
    pub notes: Vec<String>,
}

/// `metav1.Time` now, at the second precision the API server keeps.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub(crate) struct NewCondition {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

pub(crate) fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> NewCondition {
    NewCondition {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// Derives the next status.
pub fn derive(
    previous: Option<&MicroServiceStatus>,
    obs: &Observation<'_>,
    now: Time,
) -> MicroServiceStatus {
    let desired = obs.desired_replicas;
    let d = obs.deployment;
    let deps_ready = obs.dependencies.ready();

    let dependencies = if deps_ready {
        let reason = if obs.dependencies.resolved.is_empty() {
            "NoDependencies"
        } else {
            "AllAvailable"
        };
        cond(
            ct::DEPENDENCIES_READY,
            true,
            reason,
            obs.dependencies.summary(),
        )
    } else {
        cond(
            ct::DEPENDENCIES_READY,
            false,
            "DependenciesNotReady",
            obs.dependencies.summary(),
        )
    };

    let available = match d {
        Some(v) if v.condition("Available").is_some_and(|c| c.1 == "True") => cond(
            ct::AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            format!("{} of {} pods available", v.available_replicas, desired),
        ),
        Some(v) => cond(
            ct::AVAILABLE,
            false,
            "MinimumReplicasUnavailable",
            format!("{} of {} pods available", v.available_replicas, desired),
        ),
        None if obs.held => cond(
            ct::AVAILABLE,
            false,
            "WaitingForDependencies",
            "no pods yet: waiting for dependencies",
        ),
        None => cond(
            ct::AVAILABLE,
            false,
            "DeploymentNotFound",
            "the Deployment does not exist yet",
        ),
    };

    let deadline = d
        .and_then(|v| v.condition("Progressing"))
        .filter(|c| c.2 == "ProgressDeadlineExceeded");
    let replica_failure = d
        .and_then(|v| v.condition("ReplicaFailure"))
        .filter(|c| c.1 == "True");
    let complete = d.is_some_and(|v| {
        v.observed_generation >= v.generation
            && v.updated_replicas == desired
            && v.replicas == desired
            && v.available_replicas == desired
    });

    let progressing = if obs.held {
        cond(
            ct::PROGRESSING,
            false,
            "WaitingForDependencies",
            format!("rollout held: {}", obs.dependencies.summary()),
        )
    } else if let Some(c) = deadline {
        cond(
            ct::PROGRESSING,
            false,
            "ProgressDeadlineExceeded",
            c.3.clone(),
        )
    } else if complete {
        cond(
            ct::PROGRESSING,
            false,
            "RolloutComplete",
            "every pod runs the current template",
        )
    } else {
        let (updated, available_n) =
            d.map_or((0, 0), |v| (v.updated_replicas, v.available_replicas));
        cond(
            ct::PROGRESSING,
            true,
            "RolloutInProgress",
            format!("{updated} of {desired} pods updated, {available_n} available"),
        )
    };

    let degraded = if let Some(c) = deadline {
        cond(ct::DEGRADED, true, "ProgressDeadlineExceeded", c.3.clone())
    } else if let Some(c) = replica_failure {
        cond(ct::DEGRADED, true, "ReplicaFailure", c.3.clone())
    } else {
        cond(ct::DEGRADED, false, "AsExpected", "")
    };

    let monitor = match obs.monitor {
        MonitorState::NotRequested => cond(
            ct::SERVICE_MONITOR_READY,
            false,
            "NotRequested",
            "monitoring is off",
        ),
        MonitorState::CrdNotInstalled => cond(
            ct::SERVICE_MONITOR_READY,
            false,
            "CRDNotInstalled",
            "servicemonitors.monitoring.coreos.com is not served by this cluster; install the Prometheus Operator CRDs to get a ServiceMonitor",
        ),
        MonitorState::Applied => cond(
            ct::SERVICE_MONITOR_READY,
            true,
            "Applied",
            "the ServiceMonitor is applied",
        ),
        MonitorState::Blocked => cond(
            ct::SERVICE_MONITOR_READY,
            false,
            "InvalidSpec",
            "not applied while the spec is invalid",
        ),
    };

    let invalid = match obs.spec_error {
        Some(err) => cond(ct::INVALID_SPEC, true, err.reason, err.message.clone()),
        None => cond(ct::INVALID_SPEC, false, "Valid", ""),
    };

    let phase = if obs.spec_error.is_some() {
        Phase::Invalid
    } else if degraded.status {
        Phase::Degraded
    } else if d.is_none() || obs.held {
        Phase::Pending
    } else if progressing.status {
        Phase::Progressing
    } else if available.status {
        Phase::Healthy
    } else {
        Phase::Progressing
    };

    let mut message = match phase {
        Phase::Invalid => invalid.message.clone(),
        Phase::Degraded => degraded.message.clone(),
        Phase::Pending if obs.held => {
            format!("waiting for dependencies: {}", obs.dependencies.summary())
        }
        Phase::Pending => "creating the Deployment".to_string(),
        Phase::Progressing | Phase::Paused | Phase::Promoting | Phase::Aborted => {
            progressing.message.clone()
        }
        Phase::Healthy => format!(
            "{} of {} pods ready",
            d.map_or(0, |v| v.ready_replicas),
            desired
        ),
    };
    for note in &obs.notes {
        message.push_str("; ");
        message.push_str(note);
    }

    let conditions = [
        available,
        progressing,
        degraded,
        dependencies,
        monitor,
        invalid,
    ]
    .into_iter()
    .map(|c| merge_condition(previous, c, obs.generation, &now))
    .collect();

    let view = d.cloned().unwrap_or_default();
    MicroServiceStatus {
        observed_generation: obs.generation,
        phase,
        message: Some(message),
        replicas: view.replicas,
        ready_replicas: view.ready_replicas,
        available_replicas: view.available_replicas,
        updated_replicas: view.updated_replicas,
        ready: Some(format!("{}/{}", view.ready_replicas, desired)),
        selector: Some(obs.selector.clone()),
        conditions,
        blue_green: None,
    }
}

pub(crate) fn merge_condition(
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
        reason: new.reason.into(),
        message: new.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Kubernetes Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A normal transition.
    Normal,
    /// Something needs attention.
    Warning,
}

/// An Event to publish for a status transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human note.
    pub note: String,
}

fn flipped(
    previous: Option<&MicroServiceStatus>,
    next: &MicroServiceStatus,
    type_: &str,
    to: bool,
) -> bool {
    let was = previous
        .and_then(|p| p.condition(type_))
        .map(|c| c.status == "True");
    let now = next.condition(type_).map(|c| c.status == "True");
    now == Some(to) && was != Some(to)
}

/// Events for the transitions between two statuses: degraded, recovered, available, invalid spec,
/// waiting for dependencies, missing ServiceMonitor CRD. Nothing when nothing transitioned.
pub fn events(
    previous: Option<&MicroServiceStatus>,
    next: &MicroServiceStatus,
) -> Vec<StatusEvent> {
    let message = |type_: &str| {
        next.condition(type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    if flipped(previous, next, ct::INVALID_SPEC, true) {
        out.push(StatusEvent {
            kind: EventKind::Warning,
            reason: "InvalidSpec",
            note: message(ct::INVALID_SPEC),
        });
    }
    if flipped(previous, next, ct::DEGRADED, true) {
        out.push(StatusEvent {
            kind: EventKind::Warning,
            reason: "Degraded",
            note: message(ct::DEGRADED),
        });
    }
    let was_degraded = previous.is_some_and(|p| p.is_true(ct::DEGRADED));
    if was_degraded && flipped(previous, next, ct::DEGRADED, false) {
        out.push(StatusEvent {
            kind: EventKind::Normal,
            reason: "Recovered",
            note: "no longer degraded".into(),
        });
    }
    if flipped(previous, next, ct::AVAILABLE, true) {
        out.push(StatusEvent {
            kind: EventKind::Normal,
            reason: "Available",
            note: message(ct::AVAILABLE),
        });
    }
    if flipped(previous, next, ct::DEPENDENCIES_READY, false) {
        out.push(StatusEvent {
            kind: EventKind::Normal,
            reason: "WaitingForDependencies",
            note: message(ct::DEPENDENCIES_READY),
        });
    }
    let monitor_missing = |s: &MicroServiceStatus| {
        s.condition(ct::SERVICE_MONITOR_READY)
            .is_some_and(|c| c.reason == "CRDNotInstalled")
    };
    if monitor_missing(next) && !previous.is_some_and(monitor_missing) {
        out.push(StatusEvent {
            kind: EventKind::Warning,
            reason: "ServiceMonitorUnavailable",
            note: message(ct::SERVICE_MONITOR_READY),
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::desired::ResolvedDependency;

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
            conditions: vec![(
                "Available".into(),
                if available > 0 { "True" } else { "False" }.into(),
                String::new(),
                String::new(),
            )],
        }
    }

    fn obs<'a>(deps: &'a DependencyState, d: Option<&'a DeploymentView>) -> Observation<'a> {
        Observation {
            generation: Some(3),
            spec_error: None,
            dependencies: deps,
            deployment: d,
            desired_replicas: 2,
            held: false,
            monitor: MonitorState::NotRequested,
            selector: "ferry.dev/microservice=order".into(),
            notes: vec![],
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
    fn a_fully_rolled_out_deployment_is_healthy_and_available() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(s.phase, Phase::Healthy);
        assert_eq!(
            status_of(&s, "Available"),
            ("True", "MinimumReplicasAvailable")
        );
        assert_eq!(status_of(&s, "Progressing"), ("False", "RolloutComplete"));
        assert_eq!(status_of(&s, "Degraded"), ("False", "AsExpected"));
        assert_eq!(status_of(&s, "InvalidSpec"), ("False", "Valid"));
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.selector.as_deref(), Some("ferry.dev/microservice=order"));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn every_standard_condition_is_always_present() {
        let deps = DependencyState::default();
        let s = derive(None, &obs(&deps, None), t(10));
        for type_ in ct::ALL {
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
        assert_eq!(
            status_of(&s, "Available"),
            ("True", "MinimumReplicasAvailable")
        );
    }

    #[test]
    fn a_deployment_not_yet_observed_by_its_controller_is_progressing() {
        let deps = DependencyState::default();
        let d = deployment(4, 3, 2, 2, 2);
        assert_eq!(
            derive(None, &obs(&deps, Some(&d)), t(10)).phase,
            Phase::Progressing
        );
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
        d.conditions.push((
            "Progressing".into(),
            "False".into(),
            "ProgressDeadlineExceeded".into(),
            "ReplicaSet has timed out".into(),
        ));
        let s = derive(None, &obs(&deps, Some(&d)), t(10));
        assert_eq!(s.phase, Phase::Degraded);
        assert_eq!(
            status_of(&s, "Degraded"),
            ("True", "ProgressDeadlineExceeded")
        );
        assert_eq!(
            status_of(&s, "Progressing"),
            ("False", "ProgressDeadlineExceeded")
        );
        assert_eq!(s.message.as_deref(), Some("ReplicaSet has timed out"));
    }

    #[test]
    fn a_replica_failure_is_degraded() {
        let deps = DependencyState::default();
        let mut d = deployment(2, 2, 0, 0, 0);
        d.conditions.push((
            "ReplicaFailure".into(),
            "True".into(),
            "FailedCreate".into(),
            "forbidden".into(),
        ));
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
        let o = Observation {
            held: true,
            ..obs(&deps, None)
        };
        let s = derive(None, &o, t(10));
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(
            status_of(&s, "DependenciesReady"),
            ("False", "DependenciesNotReady")
        );
        assert_eq!(
            status_of(&s, "Progressing"),
            ("False", "WaitingForDependencies")
        );
        assert_eq!(
            status_of(&s, "Available"),
            ("False", "WaitingForDependencies")
        );
        assert!(
            s.message
                .as_deref()
                .expect("message")
                .contains("not Available: inventory")
        );
    }

    #[test]
    fn an_invalid_spec_is_reported_with_its_reason_and_message() {
        let deps = DependencyState::default();
        let err = SpecError {
            reason: "InvalidPassThroughField",
            message: "spec.pod.affinity is bad".into(),
        };
        let o = Observation {
            spec_error: Some(&err),
            ..obs(&deps, None)
        };
        let s = derive(None, &o, t(10));
        assert_eq!(s.phase, Phase::Invalid);
        assert_eq!(
            status_of(&s, "InvalidSpec"),
            ("True", "InvalidPassThroughField")
        );
        assert_eq!(s.message.as_deref(), Some("spec.pod.affinity is bad"));
    }

    #[test]
    fn a_missing_service_monitor_crd_is_explained() {
        let deps = DependencyState::default();
        let o = Observation {
            monitor: MonitorState::CrdNotInstalled,
            ..obs(&deps, None)
        };
        let s = derive(None, &o, t(10));
        assert_eq!(
            status_of(&s, "ServiceMonitorReady"),
            ("False", "CRDNotInstalled")
        );
        let o = Observation {
            monitor: MonitorState::Applied,
            ..obs(&deps, None)
        };
        assert_eq!(
            status_of(&derive(None, &o, t(10)), "ServiceMonitorReady"),
            ("True", "Applied")
        );
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
        let time = |s: &MicroServiceStatus, ty: &str| {
            s.condition(ty).expect("c").last_transition_time.clone()
        };
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
        stuck.conditions.push((
            "Progressing".into(),
            "False".into(),
            "ProgressDeadlineExceeded".into(),
            "x".into(),
        ));
        let degraded = derive(Some(&healthy), &obs(&deps, Some(&stuck)), t(20));
        assert_eq!(reasons(events(Some(&healthy), &degraded)), ["Degraded"]);
        assert!(events(Some(&degraded), &degraded).is_empty());

        let recovered = derive(
            Some(&degraded),
            &obs(&deps, Some(&deployment(2, 2, 2, 2, 2))),
            t(30),
        );
        assert_eq!(reasons(events(Some(&degraded), &recovered)), ["Recovered"]);
    }

    #[test]
    fn a_missing_service_monitor_crd_is_announced_once() {
        let deps = DependencyState::default();
        let o = Observation {
            monitor: MonitorState::CrdNotInstalled,
            ..obs(&deps, None)
        };
        let first = derive(None, &o, t(10));
        assert!(
            events(None, &first)
                .iter()
                .any(|e| e.reason == "ServiceMonitorUnavailable")
        );
        let second = derive(Some(&first), &o, t(20));
        assert!(events(Some(&first), &second).is_empty());
    }

    #[test]
    fn notes_are_appended_to_the_message() {
        let deps = DependencyState::default();
        let d = deployment(2, 2, 2, 2, 2);
        let o = Observation {
            notes: vec!["ConfigMap order-config not found".into()],
            ..obs(&deps, Some(&d))
        };
        let s = derive(None, &o, t(10));
        assert_eq!(
            s.message.as_deref(),
            Some("2 of 2 pods ready; ConfigMap order-config not found")
        );
    }
}
