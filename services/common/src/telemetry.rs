//! Logging (JSON by default, with the request's trace id on every line written during a call)
//! and W3C trace context (`traceparent`) propagation.
//!
//! Each gRPC call carries a `trace_id` and its `method` into the log lines written while it
//! runs, under `span`; the id comes from an inbound `traceparent` header or is generated. With
//! span export on (or plain-text logs) the call runs inside a `grpc` span holding them; with
//! JSON logs and no export they ride on the thread instead (see `call_context`), which costs a
//! call far less than a span. The order service passes it on to inventory with a
//! fresh parent span id, so one order's log lines in both services share a trace id.
//!
//! Spans are exported over OTLP (gRPC) when an endpoint is configured (`--otlp-endpoint` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise no OpenTelemetry layer is installed at all, so
//! nothing is exported or attempted. With export on, the `grpc` span is the OpenTelemetry
//! span: its parent is the inbound `traceparent`, and the context passed downstream names it.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use futures::future::Either;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider},
};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::{Metadata, subscriber::Interest};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::call_context::{self, CallFields, InCall, TraceIdHex, WithCallFields};

/// Parses a log filter: a default level and per-target levels, such as `info` or
/// `info,sqlx=warn` (tracing-subscriber's `Targets` syntax).
///
/// Every directive must name a level. `Targets` alone would read a bare word that is not a
/// level (`debugg`) as a target enabled at TRACE with every other target off, so a typo
/// would silently turn all logging off, errors included.
pub fn parse_filter(spec: &str) -> Result<Targets, String> {
    if spec.trim().is_empty() {
        return Err("the log level is empty".into());
    }
    for directive in spec.split(',').map(str::trim) {
        let level = directive.split_once('=').map_or(directive, |(_, level)| level);
        if level.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "`{directive}` in `{spec}` names no log level: use trace, debug, info, warn, error or off, \
                 optionally per target as target=level"
            ));
        }
    }
    spec.parse::<Targets>().map_err(|e| format!("`{spec}` is not a valid log filter: {e}"))
}

/// The log filter, replaceable at runtime.
///
/// tracing-subscriber's `reload` layer around an `EnvFilter` took two shared read locks on
/// every span enter, exit and close (reload's own and `EnvFilter`'s span table); when every gRPC
/// call opened a span, both worker threads wrote those lock words several times per call.
/// This filter is asked only when a callsite registers (its answer is cached) and when the
/// cache is rebuilt after a reload; it has nothing to do on span enter, exit or close.
#[derive(Clone)]
struct LiveFilter(Arc<RwLock<Targets>>);

impl LiveFilter {
    fn targets(&self) -> std::sync::RwLockReadGuard<'_, Targets> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn replace(&self, targets: Targets) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = targets;
        // Every callsite's cached interest and the global maximum level are recomputed.
        tracing::callsite::rebuild_interest_cache();
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LiveFilter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.targets().would_enable(metadata.target(), metadata.level()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        self.targets().would_enable(metadata.target(), metadata.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let targets = self.targets();
        Some(
            targets
                .iter()
                .map(|(_, level)| level)
                .chain(targets.default_level())
                .max()
                .unwrap_or(LevelFilter::OFF),
        )
    }
}

/// Changes the log filter at runtime.
#[derive(Clone)]
pub struct LogHandle {
    filter: Option<LiveFilter>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// A handle that changes nothing (tests, or when a subscriber was already installed).
    pub fn noop() -> Self {
        Self { filter: None }
    }

    /// Applies a new filter.
    pub fn set_level(&self, spec: &str) -> Result<(), String> {
        let targets = parse_filter(spec)?;
        if let Some(filter) = &self.filter {
            filter.replace(targets);
        }
        Ok(())
    }
}

/// Installs the global subscriber without span export. Returns a no-op handle if one is
/// already installed.
pub fn init_logging(level: &str, json: bool) -> Result<LogHandle, String> {
    init(level, json, None).map(|t| t.log)
}

/// Builds an OTLP/gRPC span pipeline sending to `endpoint` (e.g. `http://collector:4317`).
/// The channel connects lazily and spans leave in batches from a background thread, so a
/// collector that is down costs dropped spans, never a failed call. Must be called inside a
/// tokio runtime (the exporter's channel is driven by it).
pub fn tracer_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("OTLP exporter for `{endpoint}`: {e}"))?;
    // Batch settings come from the standard OTEL_BSP_* variables (default: every 5 s, queue
    // of 2048 spans, dropped beyond that).
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_string());
    }
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build())
}

