//! The order service's client for inventory: per-attempt deadlines that never exceed the
//! caller's remaining budget (sent downstream as `grpc-timeout`), retries on transient codes
//! with jittered exponential backoff, a circuit breaker that fails fast with `UNAVAILABLE`,
//! a bearer token, and W3C `traceparent` propagation.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use ferry_proto::inventory::v1::{
    DeductStockRequest, DeductStockResponse, ReleaseStockRequest, ReleaseStockResponse,
    inventory_service_client::InventoryServiceClient,
};
use ferry_service_common::telemetry::TraceContext;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::time::Instant;
use tonic::{Code, Request, Status, transport::Channel};

use crate::{
    breaker::{Admission, Breaker, BreakerConfig},
    retry::{RetryPolicy, is_breaker_failure},
};

/// Client-side metrics.
#[derive(Debug, Clone, Default)]
pub struct ClientMetrics {
    /// `order_inventory_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Gauge,
    /// `order_inventory_breaker_opened_total`.
    pub breaker_opened: Counter,
    /// `order_inventory_breaker_rejected_total`: calls failed fast while open.
    pub breaker_rejected: Counter,
    /// `order_inventory_retries_total`.
    pub retries: Counter,
}

impl ClientMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "order_inventory_breaker_state",
            "Inventory circuit breaker: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "order_inventory_breaker_opened",
            "Times the inventory breaker opened",
            m.breaker_opened.clone(),
        );
        registry.register(
            "order_inventory_breaker_rejected",
            "Inventory calls failed fast by the open breaker",
            m.breaker_rejected.clone(),
        );
        registry.register("order_inventory_retries", "Inventory call retries", m.retries.clone());
        m
    }
}

/// Runtime-adjustable client settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Retries and per-attempt deadline.
    pub retry: RetryPolicy,
    /// Breaker thresholds.
    pub breaker: BreakerConfig,
    /// Bearer token for inventory, if any.
    pub token: Option<String>,
}

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InventoryClient {
    inner: InventoryServiceClient<Channel>,
    breaker: Arc<Mutex<Breaker>>,
    settings: Arc<RwLock<ClientSettings>>,
    metrics: Arc<ClientMetrics>,
}

/// The inventory address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid inventory address `{addr}`: {reason}")]
pub struct InvalidAddress {
    /// The address.
    pub addr: String,
    /// Why.
    pub reason: String,
}

/// Connects lazily (the order service starts even while inventory is down) to `addr`
/// (`host:port` or a full `http://` URI).
pub fn lazy_channel(addr: &str) -> Result<Channel, InvalidAddress> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = Channel::from_shared(uri)
        .map_err(|e| InvalidAddress { addr: addr.to_string(), reason: e.to_string() })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl InventoryClient {
    /// A client over `channel`.
    pub fn new(channel: Channel, settings: ClientSettings, metrics: Arc<ClientMetrics>) -> Self {
        Self {
            inner: InventoryServiceClient::new(channel),
            breaker: Arc::new(Mutex::new(Breaker::new(settings.breaker))),
            settings: Arc::new(RwLock::new(settings)),
            metrics,
        }
    }

    /// Applies new settings (config reload).
    pub fn reconfigure(&self, settings: ClientSettings) {
        self.lock_breaker().reconfigure(settings.breaker);
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    fn lock_breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> ClientSettings {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The longest one call may take with the current retry policy.
    pub fn call_budget(&self) -> Duration {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).retry.call_budget()
    }

    /// Deducts with retries, within `deadline`.
    pub async fn deduct(
        &self,
        req: DeductStockRequest,
        deadline: Instant,
        trace: Option<TraceContext>,
    ) -> Result<DeductStockResponse, Status> {
        self.call(deadline, trace, req, |mut c, r| async move { c.deduct_stock(r).await }).await
    }

    /// Releases with retries, within `deadline`.
    pub async fn release(
        &self,
        req: ReleaseStockRequest,
        deadline: Instant,
        trace: Option<TraceContext>,
    ) -> Result<ReleaseStockResponse, Status> {
        self.call(deadline, trace, req, |mut c, r| async move { c.release_stock(r).await }).await
    }

    async fn call<M, R, F, Fut>(
        &self,
        deadline: Instant,
        trace: Option<TraceContext>,
        message: M,
        send: F,
    ) -> Result<R, Status>
    where
        M: Clone,
        F: Fn(InventoryServiceClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let settings = self.current();
        let policy = settings.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(Status::deadline_exceeded("deadline exceeded before calling inventory"));
            }
            let admission = self.lock_breaker().try_acquire(now);
            self.metrics.breaker_state.set(self.lock_breaker().state().as_gauge());
            if admission == Admission::Rejected {
                self.metrics.breaker_rejected.inc();
                return Err(Status::unavailable("inventory circuit breaker is open; failing fast"));
            }
            let budget = remaining.min(policy.attempt_timeout);
            let mut request = Request::new(message.clone());
            request.set_timeout(budget);
            if let Some(token) = &settings.token
                && let Ok(v) = format!("Bearer {token}").parse()
            {
                request.metadata_mut().insert("authorization", v);
            }
            // The parent id sent on is this server's span (the one the trace layer made).
            if let Some(ctx) = trace
                && let Ok(v) = ctx.header_value().parse()
            {
                request.metadata_mut().insert("traceparent", v);
            }
            let result = match tokio::time::timeout(budget, send(self.inner.clone(), request)).await {
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(status)) => Err(normalize(status)),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "inventory did not answer within {} ms",
                    budget.as_millis()
                ))),
            };
            let code = match &result {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            // A call cut by its connection closing (a GOAWAY race) says nothing about
            // inventory's health: it is retried, but it neither opens nor closes the breaker.
            // Several calls in flight on one rotating connection fail together, which would
            // otherwise read as "N consecutive failures" and open it.
            let connection_closed = result.as_ref().is_err_and(is_connection_closed);
            if !connection_closed {
                let mut breaker = self.lock_breaker();
                if is_breaker_failure(code) {
                    if breaker.on_failure(Instant::now()) {
                        self.metrics.breaker_opened.inc();
                        tracing::warn!(?code, "inventory circuit breaker opened");
                    }
                } else {
                    breaker.on_success();
                }
                self.metrics.breaker_state.set(breaker.state().as_gauge());
            }
            let Err(status) = result else { return result };
            let backoff = policy.backoff(attempt, rand::random::<f64>());
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !policy.should_retry(attempt, code, remaining, backoff) {
                return Err(status);
            }
            self.metrics.retries.inc();
            tracing::debug!(
                attempt,
                ?code,
                backoff_ms = backoff.as_millis() as u64,
                "retrying inventory call"
            );
            tokio::time::sleep(backoff).await;
        }
    }
}

