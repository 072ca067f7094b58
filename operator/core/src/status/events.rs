//! The Events published on a MicroService: one per transition, never one per reconcile.

use std::fmt;

use crate::crd::{MicroServiceStatus, Reason, condition_type as ct};

/// Kubernetes Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A normal transition.
    Normal,
    /// Something needs attention.
    Warning,
}

/// The `reason` of every Event the operator publishes. [`EventReason::as_str`] is the wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// The operator created the Deployment (RollingUpdate).
    Created,
    /// The operator updated the Deployment (RollingUpdate).
    Updated,
    /// The spec cannot be reconciled.
    InvalidSpec,
    /// The MicroService became Degraded.
    Degraded,
    /// It is no longer Degraded.
    Recovered,
    /// It became Available.
    Available,
    /// It waits for its dependencies.
    WaitingForDependencies,
    /// Monitoring is asked for but the ServiceMonitor CRD is not served.
    ServiceMonitorUnavailable,
    /// Alerts are asked for but the PrometheusRule CRD is not served.
    PrometheusRuleUnavailable,
    /// A gRPC autoscaling target is set but the KEDA ScaledObject CRD is not served.
    ScaledObjectUnavailable,
    /// A child write failed (once per distinct failure).
    ChildWriteFailed,
    /// A blue-green rollout of a new revision started.
    RolloutStarted,
    /// The active Service switched to the new revision.
    Switched,
    /// The active Service switched back to the previous spec's revision at once.
    FastRollback,
    /// The active Service switched back after a failed post-promotion check.
    RolledBack,
    /// A rollout was aborted.
    RolloutAborted,
    /// The rollout phase became Progressing.
    RolloutProgressing,
    /// The rollout phase became Paused.
    RolloutPaused,
    /// The rollout phase became Promoting.
    RolloutPromoting,
    /// The rollout phase became Healthy.
    RolloutHealthy,
    /// The rollout phase became Degraded.
    RolloutDegraded,
    /// The rollout phase became Aborted.
    RolloutAbortedPhase,
}

impl EventReason {
    /// The spelling of the Event's `reason`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Updated => "Updated",
            Self::InvalidSpec => "InvalidSpec",
            Self::Degraded => "Degraded",
            Self::Recovered => "Recovered",
            Self::Available => "Available",
            Self::WaitingForDependencies => "WaitingForDependencies",
            Self::ServiceMonitorUnavailable => "ServiceMonitorUnavailable",
            Self::PrometheusRuleUnavailable => "PrometheusRuleUnavailable",
            Self::ScaledObjectUnavailable => "ScaledObjectUnavailable",
            Self::ChildWriteFailed => "ChildWriteFailed",
            Self::RolloutStarted => "RolloutStarted",
            Self::Switched => "Switched",
            Self::FastRollback => "FastRollback",
            Self::RolledBack => "RolledBack",
            Self::RolloutAborted => "RolloutAborted",
            Self::RolloutProgressing => "RolloutProgressing",
            Self::RolloutPaused => "RolloutPaused",
            Self::RolloutPromoting => "RolloutPromoting",
            Self::RolloutHealthy => "RolloutHealthy",
            Self::RolloutDegraded => "RolloutDegraded",
            Self::RolloutAbortedPhase => "RolloutAbortedPhase",
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for EventReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// The reason.
    pub reason: EventReason,
    /// Human note.
    pub note: String,
}

impl StatusEvent {
    /// A Normal Event.
    pub fn normal(reason: EventReason, note: impl Into<String>) -> Self {
        Self { kind: EventKind::Normal, reason, note: note.into() }
    }

    /// A Warning Event.
    pub fn warning(reason: EventReason, note: impl Into<String>) -> Self {
        Self { kind: EventKind::Warning, reason, note: note.into() }
    }
}

fn flipped(previous: Option<&MicroServiceStatus>, next: &MicroServiceStatus, type_: &str, to: bool) -> bool {
    let was = previous.and_then(|p| p.condition(type_)).map(|c| c.status == "True");
    let now = next.condition(type_).map(|c| c.status == "True");
    now == Some(to) && was != Some(to)
}

fn has_reason(status: &MicroServiceStatus, type_: &str, reason: Reason) -> bool {
    status.condition(type_).is_some_and(|c| c.reason == reason)
}

