//! Retry policy for calls to inventory (pure functions).
//!
//! Only transient codes are retried, and only because every inventory call carries an
//! idempotency key, so a retry of a call that did execute is answered from the record.

use std::time::Duration;

use tonic::Code;

/// Attempts and backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, including the first (≥ 1).
    pub max_attempts: u32,
    /// Backoff before the first retry (before jitter).
    pub base_backoff: Duration,
    /// Cap on one backoff.
    pub max_backoff: Duration,
    /// Deadline of one attempt (the call's remaining budget applies when shorter).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// Codes worth another attempt: the server did not (or may not have) handled the call, and
/// another try may land on a healthy connection or pod.
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded)
}

/// Codes that count against the circuit breaker: the dependency is unhealthy. Business
/// answers (not found, no stock, invalid) mean it is healthy.
pub fn is_breaker_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal | Code::Unknown
    )
}

impl RetryPolicy {
    /// Backoff before retry number `retry` (1-based), full jitter: `jitter` in `[0, 1)` scales
    /// the exponential cap.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exp = self.base_backoff.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        exp.min(self.max_backoff).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The longest one call can take with every attempt and backoff: the budget a caller with
    /// no deadline of its own gives a call.
    pub fn call_budget(&self) -> Duration {
        let attempts = self.max_attempts.max(1);
        self.attempt_timeout
            .saturating_mul(attempts)
            .saturating_add(self.max_backoff.saturating_mul(attempts - 1))
    }

    /// Whether attempt `attempt` (1-based) that failed with `code` should be retried, given the
    /// time left in the call's budget and the backoff it would wait.
    pub fn should_retry(&self, attempt: u32, code: Code, remaining: Duration, backoff: Duration) -> bool {
        attempt < self.max_attempts.max(1) && is_retryable(code) && remaining > backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(is_retryable(Code::Unavailable));
        assert!(is_retryable(Code::DeadlineExceeded));
        assert!(is_retryable(Code::ResourceExhausted));
        for c in
            [Code::FailedPrecondition, Code::NotFound, Code::InvalidArgument, Code::Internal, Code::Aborted]
        {
            assert!(!is_retryable(c), "{c:?}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(30, 1.0), Duration::from_millis(500));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(50));
    }

    #[test]
    fn no_retry_past_the_attempt_limit_or_the_deadline() {
        let p = RetryPolicy::default();
        let b = Duration::from_millis(10);
        assert!(p.should_retry(1, Code::Unavailable, Duration::from_secs(1), b));
        assert!(!p.should_retry(3, Code::Unavailable, Duration::from_secs(1), b));
        assert!(!p.should_retry(1, Code::Unavailable, Duration::from_millis(5), b));
        assert!(!p.should_retry(1, Code::FailedPrecondition, Duration::from_secs(1), b));
    }

    #[test]
    fn a_call_budget_covers_every_attempt_and_backoff() {
        let p = RetryPolicy::default();
        assert_eq!(p.call_budget(), Duration::from_millis(3 * 2000 + 2 * 500));
        let one = RetryPolicy { max_attempts: 1, attempt_timeout: Duration::from_millis(300), ..p };
        assert_eq!(one.call_budget(), Duration::from_millis(300));
    }

    #[test]
    fn business_answers_do_not_trip_the_breaker() {
        assert!(!is_breaker_failure(Code::FailedPrecondition));
        assert!(!is_breaker_failure(Code::NotFound));
        assert!(is_breaker_failure(Code::Unavailable));
    }
}
