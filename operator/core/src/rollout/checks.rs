//! Pure bookkeeping of promotion checks: which measurement is due, how a measurement updates the
//! result kept in status, and the verdict of a stage. The measurements themselves are taken by the
//! operator, off the reconcile path.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::crd::{CheckResult, CheckSpec, CheckVerdict};

/// Default seconds between measurements.
pub const DEFAULT_INTERVAL: i32 = 5;

/// When checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Against the preview revision, before the switch.
    Pre,
    /// Against the new active revision, after the switch.
    Post,
}

impl Stage {
    /// The spelling in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pre => "PrePromotion",
            Self::Post => "PostPromotion",
        }
    }
}

/// One measurement taken off the reconcile path, not yet recorded in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// The stage it belongs to.
    pub stage: Stage,
    /// The check's name.
    pub check: String,
    /// The revision measured.
    pub revision: String,
    /// `Ok(message)` passed, `Err(message)` failed.
    pub outcome: Result<String, String>,
    /// When it was taken.
    pub at: Timestamp,
}

/// The rollout context POSTed to webhooks, and what checks measure against.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CheckContext {
    /// Namespace of the MicroService.
    pub namespace: String,
    /// Name of the MicroService.
    pub microservice: String,
    /// `PrePromotion` or `PostPromotion`.
    pub stage: String,
    /// The check's name.
    pub check: String,
    /// Hash of the revision checked.
    pub revision: String,
    /// Its image.
    pub image: String,
    /// Revision traffic is on.
    pub active_revision: String,
    /// Service that selects the revision checked (`NAME-preview` before promotion, `NAME` after;
    /// empty before promotion without a preview Service).
    pub service: String,
}

/// Whether the result in status already holds `m` (it was measured at or after `m`).
pub fn recorded(results: &[CheckResult], m: &Measurement) -> bool {
    result_for(results, m.stage, &m.check, &m.revision)
        .and_then(|r| r.last_measured_at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|last| last >= m.at)
}

/// The results after folding in the measurements of `revision` that `results` do not hold yet;
/// measurements of another revision, or of a check no longer configured, are left out.
pub fn fold(
    results: &[CheckResult],
    measurements: &[Measurement],
    specs: &[(Stage, &CheckSpec)],
    revision: &str,
) -> Vec<CheckResult> {
    let mut out: Vec<CheckResult> = results.iter().filter(|r| r.revision == revision).cloned().collect();
    for m in measurements.iter().filter(|m| m.revision == revision) {
        let Some((_, spec)) = specs.iter().find(|(stage, spec)| *stage == m.stage && spec.name == m.check)
        else {
            continue;
        };
        if recorded(&out, m) {
            continue;
        }
        let previous = result_for(&out, m.stage, &m.check, revision).cloned();
        let next = record(spec, previous.as_ref(), m.stage, revision, m.outcome.clone(), m.at);
        out.retain(|r| !(r.stage == m.stage.as_str() && r.name == m.check));
        out.push(next);
    }
    out
}

/// The combined verdict of a stage's checks for one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageState {
    /// No checks configured for the stage.
    NotConfigured,
    /// Some check still measures.
    Running,
    /// Every check passed.
    Passed,
    /// A check failed (its name and last message).
    Failed(String),
}

/// The result of `spec` in `results` for `stage` and `revision`.
pub fn result_for<'a>(
    results: &'a [CheckResult],
    stage: Stage,
    name: &str,
    revision: &str,
) -> Option<&'a CheckResult> {
    results.iter().find(|r| r.stage == stage.as_str() && r.name == name && r.revision == revision)
}

/// The verdict of a stage.
pub fn stage_state(specs: &[CheckSpec], results: &[CheckResult], stage: Stage, revision: &str) -> StageState {
    if specs.is_empty() {
        return StageState::NotConfigured;
    }
    let mut running = false;
    for spec in specs {
        match result_for(results, stage, &spec.name, revision).map(|r| (r.verdict, r)) {
            Some((CheckVerdict::Failed, r)) => {
                return StageState::Failed(format!(
                    "check {} failed: {}",
                    spec.name,
                    r.message.clone().unwrap_or_default()
                ));
            }
            Some((CheckVerdict::Passed, _)) => {}
            _ => running = true,
        }
    }
    if running { StageState::Running } else { StageState::Passed }
}

fn interval(spec: &CheckSpec) -> Duration {
    Duration::from_secs(u64::try_from(spec.interval_seconds.unwrap_or(DEFAULT_INTERVAL)).unwrap_or(5))
}

/// Time until the next measurement of `spec` is due (zero when due now; `None` when it has a verdict).
pub fn due_in(spec: &CheckSpec, result: Option<&CheckResult>, now: Timestamp) -> Option<Duration> {
    let Some(result) = result else {
        return Some(Duration::ZERO);
    };
    if result.verdict != CheckVerdict::Running {
        return None;
    }
    let last = result.last_measured_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    let Some(last) = last else {
        return Some(Duration::ZERO);
    };
    let elapsed = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
    Some(interval(spec).saturating_sub(elapsed))
}

