//! An optional per-client rate limit: a token bucket per authenticated subject (the JWT `sub`)
//! or, without a token, per peer IP address. A call that finds its bucket empty is answered
//! `RESOURCE_EXHAUSTED` at once. The rate and burst can change at runtime (config reload);
//! rate 0 turns the limit off. Health and reflection are never limited.
//!
//! The bucket itself ([`TokenBucket`]) is pure: it takes the time as an argument.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::auth::{Claims, is_open_path};

/// A token bucket: holds up to `burst` tokens and gains `rate` tokens per second.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: f64, now: Instant) -> Self {
        Self { tokens: burst, last: now }
    }

    /// Refills for the time since the last call, then takes one token if there is one.
    pub fn try_take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now` (it can be forgotten without changing anything).
    pub fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Buckets are swept of full (idle) entries when there are more than this many clients.
const SWEEP_ABOVE: usize = 10_000;

/// The per-client buckets and the reloadable rate and burst.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Tokens per second, as `f64` bits; 0 = off.
    rate: AtomicU64,
    /// Bucket size, as `f64` bits.
    burst: AtomicU64,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    /// `rate` calls per second per client with bursts of `burst` (at least 1); rate 0 = off.
    pub fn new(rate: f64, burst: f64) -> Arc<Self> {
        let limiter = Arc::new(Self::default());
        limiter.set(rate, burst);
        limiter
    }

    /// Changes the rate and burst (buckets keep their tokens, capped at the new burst).
    pub fn set(&self, rate: f64, burst: f64) {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 0.0 };
        let burst = if burst.is_finite() { burst.max(1.0) } else { 1.0 };
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
        self.burst.store(burst.to_bits(), Ordering::Relaxed);
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        f64::from_bits(self.rate.load(Ordering::Relaxed)) > 0.0
    }

    /// Takes a token from `client`'s bucket at `now`; `true` when the call may proceed.
    pub fn check(&self, client: &str, now: Instant) -> bool {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        if rate <= 0.0 {
            return true;
        }
        let burst = f64::from_bits(self.burst.load(Ordering::Relaxed));
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() > SWEEP_ABOVE && !buckets.contains_key(client) {
            buckets.retain(|_, b| !b.is_full(rate, burst, now));
        }
        buckets
            .entry(client.to_string())
            .or_insert_with(|| TokenBucket::full(burst, now))
            .try_take(rate, burst, now)
    }
}

/// Who a call is charged to: the token's subject, else the peer IP, else one shared bucket.
pub fn client_key<B>(req: &http::Request<B>) -> String {
    if let Some(claims) = req.extensions().get::<Arc<Claims>>() {
        return format!("sub:{}", claims.sub);
    }
    req.extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| format!("ip:{}", a.ip()))
        .unwrap_or_else(|| "unknown".into())
}

/// Tower layer for [`RateLimiter`]; goes inside the auth layer so the subject is known.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: &'static RateLimiter,
    rejected: &'static prometheus_client::metrics::counter::Counter,
}

impl RateLimitLayer {
    /// A layer charging calls to `limiter`, counting refusals in `rejected`.
    pub fn new(
        limiter: &'static RateLimiter,
        rejected: &'static prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self { limiter, rejected }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, limiter: self.limiter, rejected: self.rejected }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: &'static RateLimiter,
    rejected: &'static prometheus_client::metrics::counter::Counter,
}

impl<S, B> Service<http::Request<B>> for RateLimitService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// A refusal is ready at once; anything else is the inner call's own future, unboxed.
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.limiter.enabled()
            && !is_open_path(req.uri().path())
            && !self.limiter.check(&client_key(&req), Instant::now())
        {
            self.rejected.inc();
            let status = tonic::Status::resource_exhausted("per-client rate limit exceeded; retry later");
            return Either::Left(ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        assert!((0..3).all(|_| b.try_take(1.0, 3.0, t0)));
        assert!(!b.try_take(1.0, 3.0, t0));
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2.0, t0);
        assert!(b.try_take(10.0, 2.0, t0) && b.try_take(10.0, 2.0, t0));
        assert!(!b.try_take(10.0, 2.0, t0 + Duration::from_millis(50)), "half a token is not enough");
        assert!(b.try_take(10.0, 2.0, t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert!(b.is_full(10.0, 2.0, later));
        assert!(b.try_take(10.0, 2.0, later) && b.try_take(10.0, 2.0, later));
        assert!(!b.try_take(10.0, 2.0, later), "an idle minute still holds only `burst` tokens");
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut b = TokenBucket::full(1.0, t1);
        assert!(b.try_take(1.0, 1.0, t1));
        assert!(!b.try_take(1.0, 1.0, t0));
    }

    #[test]
    fn clients_have_separate_buckets_and_rate_zero_is_off() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let now = Instant::now();
        assert!(limiter.check("sub:a", now));
        assert!(!limiter.check("sub:a", now));
        assert!(limiter.check("sub:b", now), "another client is not affected");
        limiter.set(0.0, 1.0);
        assert!(!limiter.enabled());
        assert!(limiter.check("sub:a", now));
    }

    #[test]
    fn idle_buckets_are_swept_when_there_are_many_clients() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        for i in 0..=SWEEP_ABOVE {
            limiter.check(&format!("ip:{i}"), t0);
        }
        limiter.check("ip:new", t0 + Duration::from_secs(5));
        let len = limiter.buckets.lock().map(|b| b.len()).unwrap_or(usize::MAX);
        assert_eq!(len, 1, "only the new client's bucket is left");
    }
}
