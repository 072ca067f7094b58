//! Pure: a rollout [`Plan`] onto the MicroService status (phase, message, conditions, selector,
//! `blueGreen`), and the Events for its transitions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Plan, REVISION_LABEL, Step};
use crate::{
    crd::{CheckResult, MicroServiceStatus, Phase, condition_type as ct},
    status::{EventKind, StatusEvent, cond, merge_condition},
};

fn step_reason(step: Step) -> &'static str {
    match step {
        Step::FirstRevision => "FirstRevision",
        Step::WaitForPreview => "WaitingForPreview",
        Step::PrePromotionChecks => "PrePromotionChecks",
        Step::Paused => "Paused",
        Step::ScaleForPromotion => "ScalingForPromotion",
        Step::Switch => "Switched",
        Step::PostPromotionChecks => "PostPromotionChecks",
        Step::RollBack => "RolledBack",
        Step::ScaleForRollBack => "ScalingForRollBack",
        Step::FastRollback => "FastRollback",
        Step::DeadlineExceeded => "ProgressDeadlineExceeded",
        Step::Aborted => "RolloutAborted",
        Step::WaitForScaleDown => "WaitingForScaleDown",
        Step::Healthy => "RolloutComplete",
    }
}

/// Applies the plan to a status derived (by [`crate::status::derive`]) from the active revision.
pub fn overlay(
    next: &mut MicroServiceStatus,
    previous: Option<&MicroServiceStatus>,
    plan: &Plan,
    checks: Vec<CheckResult>,
    microservice: &str,
    now: &Time,
) {
    let generation = next.observed_generation;
    let invalid = next.phase == Phase::Invalid;
    let held = next.phase == Phase::Pending;
    if !invalid && !held {
        next.phase = plan.phase;
        next.message = Some(plan.message.clone());
    }
    let progressing = cond(
        ct::PROGRESSING,
        plan.progressing,
        step_reason(plan.step),
        plan.message.clone(),
    );
    let degraded = match &plan.degraded {
        Some((reason, message)) => cond(ct::DEGRADED, true, reason, message.clone()),
        None => cond(ct::DEGRADED, false, "AsExpected", ""),
    };
    let promoted = if plan.promoted {
        cond(
            ct::PROMOTED,
            true,
            "ActiveIsCurrent",
            format!("the active Service selects revision {}", plan.active),
        )
    } else {
        cond(
            ct::PROMOTED,
            false,
            step_reason(plan.step),
            format!("the active Service selects revision {}", plan.active),
        )
    };
    if !invalid && !held {
        for c in [progressing, degraded] {
            let merged = merge_condition(previous, c, generation, now);
            if let Some(slot) = next.conditions.iter_mut().find(|x| x.type_ == merged.type_) {
                *slot = merged;
            }
        }
    }
    let merged = merge_condition(previous, promoted, generation, now);
    next.conditions.retain(|c| c.type_ != ct::PROMOTED);
    next.conditions.push(merged);
    next.selector = Some(format!(
        "{}={microservice},{REVISION_LABEL}={}",
        crate::desired::labels::SELECTOR_LABEL,
        plan.active
    ));
    let mut bg = plan.status.clone();
    bg.checks = checks;
    next.blue_green = Some(bg);
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
    plan: &Plan,
) -> Transitions {
    let mut out = Transitions::default();
    let prev_bg = previous.and_then(|p| p.blue_green.as_ref());
    let next_bg = next.blue_green.as_ref();
    let hash = |r: Option<&crate::crd::RevisionRef>| r.map(|r| r.hash.clone());
    let prev_preview = prev_bg.and_then(|b| hash(b.preview_revision.as_ref()));
    let next_preview = next_bg.and_then(|b| hash(b.preview_revision.as_ref()));
    if next_preview.is_some() && next_preview != prev_preview {
        let image = next_bg
            .and_then(|b| b.preview_revision.as_ref())
            .map(|r| r.image.clone())
            .unwrap_or_default();
        out.events.push(StatusEvent {
            kind: EventKind::Normal,
            reason: "RolloutStarted",
            note: format!(
                "rolling out revision {} ({image})",
                next_preview.clone().unwrap_or_default()
            ),
        });
    }
    let prev_active = prev_bg.and_then(|b| hash(b.active_revision.as_ref()));
    let next_active = next_bg.and_then(|b| hash(b.active_revision.as_ref()));
    if prev_active.is_some() && next_active != prev_active {
        let (kind, reason) = match plan.step {
            Step::RollBack => (EventKind::Warning, "RolledBack"),
            Step::FastRollback => (EventKind::Normal, "FastRollback"),
            _ => (EventKind::Normal, "Switched"),
        };
        out.rolled_back = matches!(plan.step, Step::RollBack | Step::FastRollback);
        out.promoted = plan.step == Step::Switch;
        out.events.push(StatusEvent {
            kind,
            reason,
            note: format!(
                "active Service switched from revision {} to {}",
                prev_active.unwrap_or_default(),
                next_active.unwrap_or_default()
            ),
        });
    }
    let prev_abort = prev_bg.and_then(|b| b.aborted.clone());
    let next_abort = next_bg.and_then(|b| b.aborted.clone());
    if next_abort.is_some() && next_abort != prev_abort {
        out.aborted = true;
        let a = next_abort.unwrap_or_default();
        out.events.push(StatusEvent {
            kind: EventKind::Warning,
            reason: "RolloutAborted",
            note: format!("rollout of revision {} aborted: {}", a.hash, a.reason),
        });
    }
    if previous.map(|p| p.phase) != Some(next.phase) {
        let (kind, reason) = match next.phase {
            Phase::Progressing => (EventKind::Normal, "RolloutProgressing"),
            Phase::Paused => (EventKind::Normal, "RolloutPaused"),
            Phase::Promoting => (EventKind::Normal, "RolloutPromoting"),
            Phase::Healthy => (EventKind::Normal, "RolloutHealthy"),
            Phase::Degraded => (EventKind::Warning, "RolloutDegraded"),
            Phase::Aborted => (EventKind::Warning, "RolloutAbortedPhase"),
            Phase::Pending | Phase::Invalid => return out,
        };
        out.events.push(StatusEvent {
            kind,
            reason,
            note: next.message.clone().unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{BlueGreenStatus, RevisionRef};

    fn plan(step: Step, phase: Phase, active: &str, preview: Option<&str>) -> Plan {
        Plan {
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
            status: BlueGreenStatus {
                active_revision: Some(RevisionRef {
                    hash: active.into(),
                    image: String::new(),
                }),
                preview_revision: preview.map(|p| RevisionRef {
                    hash: p.into(),
                    image: "img".into(),
                }),
                ..BlueGreenStatus::default()
            },
            run_checks: None,
            requeue: None,
            degraded: None,
            promoted: preview.is_none(),
            progressing: preview.is_some(),
        }
    }

    fn base() -> MicroServiceStatus {
        MicroServiceStatus {
            phase: Phase::Healthy,
            observed_generation: Some(2),
            conditions: vec![
                merge_condition(None, cond(ct::PROGRESSING, false, "x", ""), Some(2), &now()),
                merge_condition(None, cond(ct::DEGRADED, false, "x", ""), Some(2), &now()),
            ],
            ..MicroServiceStatus::default()
        }
    }

    fn now() -> Time {
        Time(Timestamp::from_second(100).expect("t"))
    }

    #[test]
    fn the_overlay_sets_phase_conditions_selector_and_rollout_status() {
        let p = plan(Step::WaitForPreview, Phase::Progressing, "aaa", Some("bbb"));
        let mut s = base();
        overlay(&mut s, None, &p, vec![], "order", &now());
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(
            s.selector.as_deref(),
            Some("ferry.dev/microservice=order,ferry.dev/revision=aaa")
        );
        let c = s.condition(ct::PROGRESSING).expect("progressing");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "WaitingForPreview")
        );
        let c = s.condition(ct::PROMOTED).expect("promoted");
        assert_eq!(c.status, "False");
        assert!(s.blue_green.is_some());
    }

    #[test]
    fn a_switch_emits_a_switched_event_and_counts_a_promotion() {
        let before = plan(
            Step::ScaleForPromotion,
            Phase::Promoting,
            "aaa",
            Some("bbb"),
        );
        let mut prev = base();
        overlay(&mut prev, None, &before, vec![], "order", &now());
        let after = plan(Step::Switch, Phase::Healthy, "bbb", None);
        let mut next = base();
        overlay(&mut next, Some(&prev), &after, vec![], "order", &now());
        let t = transitions(Some(&prev), &next, &after);
        let reasons: Vec<_> = t.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Switched", "RolloutHealthy"]);
        assert!(t.promoted && !t.rolled_back && !t.aborted);
        assert!(transitions(Some(&next), &next, &after).events.is_empty());
    }

    #[test]
    fn an_abort_emits_a_warning_once() {
        let mut p = plan(Step::Aborted, Phase::Aborted, "aaa", Some("bbb"));
        p.status.aborted = Some(crate::crd::AbortRecord {
            hash: "bbb".into(),
            reason: "Requested".into(),
            at: "t".into(),
            retry_mark: String::new(),
        });
        let mut next = base();
        overlay(&mut next, None, &p, vec![], "order", &now());
        let t = transitions(None, &next, &p);
        assert!(t.aborted);
        assert!(t.events.iter().any(|e| e.reason == "RolloutAborted"));
        assert!(!transitions(Some(&next), &next, &p).aborted);
    }
}
