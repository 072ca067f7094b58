//! The middleware stack and tonic server settings both services use.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use tonic::transport::{Server, server::TcpIncoming};
use tower::layer::util::{Identity, Stack};

use crate::{
    auth::{AuthLayer, AuthState},
    deadline::DeadlineLayer,
    fault::{FaultLayer, Faults},
    metrics::{MetricsLayer, ServerMetrics},
    ratelimit::{RateLimitLayer, RateLimiter},
    shed::{ConcurrencyLimit, LoadShedLayer},
    telemetry::TraceLayer,
    wire::{H2_MAX_HEADER_LIST_BYTES, WireLayer},
};

/// Outermost first: trace context, metrics, wire limits and codes, load shedding, auth,
/// per-client rate limit, deadline, injected faults. Faults are innermost, where the handler
/// is: metrics see a faulted call as a real one, and the deadline bounds an injected delay.
pub type FerryStack = Stack<
    FaultLayer,
    Stack<
        DeadlineLayer,
        Stack<
            RateLimitLayer,
            Stack<
                AuthLayer,
                Stack<LoadShedLayer, Stack<WireLayer, Stack<MetricsLayer, Stack<TraceLayer, Identity>>>>,
            >,
        >,
    >,
>;

/// The runtime-adjustable parts of the stack (swapped on config reload).
#[derive(Debug, Clone)]
pub struct Plumbing {
    /// gRPC and process metrics.
    pub metrics: Arc<ServerMetrics>,
    /// JWT verification (None = disabled).
    pub auth: AuthState,
    /// Concurrency limit.
    pub limit: Arc<ConcurrencyLimit>,
    /// Server-side per-call bound, ms.
    pub request_timeout_ms: Arc<AtomicU64>,
    /// Per-client rate limit (off until [`RateLimiter::set`] or [`Plumbing::apply`] turns it on).
    pub rate_limit: Arc<RateLimiter>,
    /// `ferry_requests_rate_limited_total`.
    pub rate_limited: prometheus_client::metrics::counter::Counter,
    /// Injected faults (none until [`Faults::set`] or [`Plumbing::apply`] sets a plan).
    pub faults: Arc<Faults>,
}

impl Plumbing {
    /// The layer stack.
    ///
    /// Its state is leaked once per call of this function (once per server start) and the
    /// layers hold `&'static` references to it: tonic clones the whole stack for every request,
    /// and with shared `Arc`s that clone and its drop wrote seven reference counts that both
    /// cores contend for. Everything in it is shared with `self` (the same `Arc`s), so config
    /// reloads through `self` still reach the running stack.
    pub fn layers(&self) -> FerryStack {
        let state: &'static Plumbing = Box::leak(Box::new(self.clone()));
        tower::ServiceBuilder::new()
            .layer(TraceLayer)
            .layer(MetricsLayer::new(&state.metrics))
            .layer(WireLayer)
            .layer(LoadShedLayer::new(&state.limit, &state.metrics))
            .layer(AuthLayer::new(&state.auth))
            .layer(RateLimitLayer::new(&state.rate_limit, &state.rate_limited))
            .layer(DeadlineLayer::new(&state.request_timeout_ms))
            .layer(FaultLayer::new(&state.faults))
            .into_inner()
    }
}

/// A tonic server with Ferry's transport settings: TCP_NODELAY and a maximum connection age
/// after which clients get GOAWAY and reconnect. Dead peers are found by TCP keepalive on the
/// accepted sockets ([`incoming`]), not by HTTP/2 PINGs.
///
/// No HTTP/2 keepalive: with it, hyper locks a per-connection mutex and reads the clock on every
/// frame received, from the connection task and from each call's task, so the lock moved
/// between the two cores on every call; A/B runs of `ferry-bench --only middleware` with only
/// this switched are in services/BENCHMARKS.md. The kernel's TCP keepalive finds a vanished peer
/// the same way, at no per-frame cost, and the maximum connection age bounds every connection's
/// life anyway.
///
/// No `max_connection_age_grace`: in tonic 0.14 setting it replaces the graceful GOAWAY at
/// `max_connection_age` by a hard close at age + grace (see `connection_timeout_future` in
/// tonic's server), so clients stayed pinned to old pods through a blue-green switch and then
/// lost their in-flight calls. Without it the GOAWAY comes at the age, in-flight calls finish
/// on the old connection (each is bounded by the server's per-call deadline) and new calls go
/// to a new connection, which kube-proxy sends to the pods the Service selects now.
///
/// HTTP/2 header lists are bounded at [`H2_MAX_HEADER_LIST_BYTES`], above the limit the
/// middleware enforces with a gRPC status (see [`crate::wire`]).
pub fn builder(max_connection_age: Duration) -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .max_connection_age(max_connection_age)
        .http2_max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
}

/// Idle time before the kernel starts probing a connection, then the probe interval; a peer
/// that answers none of the kernel's probes (9 by default) is dropped.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Wraps a bound listener as tonic's incoming stream with TCP_NODELAY and TCP keepalive.
pub fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
}

/// Builds the authenticator `settings` ask for (`None` when auth is disabled).
pub fn authenticator(
    settings: Option<&crate::config::AuthSettings>,
    scopes: &crate::auth::ScopeTable,
) -> Result<Option<crate::auth::Authenticator>, crate::auth::KeyError> {
    settings
        .map(|a| {
            let alg = crate::auth::parse_algorithm(&a.algorithm)?;
            crate::auth::Authenticator::from_key_file(alg, &a.key_file, scopes.clone())
        })
        .transpose()
}

impl Plumbing {
    /// Creates the plumbing from resolved settings, registering metrics in `registry`.
    pub fn new(
        registry: &mut prometheus_client::registry::Registry,
        auth: Option<crate::auth::Authenticator>,
        max_concurrent_requests: usize,
        request_timeout: Duration,
    ) -> Self {
        let rate_limited = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "ferry_requests_rate_limited",
            "Calls refused with RESOURCE_EXHAUSTED by the per-client rate limit",
            rate_limited.clone(),
        );
        Self {
            faults: Faults::register(registry),
            rate_limit: RateLimiter::new(0.0, 1.0),
            rate_limited,
            metrics: Arc::new(ServerMetrics::register(registry)),
            auth: AuthState::new(auth),
            limit: ConcurrencyLimit::new(max_concurrent_requests),
            request_timeout_ms: Arc::new(AtomicU64::new(
                u64::try_from(request_timeout.as_millis()).unwrap_or(u64::MAX),
            )),
        }
    }

    /// Applies the reloadable parts of new settings: log level, limits, auth keys, faults.
    /// Everything is validated first, so a bad file changes nothing.
    pub fn apply(
        &self,
        settings: &crate::config::ServerSettings,
        log: &crate::telemetry::LogHandle,
        scopes: &crate::auth::ScopeTable,
    ) -> Result<(), String> {
        let auth = authenticator(settings.auth.as_ref(), scopes).map_err(|e| e.to_string())?;
        let faults = settings.fault_plan(scopes).map_err(|e| e.to_string())?;
        crate::telemetry::parse_filter(&settings.log_level)?;
        log.set_level(&settings.log_level)?;
        self.auth.replace(auth);
        self.limit.set_max(settings.max_concurrent_requests);
        self.rate_limit.set(settings.rate_limit_per_client, settings.rate_limit_burst);
        self.request_timeout_ms.store(
            u64::try_from(settings.request_timeout.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.faults.set(faults);
        Ok(())
    }
}
