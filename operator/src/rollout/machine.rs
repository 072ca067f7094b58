//! The blue-green state machine: a pure function from what is observed to what the world should
//! look like next.
//!
//! Every input is read from objects: the revision Deployments (`NAME-<hash>`), the active Service's
//! annotations (written in the same apply as its selector, so "which revision is active and what it
//! switched from" is one atomic fact), the MicroService's spec, annotations and status. Nothing is
//! kept in operator memory, so a killed operator decides the same after a restart and never switches
//! twice: a switch is visible in the Service before anything else depends on it.
//!
//! Invariants (each has a test):
//! - the active selector always names a revision (never empty);
//! - traffic only moves to a revision whose Deployment is fully available at the full replica count;
//! - during a rollout the active revision keeps its replica count; the current target (which the
//!   autoscaler writes into `spec.replicas`) goes to the new revision;
//! - the previous revision keeps running until its scale-down deadline, and until post-promotion
//!   checks have passed, so a rollback never moves traffic to missing pods.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{
    checks::{Stage, StageState},
    control::Controls,
};
use crate::crd::{AbortRecord, BlueGreenStatus, Phase, RevisionRef};

/// One revision Deployment as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionObs {
    /// Pod template hash (the `ferry.dev/revision` label).
    pub hash: String,
    /// Container image (the `ferry.dev/image` annotation).
    pub image: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// `status.updatedReplicas`.
    pub updated: i32,
    /// The Deployment controller has observed the current generation.
    pub current: bool,
    /// `metadata.creationTimestamp`.
    pub created_at: Option<Timestamp>,
}

impl RevisionObs {
    /// Runs exactly `n` pods, all available (and the Deployment controller caught up).
    pub fn available_at(&self, n: i32) -> bool {
        self.current && self.replicas == n && self.available >= n && self.updated >= n
    }
}

/// The active Service's rollout annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceObs {
    /// Revision the selector names.
    pub active: Option<String>,
    /// Revision it was switched away from.
    pub previous: Option<String>,
    /// When.
    pub switched_at: Option<Timestamp>,
    /// `<hash>/<retry mark>` of a revision rolled back after a failed post-promotion check.
    pub rolled_back: Option<String>,
    /// Why the selector last switched: `Promotion`, `FastRollback` or `RollBack`. Post-promotion
    /// checks only follow a promotion.
    pub switch_reason: Option<String>,
}

/// [`ServiceObs::switch_reason`] of a promotion.
pub const PROMOTION: &str = "Promotion";

/// The strategy settings, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Pods the service should run (the autoscaler's current decision, or `spec.replicas`).
    pub target: i32,
    /// Pods of the new revision before promotion.
    pub preview_replicas: Option<i32>,
    /// Promote without a manual step.
    pub auto_promotion: bool,
    /// With auto-promotion off: promote this long after pausing (0 = never).
    pub auto_promotion_seconds: i64,
    /// Keep the previous revision this long after the switch.
    pub scale_down_delay: i64,
    /// Keep an aborted revision this long after the abort.
    pub abort_scale_down_delay: i64,
    /// Seconds to become available and pass the pre-promotion checks.
    pub progress_deadline: i64,
    /// Abort at the deadline.
    pub deadline_abort: bool,
    /// Scaled-down revisions kept.
    pub history_limit: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            target: 1,
            preview_replicas: None,
            auto_promotion: true,
            auto_promotion_seconds: 0,
            scale_down_delay: 30,
            abort_scale_down_delay: 30,
            progress_deadline: 600,
            deadline_abort: false,
            history_limit: 3,
        }
    }
}

/// Everything a decision is made from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The revision of the current spec.
    pub desired: RevisionRef,
    /// Every revision Deployment of this MicroService.
    pub revisions: &'a [RevisionObs],
    /// The active Service's annotations.
    pub service: ServiceObs,
    /// The rollout status as last written.
    pub status: Option<&'a BlueGreenStatus>,
    /// Promote / abort / retry / paused.
    pub controls: &'a Controls,
    /// Strategy settings.
    pub settings: Settings,
    /// Verdict of the pre-promotion checks for the desired revision.
    pub pre: StageState,
    /// Verdict of the post-promotion checks for the desired revision.
    pub post: StageState,
    /// The desired revision does not exist and may not be created yet (`dependsOn` not ready):
    /// the rollout waits, and its progress deadline does not run.
    pub held: bool,
    /// The time of the decision.
    pub now: Timestamp,
}

