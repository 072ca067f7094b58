//! Prometheus metrics with the go-grpc-prometheus names, recorded by a tower layer.
//!
//! `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}` and
//! `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`. The code is read from
//! the response headers (trailers-only answers, which is how errors travel) or else from the
//! trailers at the end of the body.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tower::{Layer, Service};

/// Buckets of `grpc_server_handling_seconds`: go-grpc-prometheus' defaults plus sub-millisecond ones.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Labels of `grpc_server_handled_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    /// `unary`, `server_stream` or `bidi_stream`.
    pub grpc_type: String,
    /// e.g. `ferry.inventory.v1.InventoryService`.
    pub grpc_service: String,
    /// e.g. `DeductStock`.
    pub grpc_method: String,
    /// e.g. `OK`, `FailedPrecondition` (go-grpc-prometheus spelling).
    pub grpc_code: String,
}

/// Labels of `grpc_server_handling_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `unary`, `server_stream` or `bidi_stream`.
    pub grpc_type: String,
    /// e.g. `ferry.inventory.v1.InventoryService`.
    pub grpc_service: String,
    /// e.g. `DeductStock`.
    pub grpc_method: String,
}

/// Server-side gRPC metrics plus process-wide ones shared by both services.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    /// `grpc_server_handled_total`.
    pub handled: Family<HandledLabels, Counter>,
    /// `grpc_server_handling_seconds`.
    pub handling_seconds: Family<MethodLabels, Histogram>,
    /// `ferry_requests_shed_total`: calls refused with RESOURCE_EXHAUSTED by the concurrency limit.
    pub shed: Counter,
    /// `ferry_requests_in_flight`.
    pub in_flight: Gauge,
    /// `ferry_config_reload_failures_total`: config files rejected on reload.
    pub config_reload_failures: Counter,
    /// `ferry_config_reloads_total`: config files applied on reload.
    pub config_reloads: Counter,
    /// Per-method handles into `handled` and `handling_seconds` (see [`MethodHandles`]).
    methods: Arc<RwLock<HashMap<Box<str>, Arc<MethodHandles>>>>,
}

impl ServerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            shed: Counter::default(),
            in_flight: Gauge::default(),
            config_reload_failures: Counter::default(),
            config_reloads: Counter::default(),
            methods: Arc::default(),
        };
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            m.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            m.handling_seconds.clone(),
        );
        registry.register(
            "ferry_requests_shed",
            "Calls refused with RESOURCE_EXHAUSTED by the concurrency limit",
            m.shed.clone(),
        );
        registry.register("ferry_requests_in_flight", "gRPC calls being handled now", m.in_flight.clone());
        registry.register(
            "ferry_config_reload_failures",
            "Config files rejected on reload (the previous config stays in force)",
            m.config_reload_failures.clone(),
        );
        registry.register("ferry_config_reloads", "Config files applied on reload", m.config_reloads.clone());
        m
    }
}

/// Renders `registry` in the Prometheus/OpenMetrics text format.
/// Most distinct method paths whose handles are kept; calls to further paths (clients can send
/// any path) are recorded through the families directly.
const METHOD_HANDLES_CAPACITY: usize = 128;

/// One method's label set and metric handles, so a call records without building label
/// strings or hashing them into the families.
#[derive(Debug)]
struct MethodHandles {
    labels: MethodLabels,
    seconds: Histogram,
    /// `grpc_server_handled_total` by code (0..=16), created on first use.
    handled: [OnceLock<Counter>; 17],
}

impl ServerMetrics {
    fn method(&self, path: &str) -> Arc<MethodHandles> {
        if let Some(h) = self.methods.read().unwrap_or_else(|p| p.into_inner()).get(path) {
            return h.clone();
        }
        let (service, method) = split_path(path);
        let labels = MethodLabels {
            grpc_type: grpc_type(service, method).into(),
            grpc_service: service.into(),
            grpc_method: method.into(),
        };
        let seconds = self.handling_seconds.get_or_create(&labels).clone();
        let handles = Arc::new(MethodHandles { labels, seconds, handled: Default::default() });
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        if methods.len() < METHOD_HANDLES_CAPACITY {
            methods.insert(path.into(), handles.clone());
        }
        handles
    }

