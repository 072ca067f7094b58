//! Table tests of the blue-green state machine: one row per transition, plus the invariants that
//! every decision must keep (checked on every row).

use super::*;

const NOW: i64 = 1_000_000;

fn t(offset: i64) -> Timestamp {
    Timestamp::from_second(NOW + offset).expect("time")
}

/// A revision of `n` pods, `available` of them available, created `age` seconds ago.
fn rev(hash: &str, n: i32, available: i32, age: i64) -> RevisionObs {
    RevisionObs {
        hash: hash.into(),
        image: format!("img:{hash}"),
        replicas: n,
        available,
        updated: n,
        current: true,
        created_at: Some(t(-age)),
    }
}

fn svc(active: &str) -> ServiceObs {
    ServiceObs { active: Some(active.into()), ..ServiceObs::default() }
}

fn switched(active: &str, previous: &str, ago: i64, reason: &str) -> ServiceObs {
    ServiceObs {
        active: Some(active.into()),
        previous: Some(previous.into()),
        switched_at: Some(t(-ago)),
        rolled_back: None,
        switch_reason: Some(reason.into()),
    }
}

/// A scenario: the desired revision is `green` (image `img:green`) unless changed.
struct Case {
    revisions: Vec<RevisionObs>,
    service: ServiceObs,
    status: Option<BlueGreenStatus>,
    controls: Controls,
    settings: Settings,
    pre: StageState,
    post: StageState,
    held: bool,
    desired: &'static str,
}

impl Case {
    fn new(revisions: Vec<RevisionObs>, service: ServiceObs) -> Self {
        Self {
            revisions,
            service,
            status: None,
            controls: Controls::default(),
            settings: Settings { target: 3, ..Settings::default() },
            pre: StageState::NotConfigured,
            post: StageState::NotConfigured,
            held: false,
            desired: "green",
        }
    }

    fn decide(&self) -> Decision {
        let input = Input {
            desired: RevisionRef { hash: self.desired.into(), image: format!("img:{}", self.desired) },
            revisions: &self.revisions,
            service: self.service.clone(),
            status: self.status.as_ref(),
            controls: &self.controls,
            settings: self.settings.clone(),
            pre: self.pre.clone(),
            post: self.post.clone(),
            held: self.held,
            now: t(0),
        };
        let plan = decide(&input);
        invariants(&input, &plan);
        plan
    }
}

/// What must hold for every decision.
fn invariants(input: &Input<'_>, plan: &Decision) {
    assert!(!plan.active.is_empty(), "the active selector is never empty");
    let moved = input.service.active.as_deref().is_some_and(|a| a != plan.active);
    if moved {
        let target = input
            .revisions
            .iter()
            .find(|r| r.hash == plan.active)
            .expect("traffic only moves to an existing revision");
        let n = plan.replicas.get(&plan.active).copied().unwrap_or_default();
        assert!(
            target.available_at(n) && n > 0,
            "traffic only moves to a fully available revision: {target:?} planned {n}"
        );
    }
    assert!(
        plan.replicas.contains_key(&input.desired.hash) || plan.delete.contains(&input.desired.hash),
        "the desired revision always has a planned size"
    );
    if let Some(a) = input.service.active.as_ref()
        && *a != input.desired.hash
        && plan.active == *a
        && let Some(r) = input.revisions.iter().find(|r| r.hash == *a)
        && r.replicas > 0
    {
        assert_eq!(
            plan.replicas.get(a),
            Some(&r.replicas),
            "during a rollout the active revision keeps its size"
        );
    }
    assert!(
        !plan.delete.contains(&plan.active) && !plan.delete.contains(&input.desired.hash),
        "neither the active nor the desired revision is deleted"
    );
}

fn status_with_preview(hash: &str, started_ago: i64) -> BlueGreenStatus {
    BlueGreenStatus {
        preview_revision: Some(RevisionRef { hash: hash.into(), image: format!("img:{hash}") }),
        started_at: Some(t(-started_ago).to_string()),
        ..BlueGreenStatus::default()
    }
}

#[test]
fn the_first_revision_is_made_active_at_once_and_is_progressing_until_available() {
    let plan = Case::new(vec![], ServiceObs::default()).decide();
    assert_eq!(plan.step, Step::FirstRevision);
    assert_eq!(plan.phase, Phase::Progressing);
    assert_eq!(plan.active, "green");
    assert_eq!(plan.replicas.get("green"), Some(&3));
    assert!(plan.promoted);
}