/// The tracing layer that turns spans into OpenTelemetry spans of `provider`.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    OTEL_LAYER_BUILT.store(true, Ordering::Relaxed);
    SPAN_PER_CALL.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer().with_tracer(provider.tracer("ferry")).with_tracked_inactivity(false)
}

/// The OTLP endpoint to use: `None` (export off) when unset or blank.
pub fn otlp_endpoint(configured: Option<&str>) -> Option<&str> {
    configured.map(str::trim).filter(|e| !e.is_empty())
}

/// The span pipeline for `(endpoint, service name)`, or `None` (nothing built, nothing ever
/// attempted) when no endpoint is configured.
pub fn exporter_for(otlp: Option<(&str, &str)>) -> Result<Option<SdkTracerProvider>, String> {
    otlp.and_then(|(endpoint, service)| otlp_endpoint(Some(endpoint)).map(|e| (e, service)))
        .map(|(endpoint, service)| tracer_provider(endpoint, service))
        .transpose()
}

/// Logging plus, when exporting, the span pipeline. Call [`Telemetry::shutdown`] before the
/// process exits so the last spans are flushed.
pub struct Telemetry {
    /// Changes the log filter at runtime.
    pub log: LogHandle,
    tracer: Option<SdkTracerProvider>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.exporting()).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Flushes and stops the exporter (no-op when not exporting). Runs the blocking flush
    /// off the async threads, so the exporter's channel can still make progress.
    pub async fn shutdown(self) {
        if let Some(provider) = self.tracer {
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("flushing spans at shutdown failed: {e}"),
                Err(e) => eprintln!("flushing spans at shutdown panicked: {e}"),
            }
        }
    }
}

/// Installs the global subscriber: logs, and an OTLP span exporter when `otlp_endpoint` is
/// set (none is built otherwise). If a subscriber is already installed, logging is left as
/// it is and nothing is exported.
pub fn init(level: &str, json: bool, otlp: Option<(&str, &str)>) -> Result<Telemetry, String> {
    let tracer = exporter_for(otlp)?;
    let filter = LiveFilter(Arc::new(RwLock::new(parse_filter(level)?)));
    let registry = tracing_subscriber::registry().with(filter.clone());
    if !json {
        SPAN_PER_CALL.store(true, Ordering::Relaxed);
    }
    let result = if json {
        registry.with(json_log_layer(std::io::stdout)).with(tracer.as_ref().map(otel_layer)).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer()).with(tracer.as_ref().map(otel_layer)).try_init()
    };
    match result {
        Ok(()) => Ok(Telemetry { log: LogHandle { filter: Some(filter) }, tracer }),
        Err(_) => {
            if let Some(provider) = tracer {
                let _ = provider.shutdown();
            }
            Ok(Telemetry { log: LogHandle::noop(), tracer: None })
        }
    }
}

/// The JSON log format: one object per line with the event's fields, its target, and the
/// current span's fields under `span`: the call's `trace_id` and `method`, from its `grpc` span
/// or, without one, from `call_context`.
pub fn json_log_layer<S, W>(
    writer: W,
) -> tracing_subscriber::fmt::Layer<
    S,
    crate::json_fields::JsonSpanFields,
    WithCallFields<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>>,
    W,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .fmt_fields(crate::json_fields::JsonSpanFields)
        .map_event_format(WithCallFields)
        .with_writer(writer)
}

/// A W3C trace context: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: u128,
    /// 8 bytes, never all zero.
    pub span_id: u64,
    /// The sampled flag.
    pub sampled: bool,
}

impl TraceContext {
    /// A new root context.
    pub fn generate() -> Self {
        Self { trace_id: rand::random::<u128>().max(1), span_id: rand::random::<u64>().max(1), sampled: true }
    }

    /// A child context: same trace, new span id.
    pub fn child(&self) -> Self {
        Self { span_id: rand::random::<u64>().max(1), ..*self }
    }

