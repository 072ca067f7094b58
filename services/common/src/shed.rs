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

use std::{future::Future, pin::Pin};

use futures::future::{Either, Ready, ready};
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
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let max = self.max();
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max != 0 && prev >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit { limit: self })
    }
}

/// Held for the duration of one call.
#[derive(Debug)]
pub struct Permit<'a> {
    limit: &'a ConcurrencyLimit,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tower layer enforcing a [`ConcurrencyLimit`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    limit: &'static ConcurrencyLimit,
    metrics: &'static ServerMetrics,
}

impl LoadShedLayer {
    /// Enforces `limit`, counting refusals in `metrics`.
    pub fn new(limit: &'static ConcurrencyLimit, metrics: &'static ServerMetrics) -> Self {
        Self { limit, metrics }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShedService { inner, limit: self.limit, metrics: self.metrics }
    }
}

/// See [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShedService<S> {
    inner: S,
    limit: &'static ConcurrencyLimit,
    metrics: &'static ServerMetrics,
}

impl<S, B> Service<http::Request<B>> for LoadShedService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Open paths pass through; a refusal is ready at once; an admitted call holds its permit.
    type Future = Either<S::Future, Either<Ready<Result<Self::Response, Self::Error>>, Admitted<S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_open_path(req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        let Some(permit) = self.limit.try_acquire() else {
            self.metrics.shed.inc();
            let status = tonic::Status::resource_exhausted("server is at its concurrency limit; retry later");
            return Either::Right(Either::Left(ready(Ok(status.into_http()))));
        };
        Either::Right(Either::Right(Admitted { call: self.inner.call(req), permit: Some(permit) }))
    }
}

pin_project_lite::pin_project! {
    /// An admitted call: the permit is given back when the call answers (or is dropped).
    pub struct Admitted<F> {
        #[pin]
        call: F,
        permit: Option<Permit<'static>>,
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.call.poll(cx));
        this.permit.take();
        Poll::Ready(out)
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

    #[tokio::test]
    async fn an_admitted_call_gives_its_permit_back_when_it_answers_or_is_dropped() {
        let limit: &'static ConcurrencyLimit = Box::leak(Box::new(ConcurrencyLimit::default()));
        limit.set_max(1);
        let metrics: &'static ServerMetrics = Box::leak(Box::new(ServerMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
        )));
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let answered = std::sync::Mutex::new(Some(answered));
        let mut svc =
            LoadShedLayer::new(limit, metrics).layer(tower::service_fn(move |_req: http::Request<()>| {
                let wait = answered.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    if let Some(wait) = wait {
                        let _ = wait.await;
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
                }
            }));
        let req = || {
            let mut r = http::Request::new(());
            *r.uri_mut() = http::Uri::from_static("/ferry.inventory.v1.InventoryService/DeductStock");
            r
        };
        let code = |resp: &http::Response<tonic::body::Body>| {
            resp.headers().get("grpc-status").map(|v| tonic::Code::from_bytes(v.as_bytes()))
        };

        // The first call takes the only permit in `call` and waits for `answer`: the next is
        // refused.
        let mut waiting = Box::pin(svc.call(req()));
        let refused = svc.call(req()).await.unwrap_or_else(|e| match e {});
        assert_eq!(code(&refused), Some(tonic::Code::ResourceExhausted));
        answer.send(()).expect("the call is waiting");
        // Awaited through a reference, the answered future is still alive: the permit must come
        // back when it answers, not only when hyper drops it.
        let answered = (&mut waiting).await.unwrap_or_else(|e| match e {});
        assert_eq!(code(&answered), None, "an admitted call reaches the service");
        assert_eq!(limit.in_flight.load(Ordering::Acquire), 0, "answering gives the permit back");
        drop(waiting);

        // A call dropped before it answers (the client went away) gives it back too.
        let dropped = svc.call(req());
        assert_eq!(limit.in_flight.load(Ordering::Acquire), 1);
        drop(dropped);
        assert_eq!(limit.in_flight.load(Ordering::Acquire), 0, "dropping gives the permit back");
    }

    #[test]
    fn lowering_the_limit_applies_to_new_calls() {
        let limit = ConcurrencyLimit::new(10);
        let _a = limit.try_acquire();
        limit.set_max(1);
        assert!(limit.try_acquire().is_none());
    }
}