#[test]
fn the_first_revision_is_healthy_once_fully_available() {
    let plan = Case::new(vec![rev("green", 3, 3, 10)], svc("green")).decide();
    assert_eq!(plan.step, Step::Healthy);
    assert_eq!(plan.phase, Phase::Healthy);
    assert_eq!(plan.status.preview_revision, None);
    assert!(!plan.progressing);
}

#[test]
fn a_new_spec_creates_the_new_revision_at_preview_size_and_keeps_traffic_on_blue() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100)], svc("blue"));
    case.settings.preview_replicas = Some(1);
    let plan = case.decide();
    assert_eq!(plan.step, Step::WaitForPreview);
    assert_eq!(plan.phase, Phase::Progressing);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.preview, "green");
    assert_eq!(plan.replicas.get("green"), Some(&1));
    assert_eq!(plan.replicas.get("blue"), Some(&3));
    assert!(!plan.promoted);
    assert_eq!(plan.status.preview_revision.as_ref().map(|r| r.hash.as_str()), Some("green"));
    assert_eq!(plan.status.started_at, Some(t(0).to_string()));
}

#[test]
fn a_replica_change_during_a_rollout_goes_to_green_and_never_to_blue() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 1, 5)], svc("blue"));
    case.settings.target = 7;
    let plan = case.decide();
    assert_eq!(plan.replicas.get("blue"), Some(&3));
    assert_eq!(plan.replicas.get("green"), Some(&7));
}

#[test]
fn with_the_preview_available_and_no_checks_green_is_scaled_to_full_size_before_the_switch() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 1, 1, 5)], svc("blue"));
    case.settings.preview_replicas = Some(1);
    let plan = case.decide();
    assert_eq!(plan.step, Step::ScaleForPromotion);
    assert_eq!(plan.phase, Phase::Promoting);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.replicas.get("green"), Some(&3));
}

#[test]
fn a_fully_available_green_is_switched_to_and_blue_waits_for_its_deadline() {
    let case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    let plan = case.decide();
    assert_eq!(plan.step, Step::Switch);
    assert_eq!(plan.phase, Phase::Healthy);
    assert_eq!(plan.active, "green");
    assert_eq!(plan.previous.as_deref(), Some("blue"));
    assert_eq!(plan.switched_at, Some(t(0)));
    assert_eq!(plan.switch_reason.as_deref(), Some(PROMOTION));
    assert_eq!(plan.replicas.get("blue"), Some(&3));
    assert!(plan.promoted);
    assert_eq!(plan.status.scale_down_deadline, Some(t(30).to_string()));
    assert_eq!(plan.requeue, Some(Duration::from_secs(30)));
}

#[test]
fn green_not_available_at_full_size_is_never_switched_to() {
    let case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 2, 5)], svc("blue"));
    let plan = case.decide();
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.step, Step::WaitForPreview);
    let mut stale = rev("green", 3, 3, 5);
    stale.current = false;
    let plan = Case::new(vec![rev("blue", 3, 3, 100), stale], svc("blue")).decide();
    assert_eq!(plan.active, "blue");
}

#[test]
fn after_the_switch_blue_is_kept_until_the_deadline_then_scaled_to_zero() {
    let case = Case::new(
        vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 10, PROMOTION),
    );
    let plan = case.decide();
    assert_eq!(plan.step, Step::WaitForScaleDown);
    assert_eq!(plan.phase, Phase::Healthy);
    assert_eq!(plan.replicas.get("blue"), Some(&3));
    assert_eq!(plan.requeue, Some(Duration::from_secs(20)));
    assert_eq!(plan.status.previous_revision.as_ref().map(|r| r.hash.as_str()), Some("blue"));
    let case = Case::new(
        vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 31, PROMOTION),
    );
    let plan = case.decide();
    assert_eq!(plan.step, Step::Healthy);
    assert_eq!(plan.replicas.get("blue"), Some(&0));
    assert_eq!(plan.status.previous_revision, None);
    assert_eq!(plan.status.scale_down_deadline, None);
}

