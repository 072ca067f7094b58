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
use crate::crd::{AbortRecord, BlueGreenStatus, Phase, Reason, RevisionRef};

/// One revision Deployment as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionObs {
    /// Pod template hash (the `ferry.dev/revision` label).
    pub hash: String,
    /// Container image (the `ferry.dev/image` annotation).
    pub image: String,
    /// The replica count the operator gave it (`ferry.dev/replicas`; `spec.replicas` on a revision
    /// written before that annotation existed).
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

/// Why the active selector last switched (the `ferry.dev/switch-reason` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// Traffic moved to the new revision; post-promotion checks follow.
    Promotion,
    /// The previous spec was re-applied inside its scale-down window.
    FastRollback,
    /// A post-promotion check failed.
    RollBack,
}

impl SwitchReason {
    /// The spelling on the Service and in status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Promotion => "Promotion",
            Self::FastRollback => "FastRollback",
            Self::RollBack => "RollBack",
        }
    }
}

/// [`ServiceObs::switch_reason`] of a promotion.
pub const PROMOTION: &str = SwitchReason::Promotion.as_str();

/// Why a revision's rollout was aborted ([`AbortRecord::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// `kubectl ferry abort` (the `ferry.dev/abort` annotation).
    Requested,
    /// The progress deadline passed with `progressDeadlineAbort`.
    ProgressDeadlineExceeded,
    /// A pre-promotion check failed.
    PrePromotionCheckFailed,
    /// A post-promotion check failed (traffic switched back).
    PostPromotionCheckFailed,
}

impl AbortReason {
    /// The spelling in status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "Requested",
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::PrePromotionCheckFailed => "PrePromotionCheckFailed",
            Self::PostPromotionCheckFailed => "PostPromotionCheckFailed",
        }
    }

    /// The reason of the `Degraded` condition an abort for this reason sets (none for a request).
    pub fn degraded_reason(recorded: &str) -> Option<Reason> {
        match recorded {
            "Requested" => None,
            "ProgressDeadlineExceeded" => Some(Reason::ProgressDeadlineExceeded),
            "PrePromotionCheckFailed" => Some(Reason::PrePromotionCheckFailed),
            _ => Some(Reason::PostPromotionCheckFailed),
        }
    }
}

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

/// The transition the machine is in; its [`Step::reason`] is the reason of `Progressing`.
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

impl Step {
    /// The reason of the `Progressing` condition (and of `Promoted=False`) in this step.
    pub const fn reason(self) -> Reason {
        match self {
            Self::FirstRevision => Reason::FirstRevision,
            Self::WaitForPreview => Reason::WaitingForPreview,
            Self::PrePromotionChecks => Reason::PrePromotionChecks,
            Self::Paused => Reason::Paused,
            Self::ScaleForPromotion => Reason::ScalingForPromotion,
            Self::Switch => Reason::Switched,
            Self::PostPromotionChecks => Reason::PostPromotionChecks,
            Self::RollBack => Reason::RolledBack,
            Self::ScaleForRollBack => Reason::ScalingForRollBack,
            Self::FastRollback => Reason::FastRollback,
            Self::DeadlineExceeded => Reason::ProgressDeadlineExceeded,
            Self::Aborted => Reason::RolloutAborted,
            Self::WaitForScaleDown => Reason::WaitingForScaleDown,
            Self::Healthy => Reason::RolloutComplete,
        }
    }

    /// Whether the active selector moves in this step.
    pub fn switches(self) -> bool {
        matches!(self, Self::Switch | Self::RollBack | Self::FastRollback)
    }
}

/// The next desired world.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
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
    pub degraded: Option<(Reason, String)>,
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

