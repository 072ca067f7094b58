//! A global concurrency limit that sheds load instead of queueing: a call over the limit is
//! answered `RESOURCE_EXHAUSTED` at once, so clients back off or go elsewhere while the calls
//! already admitted keep their latency. The limit can change at runtime (config reload).
//! Health and reflection are never shed, so probes keep working under overload.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::{auth::is_open_path, metrics::ServerMetrics};

/// The limit and the number of calls holding a permit.
#[derive(Debug, Default)]
pub struct ConcurrencyLimit {
    max: AtomicUsize,
    in_flight: AtomicUsize,
}

impl ConcurrencyLimit {
    /// At most `max` concurrent calls; 0 means unlimited.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: AtomicUsize::new(max), in_flight: AtomicUsize::new(0) })
    }

    /// Changes the limit; calls already admitted are not affected.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The limit (0 = unlimited).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max();
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max != 0 && prev >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit { limit: self.clone() })
    }
}

/// Held for the duration of one call.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tower layer enforcing a [`ConcurrencyLimit`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    limit: Arc<ConcurrencyLimit>,
    metrics: Arc<ServerMetrics>,
}

impl LoadShedLayer {
    /// Enforces `limit`, counting refusals in `metrics`.
    pub fn new(limit: Arc<ConcurrencyLimit>, metrics: Arc<ServerMetrics>) -> Self {
        Self { limit, metrics }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShedService { inner, limit: self.limit.clone(), metrics: self.metrics.clone() }
    }
}

/// See [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShedService<S> {
    inner: S,
    limit: Arc<ConcurrencyLimit>,
    metrics: Arc<ServerMetrics>,
}

impl<S, B> Service<http::Request<B>> for LoadShedService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_open_path(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let Some(permit) = self.limit.try_acquire() else {
            self.metrics.shed.inc();
            let status = tonic::Status::resource_exhausted("server is at its concurrency limit; retry later");
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            drop(permit);
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_beyond_the_limit_are_refused_and_freed_on_drop() {
        let limit = ConcurrencyLimit::new(2);
        let a = limit.try_acquire();
        let b = limit.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = ConcurrencyLimit::new(0);
        let permits: Vec<_> = (0..1000).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(permits.len(), 1000);
    }

    #[test]
    fn lowering_the_limit_applies_to_new_calls() {
        let limit = ConcurrencyLimit::new(10);
        let _a = limit.try_acquire();
        limit.set_max(1);
        assert!(limit.try_acquire().is_none());
    }
}
