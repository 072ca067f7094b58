//! A consecutive-failure circuit breaker (pure state machine; the caller passes the time).
//!
//! Closed → (N consecutive failures) → Open → (after `open_for`) → HalfOpen: one probe call is
//! let through; success closes, failure re-opens. While open, calls fail fast. A probe that
//! never reports back (its caller was cancelled) is replaced after another `open_for`.

use std::time::Duration;

use tokio::time::Instant;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (≥ 1).
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(5) }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; counting consecutive failures.
    Closed {
        /// Failures in a row so far.
        failures: u32,
    },
    /// Calls fail fast until `until`.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is in flight since `since`.
    HalfOpen {
        /// When the probe started.
        since: Instant,
    },
}

impl BreakerState {
    /// Metric value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed { .. } => 0,
            Self::HalfOpen { .. } => 1,
            Self::Open { .. } => 2,
        }
    }
}

/// Answer to [`Breaker::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead; this call is the half-open probe.
    Probe,
    /// Fail fast.
    Rejected,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config: sanitize(config), state: BreakerState::Closed { failures: 0 } }
    }

    /// Changes thresholds (config reload); the state is kept.
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = sanitize(config);
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a call go now?
    pub fn try_acquire(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen { since: now };
                Admission::Probe
            }
            BreakerState::Open { .. } => Admission::Rejected,
            BreakerState::HalfOpen { since }
                if now.saturating_duration_since(since) >= self.config.open_for =>
            {
                self.state = BreakerState::HalfOpen { since: now };
                Admission::Probe
            }
            BreakerState::HalfOpen { .. } => Admission::Rejected,
        }
    }

    /// Records a call that reached a healthy server.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// Records a transient failure (unavailable, timeout, overload). Returns `true` if this
    /// opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        let open = BreakerState::Open { until: now + self.config.open_for };
        match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failure_threshold {
                    self.state = open;
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            BreakerState::HalfOpen { .. } => {
                self.state = open;
                true
            }
            BreakerState::Open { .. } => false,
        }
    }
}

fn sanitize(mut config: BreakerConfig) -> BreakerConfig {
    config.failure_threshold = config.failure_threshold.max(1);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(10) })
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let t = Instant::now();
        let mut b = breaker();
        assert!(!b.on_failure(t));
        assert!(!b.on_failure(t));
        assert!(b.on_failure(t));
        assert_eq!(b.try_acquire(t), Admission::Rejected);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t = Instant::now();
        let mut b = breaker();
        b.on_failure(t);
        b.on_failure(t);
        b.on_success();
        assert!(!b.on_failure(t));
        assert_eq!(b.try_acquire(t), Admission::Allowed);
    }

    #[test]
    fn after_the_open_period_one_probe_goes_and_others_wait() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(b.try_acquire(later), Admission::Probe);
        assert_eq!(b.try_acquire(later), Admission::Rejected);
        b.on_success();
        assert_eq!(b.try_acquire(later), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(11);
        assert_eq!(b.try_acquire(later), Admission::Probe);
        assert!(b.on_failure(later));
        assert_eq!(b.try_acquire(later + Duration::from_secs(9)), Admission::Rejected);
        assert_eq!(b.try_acquire(later + Duration::from_secs(10)), Admission::Probe);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_another_open_period() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t);
        }
        assert_eq!(b.try_acquire(t + Duration::from_secs(10)), Admission::Probe);
        assert_eq!(b.try_acquire(t + Duration::from_secs(15)), Admission::Rejected);
        assert_eq!(b.try_acquire(t + Duration::from_secs(20)), Admission::Probe);
    }

    #[test]
    fn zero_threshold_is_treated_as_one() {
        let mut b = Breaker::new(BreakerConfig { failure_threshold: 0, open_for: Duration::from_secs(1) });
        assert!(b.on_failure(Instant::now()));
    }
}