/// The one Warning event of a failed child write: when `Synced` turns False, or names another
/// failure. (The InvalidSpec or Degraded condition that goes with it announces nothing more.)
fn child_write_event(
    previous: Option<&MicroServiceStatus>,
    next: &MicroServiceStatus,
) -> Option<StatusEvent> {
    let failing = |s: &MicroServiceStatus| {
        s.condition(ct::SYNCED).filter(|c| c.status == "False").map(|c| c.message.clone())
    };
    let now = failing(next)?;
    if previous.and_then(failing).as_ref() == Some(&now) {
        return None;
    }
    Some(StatusEvent::warning(EventReason::ChildWriteFailed, now))
}

/// A Warning the first time an optional child cannot be created for want of its CRD.
fn crd_missing_event(
    previous: Option<&MicroServiceStatus>,
    next: &MicroServiceStatus,
    type_: &str,
    reason: EventReason,
) -> Option<StatusEvent> {
    let missing = |s: &MicroServiceStatus| has_reason(s, type_, Reason::CrdNotInstalled);
    (missing(next) && !previous.is_some_and(missing)).then(|| {
        let note = next.condition(type_).map(|c| c.message.clone());
        StatusEvent::warning(reason, note.unwrap_or_default())
    })
}

/// Events for the transitions between two statuses: a failed child write, invalid spec, degraded,
/// recovered, available, waiting for dependencies, a missing ServiceMonitor, PrometheusRule or
/// ScaledObject CRD.
/// Nothing when nothing transitioned.
pub fn events(previous: Option<&MicroServiceStatus>, next: &MicroServiceStatus) -> Vec<StatusEvent> {
    let message = |type_: &str| next.condition(type_).map(|c| c.message.clone()).unwrap_or_default();
    let mut out: Vec<StatusEvent> = child_write_event(previous, next).into_iter().collect();
    if flipped(previous, next, ct::INVALID_SPEC, true)
        && !has_reason(next, ct::INVALID_SPEC, Reason::RejectedByApiServer)
    {
        out.push(StatusEvent::warning(EventReason::InvalidSpec, message(ct::INVALID_SPEC)));
    }
    if flipped(previous, next, ct::DEGRADED, true)
        && !has_reason(next, ct::DEGRADED, Reason::ChildWriteFailed)
    {
        out.push(StatusEvent::warning(EventReason::Degraded, message(ct::DEGRADED)));
    }
    let was_degraded = previous.is_some_and(|p| p.is_true(ct::DEGRADED));
    if was_degraded && flipped(previous, next, ct::DEGRADED, false) {
        out.push(StatusEvent::normal(EventReason::Recovered, "no longer degraded"));
    }
    if flipped(previous, next, ct::AVAILABLE, true) {
        out.push(StatusEvent::normal(EventReason::Available, message(ct::AVAILABLE)));
    }
    if flipped(previous, next, ct::DEPENDENCIES_READY, false) {
        out.push(StatusEvent::normal(EventReason::WaitingForDependencies, message(ct::DEPENDENCIES_READY)));
    }
    let missing_crds = [
        (ct::SERVICE_MONITOR_READY, EventReason::ServiceMonitorUnavailable),
        (ct::PROMETHEUS_RULE_READY, EventReason::PrometheusRuleUnavailable),
        (ct::SCALED_OBJECT_READY, EventReason::ScaledObjectUnavailable),
    ];
    for (type_, reason) in missing_crds {
        out.extend(crd_missing_event(previous, next, type_, reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::EventReason::*;

    #[test]
    fn every_event_reason_keeps_its_wire_string() {
        let pinned = [
            (Created, "Created"),
            (Updated, "Updated"),
            (InvalidSpec, "InvalidSpec"),
            (Degraded, "Degraded"),
            (Recovered, "Recovered"),
            (Available, "Available"),
            (WaitingForDependencies, "WaitingForDependencies"),
            (ServiceMonitorUnavailable, "ServiceMonitorUnavailable"),
            (PrometheusRuleUnavailable, "PrometheusRuleUnavailable"),
            (ScaledObjectUnavailable, "ScaledObjectUnavailable"),
            (ChildWriteFailed, "ChildWriteFailed"),
            (RolloutStarted, "RolloutStarted"),
            (Switched, "Switched"),
            (FastRollback, "FastRollback"),
            (RolledBack, "RolledBack"),
            (RolloutAborted, "RolloutAborted"),
            (RolloutProgressing, "RolloutProgressing"),
            (RolloutPaused, "RolloutPaused"),
            (RolloutPromoting, "RolloutPromoting"),
            (RolloutHealthy, "RolloutHealthy"),
            (RolloutDegraded, "RolloutDegraded"),
            (RolloutAbortedPhase, "RolloutAbortedPhase"),
        ];
        for (reason, wire) in pinned {
            assert_eq!(reason.as_str(), wire);
        }
    }
}
