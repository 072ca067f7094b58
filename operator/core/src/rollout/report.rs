//! Pure: what a rollout [`Decision`] reports besides the status the planner assembles: a
//! revision's `ReplicaFailure` as the reason it is degraded, and the Events (and metric facts) of
//! its transitions.

use super::{Decision, Step};
use crate::{
    crd::{MicroServiceStatus, Phase, Reason, RevisionRef},
    status::{DeploymentView, EventReason, StatusEvent},
};

/// Surfaces a revision Deployment's `ReplicaFailure` (a quota, a refused pod) as `Degraded`, as the
/// RollingUpdate strategy does for its one Deployment, unless the plan already says why it is
/// degraded. `revisions` are the revisions that should run pods (hash, observed Deployment), most
/// relevant first: the current spec's, then the active one.
pub fn surface_replica_failure(plan: &mut Decision, revisions: &[(&str, &DeploymentView)]) {
    if plan.degraded.is_some() {
        return;
    }
    let failure = revisions.iter().find_map(|(hash, view)| {
        (view.condition("ReplicaFailure"))
            .filter(|c| c.is_true())
            .map(|c| format!("revision {hash}: {}", c.message))
    });
    if let Some(message) = failure {
        plan.degraded = Some((Reason::ReplicaFailure, message.clone()));
        if plan.phase != Phase::Aborted {
            plan.phase = Phase::Degraded;
            plan.message = message;
        }
    }
}

/// What a transition means for the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transitions {
    /// Events to publish.
    pub events: Vec<StatusEvent>,
    /// A rollout was aborted.
    pub aborted: bool,
    /// Traffic went back to an older revision.
    pub rolled_back: bool,
    /// Traffic moved to the new revision.
    pub promoted: bool,
}