#[test]
fn deciding_again_after_a_switch_does_not_switch_twice() {
    let revisions = vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)];
    let first = Case::new(revisions.clone(), svc("blue")).decide();
    assert_eq!(first.step, Step::Switch);
    // The operator restarts after writing the Service but before writing status.
    let service = ServiceObs {
        active: Some(first.active.clone()),
        previous: first.previous.clone(),
        switched_at: first.switched_at,
        rolled_back: first.rolled_back.clone(),
        switch_reason: first.switch_reason.clone(),
    };
    let again = Case::new(revisions, service).decide();
    assert_eq!(again.active, "green");
    assert_eq!(again.switched_at, first.switched_at, "no second switch");
    assert_eq!(again.step, Step::WaitForScaleDown);
}

#[test]
fn pre_promotion_checks_run_once_the_preview_is_available() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    case.pre = StageState::Running;
    let plan = case.decide();
    assert_eq!(plan.step, Step::PrePromotionChecks);
    assert_eq!(plan.run_checks, Some(Stage::Pre));
    assert_eq!(plan.active, "blue");
    // Not before the preview is available.
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 1, 5)], svc("blue"));
    case.pre = StageState::Running;
    assert_eq!(case.decide().run_checks, None);
}

#[test]
fn passed_pre_promotion_checks_let_the_switch_happen() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    case.pre = StageState::Passed;
    assert_eq!(case.decide().step, Step::Switch);
}

#[test]
fn a_failed_pre_promotion_check_aborts_and_keeps_traffic_on_blue() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    case.pre = StageState::Failed("check hook failed: 500".into());
    let plan = case.decide();
    assert_eq!(plan.step, Step::Aborted);
    assert_eq!(plan.phase, Phase::Degraded);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.degraded.map(|d| d.0), Some(Reason::PrePromotionCheckFailed));
    let rec = plan.status.aborted.expect("abort recorded");
    assert_eq!(rec.hash, "green");
    assert_eq!(rec.reason, "PrePromotionCheckFailed");
}

#[test]
fn spec_paused_pauses_before_promotion_and_a_promote_request_for_the_revision_proceeds() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    case.controls.paused = true;
    let plan = case.decide();
    assert_eq!(plan.step, Step::Paused);
    assert_eq!(plan.phase, Phase::Paused);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.status.paused_at, Some(t(0).to_string()));
    case.controls.promote = Some("an-older-revision".into());
    assert_eq!(case.decide().step, Step::Paused, "a stale promote does nothing");
    case.controls.promote = Some("green".into());
    assert_eq!(case.decide().step, Step::Switch);
}

#[test]
fn a_paused_rollout_never_hits_its_progress_deadline() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    case.controls.paused = true;
    case.status = Some(status_with_preview("green", 10_000));
    let plan = case.decide();
    assert_eq!(plan.step, Step::Paused);
    assert_eq!(plan.degraded, None);
}

#[test]
fn with_auto_promotion_off_the_rollout_pauses_and_auto_promotion_seconds_end_the_pause() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 5)], svc("blue"));
    case.settings.auto_promotion = false;
    assert_eq!(case.decide().step, Step::Paused);
    case.settings.auto_promotion_seconds = 20;
    let mut status = status_with_preview("green", 30);
    status.paused_at = Some(t(-10).to_string());
    case.status = Some(status.clone());
    let plan = case.decide();
    assert_eq!(plan.step, Step::Paused);
    assert_eq!(plan.requeue, Some(Duration::from_secs(10)));
    status.paused_at = Some(t(-20).to_string());
    case.status = Some(status);
    assert_eq!(case.decide().step, Step::Switch);
}

#[test]
fn past_the_progress_deadline_the_rollout_is_degraded_but_continues_without_abort() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 0, 700)], svc("blue"));
    case.status = Some(status_with_preview("green", 600));
    let plan = case.decide();
    assert_eq!(plan.step, Step::DeadlineExceeded);
    assert_eq!(plan.phase, Phase::Degraded);
    assert_eq!(plan.replicas.get("green"), Some(&3));
    assert_eq!(plan.status.aborted, None);
    assert_eq!(plan.active, "blue");
}