const CONNECTION_CLOSED: &str = "connection to inventory closed during the call";

/// Whether [`normalize`] made `status` from a call cut by its connection closing.
fn is_connection_closed(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message().starts_with(CONNECTION_CLOSED)
}

/// Whether a transport error under `status` says no connection could be made: hyper-util's
/// connector reports "tcp connect error" (refused, unreachable, its connect timeout) or
/// "dns error", over the `io::Error` it failed with.
fn failed_to_connect(status: &Status) -> bool {
    use std::io::ErrorKind::{
        AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut,
    };
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        let connect_io = err.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable | TimedOut
            )
        });
        if connect_io || text.starts_with("tcp connect error") || text.starts_with("dns error") {
            return true;
        }
        source = err.source();
    }
    false
}

/// tonic reports its own client-side timeout as CANCELLED "Timeout expired"; treat it as the
/// deadline it is. Any other CANCELLED is the transport's: this client never cancels a call
/// except by that timeout, so it means the connection closed under the call (hyper's
/// "operation was canceled", e.g. a request racing the GOAWAY of a server's maximum connection
/// age during a blue-green switch); so is tonic's INTERNAL "h2 protocol error" and any status it built from a local transport
/// error. All are UNAVAILABLE, which the retry policy retries; safe,
/// because every inventory call carries an idempotency key, so a retry of a call that did
/// execute replays its result instead of deducting twice.
fn normalize(status: Status) -> Status {
    match status.code() {
        Code::Cancelled if status.message().contains("Timeout expired") => {
            Status::deadline_exceeded(status.message().to_string())
        }
        Code::Cancelled => Status::unavailable(format!("{CONNECTION_CLOSED}: {}", status.message())),
        // tonic's own text for an HTTP/2 error on the client's connection (for example a
        // stream the server refused with a NO_ERROR GOAWAY); a server never sends this.
        Code::Internal if status.message().starts_with("h2 protocol error") => {
            Status::unavailable(format!("{CONNECTION_CLOSED}: {}", status.message()))
        }
        // No connection could be made (refused, unreachable, connect timeout, DNS): the call
        // never reached inventory, so it is retried, and it counts against the breaker like
        // any other sign that inventory is down.
        _ if failed_to_connect(&status) => {
            Status::unavailable(format!("could not connect to inventory: {}", status.message()))
        }
        // A status tonic built from a local transport error carries that error as its source
        // ("transport error", a reset stream, a closed connection); one decoded from the
        // server's grpc-status never does.
        _ if std::error::Error::source(&status).is_some() => {
            Status::unavailable(format!("{CONNECTION_CLOSED}: {}", status.message()))
        }
        _ => status,
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::*;

    #[test]
    fn a_client_timeout_becomes_deadline_exceeded() {
        let status = normalize(Status::cancelled("Timeout expired"));
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn a_call_cut_by_its_connection_closing_becomes_retryable_unavailable() {
        let status = normalize(Status::cancelled("operation was canceled"));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("operation was canceled"));
        assert!(is_connection_closed(&status));
        assert!(!is_connection_closed(&Status::unavailable("inventory is draining")));
    }

    #[test]
    fn an_http2_error_on_the_connection_becomes_retryable_unavailable() {
        let status = normalize(Status::internal("h2 protocol error: http2 error"));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(is_connection_closed(&status));
        assert_eq!(normalize(Status::internal("store failed")).code(), Code::Internal);
    }

    #[test]
    fn a_status_made_from_a_transport_error_becomes_retryable_unavailable() {
        let transport = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(std::error::Error::source(&transport).is_some());
        let status = normalize(transport);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(is_connection_closed(&status));
    }

    #[test]
    fn a_refused_connection_becomes_unavailable_that_counts_against_the_breaker() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = normalize(Status::from_error(Box::new(refused)));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!is_connection_closed(&status), "{status:?}");
        assert!(is_breaker_failure(status.code()));
    }

    #[test]
    fn other_codes_pass_through() {
        assert_eq!(normalize(Status::not_found("sku")).code(), Code::NotFound);
    }
}