/// The transition the machine is in; names the Event published when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// First revision: created at full size and made active at once (no traffic to protect).
    FirstRevision,
    /// The new revision is created or scaled to its preview size; waiting for it to be available.
    WaitForPreview,
    /// Pre-promotion checks run against the new revision.
    PrePromotionChecks,
    /// Waiting for a promotion (`spec.paused`, or auto-promotion off).
    Paused,
    /// The new revision is scaled to the full count; the switch waits until all of it is available.
    ScaleForPromotion,
    /// The active selector switches to the new revision now.
    Switch,
    /// Post-promotion checks run; the previous revision stays up.
    PostPromotionChecks,
    /// A post-promotion check failed: traffic switches back to the previous revision now.
    RollBack,
    /// A post-promotion check failed; the previous revision is scaled up before switching back.
    ScaleForRollBack,
    /// Re-applying the previous spec inside its scale-down window: switch back at once.
    FastRollback,
    /// The rollout is past its progress deadline (and not aborting).
    DeadlineExceeded,
    /// The rollout of the current spec is aborted; traffic stays on the active revision.
    Aborted,
    /// Traffic is on the current spec's revision; the previous one waits for its scale-down deadline.
    WaitForScaleDown,
    /// Nothing to do.
    Healthy,
}

/// The next desired world.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The transition.
    pub step: Step,
    /// Phase for status.
    pub phase: Phase,
    /// One-line summary.
    pub message: String,
    /// Revision the active Service selects (never empty).
    pub active: String,
    /// Annotations to write with the active selector.
    pub previous: Option<String>,
    /// When the active selector last switched.
    pub switched_at: Option<Timestamp>,
    /// Rolled-back marker to write with the active selector.
    pub rolled_back: Option<String>,
    /// Why the selector last switched, written with it.
    pub switch_reason: Option<String>,
    /// Revision the preview Service selects.
    pub preview: String,
    /// Replicas of every revision to keep (the desired revision is always present).
    pub replicas: BTreeMap<String, i32>,
    /// Revisions whose Deployments are deleted (beyond the history limit).
    pub delete: Vec<String>,
    /// Next rollout status (the reconciler adds check results).
    pub status: BlueGreenStatus,
    /// Checks to measure now, against the desired revision.
    pub run_checks: Option<Stage>,
    /// Reconcile again after this long (deadlines, delays).
    pub requeue: Option<Duration>,
    /// Degraded condition (reason, message) when something went wrong.
    pub degraded: Option<(&'static str, String)>,
    /// The active Service selects the current spec's revision.
    pub promoted: bool,
    /// A rollout is in flight.
    pub progressing: bool,
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn parse(t: Option<&String>) -> Option<Timestamp> {
    t.and_then(|t| t.parse().ok())
}

fn min_requeue(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decides the next desired world from the observed one.
pub fn decide(input: &Input<'_>) -> Plan {
    let now = input.now;
    let s = &input.settings;
    let d = input.desired.hash.clone();
    let rev = |h: &str| input.revisions.iter().find(|r| r.hash == h);
    let image_of = |h: &str| {
        if h == d {
            input.desired.image.clone()
        } else {
            rev(h).map(|r| r.image.clone()).unwrap_or_default()
        }
    };
    let status = input.status.cloned().unwrap_or_default();
    let retry = input.controls.retry.clone();

    // The active revision: what the Service says, or (first rollout) the desired one.
    let active = input.service.active.clone().unwrap_or_else(|| d.clone());
    let first = input.service.active.is_none();

    // Is the desired revision aborted? By request, by a recorded abort (until a retry), or rolled
    // back after a failed post-promotion check (recorded on the Service, atomically with the switch).
    let recorded = status
        .aborted
        .clone()
        .filter(|a| a.hash == d && a.retry_mark == retry);
    let keep_at = |reason: &str| {
        recorded
            .as_ref()
            .filter(|a| a.reason == reason)
            .map_or_else(|| now.to_string(), |a| a.at.clone())
    };
    let mut aborted: Option<AbortRecord> = if active == d {
        None
    } else if input.controls.abort.as_deref() == Some(d.as_str()) {
        Some(AbortRecord {
            hash: d.clone(),
            reason: "Requested".into(),
            at: keep_at("Requested"),
            retry_mark: retry.clone(),
        })
    } else if let Some(rec) = recorded.clone() {
        Some(rec)
    } else if input.service.rolled_back.as_deref() == Some(format!("{d}/{retry}").as_str()) {
        Some(AbortRecord {
            hash: d.clone(),
            reason: "PostPromotionCheckFailed".into(),
            at: now.to_string(),
            retry_mark: retry.clone(),
        })
    } else {
        None
    };

    let mut plan = Plan {
        step: Step::Healthy,
        phase: Phase::Healthy,
        message: String::new(),
        active: active.clone(),
        previous: input.service.previous.clone(),
        switched_at: input.service.switched_at,
        rolled_back: input.service.rolled_back.clone(),
        switch_reason: input.service.switch_reason.clone(),
        preview: d.clone(),
        replicas: BTreeMap::new(),
        delete: Vec::new(),
        status: BlueGreenStatus::default(),
        run_checks: None,
        requeue: None,
        degraded: None,
        promoted: false,
        progressing: false,
    };

    // The previous revision stays up until its deadline (and while post-promotion checks run).
    let previous = input
        .service
        .previous
        .clone()
        .filter(|p| *p != active && rev(p).is_some());
    let previous_deadline = input
        .service
        .switched_at
        .map(|t| t + secs(s.scale_down_delay));
    // Post-promotion checks follow a promotion only (not a rollback, not the first revision).
    let post = if input.service.switch_reason.as_deref() == Some(PROMOTION) {
        input.post.clone()
    } else {
        StageState::NotConfigured
    };
    let post_blocking = active == d && matches!(post, StageState::Running);
    let keep_previous =
        previous.is_some() && (post_blocking || previous_deadline.is_some_and(|dl| now < dl));

    if active == d {
        // Steady state, or just switched.
        plan.replicas.insert(d.clone(), s.target);
        let d_ready = rev(&d).is_some_and(|r| r.available_at(s.target));
        plan.promoted = true;
        if let (Some(p), StageState::Failed(why)) = (previous.as_ref(), &post) {
            // Roll back: traffic returns to the previous revision once all of it is available.
            let p_rev = rev(p).cloned().unwrap_or_default();
            let p_n = if p_rev.replicas > 0 {
                p_rev.replicas
            } else {
                s.target
            };
            plan.degraded = Some(("PostPromotionCheckFailed", why.clone()));
            plan.phase = Phase::Degraded;
            plan.promoted = false;
            if p_rev.available_at(p_n) {
                plan.step = Step::RollBack;
                plan.active = p.clone();
                plan.previous = Some(d.clone());
                plan.switched_at = Some(now);
                plan.rolled_back = Some(format!("{d}/{retry}"));
                plan.switch_reason = Some("RollBack".into());
                plan.replicas.insert(p.clone(), p_n);
                plan.message = format!("{why}; traffic switched back to revision {p}");
                aborted = Some(AbortRecord {
                    hash: d.clone(),
                    reason: "PostPromotionCheckFailed".into(),
                    at: now.to_string(),
                    retry_mark: retry.clone(),
                });
            } else {
                plan.step = Step::ScaleForRollBack;
                plan.replicas.insert(p.clone(), p_n);
                plan.message =
                    format!("{why}; scaling revision {p} up to {p_n} before switching back");
            }
        } else if post_blocking {
            plan.step = Step::PostPromotionChecks;
            plan.phase = Phase::Progressing;
            plan.progressing = true;
            plan.run_checks = Some(Stage::Post);
            plan.message = format!("traffic on revision {d}; post-promotion checks running");
        } else if first && !d_ready {
            plan.step = Step::FirstRevision;
            plan.phase = Phase::Progressing;
            plan.progressing = true;
            plan.message = format!("first revision {d} starting");
        } else if keep_previous {
            plan.step = Step::WaitForScaleDown;
            plan.phase = if d_ready {
                Phase::Healthy
            } else {
                Phase::Progressing
            };
            plan.message = format!(
                "traffic on revision {d}; previous revision kept until its scale-down deadline"
            );
            if let Some(dl) = previous_deadline {
                plan.requeue = min_requeue(plan.requeue, until(now, dl));
            }
        } else {
            plan.step = Step::Healthy;
            plan.phase = if d_ready {
                Phase::Healthy
            } else {
                Phase::Progressing
            };
            plan.message = format!("traffic on revision {d}");
        }
        if first {
            // NB: the very first revision becomes active at creation; nothing served before it.
            plan.step = if d_ready {
                Step::Healthy
            } else {
                Step::FirstRevision
            };
        }
    } else {
        // A rollout: the active revision keeps its replica count; the target goes to the new one.
        let a_rev = rev(&active).cloned();
        let a_n = a_rev
            .as_ref()
            .map(|r| r.replicas)
            .filter(|n| *n > 0)
            .unwrap_or(s.target);
        if a_rev.is_some() {
            plan.replicas.insert(active.clone(), a_n);
        }
        plan.promoted = false;
        let d_rev = rev(&d).cloned().unwrap_or_default();
        let same_rollout = status
            .preview_revision
            .as_ref()
            .is_some_and(|p| p.hash == d);
        let started = parse(status.started_at.as_ref())
            .filter(|_| same_rollout)
            .unwrap_or(now);
        let started = match input.controls.retry_at {
            Some(r) if r > started && r <= now => r,
            _ => started,
        };
        plan.status.started_at = Some(started.to_string());

        if let Some(rec) = aborted.clone() {
            let at = parse(Some(&rec.at)).unwrap_or(now);
            let scale_down_at = at + secs(s.abort_scale_down_delay);
            let n = if now < scale_down_at {
                plan.requeue = min_requeue(plan.requeue, until(now, scale_down_at));
                d_rev.replicas
            } else {
                0
            };
            plan.replicas.insert(d.clone(), n);
            plan.step = Step::Aborted;
            plan.phase = if rec.reason == "Requested" {
                Phase::Aborted
            } else {
                Phase::Degraded
            };
            if rec.reason != "Requested" {
                plan.degraded = Some((
                    match rec.reason.as_str() {
                        "ProgressDeadlineExceeded" => "ProgressDeadlineExceeded",
                        "PrePromotionCheckFailed" => "PrePromotionCheckFailed",
                        _ => "PostPromotionCheckFailed",
                    },
                    format!("rollout of revision {d} aborted: {}", rec.reason),
                ));
            }
            plan.message = format!(
                "rollout of revision {d} aborted ({}); traffic stays on revision {active}",
                rec.reason
            );
        } else if input.service.previous.as_deref() == Some(d.as_str())
            && d_rev.replicas > 0
            && a_rev.is_some()
        {
            // Fast rollback: the spec went back to the revision traffic just left.
            plan.replicas.insert(d.clone(), s.target);
            if d_rev.available_at(s.target) {
                plan.step = Step::FastRollback;
                switch(&mut plan, &active, &d, now);
                plan.switch_reason = Some("FastRollback".into());
                plan.message = format!("rolled back to revision {d} at once");
            } else {
                plan.step = Step::ScaleForPromotion;
                plan.phase = Phase::Promoting;
                plan.progressing = true;
                plan.message = format!("scaling revision {d} to {} before rolling back", s.target);
            }
        } else if input.held {
            plan.replicas.insert(d.clone(), 0);
            plan.step = Step::WaitForPreview;
            plan.phase = Phase::Progressing;
            plan.progressing = true;
            plan.status.started_at = None;
            plan.message = format!(
                "revision {d} waits for its dependencies; traffic stays on revision {active}"
            );
        } else {
            plan.progressing = true;
            let preview_n = s
                .preview_replicas
                .unwrap_or(s.target)
                .clamp(1, s.target.max(1));
            let preview_ready = d_rev.current
                && d_rev.replicas >= preview_n
                && d_rev.available >= preview_n
                && d_rev.updated >= preview_n;
            let deadline = started + secs(s.progress_deadline);
            let manual = input.controls.paused || !s.auto_promotion;
            let promote_requested = input.controls.promote.as_deref() == Some(d.as_str());
            let mut check_deadline = true;
            let gate = if !preview_ready {
                plan.replicas.insert(d.clone(), preview_n);
                plan.step = Step::WaitForPreview;
                plan.phase = Phase::Progressing;
                plan.message = format!(
                    "revision {d}: {} of {preview_n} preview pods available",
                    d_rev.available
                );
                false
            } else {
                match &input.pre {
                    StageState::Running => {
                        plan.replicas
                            .insert(d.clone(), d_rev.replicas.max(preview_n));
                        plan.step = Step::PrePromotionChecks;
                        plan.phase = Phase::Progressing;
                        plan.run_checks = Some(Stage::Pre);
                        plan.message = format!("revision {d}: pre-promotion checks running");
                        false
                    }
                    StageState::Failed(why) => {
                        plan.replicas.insert(d.clone(), d_rev.replicas);
                        let rec = AbortRecord {
                            hash: d.clone(),
                            reason: "PrePromotionCheckFailed".into(),
                            at: now.to_string(),
                            retry_mark: retry.clone(),
                        };
                        aborted = Some(rec);
                        plan.step = Step::Aborted;
                        plan.phase = Phase::Degraded;
                        plan.progressing = false;
                        plan.degraded = Some(("PrePromotionCheckFailed", why.clone()));
                        plan.message = format!(
                            "rollout of revision {d} aborted: {why}; traffic stays on revision {active}"
                        );
                        check_deadline = false;
                        false
                    }
                    StageState::Passed | StageState::NotConfigured => {
                        if manual && !promote_requested {
                            let paused_at = parse(status.paused_at.as_ref())
                                .filter(|_| same_rollout)
                                .unwrap_or(now);
                            let auto_at = (!input.controls.paused && s.auto_promotion_seconds > 0)
                                .then(|| paused_at + secs(s.auto_promotion_seconds));
                            if auto_at.is_some_and(|t| now >= t) {
                                true
                            } else {
                                if let Some(t) = auto_at {
                                    plan.requeue = min_requeue(plan.requeue, until(now, t));
                                }
                                plan.status.paused_at = Some(paused_at.to_string());
                                plan.replicas
                                    .insert(d.clone(), d_rev.replicas.max(preview_n));
                                plan.step = Step::Paused;
                                plan.phase = Phase::Paused;
                                plan.message = format!(
                                    "revision {d} ready; paused before promotion (kubectl ferry promote)"
                                );
                                check_deadline = false;
                                false
                            }
                        } else {
                            true
                        }
                    }
                }
            };
            if gate {
                check_deadline = false;
                if manual {
                    plan.status.paused_at = status.paused_at.clone().filter(|_| same_rollout);
                }
                plan.replicas.insert(d.clone(), s.target);
                if d_rev.available_at(s.target) && a_rev.is_some() {
                    plan.step = Step::Switch;
                    switch(&mut plan, &active, &d, now);
                    plan.switch_reason = Some(PROMOTION.into());
                    plan.message = format!("switched traffic to revision {d}");
                    if matches!(input.post, StageState::Running) {
                        plan.phase = Phase::Progressing;
                        plan.progressing = true;
                        plan.message.push_str("; post-promotion checks next");
                    }
                } else if d_rev.available_at(s.target) {
                    // NB: the active Deployment vanished; the new revision is all there is.
                    plan.step = Step::Switch;
                    plan.active = d.clone();
                    plan.switched_at = Some(now);
                    plan.switch_reason = Some(PROMOTION.into());
                    plan.promoted = true;
                    plan.phase = Phase::Healthy;
                    plan.message = format!("switched traffic to revision {d}");
                } else {
                    plan.step = Step::ScaleForPromotion;
                    plan.phase = Phase::Promoting;
                    plan.message = format!(
                        "promoting revision {d}: {} of {} pods available",
                        d_rev.available, s.target
                    );
                }
            }
            if check_deadline && plan.step != Step::Switch {
                if now >= deadline {
                    let why = format!(
                        "revision {d} not ready within {}s (progress deadline)",
                        s.progress_deadline
                    );
                    if s.deadline_abort {
                        aborted = Some(AbortRecord {
                            hash: d.clone(),
                            reason: "ProgressDeadlineExceeded".into(),
                            at: now.to_string(),
                            retry_mark: retry.clone(),
                        });
                        plan.step = Step::Aborted;
                        plan.progressing = false;
                        plan.replicas.insert(d.clone(), d_rev.replicas);
                        plan.message =
                            format!("{why}; aborted, traffic stays on revision {active}");
                        plan.requeue = min_requeue(
                            plan.requeue,
                            Duration::from_secs(
                                u64::try_from(s.abort_scale_down_delay).unwrap_or(0),
                            ),
                        );
                    } else {
                        plan.step = Step::DeadlineExceeded;
                        plan.message = why.clone();
                    }
                    plan.phase = Phase::Degraded;
                    plan.degraded = Some(("ProgressDeadlineExceeded", why));
                } else {
                    plan.requeue = min_requeue(plan.requeue, until(now, deadline));
                }
            }
        }
    }

    // The previous revision (if any, and not the active or desired one).
    if let Some(p) = previous.as_ref().filter(|p| **p != plan.active && **p != d) {
        let p_n = rev(p).map_or(0, |r| r.replicas);
        if keep_previous {
            plan.replicas.entry(p.clone()).or_insert(p_n);
            if let (Some(dl), false) = (previous_deadline, post_blocking) {
                plan.requeue = min_requeue(plan.requeue, until(now, dl));
            }
        }
    }
    if plan.step == Step::RollBack || plan.step == Step::Switch || plan.step == Step::FastRollback {
        // The revision traffic just left keeps its size until the (new) deadline.
        if let Some(p) = plan.previous.clone()
            && let Some(r) = rev(&p)
        {
            plan.replicas.insert(p.clone(), r.replicas.max(1));
            plan.requeue = min_requeue(
                plan.requeue,
                Duration::from_secs(u64::try_from(s.scale_down_delay).unwrap_or(0)),
            );
        }
    }
    // Everything else scales to zero; the oldest beyond the history limit are deleted.
    let mut idle: Vec<&RevisionObs> = Vec::new();
    for r in input.revisions {
        if !plan.replicas.contains_key(&r.hash) {
            plan.replicas.insert(r.hash.clone(), 0);
            idle.push(r);
        }
    }
    idle.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.hash.cmp(&a.hash)));
    plan.delete = idle
        .iter()
        .skip(s.history_limit)
        .map(|r| r.hash.clone())
        .collect();
    for h in &plan.delete {
        plan.replicas.remove(h);
    }

    // Status.
    let kept_previous = plan
        .previous
        .clone()
        .filter(|p| plan.replicas.get(p).is_some_and(|n| *n > 0) && *p != plan.active);
    plan.status.active_revision = Some(RevisionRef {
        hash: plan.active.clone(),
        image: image_of(&plan.active),
    });
    plan.status.preview_revision = (plan.active != d).then(|| RevisionRef {
        hash: d.clone(),
        image: input.desired.image.clone(),
    });
    if plan.status.preview_revision.is_none() {
        plan.status.started_at = None;
        plan.status.paused_at = None;
    }
    plan.status.previous_revision = kept_previous.as_ref().map(|p| RevisionRef {
        hash: p.clone(),
        image: image_of(p),
    });
    plan.status.scale_down_deadline = kept_previous
        .as_ref()
        .and(plan.switched_at)
        .filter(|_| !post_blocking)
        .map(|t| (t + secs(s.scale_down_delay)).to_string());
    plan.status.aborted = aborted;
    plan
}

fn switch(plan: &mut Plan, from: &str, to: &str, now: Timestamp) {
    plan.active = to.to_string();
    plan.previous = Some(from.to_string());
    plan.switched_at = Some(now);
    plan.promoted = true;
    plan.phase = Phase::Healthy;
    plan.progressing = false;
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests;