    /// Parses a `traceparent` header value; `None` if it is not valid version-00 syntax.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The `traceparent` header value.
    pub fn header_value(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// Tower layer: puts a [`TraceContext`] in the request extensions and runs the call inside a
/// `grpc` span carrying `trace_id` and `method`.
#[derive(Debug, Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<tracing::instrument::Instrumented<S::Future>, InCall<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let parent =
            req.headers().get(&TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
        let path = req.uri().path();
        if !SPAN_PER_CALL.load(Ordering::Relaxed) {
            // JSON logs and no OpenTelemetry layer: the call's fields ride on the thread while
            // it is polled instead of in a span (see `call_context`).
            let ctx = parent.map(|p| p.child()).unwrap_or_else(TraceContext::generate);
            let call = Arc::new(CallFields::new(ctx.trace_id, path));
            req.extensions_mut().insert(ctx);
            let fut = call_context::enter(&call, || self.inner.call(req));
            return Either::Right(InCall::new(fut, call));
        }
        let (span, ctx) = if OTEL_LAYER_BUILT.load(Ordering::Relaxed) {
            // The span may be an OpenTelemetry span: its ids are the ones to pass on.
            let span = tracing::info_span!(
                "grpc",
                trace_id = tracing::field::Empty,
                method = path,
                otel.kind = "server",
                otel.name = path.trim_start_matches('/'),
            );
            let ctx = span_context(&span, parent);
            span.record("trace_id", tracing::field::display(ctx.trace_id_hex()));
            (span, ctx)
        } else {
            // No OpenTelemetry layer exists in this process: the ids are ours alone, so the
            // span gets its trace_id when it is created (recording it later makes the JSON
            // formatter parse and re-serialise the span's fields on every call).
            let ctx = parent.map(|p| p.child()).unwrap_or_else(TraceContext::generate);
            let span =
                tracing::info_span!("grpc", trace_id = TraceIdHex::new(ctx.trace_id).as_str(), method = path);
            (span, ctx)
        };
        req.extensions_mut().insert(ctx);
        Either::Left(self.inner.call(req).instrument(span))
    }
}

/// Set once an OpenTelemetry layer has been built ([`otel_layer`]); until then no span can be
/// an OpenTelemetry span and [`TraceLayer`] makes up the ids itself.
static OTEL_LAYER_BUILT: AtomicBool = AtomicBool::new(false);

/// Set when a call needs a real `grpc` span: an OpenTelemetry layer exists (the span is what
/// it exports) or logs are plain text (whose format knows nothing of `call_context`). Until
/// then [`TraceLayer`] runs calls under `call_context` instead.
static SPAN_PER_CALL: AtomicBool = AtomicBool::new(false);

/// The W3C trace context header.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The context of this server's span for `span`. When OpenTelemetry export is on, the span is
/// made a child of the inbound `parent` and its own ids are returned; otherwise a child of
/// `parent` (or a new root) is made up with the same rules.
fn span_context(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    if let Some(p) = parent {
        let remote = SpanContext::new(
            TraceId::from(p.trace_id),
            SpanId::from(p.span_id),
            if p.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
            true,
            TraceState::default(),
        );
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to parent.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let otel = span.context();
    let own = otel.span().span_context().clone();
    if own.is_valid() {
        TraceContext {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(own.span_id().to_bytes()),
            sampled: own.is_sampled(),
        }
    } else {
        parent.map(|p| p.child()).unwrap_or_else(TraceContext::generate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::generate();
        assert_eq!(TraceContext::parse(&ctx.header_value()), Some(ctx));
    }

    #[test]
    fn malformed_traceparent_is_ignored() {
        for v in [
            "",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-zz000000000000000000000000000001-0000000000000001-01",
            "ff-00000000000000000000000000000001-0000000000000001-01",
            "00-1-1-1",
        ] {
            assert_eq!(TraceContext::parse(v), None, "{v}");
        }
    }

    #[test]
    fn no_exporter_is_built_without_an_endpoint() {
        assert!(exporter_for(None).expect("no endpoint is not an error").is_none());
        assert!(exporter_for(Some(("  ", "svc"))).expect("a blank endpoint is not an error").is_none());
    }

    #[test]
    fn without_export_the_server_span_continues_the_inbound_trace() {
        let parent = TraceContext::generate();
        let ctx = span_context(&tracing::info_span!("grpc"), Some(parent));
        assert_eq!(ctx.trace_id, parent.trace_id);
        assert_ne!(ctx.span_id, parent.span_id);
    }

    #[test]
    fn the_span_trace_id_is_formatted_like_the_traceparent_one() {
        let ctx = TraceContext::generate();
        assert_eq!(TraceIdHex::new(ctx.trace_id).as_str(), ctx.trace_id_hex());
        assert_eq!(TraceIdHex::new(1).as_str(), format!("{}1", "0".repeat(31)));
        assert_eq!(TraceIdHex::new(u128::MAX).as_str(), "f".repeat(32));
    }

    #[test]
    fn a_new_log_level_applies_to_callsites_already_seen() {
        fn probe(n: u32) {
            tracing::debug!(n, "debug probe");
            tracing::info!(n, "info probe");
        }

        let filter = LiveFilter(Arc::new(RwLock::new(parse_filter("info").expect("valid"))));
        let log = LogHandle { filter: Some(filter.clone()) };
        let lines = crate::json_fields::tests::log_lines_through(filter, || {
            probe(1);
            log.set_level("debug").expect("valid level");
            probe(2);
            log.set_level("warn,ferry_service_common=info").expect("valid level");
            probe(3);
        });
        let seen: Vec<(String, u64)> = lines
            .iter()
            .map(|v| {
                (
                    v["fields"]["message"].as_str().unwrap_or("").to_string(),
                    v["fields"]["n"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let expected: Vec<(String, u64)> =
            [("info probe", 1), ("debug probe", 2), ("info probe", 2), ("info probe", 3)]
                .into_iter()
                .map(|(m, n)| (m.to_string(), n))
                .collect();
        assert_eq!(seen, expected);
        assert!(log.set_level("lo=ud=!").is_err(), "a bad filter is refused");
    }

    /// Calls `TraceLayer` around a handler that logs one line, with `traceparent` if given;
    /// returns the log lines and the trace context the handler saw.
    fn log_inside_a_call(traceparent: Option<&str>) -> (Vec<serde_json::Value>, Option<TraceContext>) {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let lines =
            crate::json_fields::tests::log_lines_through(tracing_subscriber::layer::Identity::new(), || {
                let seen = seen.clone();
                let handler = tower::service_fn(move |req: http::Request<()>| {
                    let seen = seen.clone();
                    async move {
                        tokio::task::yield_now().await;
                        tracing::info!("handled");
                        *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                            req.extensions().get::<TraceContext>().copied();
                        Ok::<_, std::convert::Infallible>(())
                    }
                });
                let mut svc = TraceLayer.layer(handler);
                let mut req = http::Request::new(());
                *req.uri_mut() = http::Uri::from_static("/ferry.inventory.v1.InventoryService/GetStock");
                if let Some(tp) = traceparent {
                    req.headers_mut().insert("traceparent", http::HeaderValue::from_str(tp).expect("ascii"));
                }
                let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                rt.block_on(svc.call(req)).expect("infallible");
                tracing::info!("after the call");
            });
        let seen = *seen.lock().unwrap_or_else(|p| p.into_inner());
        (lines, seen)
    }

    #[test]
    fn a_line_logged_inside_a_call_names_the_inbound_trace_and_the_method() {
        let parent = TraceContext::generate();
        let (lines, seen) = log_inside_a_call(Some(&parent.header_value()));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["fields"]["message"], "handled");
        assert_eq!(lines[0]["span"]["trace_id"], parent.trace_id_hex());
        assert_eq!(lines[0]["span"]["method"], "/ferry.inventory.v1.InventoryService/GetStock");
        assert_eq!(lines[0]["span"]["name"], "grpc");
        let seen = seen.expect("the handler got a trace context");
        assert_eq!(seen.trace_id, parent.trace_id, "the context passed on continues the trace");
        assert_ne!(seen.span_id, parent.span_id);
        assert!(lines[1].get("span").is_none(), "a line after the call names no call: {}", lines[1]);
    }

    #[test]
    fn a_call_without_traceparent_logs_the_trace_id_it_passes_on() {
        let (lines, seen) = log_inside_a_call(None);
        let seen = seen.expect("the handler got a trace context");
        assert_eq!(lines[0]["span"]["trace_id"], seen.trace_id_hex());
    }

    #[test]
    fn child_keeps_the_trace_id() {
        let ctx = TraceContext::generate();
        assert_eq!(ctx.child().trace_id, ctx.trace_id);
    }
}