#[test]
fn before_the_progress_deadline_a_requeue_is_set_for_it() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 0, 100)], svc("blue"));
    case.status = Some(status_with_preview("green", 100));
    let plan = case.decide();
    assert_eq!(plan.step, Step::WaitForPreview);
    assert_eq!(plan.requeue, Some(Duration::from_secs(500)));
}

#[test]
fn past_the_progress_deadline_with_abort_the_rollout_is_aborted_and_traffic_stays() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 0, 700)], svc("blue"));
    case.settings.deadline_abort = true;
    case.status = Some(status_with_preview("green", 600));
    let plan = case.decide();
    assert_eq!(plan.step, Step::Aborted);
    assert_eq!(plan.phase, Phase::Degraded);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.degraded.map(|d| d.0), Some(Reason::ProgressDeadlineExceeded));
    assert_eq!(plan.status.aborted.map(|a| a.reason), Some("ProgressDeadlineExceeded".to_string()));
}

#[test]
fn an_aborted_revision_is_kept_for_the_abort_delay_then_scaled_to_zero() {
    let abort = |ago: i64| {
        let mut s = status_with_preview("green", 100);
        s.aborted = Some(AbortRecord {
            hash: "green".into(),
            reason: "ProgressDeadlineExceeded".into(),
            at: t(-ago).to_string(),
            retry_mark: String::new(),
        });
        s
    };
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 0, 100)], svc("blue"));
    case.status = Some(abort(10));
    let plan = case.decide();
    assert_eq!(plan.step, Step::Aborted);
    assert_eq!(plan.phase, Phase::Degraded);
    assert_eq!(plan.replicas.get("green"), Some(&3));
    assert_eq!(plan.requeue, Some(Duration::from_secs(20)));
    assert_eq!(plan.status.aborted.as_ref().map(|a| a.at.clone()), Some(t(-10).to_string()));
    case.status = Some(abort(31));
    assert_eq!(case.decide().replicas.get("green"), Some(&0));
}

#[test]
fn an_abort_request_for_the_revision_aborts_with_phase_aborted() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 1, 5)], svc("blue"));
    case.controls.abort = Some("green".into());
    let plan = case.decide();
    assert_eq!(plan.step, Step::Aborted);
    assert_eq!(plan.phase, Phase::Aborted);
    assert_eq!(plan.degraded, None);
    assert_eq!(plan.active, "blue");
}

#[test]
fn a_retry_clears_the_abort_and_restarts_the_progress_clock() {
    let mut status = status_with_preview("green", 700);
    status.aborted = Some(AbortRecord {
        hash: "green".into(),
        reason: "ProgressDeadlineExceeded".into(),
        at: t(-50).to_string(),
        retry_mark: String::new(),
    });
    let mut case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 0, 700)], svc("blue"));
    case.status = Some(status);
    case.controls.retry = t(-5).to_string();
    case.controls.retry_at = Some(t(-5));
    let plan = case.decide();
    assert_eq!(plan.step, Step::WaitForPreview);
    assert_eq!(plan.status.aborted, None);
    assert_eq!(plan.status.started_at, Some(t(-5).to_string()));
    assert_eq!(plan.replicas.get("green"), Some(&3));
}

#[test]
fn post_promotion_checks_keep_blue_up_even_past_its_deadline() {
    let mut case = Case::new(
        vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 100, PROMOTION),
    );
    case.post = StageState::Running;
    let plan = case.decide();
    assert_eq!(plan.step, Step::PostPromotionChecks);
    assert_eq!(plan.run_checks, Some(Stage::Post));
    assert_eq!(plan.phase, Phase::Progressing);
    assert_eq!(plan.replicas.get("blue"), Some(&3));
    assert_eq!(plan.status.scale_down_deadline, None);
}

#[test]
fn post_promotion_checks_do_not_follow_a_rollback() {
    let mut case = Case::new(
        vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 5, "FastRollback"),
    );
    case.post = StageState::Running;
    assert_eq!(case.decide().step, Step::WaitForScaleDown);
}

#[test]
fn a_failed_post_promotion_check_switches_back_to_blue() {
    let mut case = Case::new(
        vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 5, PROMOTION),
    );
    case.post = StageState::Failed("check hook failed: 500".into());
    let plan = case.decide();
    assert_eq!(plan.step, Step::RollBack);
    assert_eq!(plan.phase, Phase::Degraded);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.previous.as_deref(), Some("green"));
    assert_eq!(plan.rolled_back.as_deref(), Some("green/"));
    assert_eq!(plan.switch_reason.as_deref(), Some("RollBack"));
    assert!(!plan.promoted);
    assert_eq!(plan.status.aborted.map(|a| a.reason), Some("PostPromotionCheckFailed".to_string()));
}

