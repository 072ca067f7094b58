//! Logging (JSON by default, with the request's trace id on every line through the span) and
//! W3C trace context (`traceparent`) propagation.
//!
//! Each gRPC call runs inside a `grpc` span carrying `trace_id`; the id comes from an inbound
//! `traceparent` header or is generated. The order service passes it on to inventory with a
//! fresh parent span id, so one order's log lines in both services share a trace id.
//! NB: spans are not exported anywhere yet (no OTLP exporter is wired); see services/README.md.

use std::{
    fmt,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt};

/// Parses a tracing filter such as `info` or `info,sqlx=warn`.
pub fn parse_filter(spec: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(spec).map_err(|e| format!("`{spec}` is not a valid log filter: {e}"))
}

/// Changes the log filter at runtime.
#[derive(Clone)]
pub struct LogHandle {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// A handle that changes nothing (tests, or when a subscriber was already installed).
    pub fn noop() -> Self {
        Self { handle: None }
    }

    /// Applies a new filter.
    pub fn set_level(&self, spec: &str) -> Result<(), String> {
        let filter = parse_filter(spec)?;
        if let Some(handle) = &self.handle {
            handle.reload(filter).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Installs the global subscriber. Returns a no-op handle if one is already installed.
pub fn init_logging(level: &str, json: bool) -> Result<LogHandle, String> {
    let (filter, handle) = reload::Layer::new(parse_filter(level)?);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    };
    match result {
        Ok(()) => Ok(LogHandle { handle: Some(handle) }),
        Err(_) => Ok(LogHandle::noop()),
    }
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
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let parent =
            req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
        let ctx = parent.map(|p| p.child()).unwrap_or_else(TraceContext::generate);
        let span = tracing::info_span!("grpc", trace_id = %ctx.trace_id_hex(), method = req.uri().path());
        req.extensions_mut().insert(ctx);
        Box::pin(self.inner.call(req).instrument(span))
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
    fn child_keeps_the_trace_id() {
        let ctx = TraceContext::generate();
        assert_eq!(ctx.child().trace_id, ctx.trace_id);
    }
}