fn seconds(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

impl Decision {
    /// Asks for a reconcile after `after` (the earliest of every such request wins).
    fn requeue_after(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn set(&mut self, step: Step, phase: Phase, message: String) {
        self.step = step;
        self.phase = phase;
        self.message = message;
    }

    /// Moves traffic from `from` to `to` now.
    fn switch(&mut self, from: &str, to: &str, now: Timestamp, reason: SwitchReason) {
        self.active = to.to_string();
        self.previous = Some(from.to_string());
        self.switched_at = Some(now);
        self.switch_reason = Some(reason.as_str().into());
        self.promoted = true;
        self.phase = Phase::Healthy;
        self.progressing = false;
    }
}

/// What every step reads, derived once from the [`Input`].
struct Facts<'a> {
    input: &'a Input<'a>,
    now: Timestamp,
    /// The desired revision's hash.
    d: String,
    /// The active revision: what the Service says, or (first rollout) the desired one.
    active: String,
    /// No revision was ever made active.
    first: bool,
    /// The rollout status as last written.
    status: BlueGreenStatus,
    /// The `ferry.dev/retry` mark.
    retry: String,
    /// The abort of the desired revision on record (by request, recorded, or rolled back).
    aborted: Option<AbortRecord>,
    /// The revision traffic left last, while its Deployment exists.
    previous: Option<String>,
    /// When the previous revision is scaled down.
    previous_deadline: Option<Timestamp>,
    /// Post-promotion checks, which follow a promotion only.
    post: StageState,
    /// Post-promotion checks hold the previous revision up (past its deadline too).
    post_blocking: bool,
    /// The previous revision stays up.
    keep_previous: bool,
}

impl<'a> Facts<'a> {
    fn read(input: &'a Input<'a>) -> Self {
        let s = &input.settings;
        let d = input.desired.hash.clone();
        let active = input.service.active.clone().unwrap_or_else(|| d.clone());
        let status = input.status.cloned().unwrap_or_default();
        let retry = input.controls.retry.clone();
        let rev_exists = |h: &str| input.revisions.iter().any(|r| r.hash == h);
        let previous = (input.service.previous.clone()).filter(|p| *p != active && rev_exists(p));
        let previous_deadline = input.service.switched_at.map(|t| t + secs(s.scale_down_delay));
        let post = if input.service.switch_reason.as_deref() == Some(PROMOTION) {
            input.post.clone()
        } else {
            StageState::NotConfigured
        };
        let post_blocking = active == d && matches!(post, StageState::Running);
        let keep_previous =
            previous.is_some() && (post_blocking || previous_deadline.is_some_and(|dl| input.now < dl));
        let mut facts = Self {
            input,
            now: input.now,
            first: input.service.active.is_none(),
            aborted: None,
            d,
            active,
            status,
            retry,
            previous,
            previous_deadline,
            post,
            post_blocking,
            keep_previous,
        };
        facts.aborted = facts.abort_on_record();
        facts
    }

    fn rev(&self, hash: &str) -> Option<&RevisionObs> {
        self.input.revisions.iter().find(|r| r.hash == hash)
    }

    fn settings(&self) -> &Settings {
        &self.input.settings
    }

    fn abort(&self, reason: AbortReason, at: String) -> AbortRecord {
        AbortRecord {
            hash: self.d.clone(),
            reason: reason.as_str().into(),
            at,
            retry_mark: self.retry.clone(),
        }
    }

    /// Is the desired revision aborted? By request, by a recorded abort (until a retry), or rolled
    /// back after a failed post-promotion check (recorded on the Service, atomically with the
    /// switch). Never while it is the active revision.
    fn abort_on_record(&self) -> Option<AbortRecord> {
        let (d, now) = (&self.d, self.now);
        let recorded = (self.status.aborted.clone()).filter(|a| a.hash == *d && a.retry_mark == self.retry);
        let rolled_back = format!("{d}/{}", self.retry);
        if self.active == *d {
            None
        } else if self.input.controls.abort.as_deref() == Some(d.as_str()) {
            let requested = AbortReason::Requested.as_str();
            let kept = recorded.filter(|a| a.reason == requested).map(|a| a.at);
            Some(self.abort(AbortReason::Requested, kept.unwrap_or_else(|| now.to_string())))
        } else if recorded.is_some() {
            recorded
        } else if self.input.service.rolled_back.as_deref() == Some(rolled_back.as_str()) {
            Some(self.abort(AbortReason::PostPromotionCheckFailed, now.to_string()))
        } else {
            None
        }
    }
}

/// Decides the next desired world from the observed one, in named steps: the steady state or a
/// rollout, then the previous revision, the idle ones, and the rollout status.
pub fn decide(input: &Input<'_>) -> Decision {
    let f = Facts::read(input);
    let mut plan = start(&f);
    if f.active == f.d {
        steady_state(&f, &mut plan);
    } else {
        rollout(&f, &mut plan);
    }
    keep_previous_revision(&f, &mut plan);
    keep_the_revision_traffic_left(&f, &mut plan);
    scale_idle_and_prune(&f, &mut plan);
    record_status(&f, &mut plan);
    plan
}

/// Nothing changes: traffic stays where the Service says.
fn start(f: &Facts<'_>) -> Decision {
    let service = &f.input.service;
    Decision {
        step: Step::Healthy,
        phase: Phase::Healthy,
        message: String::new(),
        active: f.active.clone(),
        previous: service.previous.clone(),
        switched_at: service.switched_at,
        rolled_back: service.rolled_back.clone(),
        switch_reason: service.switch_reason.clone(),
        preview: f.d.clone(),
        replicas: BTreeMap::new(),
        delete: Vec::new(),
        status: BlueGreenStatus { aborted: f.aborted.clone(), ..BlueGreenStatus::default() },
        run_checks: None,
        requeue: None,
        degraded: None,
        promoted: false,
        progressing: false,
    }
}

// === the steady state: traffic is on the current spec's revision ===

fn steady_state(f: &Facts<'_>, plan: &mut Decision) {
    let (s, d) = (f.settings(), &f.d);
    plan.replicas.insert(d.clone(), s.target);
    let d_ready = f.rev(d).is_some_and(|r| r.available_at(s.target));
    plan.promoted = true;
    let phase = if d_ready { Phase::Healthy } else { Phase::Progressing };
    if let (Some(p), StageState::Failed(why)) = (f.previous.as_ref(), &f.post) {
        roll_back(f, plan, p, why);
    } else if f.post_blocking {
        let message = format!("traffic on revision {d}; post-promotion checks running");
        plan.set(Step::PostPromotionChecks, Phase::Progressing, message);
        plan.progressing = true;
        plan.run_checks = Some(Stage::Post);
    } else if f.first && !d_ready {
        plan.set(Step::FirstRevision, Phase::Progressing, format!("first revision {d} starting"));
        plan.progressing = true;
    } else if f.keep_previous {
        let message =
            format!("traffic on revision {d}; previous revision kept until its scale-down deadline");
        plan.set(Step::WaitForScaleDown, phase, message);
        if let Some(dl) = f.previous_deadline {
            plan.requeue_after(until(f.now, dl));
        }
    } else {
        plan.set(Step::Healthy, phase, format!("traffic on revision {d}"));
    }
    if f.first {
        // NB: the very first revision becomes active at creation; nothing served before it.
        plan.step = if d_ready { Step::Healthy } else { Step::FirstRevision };
    }
}

/// A post-promotion check failed: traffic returns to the previous revision once all of it is
/// available (it is scaled back up first if it is not).
fn roll_back(f: &Facts<'_>, plan: &mut Decision, p: &str, why: &str) {
    let d = &f.d;
    let p_rev = f.rev(p).cloned().unwrap_or_default();
    let p_n = if p_rev.replicas > 0 { p_rev.replicas } else { f.settings().target };
    plan.degraded = Some((Reason::PostPromotionCheckFailed, why.to_string()));
    plan.phase = Phase::Degraded;
    plan.promoted = false;
    plan.replicas.insert(p.to_string(), p_n);
    if p_rev.available_at(p_n) {
        plan.step = Step::RollBack;
        plan.active = p.to_string();
        plan.previous = Some(d.clone());
        plan.switched_at = Some(f.now);
        plan.rolled_back = Some(format!("{d}/{}", f.retry));
        plan.switch_reason = Some(SwitchReason::RollBack.as_str().into());
        plan.message = format!("{why}; traffic switched back to revision {p}");
        plan.status.aborted = Some(f.abort(AbortReason::PostPromotionCheckFailed, f.now.to_string()));
    } else {
        plan.step = Step::ScaleForRollBack;
        plan.message = format!("{why}; scaling revision {p} up to {p_n} before switching back");
    }
}

// === a rollout: traffic is on another revision than the current spec's ===

/// Where the rollout of the desired revision stands.
struct Rollout {
    /// The desired revision as observed (zero pods when it does not exist yet).
    d_rev: RevisionObs,
    /// The active revision's Deployment exists.
    has_active: bool,
    /// The status describes this rollout (same preview revision).
    same_rollout: bool,
    /// When its progress deadline started counting.
    started: Timestamp,
}

fn rollout(f: &Facts<'_>, plan: &mut Decision) {
    let s = f.settings();
    // The active revision keeps its replica count; the target goes to the new one.
    let a_rev = f.rev(&f.active).cloned();
    if let Some(a) = &a_rev {
        let a_n = if a.replicas > 0 { a.replicas } else { s.target };
        plan.replicas.insert(f.active.clone(), a_n);
    }
    plan.promoted = false;
    let same_rollout = (f.status.preview_revision.as_ref()).is_some_and(|p| p.hash == f.d);
    let started = (parse(f.status.started_at.as_ref()).filter(|_| same_rollout)).unwrap_or(f.now);
    let started = match f.input.controls.retry_at {
        Some(r) if r > started && r <= f.now => r,
        _ => started,
    };
    plan.status.started_at = Some(started.to_string());
    let r = Rollout {
        d_rev: f.rev(&f.d).cloned().unwrap_or_default(),
        has_active: a_rev.is_some(),
        same_rollout,
        started,
    };
    let back_to_previous =
        f.input.service.previous.as_deref() == Some(f.d.as_str()) && r.d_rev.replicas > 0 && r.has_active;
    if let Some(rec) = f.aborted.clone() {
        aborted(f, plan, &r, &rec);
    } else if back_to_previous {
        fast_rollback(f, plan, &r);
    } else if f.input.held {
        let d = &f.d;
        plan.replicas.insert(d.clone(), 0);
        let message =
            format!("revision {d} waits for its dependencies; traffic stays on revision {}", f.active);
        plan.set(Step::WaitForPreview, Phase::Progressing, message);
        plan.progressing = true;
        plan.status.started_at = None;
    } else {
        progress(f, plan, &r);
    }
}

/// The rollout of the desired revision is aborted: traffic stays, and the revision keeps its pods
/// for the abort delay, then is scaled to zero.
fn aborted(f: &Facts<'_>, plan: &mut Decision, r: &Rollout, rec: &AbortRecord) {
    let (d, now) = (&f.d, f.now);
    let at = parse(Some(&rec.at)).unwrap_or(now);
    let scale_down_at = at + secs(f.settings().abort_scale_down_delay);
    let n = if now < scale_down_at {
        plan.requeue_after(until(now, scale_down_at));
        r.d_rev.replicas
    } else {
        0
    };
    plan.replicas.insert(d.clone(), n);
    let degraded = AbortReason::degraded_reason(&rec.reason);
    let phase = if degraded.is_some() { Phase::Degraded } else { Phase::Aborted };
    let message =
        format!("rollout of revision {d} aborted ({}); traffic stays on revision {}", rec.reason, f.active);
    plan.set(Step::Aborted, phase, message);
    plan.degraded =
        degraded.map(|reason| (reason, format!("rollout of revision {d} aborted: {}", rec.reason)));
}

/// The spec went back to the revision traffic just left: switch back at once, without checks.
fn fast_rollback(f: &Facts<'_>, plan: &mut Decision, r: &Rollout) {
    let (d, target) = (&f.d, f.settings().target);
    plan.replicas.insert(d.clone(), target);
    if r.d_rev.available_at(target) {
        plan.step = Step::FastRollback;
        plan.switch(&f.active, d, f.now, SwitchReason::FastRollback);
        plan.message = format!("rolled back to revision {d} at once");
    } else {
        let message = format!("scaling revision {d} to {target} before rolling back");
        plan.set(Step::ScaleForPromotion, Phase::Promoting, message);
        plan.progressing = true;
    }
}

/// What stands between the new revision and the switch.
enum Gate {
    /// Nothing: promote.
    Open,
    /// Waiting; `deadline` says whether the progress deadline runs meanwhile.
    Closed { deadline: bool },
}

fn progress(f: &Facts<'_>, plan: &mut Decision, r: &Rollout) {
    plan.progressing = true;
    let manual = f.input.controls.paused || !f.settings().auto_promotion;
    match preview_gate(f, plan, r, manual) {
        Gate::Open => promote(f, plan, r, manual),
        Gate::Closed { deadline: true } => progress_deadline(f, plan, r),
        Gate::Closed { deadline: false } => {}
    }
}

/// The preview size, the pre-promotion checks and the pause, in that order.
fn preview_gate(f: &Facts<'_>, plan: &mut Decision, r: &Rollout, manual: bool) -> Gate {
    let (s, d, d_rev) = (f.settings(), &f.d, &r.d_rev);
    let preview_n = s.preview_replicas.unwrap_or(s.target).clamp(1, s.target.max(1));
    let preview_ready = d_rev.current
        && d_rev.replicas >= preview_n
        && d_rev.available >= preview_n
        && d_rev.updated >= preview_n;
    if !preview_ready {
        plan.replicas.insert(d.clone(), preview_n);
        let message = format!("revision {d}: {} of {preview_n} preview pods available", d_rev.available);
        plan.set(Step::WaitForPreview, Phase::Progressing, message);
        return Gate::Closed { deadline: true };
    }
    match &f.input.pre {
        StageState::Running => {
            plan.replicas.insert(d.clone(), d_rev.replicas.max(preview_n));
            let message = format!("revision {d}: pre-promotion checks running");
            plan.set(Step::PrePromotionChecks, Phase::Progressing, message);
            plan.run_checks = Some(Stage::Pre);
            Gate::Closed { deadline: true }
        }
        StageState::Failed(why) => {
            plan.replicas.insert(d.clone(), d_rev.replicas);
            plan.status.aborted = Some(f.abort(AbortReason::PrePromotionCheckFailed, f.now.to_string()));
            let message =
                format!("rollout of revision {d} aborted: {why}; traffic stays on revision {}", f.active);
            plan.set(Step::Aborted, Phase::Degraded, message);
            plan.progressing = false;
            plan.degraded = Some((Reason::PrePromotionCheckFailed, why.clone()));
            Gate::Closed { deadline: false }
        }
        StageState::Passed | StageState::NotConfigured => {
            let promote_requested = f.input.controls.promote.as_deref() == Some(d.as_str());
            if manual && !promote_requested { pause(f, plan, r, preview_n) } else { Gate::Open }
        }
    }
}

/// Paused before promotion, until a promotion request or `autoPromotionSeconds`.
fn pause(f: &Facts<'_>, plan: &mut Decision, r: &Rollout, preview_n: i32) -> Gate {
    let (s, d, now) = (f.settings(), &f.d, f.now);
    let paused_at = (parse(f.status.paused_at.as_ref()).filter(|_| r.same_rollout)).unwrap_or(now);
    let auto_at = (!f.input.controls.paused && s.auto_promotion_seconds > 0)
        .then(|| paused_at + secs(s.auto_promotion_seconds));
    if auto_at.is_some_and(|t| now >= t) {
        return Gate::Open;
    }
    if let Some(t) = auto_at {
        plan.requeue_after(until(now, t));
    }
    plan.status.paused_at = Some(paused_at.to_string());
    plan.replicas.insert(d.clone(), r.d_rev.replicas.max(preview_n));
    let message = format!("revision {d} ready; paused before promotion (kubectl ferry promote)");
    plan.set(Step::Paused, Phase::Paused, message);
    Gate::Closed { deadline: false }
}

/// The new revision goes to the full count; traffic moves once all of it is available.
fn promote(f: &Facts<'_>, plan: &mut Decision, r: &Rollout, manual: bool) {
    let (s, d) = (f.settings(), &f.d);
    if manual {
        plan.status.paused_at = f.status.paused_at.clone().filter(|_| r.same_rollout);
    }
    plan.replicas.insert(d.clone(), s.target);
    let ready = r.d_rev.available_at(s.target);
    if ready && r.has_active {
        plan.step = Step::Switch;
        plan.switch(&f.active, d, f.now, SwitchReason::Promotion);
        plan.message = format!("switched traffic to revision {d}");
        if matches!(f.input.post, StageState::Running) {
            plan.phase = Phase::Progressing;
            plan.progressing = true;
            plan.message.push_str("; post-promotion checks next");
        }
    } else if ready {
        // NB: the active Deployment vanished; the new revision is all there is.
        plan.step = Step::Switch;
        plan.active = d.clone();
        plan.switched_at = Some(f.now);
        plan.switch_reason = Some(SwitchReason::Promotion.as_str().into());
        plan.promoted = true;
        plan.phase = Phase::Healthy;
        plan.message = format!("switched traffic to revision {d}");
    } else {
        let message = format!("promoting revision {d}: {} of {} pods available", r.d_rev.available, s.target);
        plan.set(Step::ScaleForPromotion, Phase::Promoting, message);
    }
}

/// Past the progress deadline the rollout is Degraded, and aborted with `progressDeadlineAbort`;
/// before it, a reconcile is due at the deadline.
fn progress_deadline(f: &Facts<'_>, plan: &mut Decision, r: &Rollout) {
    let (s, d, now) = (f.settings(), &f.d, f.now);
    let deadline = r.started + secs(s.progress_deadline);
    if now < deadline {
        plan.requeue_after(until(now, deadline));
        return;
    }
    let why = format!("revision {d} not ready within {}s (progress deadline)", s.progress_deadline);
    if s.deadline_abort {
        plan.status.aborted = Some(f.abort(AbortReason::ProgressDeadlineExceeded, now.to_string()));
        plan.step = Step::Aborted;
        plan.progressing = false;
        plan.replicas.insert(d.clone(), r.d_rev.replicas);
        plan.message = format!("{why}; aborted, traffic stays on revision {}", f.active);
        plan.requeue_after(seconds(s.abort_scale_down_delay));
    } else {
        plan.step = Step::DeadlineExceeded;
        plan.message = why.clone();
    }
    plan.phase = Phase::Degraded;
    plan.degraded = Some((Reason::ProgressDeadlineExceeded, why));
}

// === after either: the other revisions and the status ===

/// The previous revision (neither active nor desired) keeps its size until its deadline.
fn keep_previous_revision(f: &Facts<'_>, plan: &mut Decision) {
    let Some(p) = f.previous.as_ref().filter(|p| **p != plan.active && **p != f.d) else {
        return;
    };
    if !f.keep_previous {
        return;
    }
    let p_n = f.rev(p).map_or(0, |r| r.replicas);
    plan.replicas.entry(p.clone()).or_insert(p_n);
    if let (Some(dl), false) = (f.previous_deadline, f.post_blocking) {
        plan.requeue_after(until(f.now, dl));
    }
}

/// After a switch, the revision traffic just left keeps its size until the (new) deadline.
fn keep_the_revision_traffic_left(f: &Facts<'_>, plan: &mut Decision) {
    if !plan.step.switches() {
        return;
    }
    if let Some(p) = plan.previous.clone()
        && let Some(r) = f.rev(&p)
    {
        plan.replicas.insert(p, r.replicas.max(1));
        plan.requeue_after(seconds(f.settings().scale_down_delay));
    }
}

/// Every other revision scales to zero; the oldest beyond the history limit are deleted.
fn scale_idle_and_prune(f: &Facts<'_>, plan: &mut Decision) {
    let mut idle: Vec<&RevisionObs> = Vec::new();
    for r in f.input.revisions {
        if !plan.replicas.contains_key(&r.hash) {
            plan.replicas.insert(r.hash.clone(), 0);
            idle.push(r);
        }
    }
    idle.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.hash.cmp(&a.hash)));
    plan.delete = (idle.iter().skip(f.settings().history_limit)).map(|r| r.hash.clone()).collect();
    for h in &plan.delete {
        plan.replicas.remove(h);
    }
}

/// `status.blueGreen` (without check results, which the planner adds).
fn record_status(f: &Facts<'_>, plan: &mut Decision) {
    let d = &f.d;
    let image_of = |h: &str| {
        if h == d {
            f.input.desired.image.clone()
        } else {
            f.rev(h).map(|r| r.image.clone()).unwrap_or_default()
        }
    };
    let kept_previous =
        (plan.previous.clone()).filter(|p| plan.replicas.get(p).is_some_and(|n| *n > 0) && *p != plan.active);
    plan.status.active_revision =
        Some(RevisionRef { hash: plan.active.clone(), image: image_of(&plan.active) });
    plan.status.preview_revision =
        (plan.active != *d).then(|| RevisionRef { hash: d.clone(), image: f.input.desired.image.clone() });
    if plan.status.preview_revision.is_none() {
        plan.status.started_at = None;
        plan.status.paused_at = None;
    }
    plan.status.previous_revision =
        kept_previous.as_ref().map(|p| RevisionRef { hash: p.clone(), image: image_of(p) });
    plan.status.scale_down_deadline = (kept_previous.as_ref().and(plan.switched_at))
        .filter(|_| !f.post_blocking)
        .map(|t| (t + secs(f.settings().scale_down_delay)).to_string());
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests;
