//! The gRPC call a thread is working on, for the JSON log lines written inside it, without a
//! tracing span per call.
//!
//! A `grpc` span per call costs the span registry a slot, the log layer a formatted copy of
//! its fields and an entry in the span's extensions, and every poll an enter and an exit, paid
//! whether or not anything is logged (the cost is measured in services/BENCHMARKS.md). When no
//! OpenTelemetry layer needs the span and logs are JSON, [`InCall`] instead makes the call's
//! fields (trace id and method) the thread's current call while the call's future is polled,
//! and [`WithCallFields`] adds them to a log line written meanwhile, under `span`, in the shape
//! the `grpc` span gave it: `"span":{"trace_id":…,"method":…,"name":"grpc"}`.

use std::{
    cell::RefCell,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// A trace id as 32 lowercase hex digits, on the stack. Recorded in a span as a `&str`, it
/// costs the log formatter no `fmt` machinery (recording a `{:032x}` `Display` cost a measurable
/// share of a server's CPU, most of it the formatting and escaping around it: see
/// services/BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    /// The digits of `trace_id`.
    pub fn new(trace_id: u128) -> Self {
        let mut digits = [b'0'; 32];
        // 16 bytes always fill 32 digits; the only error is a length mismatch.
        let encoded = hex::encode_to_slice(trace_id.to_be_bytes(), &mut digits);
        debug_assert!(encoded.is_ok());
        Self(digits)
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// What a log line written during a call says about the call.
#[derive(Debug)]
pub struct CallFields {
    trace_id: TraceIdHex,
    method: Box<str>,
}

impl CallFields {
    /// The fields of a call to `method` (its path) in trace `trace_id`.
    pub fn new(trace_id: u128, method: &str) -> Self {
        Self { trace_id: TraceIdHex::new(trace_id), method: method.into() }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        self.trace_id.as_str()
    }

    /// The method path, e.g. `/ferry.inventory.v1.InventoryService/GetStock`.
    pub fn method(&self) -> &str {
        &self.method
    }
}

thread_local! {
    /// The call whose future this thread is polling now, if any.
    static CURRENT: RefCell<Option<Arc<CallFields>>> = const { RefCell::new(None) };
}

/// The call this thread is polling now, if any.
pub fn current() -> Option<Arc<CallFields>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with `call` as the thread's current call, then restores the one before (also when
/// `f` panics).
pub fn enter<T>(call: &Arc<CallFields>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<CallFields>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(call.clone())));
    f()
}

pin_project_lite::pin_project! {
    /// A call's future that is the thread's current call whenever it is polled.
    pub struct InCall<F> {
        #[pin]
        inner: F,
        call: Arc<CallFields>,
    }
}

impl<F> InCall<F> {
    /// `inner` as the call `call`.
    pub fn new(inner: F, call: Arc<CallFields>) -> Self {
        Self { inner, call }
    }
}

impl<F: Future> Future for InCall<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        enter(this.call, || inner.poll(cx))
    }
}

/// A JSON event format that adds the thread's current call (see the module docs) to a line
/// written outside any span. Lines written inside a span are left to the inner format, which
/// names that span, as before.
#[derive(Debug, Clone, Default)]
pub struct WithCallFields<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithCallFields<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(call) = current().filter(|_| ctx.lookup_current().is_none()) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline; the call's fields join the object
        // before its closing brace.
        let Some(object) = line.trim_end_matches('\n').strip_suffix('}') else {
            return writer.write_str(&line);
        };
        writer.write_str(object)?;
        writer.write_str(",\"span\":{\"trace_id\":")?;
        crate::json_fields::write_json_str(&mut writer, call.trace_id())?;
        writer.write_str(",\"method\":")?;
        crate::json_fields::write_json_str(&mut writer, call.method())?;
        writer.write_str(",\"name\":\"grpc\"}}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_call_is_set_only_while_its_future_is_polled() {
        let call = Arc::new(CallFields::new(7, "/pkg.Svc/M"));
        assert!(current().is_none());
        let seen = futures::executor::block_on(InCall::new(async { current() }, call.clone()));
        assert!(seen.is_some_and(|c| Arc::ptr_eq(&c, &call)));
        assert!(current().is_none(), "the call is no longer current once polled");
    }

    #[test]
    fn a_nested_call_restores_the_outer_one() {
        let outer = Arc::new(CallFields::new(1, "/a.A/Outer"));
        let inner = Arc::new(CallFields::new(2, "/a.A/Inner"));
        enter(&outer, || {
            enter(&inner, || {
                assert_eq!(current().map(|c| c.method().to_string()).as_deref(), Some("/a.A/Inner"))
            });
            assert_eq!(current().map(|c| c.method().to_string()).as_deref(), Some("/a.A/Outer"));
        });
        assert!(current().is_none());
    }

    #[test]
    fn a_panic_inside_a_call_does_not_leave_it_current() {
        let call = Arc::new(CallFields::new(3, "/a.A/Panics"));
        let result = std::panic::catch_unwind(|| enter(&call, || panic!("handler bug")));
        assert!(result.is_err());
        assert!(current().is_none());
    }

    #[test]
    fn a_line_logged_in_a_span_inside_a_call_is_left_to_name_that_span() {
        let call = Arc::new(CallFields::new(9, "/a.A/Spanned"));
        let lines =
            crate::json_fields::tests::log_lines_through(tracing_subscriber::layer::Identity::new(), || {
                enter(&call, || {
                    let _span = tracing::info_span!("inner", step = "x").entered();
                    tracing::info!("in a span");
                });
            });
        assert_eq!(lines[0]["span"]["name"], "inner", "{}", lines[0]);
        assert_eq!(lines[0]["span"]["step"], "x");
        assert!(lines[0]["span"].get("trace_id").is_none());
    }

    #[test]
    fn call_fields_are_escaped_as_json() {
        let call = Arc::new(CallFields::new(5, "/odd\"path\\"));
        let lines =
            crate::json_fields::tests::log_lines_through(tracing_subscriber::layer::Identity::new(), || {
                enter(&call, || tracing::info!("odd path"))
            });
        assert_eq!(lines[0]["span"]["method"], "/odd\"path\\");
        assert_eq!(lines[0]["span"]["trace_id"], format!("{}5", "0".repeat(31)));
    }
}