/// Events (and metric facts) for the rollout transitions between two statuses.
pub fn transitions(
    previous: Option<&MicroServiceStatus>,
    next: &MicroServiceStatus,
    plan: &Decision,
) -> Transitions {
    let mut out = Transitions::default();
    let prev_bg = previous.and_then(|p| p.blue_green.as_ref());
    let next_bg = next.blue_green.as_ref();
    let hash = |r: Option<&RevisionRef>| r.map(|r| r.hash.clone());
    let prev_preview = prev_bg.and_then(|b| hash(b.preview_revision.as_ref()));
    let next_preview = next_bg.and_then(|b| hash(b.preview_revision.as_ref()));
    if next_preview.is_some() && next_preview != prev_preview {
        let image =
            next_bg.and_then(|b| b.preview_revision.as_ref()).map(|r| r.image.clone()).unwrap_or_default();
        let note = format!("rolling out revision {} ({image})", next_preview.clone().unwrap_or_default());
        out.events.push(StatusEvent::normal(EventReason::RolloutStarted, note));
    }
    let prev_active = prev_bg.and_then(|b| hash(b.active_revision.as_ref()));
    let next_active = next_bg.and_then(|b| hash(b.active_revision.as_ref()));
    if prev_active.is_some() && next_active != prev_active {
        let note = format!(
            "active Service switched from revision {} to {}",
            prev_active.unwrap_or_default(),
            next_active.unwrap_or_default()
        );
        out.rolled_back = matches!(plan.step, Step::RollBack | Step::FastRollback);
        out.promoted = plan.step == Step::Switch;
        out.events.push(match plan.step {
            Step::RollBack => StatusEvent::warning(EventReason::RolledBack, note),
            Step::FastRollback => StatusEvent::normal(EventReason::FastRollback, note),
            _ => StatusEvent::normal(EventReason::Switched, note),
        });
    }
    let prev_abort = prev_bg.and_then(|b| b.aborted.clone());
    let next_abort = next_bg.and_then(|b| b.aborted.clone());
    if next_abort.is_some() && next_abort != prev_abort {
        out.aborted = true;
        let a = next_abort.unwrap_or_default();
        let note = format!("rollout of revision {} aborted: {}", a.hash, a.reason);
        out.events.push(StatusEvent::warning(EventReason::RolloutAborted, note));
    }
    if previous.map(|p| p.phase) != Some(next.phase) {
        let note = next.message.clone().unwrap_or_default();
        let event = match next.phase {
            Phase::Progressing => StatusEvent::normal(EventReason::RolloutProgressing, note),
            Phase::Paused => StatusEvent::normal(EventReason::RolloutPaused, note),
            Phase::Promoting => StatusEvent::normal(EventReason::RolloutPromoting, note),
            Phase::Healthy => StatusEvent::normal(EventReason::RolloutHealthy, note),
            Phase::Degraded => StatusEvent::warning(EventReason::RolloutDegraded, note),
            Phase::Aborted => StatusEvent::warning(EventReason::RolloutAbortedPhase, note),
            Phase::Pending | Phase::Invalid => return out,
        };
        out.events.push(event);
    }
    out
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        crd::{AbortRecord, BlueGreenStatus},
        status::DeploymentCondition,
    };

    fn decision(step: Step, phase: Phase, active: &str, preview: Option<&str>) -> Decision {
        Decision {
            step,
            phase,
            message: "m".into(),
            active: active.into(),
            previous: None,
            switched_at: None,
            rolled_back: None,
            switch_reason: None,
            preview: preview.unwrap_or(active).into(),
            replicas: BTreeMap::new(),
            delete: vec![],
            status: BlueGreenStatus::default(),
            run_checks: None,
            requeue: None,
            degraded: None,
            promoted: preview.is_none(),
            progressing: preview.is_some(),
        }
    }

    /// A status as the planner writes it for a decision: phase, message and `blueGreen`.
    fn status_of(d: &Decision, preview: Option<&str>) -> MicroServiceStatus {
        let rev = |h: &str| RevisionRef { hash: h.into(), image: "img".into() };
        MicroServiceStatus {
            phase: d.phase,
            message: Some(d.message.clone()),
            blue_green: Some(BlueGreenStatus {
                active_revision: Some(rev(&d.active)),
                preview_revision: preview.map(rev),
                ..d.status.clone()
            }),
            ..MicroServiceStatus::default()
        }
    }

    fn reasons(t: &Transitions) -> Vec<EventReason> {
        t.events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_switch_emits_a_switched_event_and_counts_a_promotion() {
        let before = decision(Step::ScaleForPromotion, Phase::Promoting, "aaa", Some("bbb"));
        let prev = status_of(&before, Some("bbb"));
        let after = decision(Step::Switch, Phase::Healthy, "bbb", None);
        let next = status_of(&after, None);
        let t = transitions(Some(&prev), &next, &after);
        assert_eq!(reasons(&t), [EventReason::Switched, EventReason::RolloutHealthy]);
        assert!(t.promoted && !t.rolled_back && !t.aborted);
        assert!(transitions(Some(&next), &next, &after).events.is_empty());
    }

    #[test]
    fn a_new_preview_revision_announces_the_rollout() {
        let steady = decision(Step::Healthy, Phase::Healthy, "aaa", None);
        let rolling = decision(Step::WaitForPreview, Phase::Progressing, "aaa", Some("bbb"));
        let t = transitions(Some(&status_of(&steady, None)), &status_of(&rolling, Some("bbb")), &rolling);
        assert_eq!(reasons(&t), [EventReason::RolloutStarted, EventReason::RolloutProgressing]);
    }

    #[test]
    fn an_abort_emits_a_warning_once() {
        let mut d = decision(Step::Aborted, Phase::Aborted, "aaa", Some("bbb"));
        d.status.aborted = Some(AbortRecord {
            hash: "bbb".into(),
            reason: "Requested".into(),
            at: "t".into(),
            retry_mark: String::new(),
        });
        let next = status_of(&d, Some("bbb"));
        let t = transitions(None, &next, &d);
        assert!(t.aborted);
        assert!(reasons(&t).contains(&EventReason::RolloutAborted));
        assert!(!transitions(Some(&next), &next, &d).aborted);
    }

    fn failing(message: &str) -> DeploymentView {
        DeploymentView {
            conditions: vec![DeploymentCondition::new("ReplicaFailure", "True", "FailedCreate", message)],
            ..DeploymentView::default()
        }
    }

    #[test]
    fn a_revision_that_cannot_create_pods_makes_the_rollout_degraded_with_its_message() {
        let mut d = decision(Step::WaitForPreview, Phase::Progressing, "aaa", Some("bbb"));
        let quota = failing("pods \"x\" is forbidden: exceeded quota: pods");
        surface_replica_failure(&mut d, &[("bbb", &quota), ("aaa", &DeploymentView::default())]);
        assert_eq!(d.phase, Phase::Degraded);
        let (reason, message) = d.degraded.clone().expect("degraded");
        assert_eq!(reason, Reason::ReplicaFailure);
        assert!(message.starts_with("revision bbb: pods"), "{message}");
        assert_eq!(d.message, message);
    }

    #[test]
    fn a_reason_the_decision_already_gives_and_healthy_revisions_are_kept() {
        let mut d = decision(Step::Aborted, Phase::Degraded, "aaa", Some("bbb"));
        d.degraded = Some((Reason::ProgressDeadlineExceeded, "late".into()));
        surface_replica_failure(&mut d, &[("bbb", &failing("quota"))]);
        assert_eq!(d.degraded.as_ref().map(|d| d.0), Some(Reason::ProgressDeadlineExceeded));
        let mut healthy = decision(Step::Healthy, Phase::Healthy, "aaa", None);
        surface_replica_failure(&mut healthy, &[("aaa", &DeploymentView::default())]);
        assert_eq!(healthy.phase, Phase::Healthy);
        assert!(healthy.degraded.is_none());
    }
}