/// The result after one measurement (`Ok(message)` passed, `Err(message)` failed).
pub fn record(
    spec: &CheckSpec,
    previous: Option<&CheckResult>,
    stage: Stage,
    revision: &str,
    outcome: Result<String, String>,
    now: Timestamp,
) -> CheckResult {
    let mut r = previous.cloned().unwrap_or_else(|| CheckResult {
        stage: stage.as_str().into(),
        name: spec.name.clone(),
        revision: revision.into(),
        ..CheckResult::default()
    });
    let message = match outcome {
        Ok(m) => {
            r.successes += 1;
            m
        }
        Err(m) => {
            r.failures += 1;
            m
        }
    };
    r.message = Some(message.chars().take(1000).collect());
    r.last_measured_at = Some(now.to_string());
    let count = spec.count.unwrap_or(1);
    let limit = spec.failure_limit.unwrap_or(0);
    r.verdict = if r.failures > limit {
        CheckVerdict::Failed
    } else if r.successes + r.failures >= count {
        CheckVerdict::Passed
    } else {
        CheckVerdict::Running
    };
    r
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(count: i32, failure_limit: i32) -> CheckSpec {
        CheckSpec {
            name: "hook".into(),
            count: Some(count),
            failure_limit: Some(failure_limit),
            interval_seconds: Some(2),
            ..CheckSpec::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("time")
    }

    fn measured(check: &str, revision: &str, outcome: Result<&str, &str>, at: i64) -> Measurement {
        Measurement {
            stage: Stage::Pre,
            check: check.into(),
            revision: revision.into(),
            outcome: outcome.map(Into::into).map_err(Into::into),
            at: t(at),
        }
    }

    #[test]
    fn a_measurement_is_folded_into_the_results_once() {
        let s = spec(3, 0);
        let specs = [(Stage::Pre, &s)];
        let m = measured("hook", "h", Ok("ok"), 10);
        let once = fold(&[], std::slice::from_ref(&m), &specs, "h");
        assert_eq!((once[0].successes, once[0].verdict), (1, CheckVerdict::Running));
        assert!(recorded(&once, &m));
        // The status written with it comes back: folding again changes nothing.
        assert_eq!(fold(&once, std::slice::from_ref(&m), &specs, "h"), once);
    }

    #[test]
    fn measurements_of_another_revision_or_of_an_unknown_check_are_left_out() {
        let s = spec(1, 0);
        let specs = [(Stage::Pre, &s)];
        let stale = [measured("hook", "old", Err("503"), 10), measured("gone", "h", Err("503"), 10)];
        assert!(fold(&[], &stale, &specs, "h").is_empty());
        let old = record(&s, None, Stage::Pre, "old", Ok("ok".into()), t(1));
        assert!(fold(&[old], &[], &specs, "h").is_empty(), "results of another revision go");
    }

    #[test]
    fn a_check_passes_after_count_measurements_within_the_failure_limit() {
        let s = spec(3, 1);
        let r1 = record(&s, None, Stage::Pre, "h", Ok("ok".into()), t(1));
        assert_eq!(r1.verdict, CheckVerdict::Running);
        let r2 = record(&s, Some(&r1), Stage::Pre, "h", Err("503".into()), t(3));
        assert_eq!(r2.verdict, CheckVerdict::Running);
        let r3 = record(&s, Some(&r2), Stage::Pre, "h", Ok("ok".into()), t(5));
        assert_eq!(r3.verdict, CheckVerdict::Passed);
        assert_eq!((r3.successes, r3.failures), (2, 1));
    }

    #[test]
    fn a_check_fails_as_soon_as_failures_exceed_the_limit() {
        let s = spec(5, 0);
        let r = record(&s, None, Stage::Post, "h", Err("503".into()), t(1));
        assert_eq!(r.verdict, CheckVerdict::Failed);
        assert_eq!(r.stage, "PostPromotion");
    }

    #[test]
    fn a_measurement_is_due_after_the_interval_and_never_after_a_verdict() {
        let s = spec(3, 0);
        assert_eq!(due_in(&s, None, t(0)), Some(Duration::ZERO));
        let r = record(&s, None, Stage::Pre, "h", Ok("ok".into()), t(10));
        assert_eq!(due_in(&s, Some(&r), t(11)), Some(Duration::from_secs(1)));
        assert_eq!(due_in(&s, Some(&r), t(13)), Some(Duration::ZERO));
        let done = record(&spec(1, 0), None, Stage::Pre, "h", Ok("ok".into()), t(10));
        assert_eq!(due_in(&s, Some(&done), t(20)), None);
    }

    #[test]
    fn a_stage_is_running_until_every_check_has_passed_and_failed_when_one_failed() {
        let a = CheckSpec { name: "a".into(), ..CheckSpec::default() };
        let b = CheckSpec { name: "b".into(), ..CheckSpec::default() };
        let specs = [a.clone(), b.clone()];
        assert_eq!(stage_state(&[], &[], Stage::Pre, "h"), StageState::NotConfigured);
        let ra = record(&a, None, Stage::Pre, "h", Ok("ok".into()), t(1));
        assert_eq!(stage_state(&specs, std::slice::from_ref(&ra), Stage::Pre, "h"), StageState::Running);
        let rb = record(&b, None, Stage::Pre, "h", Ok("ok".into()), t(1));
        assert_eq!(stage_state(&specs, &[ra.clone(), rb], Stage::Pre, "h"), StageState::Passed);
        // Results of another revision or stage do not count.
        assert_eq!(stage_state(&specs, std::slice::from_ref(&ra), Stage::Pre, "other"), StageState::Running);
        assert_eq!(stage_state(&specs, std::slice::from_ref(&ra), Stage::Post, "h"), StageState::Running);
        let fb = record(&b, None, Stage::Pre, "h", Err("boom".into()), t(1));
        assert!(matches!(
            stage_state(&specs, &[ra, fb], Stage::Pre, "h"),
            StageState::Failed(m) if m.contains("boom")
        ));
    }
}