#[test]
fn a_failed_post_promotion_check_scales_blue_back_up_before_switching() {
    let mut case = Case::new(
        vec![rev("blue", 0, 0, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 5, PROMOTION),
    );
    case.post = StageState::Failed("boom".into());
    let plan = case.decide();
    assert_eq!(plan.step, Step::ScaleForRollBack);
    assert_eq!(plan.active, "green");
    assert_eq!(plan.replicas.get("blue"), Some(&3));
}

#[test]
fn after_a_rollback_the_revision_stays_aborted_from_the_service_annotation_alone() {
    let mut service = switched("blue", "green", 1, "RollBack");
    service.rolled_back = Some("green/".into());
    let case = Case::new(vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)], service);
    let plan = case.decide();
    assert_eq!(plan.step, Step::Aborted);
    assert_eq!(plan.phase, Phase::Degraded);
    assert_eq!(plan.active, "blue", "no flapping back to green");
    assert_eq!(plan.degraded.map(|d| d.0), Some(Reason::PostPromotionCheckFailed));
}

#[test]
fn re_applying_the_previous_spec_inside_the_scale_down_window_switches_back_at_once() {
    // green is active, blue (previous) still up; the spec goes back to blue.
    let mut case = Case::new(
        vec![rev("blue", 3, 3, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 5, PROMOTION),
    );
    case.desired = "blue";
    case.pre = StageState::Running;
    case.controls.paused = true;
    let plan = case.decide();
    assert_eq!(plan.step, Step::FastRollback);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.previous.as_deref(), Some("green"));
    assert_eq!(plan.switch_reason.as_deref(), Some("FastRollback"));
    assert_eq!(plan.run_checks, None, "no checks on a fast rollback");
}

#[test]
fn re_applying_the_previous_spec_after_its_scale_down_is_a_normal_rollout() {
    let mut case = Case::new(
        vec![rev("blue", 0, 0, 100), rev("green", 3, 3, 50)],
        switched("green", "blue", 100, PROMOTION),
    );
    case.desired = "blue";
    let plan = case.decide();
    assert_eq!(plan.step, Step::WaitForPreview);
    assert_eq!(plan.active, "green");
}

#[test]
fn idle_revisions_beyond_the_history_limit_are_deleted_oldest_first() {
    let mut case = Case::new(
        vec![rev("green", 3, 3, 10), rev("old1", 0, 0, 100), rev("old2", 0, 0, 200), rev("old3", 0, 0, 300)],
        svc("green"),
    );
    case.settings.history_limit = 1;
    let plan = case.decide();
    assert_eq!(plan.delete, vec!["old2".to_string(), "old3".to_string()]);
    assert_eq!(plan.replicas.get("old1"), Some(&0));
}

#[test]
fn a_third_revision_during_a_rollout_scales_the_abandoned_one_to_zero() {
    let case =
        Case::new(vec![rev("blue", 3, 3, 100), rev("teal", 3, 1, 20), rev("green", 0, 0, 1)], svc("blue"));
    let plan = case.decide();
    assert_eq!(plan.replicas.get("teal"), Some(&0));
    assert_eq!(plan.replicas.get("blue"), Some(&3));
    assert_eq!(plan.active, "blue");
}

#[test]
fn a_rollout_held_by_dependencies_waits_without_a_deadline_and_keeps_traffic() {
    let mut case = Case::new(vec![rev("blue", 3, 3, 100)], svc("blue"));
    case.held = true;
    case.settings.deadline_abort = true;
    case.status = Some(status_with_preview("green", 10_000));
    let plan = case.decide();
    assert_eq!(plan.step, Step::WaitForPreview);
    assert_eq!(plan.active, "blue");
    assert_eq!(plan.status.aborted, None);
    assert_eq!(plan.degraded, None);
    assert_eq!(plan.status.started_at, None, "the deadline starts once unheld");
    assert_eq!(plan.replicas.get("blue"), Some(&3));
}
