//! Server-side deadlines: each call is bounded by the shorter of the client's `grpc-timeout`
//! and the server's own limit, and answers `DEADLINE_EXCEEDED` when it runs out (tonic's
//! built-in timeout answers `CANCELLED`, which clients would not read as a deadline).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use std::{future::Future, pin::Pin};

use futures::future::Either;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// The client's deadline header (looked up by name: a `&str` key is parsed on every lookup).
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` header value (`<digits><unit>`, at most 8 digits, unit one of
/// `H M S m u n`). `None` if malformed.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The effective bound: the client's timeout if shorter than the server's.
pub fn effective_deadline(client: Option<Duration>, server: Duration) -> Duration {
    client.map_or(server, |c| c.min(server))
}

/// Tower layer enforcing [`effective_deadline`]. The server limit can change at runtime.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    server_limit_ms: &'static AtomicU64,
}

impl DeadlineLayer {
    /// Bounds calls by `server_limit_ms` (shared, reloadable).
    pub fn new(server_limit_ms: &'static AtomicU64) -> Self {
        Self { server_limit_ms }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, server_limit_ms: self.server_limit_ms }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    server_limit_ms: &'static AtomicU64,
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Bounded<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if crate::auth::is_open_path(req.uri().path()) {
            // Health Watch and reflection are streams; a unary deadline does not apply.
            return Either::Left(self.inner.call(req));
        }
        let client = req.headers().get(&GRPC_TIMEOUT).and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let limit =
            effective_deadline(client, Duration::from_millis(self.server_limit_ms.load(Ordering::Relaxed)));
        Either::Right(Bounded { call: self.inner.call(req), start: Instant::now(), limit, timer: None })
    }
}

pin_project_lite::pin_project! {
    /// A call bounded by `limit` from `start`. The timer is armed only when the call first
    /// returns `Pending`: a call that answers on its first poll (a validation error, a cached
    /// answer) never touches the runtime's timer wheel, whose registration is a lock both
    /// worker threads take.
    pub struct Bounded<F> {
        #[pin]
        call: F,
        start: Instant,
        limit: Duration,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<F, E> Future for Bounded<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            return Poll::Ready(out);
        }
        if this.timer.is_none() {
            // A limit too far out to add to the clock (a configured or client-sent bound of
            // centuries) sleeps "forever": tokio's `sleep` saturates where `+` would panic.
            let timer = match this.start.checked_add(*this.limit) {
                Some(deadline) => tokio::time::sleep_until(deadline),
                None => tokio::time::sleep(*this.limit),
            };
            this.timer.set(Some(timer));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(tonic::Status::deadline_exceeded(format!(
                "deadline of {} ms exceeded",
                this.limit.as_millis()
            ))
            .into_http())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse() {
        assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for v in [&b""[..], b"m", b"123456789m", b"12x", b"-1S", b"\xffS"] {
            assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
        }
    }

    fn bounded(
        limit: Duration,
    ) -> Bounded<futures::future::Pending<Result<http::Response<tonic::body::Body>, ()>>> {
        Bounded { call: futures::future::pending(), start: Instant::now(), limit, timer: None }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_still_pending_at_its_limit_answers_deadline_exceeded() {
        let resp = bounded(Duration::from_millis(150)).await.expect("an answer, not an error");
        let code = resp.headers().get("grpc-status").map(|v| tonic::Code::from_bytes(v.as_bytes()));
        assert_eq!(code, Some(tonic::Code::DeadlineExceeded));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_too_far_out_for_the_clock_waits_instead_of_panicking() {
        let waited = tokio::time::timeout(Duration::from_secs(3600), bounded(Duration::MAX)).await;
        assert!(waited.is_err(), "the call is still waiting after an hour");
    }

    #[test]
    fn shorter_of_client_and_server_wins() {
        let s = Duration::from_secs(10);
        assert_eq!(effective_deadline(Some(Duration::from_secs(1)), s), Duration::from_secs(1));
        assert_eq!(effective_deadline(Some(Duration::from_secs(60)), s), s);
        assert_eq!(effective_deadline(None, s), s);
    }
}
