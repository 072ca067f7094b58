//! Pure bookkeeping of promotion checks: which measurement is due, how a measurement updates the
//! result kept in status, and the verdict of a stage. The measurements themselves are in
//! [`super::runner`].

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::{CheckResult, CheckSpec, CheckVerdict};

/// Default seconds between measurements.
pub const DEFAULT_INTERVAL: i32 = 5;

/// When checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    results
        .iter()
        .find(|r| r.stage == stage.as_str() && r.name == name && r.revision == revision)
}

/// The verdict of a stage.
pub fn stage_state(
    specs: &[CheckSpec],
    results: &[CheckResult],
    stage: Stage,
    revision: &str,
) -> StageState {
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
    if running {
        StageState::Running
    } else {
        StageState::Passed
    }
}

fn interval(spec: &CheckSpec) -> Duration {
    Duration::from_secs(
        u64::try_from(spec.interval_seconds.unwrap_or(DEFAULT_INTERVAL)).unwrap_or(5),
    )
}

/// Time until the next measurement of `spec` is due (zero when due now; `None` when it has a verdict).
pub fn due_in(spec: &CheckSpec, result: Option<&CheckResult>, now: Timestamp) -> Option<Duration> {
    let Some(result) = result else {
        return Some(Duration::ZERO);
    };
    if result.verdict != CheckVerdict::Running {
        return None;
    }
    let last = result
        .last_measured_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
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
        let a = CheckSpec {
            name: "a".into(),
            ..CheckSpec::default()
        };
        let b = CheckSpec {
            name: "b".into(),
            ..CheckSpec::default()
        };
        let specs = [a.clone(), b.clone()];
        assert_eq!(
            stage_state(&[], &[], Stage::Pre, "h"),
            StageState::NotConfigured
        );
        let ra = record(&a, None, Stage::Pre, "h", Ok("ok".into()), t(1));
        assert_eq!(
            stage_state(&specs, std::slice::from_ref(&ra), Stage::Pre, "h"),
            StageState::Running
        );
        let rb = record(&b, None, Stage::Pre, "h", Ok("ok".into()), t(1));
        assert_eq!(
            stage_state(&specs, &[ra.clone(), rb], Stage::Pre, "h"),
            StageState::Passed
        );
        // Results of another revision or stage do not count.
        assert_eq!(
            stage_state(&specs, std::slice::from_ref(&ra), Stage::Pre, "other"),
            StageState::Running
        );
        assert_eq!(
            stage_state(&specs, std::slice::from_ref(&ra), Stage::Post, "h"),
            StageState::Running
        );
        let fb = record(&b, None, Stage::Pre, "h", Err("boom".into()), t(1));
        assert!(matches!(
            stage_state(&specs, &[ra, fb], Stage::Pre, "h"),
            StageState::Failed(m) if m.contains("boom")
        ));
    }
}