    fn record(&self, m: &MethodHandles, code: tonic::Code, seconds: f64) {
        let counter = usize::try_from(i32::from(code)).ok().and_then(|i| m.handled.get(i)).map(|slot| {
            slot.get_or_init(|| {
                let MethodLabels { grpc_type, grpc_service, grpc_method } = m.labels.clone();
                self.handled
                    .get_or_create(&HandledLabels {
                        grpc_type,
                        grpc_service,
                        grpc_method,
                        grpc_code: code_name(code).into(),
                    })
                    .clone()
            })
        });
        if let Some(counter) = counter {
            counter.inc();
        }
        m.seconds.observe(seconds);
    }
}

pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %err, "encoding metrics");
    }
    out
}

/// Splits `/pkg.Service/Method` into its parts; anything else becomes `("unknown", "unknown")`.
pub fn split_path(path: &str) -> (&str, &str) {
    path.strip_prefix('/').and_then(|p| p.split_once('/')).unwrap_or(("unknown", "unknown"))
}

/// The go-grpc-prometheus spelling of a status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("grpc.health.v1.Health", "Watch") => "server_stream",
        (s, _) if s.starts_with("grpc.reflection.") => "bidi_stream",
        _ => "unary",
    }
}

/// Looked up by name, not by text: a `&str` key is parsed into a header name on every lookup.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn code_from_headers(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers.get(&GRPC_STATUS).map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// Records one call once, when its status is known (or as `Canceled` if the body is dropped first).
struct CallRecord {
    metrics: &'static ServerMetrics,
    method: Arc<MethodHandles>,
    start: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        self.metrics.in_flight.dec();
        self.metrics.record(&self.method, code, self.start.elapsed().as_secs_f64());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// Tower layer recording [`ServerMetrics`] for every call.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: &'static ServerMetrics,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: &'static ServerMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: &'static ServerMetrics,
}

impl<S, B> Service<http::Request<B>> for MetricsService<S>
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
        let method = self.metrics.method(req.uri().path());
        self.metrics.in_flight.inc();
        let mut record = CallRecord { metrics: self.metrics, method, start: Instant::now(), done: false };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(resp) => resp,
                Err(err) => {
                    record.finish(tonic::Code::Unknown);
                    return Err(err);
                }
            };
            if let Some(code) = code_from_headers(resp.headers()) {
                record.finish(code);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let body = body.map_frame(move |frame| {
                if let Some(trailers) = frame.trailers_ref() {
                    record.finish(code_from_headers(trailers).unwrap_or(tonic::Code::Unknown));
                }
                frame
            });
            Ok(http::Response::from_parts(parts, tonic::body::Body::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_path_splits_into_service_and_method() {
        assert_eq!(
            split_path("/ferry.inventory.v1.InventoryService/DeductStock"),
            ("ferry.inventory.v1.InventoryService", "DeductStock")
        );
        assert_eq!(split_path("garbage"), ("unknown", "unknown"));
    }

    #[test]
    fn calls_through_cached_handles_land_in_the_labelled_families() {
        let mut registry = Registry::default();
        let m = ServerMetrics::register(&mut registry);
        let path = "/ferry.inventory.v1.InventoryService/GetStock";
        for code in [tonic::Code::Ok, tonic::Code::Ok, tonic::Code::InvalidArgument] {
            let handles = m.method(path);
            m.record(&handles, code, 0.001);
        }
        let text = encode(&registry);
        let handled = |code: &str| {
            format!(
                "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"ferry.inventory.v1.InventoryService\",grpc_method=\"GetStock\",grpc_code=\"{code}\"}} "
            )
        };
        assert!(text.contains(&format!("{}2", handled("OK"))), "{text}");
        assert!(text.contains(&format!("{}1", handled("InvalidArgument"))), "{text}");
        assert!(text.contains("grpc_server_handling_seconds_count{grpc_type=\"unary\",grpc_service=\"ferry.inventory.v1.InventoryService\",grpc_method=\"GetStock\"} 3"), "{text}");
    }

    #[test]
    fn method_handles_stay_bounded_for_arbitrary_paths() {
        let m = ServerMetrics::register(&mut Registry::default());
        for i in 0..(METHOD_HANDLES_CAPACITY + 50) {
            let handles = m.method(&format!("/x.Svc/M{i}"));
            m.record(&handles, tonic::Code::Unimplemented, 0.0);
        }
        assert_eq!(m.methods.read().unwrap_or_else(|p| p.into_inner()).len(), METHOD_HANDLES_CAPACITY);
    }

    #[test]
    fn code_names_follow_go_grpc_prometheus() {
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FailedPrecondition");
    }
}
